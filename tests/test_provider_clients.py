"""The provider clients classify every outcome correctly, over real HTTP to the fake providers.

SMS goes through the real Twilio SDK (``AsyncTwilioHttpClient``), email through aiohttp; only
the far end is a fake. The outcome classes decide whether a worker may resend, so each failure
kind is checked against what the fake actually recorded.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator

import pytest
from notifyhub.fakeproviders import FailureKind, FakeResend, FakeTwilio
from notifyhub.providers import (
    MaybeSent,
    PermanentProviderError,
    ProviderThrottled,
    TransientProviderError,
    parse_retry_after,
)
from notifyhub.providers.email import EmailMessage, ResendEmail, classify_email_error
from notifyhub.providers.redact import mask_email, mask_phone, redact_text
from notifyhub.providers.sms import TwilioSms, classify_twilio_error, segments

TO = "+15551234567"
FROM = "+15557654321"
EMAIL_TO = "jane.doe@example.com"


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as fake:
        yield fake


@pytest.fixture
async def resend() -> AsyncIterator[FakeResend]:
    async with FakeResend() as fake:
        yield fake


@pytest.fixture
async def sms(twilio: FakeTwilio) -> AsyncIterator[TwilioSms]:
    async with TwilioSms(
        twilio.account_sid, twilio.auth_token, base_url=twilio.base_url, timeout_s=5
    ) as client:
        yield client


@pytest.fixture
async def email(resend: FakeResend) -> AsyncIterator[ResendEmail]:
    async with ResendEmail(resend.api_key, base_url=resend.base_url, timeout_s=5) as client:
        yield client


def refused_port() -> int:
    """A port nothing listens on (bound then released, so the OS will not hand it out at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def message(**changes: object) -> EmailMessage:
    fields: dict[str, object] = {
        "from_": "Acme <news@acme.test>",
        "to": EMAIL_TO,
        "subject": "Your report",
        "html": "<p>Report</p>",
        "text": "Report",
        "headers": {"List-Unsubscribe": "<https://acme.test/unsubscribe/42>"},
    }
    fields.update(changes)
    return EmailMessage(**fields)  # type: ignore[arg-type]


# --- Pure functions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # extension characters take two septets
        ("€" * 81, 2),
        ("a" * 152 + "€" + "a" * 152, 3),  # an escape pair is never split across parts
        ("ж" * 70, 1),
        ("ж" * 71, 2),
        ("ж" * 134, 2),
        ("ж" * 135, 3),
        ("😀" * 35, 1),  # surrogate pairs count as two UTF-16 units
        ("😀" * 36, 2),
    ],
)
def test_segments_follow_gsm7_and_ucs2_rules(body: str, expected: int) -> None:
    assert segments(body) == expected


@pytest.mark.parametrize(
    ("status", "code", "retry_after", "outcome"),
    [
        (400, 21211, None, PermanentProviderError),
        (400, 21610, None, PermanentProviderError),
        (401, 20003, None, PermanentProviderError),
        (429, 20429, "5", ProviderThrottled),
        (503, 20503, None, ProviderThrottled),
        (500, 20500, None, MaybeSent),
        (502, None, None, MaybeSent),
    ],
)
def test_classify_twilio_error_table(
    status: int, code: int | None, retry_after: str | None, outcome: type[Exception]
) -> None:
    assert isinstance(classify_twilio_error(status, code, "msg", retry_after), outcome)


