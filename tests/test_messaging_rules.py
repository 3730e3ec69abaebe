"""The pure rules of the messaging handlers, as tables: quiet hours, consent, formatting,
inbound keywords, unsubscribe tokens, idempotency keys, templates and how each channel
classifies provider errors."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from notifyhub.messaging import SPECS, MessagingOptions, registry
from notifyhub.messaging.channels import Channel, Disposition, EmailChannel, SmsChannel
from notifyhub.messaging.consent import Category, ChannelConsent, email_verdict, sms_verdict
from notifyhub.messaging.formatting import Formatter, format_date, format_money, normalize_locale
from notifyhub.messaging.ledger import idempotency_key
from notifyhub.messaging.quiet_hours import (
    Window,
    parse_window,
    quiet_wait_s,
    resolve_zones,
    seconds_until_allowed,
)
from notifyhub.messaging.templates import Templates
from notifyhub.messaging.unsubscribe import Signer, Subject
from notifyhub.messaging.webhooks import keyword
from notifyhub.providers import (
    MaybeSent,
    PermanentProviderError,
    ProviderError,
    ProviderThrottled,
    TransientProviderError,
)
from notifyhub.settings import AppSettings

NY = ZoneInfo("America/New_York")
DEFAULT = parse_window("21:00-08:00")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- quiet hours -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "local", "inside"),
    [
        (Window(time(21), time(8)), time(20, 59), False),
        (Window(time(21), time(8)), time(21, 0), True),
        (Window(time(21), time(8)), time(3, 0), True),
        (Window(time(21), time(8)), time(8, 0), False),
        (Window(time(13), time(14)), time(13, 30), True),
        (Window(time(13), time(14)), time(14, 0), False),
        (Window(time(9), time(9)), time(9, 0), False),  # empty window
    ],
)
def test_window_contains(window: Window, local: time, inside: bool) -> None:
    assert window.contains(local) is inside


@pytest.mark.parametrize(
    ("now", "zone", "expected_s"),
    [
        ("2025-03-05T17:00:00", "America/New_York", 0.0),  # 12:00 local
        ("2025-03-06T03:00:00", "America/New_York", 10 * 3600.0),  # 22:00 -> 08:00
        ("2025-03-06T12:59:00", "America/New_York", 60.0),  # 07:59 -> 08:00
        ("2025-03-06T13:00:00", "America/New_York", 0.0),  # 08:00 sharp is allowed
        # The night DST starts (2025-03-09): 22:00 EST -> 08:00 EDT is 9 hours, not 10.
        ("2025-03-09T03:00:00", "America/New_York", 9 * 3600.0),
        # 12:30 UTC is 21:30 in Tokyo: quiet until 08:00 JST = 23:00 UTC.
        ("2025-03-05T12:30:00", "Asia/Tokyo", 10.5 * 3600),
    ],
)
def test_seconds_until_allowed_in_a_known_zone(now: str, zone: str, expected_s: float) -> None:
    assert seconds_until_allowed(utc(now), DEFAULT, (ZoneInfo(zone),)) == expected_s


@pytest.mark.parametrize(
    ("zone", "country", "phone", "basis_part"),
    [
        ("Europe/London", "GB", None, "Europe/London"),
        ("Mars/Olympus", "US", None, "country US"),
        ("Not a zone", None, "+447700900123", "country GB"),
        (None, None, None, "UTC"),
    ],
)
def test_resolve_zones(
    zone: str | None, country: str | None, phone: str | None, basis_part: str
) -> None:
    assert basis_part in resolve_zones(zone, country, phone).basis


@pytest.mark.parametrize(
    ("now", "expected_s"),
    [
        # Unknown zone, US: allowed only while 08:00-21:00 holds from UTC-10 to UTC-4,
        # i.e. 18:00-01:00 UTC.
        ("2025-03-05T18:00:00", 0.0),
        ("2025-03-05T17:00:00", 3600.0),
        ("2025-03-06T00:59:00", 0.0),
        ("2025-03-06T01:00:00", 17 * 3600.0),
    ],
)
def test_unknown_zone_uses_the_union_over_the_country(now: str, expected_s: float) -> None:
    zones = resolve_zones("Mars/Olympus", "US", "+15555550104")
    assert quiet_wait_s(utc(now), DEFAULT, zones) == expected_s


def test_unknown_zone_and_country_falls_back_to_utc() -> None:
    zones = resolve_zones(None, None, None)
    assert quiet_wait_s(utc("2025-03-05T22:00:00"), DEFAULT, zones) == 10 * 3600.0
    assert quiet_wait_s(utc("2025-03-05T12:00:00"), DEFAULT, zones) == 0.0


def test_a_union_that_covers_the_clock_falls_back_to_the_middle_offset() -> None:
    # 26 hours of offsets leave no common daytime; the message must still go eventually.
    zones = tuple(timezone(timedelta(hours=h)) for h in range(-12, 15))
    assert seconds_until_allowed(utc("2025-03-05T12:00:00"), DEFAULT, zones) is None


def test_parse_window_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        parse_window("late evening")


# -- consent -----------------------------------------------------------------------------------

T0 = utc("2025-01-01T00:00:00")
T1 = T0 + timedelta(days=1)
NONE = ChannelConsent()
IN = ChannelConsent(T0, None)
OUT = ChannelConsent(T0, T1)
BACK_IN = ChannelConsent(T1, T0)
SAME_INSTANT = ChannelConsent(T0, T0)


@pytest.mark.parametrize(
    ("consent", "suppressed", "has_phone", "allowed"),
    [
        (IN, False, True, True),
        (BACK_IN, False, True, True),
        (NONE, False, True, False),
        (OUT, False, True, False),
        (SAME_INSTANT, False, True, False),  # an opt-out at the same instant wins
        (IN, True, True, False),
        (IN, False, False, False),
    ],
)
def test_sms_rule(
    consent: ChannelConsent, suppressed: bool, has_phone: bool, allowed: bool
) -> None:
    verdict = sms_verdict(has_phone=has_phone, consent=consent, suppressed=suppressed)
    assert verdict.allowed is allowed
    assert verdict.allowed or verdict.reason


@pytest.mark.parametrize(
    ("category", "country", "consent", "suppressed", "allowed"),
    [
        (Category.TRANSACTIONAL, "US", NONE, False, True),
        (Category.TRANSACTIONAL, "US", OUT, False, False),
        (Category.TRANSACTIONAL, "DE", NONE, False, False),
        (Category.TRANSACTIONAL, "GB", IN, False, True),
        (Category.TRANSACTIONAL, "CA", NONE, False, False),
        (Category.TRANSACTIONAL, None, NONE, False, False),  # unknown country: opt-in
        (Category.MARKETING, "US", NONE, False, False),
        (Category.MARKETING, "US", IN, False, True),
        (Category.MARKETING, "FR", OUT, False, False),
        (Category.REQUIRED, "DE", NONE, False, True),
        (Category.REQUIRED, "US", OUT, False, True),
        (Category.REQUIRED, "US", IN, True, False),
        (Category.TRANSACTIONAL, "US", IN, True, False),
    ],
)
def test_email_rule(
    category: Category,
    country: str | None,
    consent: ChannelConsent,
    suppressed: bool,
    allowed: bool,
) -> None:
    verdict = email_verdict(
        category=category, country=country, has_address=True, consent=consent, suppressed=suppressed
    )
    assert verdict.allowed is allowed


# -- formatting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "locale", "expected"),
    [
        ("1234.5", "USD", "en-US", "$1,234.50"),
        ("1234.5", "GBP", "en_GB", "£1,234.50"),
        ("1234.5", "EUR", "de-DE", "1.234,50 €"),
        ("1234567.891", "EUR", "fr_FR", "1 234 567,89 €"),
        ("250000", "JPY", "ja-JP", "¥250,000"),
        ("-42.17", "USD", "en", "-$42.17"),
        ("9.99", "CHF", "de", "9,99 CHF"),
        ("0.005", "USD", "xx", "$0.01"),
    ],
)
def test_format_money(amount: str, currency: str, locale: str, expected: str) -> None:
    assert format_money(Decimal(amount), currency, locale) == expected


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("en-US", "Mar 5, 2025"),
        ("en-GB", "5 Mar 2025"),
        ("de-DE", "05.03.2025"),
        ("fr-FR", "05/03/2025"),
        ("ja-JP", "2025年3月5日"),
    ],
)
def test_format_date(locale: str, expected: str) -> None:
    assert format_date(date(2025, 3, 5), locale) == expected


def test_formatter_writes_times_in_the_recipients_zone() -> None:
    fmt = Formatter(normalize_locale("en-US"), NY)
    assert fmt.datetime(utc("2025-03-05T20:30:00")) == "Mar 5, 2025 3:30 PM"
    assert Formatter("de_DE", NY).time(utc("2025-03-05T20:30:00")) == "15:30"


# -- keywords, tokens, keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("STOP", "stop"),
        (" stop ", "stop"),
        ("Unsubscribe", "stop"),
        ("quit", "stop"),
        ("STOPALL", "stop"),
        ("cancel", "stop"),
        ("end", "stop"),
        ("START", "start"),
        ("unstop", "start"),
        ("help", "help"),
        ("please stop texting", None),
        ("", None),
    ],
)
def test_inbound_keywords(body: str, expected: str | None) -> None:
    assert keyword(body) == expected


def test_unsubscribe_tokens_verify_and_refuse_forgeries() -> None:
    settings = AppSettings(signing_secret="s3cret-s3cret-s3cret-s3cret-s3cret")
    signer = Signer()
    token = signer.token(settings, Subject(user_id=42))
    assert signer.verify(settings, token) == Subject(user_id=42)
    assert signer.token(settings, Subject(user_id=42)) == token  # deterministic
    _, _, mac = token.partition(".")
    forged = signer.token(settings, Subject(user_id=43)).split(".")[0] + "." + mac
    assert signer.verify(settings, forged) is None
    assert (
        signer.verify(AppSettings(signing_secret="other-other-other-other-other-other"), token)
        is None
    )
    assert signer.verify(settings, "garbage") is None


def test_without_a_secret_a_per_process_one_is_used(caplog: pytest.LogCaptureFixture) -> None:
    signer = Signer()
    token = signer.token(AppSettings(), Subject(address="a@example.com"))
    assert signer.verify(AppSettings(), token) == Subject(address="a@example.com")
    assert "NOTIFYHUB_SIGNING_SECRET" in caplog.text
    assert Signer().verify(AppSettings(), token) is None


def test_idempotency_key_is_deterministic_and_bounded() -> None:
    a = idempotency_key("job1", "email", "welcome", "Jane@Example.com")
    assert a == idempotency_key("job1", "email", "welcome", "jane@example.com")
    assert a != idempotency_key("job2", "email", "welcome", "jane@example.com")
    assert a != idempotency_key("job1", "email", "goal_milestone", "jane@example.com")
    assert "jane" not in a and len(a) <= 256


# -- templates and registry --------------------------------------------------------------------


def test_every_template_renders_html_and_text_with_escaping() -> None:
    templates = Templates()
    fmt = Formatter("en_US", NY)
    email = templates.email(
        "welcome",
        name="<b>Eve</b>",
        app_name="qrunner",
        support_email="s@example.com",
        fmt=fmt,
        lang="en",
        unsubscribe_url="https://x.test/unsubscribe?token=t",
    )
    assert email.subject == "Welcome to qrunner, <b>Eve</b>"
    assert "&lt;b&gt;Eve&lt;/b&gt;" in email.html and "<b>Eve</b>" not in email.html
    assert "<b>Eve</b>" in email.text and "Unsubscribe: https://x.test" in email.text
    sms = templates.sms(
        "payment_reminder",
        name="Ava",
        payee="City Power",
        amount=Decimal("84.2"),
        currency="USD",
        due_date=date(2025, 3, 8),
        fmt=fmt,
        app_name="qrunner",
    )
    assert (
        sms == "Hi Ava, your City Power bill of $84.20 is due Mar 8, 2025. Reply STOP to opt out."
    )


def test_registry_declares_every_task_with_its_queue_and_limit() -> None:
    declared = {t.name: t for t in registry}
    assert set(declared) == set(SPECS)
    assert declared["send_critical_financial_alert"].queue == "sms_critical"
    assert declared["send_critical_financial_alert"].max_retries == 3
    assert declared["send_payment_reminder"].backoff_base_s == 300
    assert declared["send_onboarding_sequence"].queue == "email_education"
    assert declared["send_monthly_report"].rate_limit is not None
    assert declared["send_monthly_report"].rate_limit.rates == ("10/m",)
    assert not registry.lifespans


# -- provider errors per channel ---------------------------------------------------------------

SMS = SmsChannel(MessagingOptions(), Templates(), Signer())
EMAIL = EmailChannel(MessagingOptions(), Templates(), Signer())


@pytest.mark.parametrize(
    ("channel", "error", "expected"),
    [
        # An SMS whose fate is unknown is never sent again; an email is retried under the
        # same Idempotency-Key, which the provider deduplicates.
        (SMS, MaybeSent("read timeout", provider="twilio"), Disposition.MAYBE_SENT),
        (EMAIL, MaybeSent("read timeout", provider="resend"), Disposition.RETRY),
        (SMS, ProviderThrottled(2.0, provider="twilio", status=429), Disposition.THROTTLED),
        (EMAIL, ProviderThrottled(2.0, provider="resend", status=429), Disposition.THROTTLED),
        (SMS, TransientProviderError("connect failed", provider="twilio"), Disposition.RETRY),
        (EMAIL, TransientProviderError("connect failed", provider="resend"), Disposition.RETRY),
        (SMS, PermanentProviderError(21211, "bad number", provider="twilio"), Disposition.REFUSED),
        (
            EMAIL,
            PermanentProviderError("validation_error", "bad address", provider="resend"),
            Disposition.REFUSED,
        ),
    ],
)
def test_each_channel_classifies_provider_errors(
    channel: Channel[Any, Any], error: ProviderError, expected: Disposition
) -> None:
    assert channel.classify(error) is expected


def test_only_sms_waits_for_quiet_hours() -> None:
    assert SMS.quiet_hours and not EMAIL.quiet_hours
