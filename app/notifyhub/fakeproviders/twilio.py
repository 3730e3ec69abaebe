"""A stand-in for Twilio's Messages API, close enough on the wire for the official SDK.

Only ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` is served: form-encoded in, the
message resource (201) or Twilio's error object out, with HTTP Basic auth checked against the
account SID and auth token. Segment counting here is the plain length rule, written separately
from the client's, so a test comparing both catches a slip in either.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from notifyhub.fakeproviders.failures import FailureKind, FailureRule
from notifyhub.fakeproviders.server import FakeServer, RecordedRequest, json_response

API_VERSION = "2010-04-01"
_E164_RE = re.compile(r"^\+[1-9]\d{7,14}$")
_MAX_BODY_CHARS = 1600
_GSM7_CHARS = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_ESCAPED = frozenset("^{}\\[~]|€\f")


def count_segments(body: str) -> int:
    """Twilio's count: GSM-7 septets 160 / 153 per part, otherwise UTF-16 units 70 / 67."""
    if set(body) <= _GSM7_CHARS | _GSM7_ESCAPED:
        length = sum(2 if ch in _GSM7_ESCAPED else 1 for ch in body)
        single, part = 160, 153
    else:
        length = len(body.encode("utf-16-le")) // 2
        single, part = 70, 67
    return 1 if length <= single else math.ceil(length / part)


@dataclass(frozen=True, slots=True)
class SmsRecord:
    """A message the fake accepted."""

    sid: str
    account_sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    num_segments: int
    status_callback: str | None
    status: str
    date_created: str


def twilio_error(
    status: int, code: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status=status,
        headers=headers,
    )


class FakeTwilio(FakeServer[SmsRecord]):
    """Twilio Messages API on 127.0.0.1; ``base_url`` replaces ``https://api.twilio.com``."""

    name = "fake-twilio"

    def __init__(
        self,
        *,
        account_sid: str | None = None,
        auth_token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(host=host, port=port, clock=clock)
        self.account_sid = account_sid or "AC" + secrets.token_hex(16)
        self.auth_token = auth_token or secrets.token_hex(16)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(
            f"/{API_VERSION}/Accounts/{{account_sid}}/Messages.json", self._create_message
        )

    async def _create_message(self, request: web.Request) -> web.Response:
        form = await request.post()
        fields = {key: str(form.getone(key)) for key in form}
        recorded = self.record(request, dict(fields))
        response = await self._answer(request, fields, recorded)
        recorded.status = response.status
        return response

    async def _answer(
        self, request: web.Request, fields: dict[str, str], recorded: RecordedRequest
    ) -> web.Response:
        if not self._authorized(request.headers.get("Authorization", "")):
            return twilio_error(401, 20003, "Authenticate")
        account = request.match_info["account_sid"]
        if account != self.account_sid:
            return twilio_error(404, 20404, f"The requested resource {request.path} was not found")
        to = fields.get("To", "")
        rule = self.failures.take([to])
        if rule is not None:
            recorded.failure = rule.kind.value
            if not rule.kind.after_accept:
                return _refusal(rule, to)
        problem = _validate(fields)
        if problem is not None:
            return twilio_error(*problem)
        message = self._new_message(fields)
        await self.accept(message)
        resource = message_resource(message)
        if rule is not None and rule.kind is FailureKind.ERROR_AFTER_ACCEPT:
            return twilio_error(500, 20500, "Internal Server Error")
        if rule is not None and rule.kind is FailureKind.TIMEOUT_AFTER_ACCEPT:
            recorded.status = 201
            await self.hold(rule.hold_s)
        return json_response(resource, status=201)

    def _authorized(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        return secrets.compare_digest(user, self.account_sid) and secrets.compare_digest(
            password, self.auth_token
        )

    def _new_message(self, fields: dict[str, str]) -> SmsRecord:
        service = fields.get("MessagingServiceSid") or None
        return SmsRecord(
            sid="SM" + secrets.token_hex(16),
            account_sid=self.account_sid,
            to=fields["To"],
            from_=fields.get("From") or None,
            messaging_service_sid=service,
            body=fields["Body"],
            num_segments=count_segments(fields["Body"]),
            status_callback=fields.get("StatusCallback") or None,
            # Twilio answers "accepted" while a Messaging Service still has to pick a sender.
            status="accepted" if service and not fields.get("From") else "queued",
            date_created=format_datetime(datetime.fromtimestamp(self.clock(), UTC)),
        )


def message_resource(message: SmsRecord) -> dict[str, Any]:
    """The JSON Twilio returns for a created message."""
    uri = f"/{API_VERSION}/Accounts/{message.account_sid}/Messages/{message.sid}"
    return {
        "account_sid": message.account_sid,
        "api_version": API_VERSION,
        "body": message.body,
        "date_created": message.date_created,
        "date_sent": None,
        "date_updated": message.date_created,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": message.from_,
        "messaging_service_sid": message.messaging_service_sid,
        "num_media": "0",
        "num_segments": str(message.num_segments),
        "price": None,
        "price_unit": "USD",
        "sid": message.sid,
        "status": message.status,
        "subresource_uris": {"media": f"{uri}/Media.json"},
        "to": message.to,
        "uri": f"{uri}.json",
    }


def _validate(fields: dict[str, str]) -> tuple[int, int, str] | None:
    to = fields.get("To", "")
    body = fields.get("Body", "")
    if not to:
        return 400, 21604, "A 'To' phone number is required."
    if not fields.get("From") and not fields.get("MessagingServiceSid"):
        return 400, 21603, "A 'From' phone number is required."
    if not body:
        return 400, 21602, "Message body is required."
    if len(body) > _MAX_BODY_CHARS:
        return 400, 21617, "The concatenated message body exceeds the 1600 character limit."
    if not _E164_RE.match(to):
        return 400, 21211, f"Invalid 'To' Phone Number: {to}"
    sender = fields.get("From")
    if sender and not _E164_RE.match(sender) and not sender.isalnum():
        return 400, 21212, f"Invalid From Number (caller ID): {sender}"
    return None


def _refusal(rule: FailureRule, to: str) -> web.Response:
    retry_headers = (
        {"Retry-After": str(rule.retry_after_s)} if rule.retry_after_s is not None else None
    )
    match rule.kind:
        case FailureKind.INVALID_NUMBER:
            return twilio_error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        case FailureKind.UNSUBSCRIBED:
            return twilio_error(400, 21610, "Attempt to send to unsubscribed recipient")
        case FailureKind.THROTTLED:
            return twilio_error(429, 20429, "Too Many Requests", retry_headers)
        case FailureKind.UNAVAILABLE:
            return twilio_error(503, 20503, "Service Unavailable", retry_headers)
        case _:
            return twilio_error(500, 20500, "Internal Server Error")