@pytest.mark.parametrize(
    ("status", "name", "outcome"),
    [
        (422, "validation_error", PermanentProviderError),
        (403, "invalid_api_key", PermanentProviderError),
        (409, "invalid_idempotent_request", PermanentProviderError),
        (409, "concurrent_idempotent_requests", TransientProviderError),
        (429, "rate_limit_exceeded", ProviderThrottled),
        (500, "application_error", TransientProviderError),
        (503, "service_unavailable", TransientProviderError),
    ],
)
def test_classify_email_error_table(status: int, name: str, outcome: type[Exception]) -> None:
    assert isinstance(classify_email_error(status, {"name": name}, None), outcome)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 30.0),
        ("", 30.0),
        ("12", 12.0),
        ("-3", 0.0),
        ("soon", 30.0),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 40.0),  # HTTP-date, 100 s epoch, now = 60 s
    ],
)
def test_parse_retry_after_reads_seconds_and_dates(header: str | None, expected: float) -> None:
    assert parse_retry_after(header, now_s=60.0) == expected


def test_masks_keep_only_what_tells_recipients_apart() -> None:
    assert mask_phone("+15551234567") == "+1******4567"
    assert mask_email("jane@example.com") == "j***@example.com"
    assert redact_text(f"Invalid 'To' Phone Number: {TO} for {EMAIL_TO}") == (
        "Invalid 'To' Phone Number: +1******4567 for j***@example.com"
    )


def test_email_message_needs_a_body_and_takes_a_single_recipient_string() -> None:
    assert message().to == (EMAIL_TO,)
    with pytest.raises(ValueError, match="html or a text"):
        message(html=None, text=None)


# --- SMS over the Twilio SDK --------------------------------------------------------------


async def test_sms_success_is_recorded_with_to_from_body_and_segments(
    sms: TwilioSms, twilio: FakeTwilio
) -> None:
    body = "Your bill of $42 is due tomorrow. " * 6  # 204 GSM-7 characters

    result = await sms.send(TO, body, from_=FROM, status_callback="https://acme.test/status")

    [recorded] = twilio.messages
    assert (recorded.to, recorded.from_, recorded.body) == (TO, FROM, body)
    assert recorded.status_callback == "https://acme.test/status"
    assert result.sid == recorded.sid and result.sid.startswith("SM")
    assert result.status == "queued"
    assert result.segments == recorded.num_segments == segments(body) == 2
    assert result.price is None


async def test_sms_through_a_messaging_service_sends_no_from(
    sms: TwilioSms, twilio: FakeTwilio
) -> None:
    service = "MG" + "0" * 32

    result = await sms.send(TO, "hi", from_=service)

    [recorded] = twilio.messages
    assert (recorded.from_, recorded.messaging_service_sid) == (None, service)
    assert result.status == "accepted"


@pytest.mark.parametrize("body", ["plain text", "ж" * 71, "😀 " * 40, "{braces} " * 20])
async def test_sms_segments_agree_with_what_the_provider_reports(
    sms: TwilioSms, twilio: FakeTwilio, body: str
) -> None:
    result = await sms.send(TO, body, from_=FROM)

    assert result.segments == segments(body)


async def test_sms_wrong_auth_token_is_permanent(twilio: FakeTwilio) -> None:
    async with TwilioSms(twilio.account_sid, "wrong", base_url=twilio.base_url) as client:
        with pytest.raises(PermanentProviderError) as caught:
            await client.send(TO, "hi", from_=FROM)

    assert (caught.value.code, caught.value.status) == (20003, 401)
    assert twilio.messages == []


async def test_sms_invalid_number_is_permanent_21211_with_the_number_masked(
    sms: TwilioSms, twilio: FakeTwilio
) -> None:
    twilio.fail_next(FailureKind.INVALID_NUMBER)

    with pytest.raises(PermanentProviderError) as caught:
        await sms.send(TO, "hi", from_=FROM)

    assert caught.value.code == 21211
    assert caught.value.invalid_recipient
    assert TO not in str(caught.value)
    assert mask_phone(TO) in str(caught.value)


async def test_sms_unsubscribed_is_permanent_21610_and_flags_the_opt_out(
    sms: TwilioSms, twilio: FakeTwilio
) -> None:
    twilio.fail_next(FailureKind.UNSUBSCRIBED, match_to=TO)

    with pytest.raises(PermanentProviderError) as caught:
        await sms.send(TO, "hi", from_=FROM)

    assert caught.value.code == 21610
    assert caught.value.opted_out
    assert twilio.messages == []


