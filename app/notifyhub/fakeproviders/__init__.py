"""Fake messaging providers for tests and demos: Twilio's Messages API and Resend's emails API.

Each is a small aiohttp server on 127.0.0.1 that speaks the provider's wire format closely enough
for the real client code (the Twilio SDK, plain aiohttp), records what it received, and can be
scripted to fail in the ways the real providers do, including the awkward ones where the message
was accepted but the answer never arrived.
"""

from notifyhub.fakeproviders.failures import FailureKind, FailureRule
from notifyhub.fakeproviders.resend import EmailRecord, FakeResend
from notifyhub.fakeproviders.server import FakeServer, RecordedRequest
from notifyhub.fakeproviders.twilio import FakeTwilio, SmsRecord, count_segments

__all__ = [
    "EmailRecord",
    "FailureKind",
    "FailureRule",
    "FakeResend",
    "FakeServer",
    "FakeTwilio",
    "RecordedRequest",
    "SmsRecord",
    "count_segments",
]