async def test_sms_429_is_throttled_for_the_retry_after_value(
    sms: TwilioSms, twilio: FakeTwilio
) -> None:
    twilio.fail_next(FailureKind.THROTTLED, retry_after_s=17)

    with pytest.raises(ProviderThrottled) as caught:
        await sms.send(TO, "hi", from_=FROM)

    assert caught.value.retry_after_s == 17.0
    assert caught.value.status == 429


async def test_sms_503_without_retry_after_waits_the_default(
    sms: TwilioSms, twilio: FakeTwilio
) -> None:
    twilio.fail_next(FailureKind.UNAVAILABLE, retry_after_s=None)

    with pytest.raises(ProviderThrottled) as caught:
        await sms.send(TO, "hi", from_=FROM)

    assert caught.value.retry_after_s == 30.0


async def test_sms_500_after_accept_is_maybe_sent_and_exactly_one_message_exists(
    sms: TwilioSms, twilio: FakeTwilio
) -> None:
    twilio.fail_next(FailureKind.ERROR_AFTER_ACCEPT)

    with pytest.raises(MaybeSent):
        await sms.send(TO, "hi", from_=FROM)

    assert len(twilio.messages) == 1


async def test_sms_500_before_accept_is_still_maybe_sent(
    sms: TwilioSms, twilio: FakeTwilio
) -> None:
    # The client cannot tell a 500 before acceptance from one after it, so it must assume the
    # worse: the message may exist.
    twilio.fail_next(FailureKind.SERVER_ERROR)

    with pytest.raises(MaybeSent):
        await sms.send(TO, "hi", from_=FROM)

    assert twilio.messages == []


async def test_sms_timeout_after_accept_is_maybe_sent(twilio: FakeTwilio) -> None:
    twilio.fail_next(FailureKind.TIMEOUT_AFTER_ACCEPT, hold_s=60)

    async with TwilioSms(
        twilio.account_sid, twilio.auth_token, base_url=twilio.base_url, timeout_s=0.3
    ) as client:
        with pytest.raises(MaybeSent, match="after the request was sent"):
            await client.send(TO, "hi", from_=FROM)

    assert len(twilio.messages) == 1


async def test_sms_connection_refused_is_transient() -> None:
    base_url = f"http://127.0.0.1:{refused_port()}"

    async with TwilioSms("AC" + "0" * 32, "token", base_url=base_url) as client:
        with pytest.raises(TransientProviderError, match="before the request was sent"):
            await client.send(TO, "hi", from_=FROM)


async def test_sms_logs_never_hold_the_full_number(
    sms: TwilioSms, twilio: FakeTwilio, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    twilio.fail_next(FailureKind.INVALID_NUMBER)

    with pytest.raises(PermanentProviderError):
        await sms.send(TO, "hi", from_=FROM)
    await sms.send(TO, "hi", from_=FROM)

    assert "sms accepted" in caplog.text
    assert mask_phone(TO) in caplog.text
    assert TO not in caplog.text
    assert twilio.auth_token not in caplog.text


# --- Email over aiohttp -------------------------------------------------------------------


async def test_email_success_is_recorded_with_headers_and_key(
    email: ResendEmail, resend: FakeResend
) -> None:
    result = await email.send(message(tags={"kind": "report"}), idempotency_key="job-1:jane")

    [recorded] = resend.messages
    assert result.id == recorded.id
    assert recorded.to == (EMAIL_TO,)
    assert recorded.subject == "Your report"
    assert recorded.headers == {"List-Unsubscribe": "<https://acme.test/unsubscribe/42>"}
    assert recorded.tags == [{"name": "kind", "value": "report"}]
    assert recorded.idempotency_key == "job-1:jane"


async def test_email_same_key_twice_records_one_email_with_the_same_id(
    email: ResendEmail, resend: FakeResend
) -> None:
    first = await email.send(message(), idempotency_key="job-2")
    second = await email.send(message(), idempotency_key="job-2")

    assert first.id == second.id
    assert len(resend.messages) == 1


async def test_email_500_after_accept_then_retry_with_same_key_records_one_email(
    email: ResendEmail, resend: FakeResend
) -> None:
    resend.fail_next(FailureKind.ERROR_AFTER_ACCEPT)

    with pytest.raises(TransientProviderError):
        await email.send(message(), idempotency_key="job-3")
    retried = await email.send(message(), idempotency_key="job-3")

    [recorded] = resend.messages
    assert retried.id == recorded.id


async def test_email_timeout_after_accept_is_transient_and_the_retry_is_deduplicated(
    resend: FakeResend,
) -> None:
    resend.fail_next(FailureKind.TIMEOUT_AFTER_ACCEPT, hold_s=60)

    async with ResendEmail(resend.api_key, base_url=resend.base_url, timeout_s=0.3) as client:
        with pytest.raises(TransientProviderError):
            await client.send(message(), idempotency_key="job-4")
        retried = await client.send(message(), idempotency_key="job-4")

    [recorded] = resend.messages
    assert retried.id == recorded.id


async def test_email_same_key_with_changed_content_is_permanent(
    email: ResendEmail, resend: FakeResend
) -> None:
    await email.send(message(), idempotency_key="job-5")

    with pytest.raises(PermanentProviderError, match="different payload") as caught:
        await email.send(message(subject="Changed"), idempotency_key="job-5")

    assert caught.value.code == "invalid_idempotent_request"
    assert len(resend.messages) == 1


async def test_email_429_is_throttled_for_the_retry_after_value(
    email: ResendEmail, resend: FakeResend
) -> None:
    resend.fail_next(FailureKind.THROTTLED, retry_after_s=4)

    with pytest.raises(ProviderThrottled) as caught:
        await email.send(message(), idempotency_key="job-6")

    assert caught.value.retry_after_s == 4.0


async def test_email_invalid_recipient_is_permanent(email: ResendEmail, resend: FakeResend) -> None:
    with pytest.raises(PermanentProviderError) as caught:
        await email.send(message(to="not-an-address"), idempotency_key="job-7")

    assert (caught.value.code, caught.value.status) == ("validation_error", 422)


async def test_email_wrong_api_key_is_permanent(resend: FakeResend) -> None:
    async with ResendEmail("re_wrong", base_url=resend.base_url) as client:
        with pytest.raises(PermanentProviderError) as caught:
            await client.send(message(), idempotency_key="job-8")

    assert (caught.value.code, caught.value.status) == ("invalid_api_key", 403)


@pytest.mark.parametrize("kind", [FailureKind.SERVER_ERROR, FailureKind.UNAVAILABLE])
async def test_email_5xx_before_accept_is_transient(
    email: ResendEmail, resend: FakeResend, kind: FailureKind
) -> None:
    resend.fail_next(kind)

    with pytest.raises(TransientProviderError):
        await email.send(message(), idempotency_key="job-9")

    assert resend.messages == []


async def test_email_connection_refused_is_transient() -> None:
    async with ResendEmail("re_x", base_url=f"http://127.0.0.1:{refused_port()}") as client:
        with pytest.raises(TransientProviderError):
            await client.send(message(), idempotency_key="job-10")


async def test_email_logs_never_hold_the_full_address(
    email: ResendEmail, resend: FakeResend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    resend.fail_next(FailureKind.THROTTLED)

    with pytest.raises(ProviderThrottled):
        await email.send(message(), idempotency_key="job-11")
    await email.send(message(), idempotency_key="job-11")

    assert "email accepted" in caplog.text
    assert mask_email(EMAIL_TO) in caplog.text
    assert EMAIL_TO not in caplog.text
    assert resend.api_key not in caplog.text
