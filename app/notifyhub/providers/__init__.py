"""Clients for the messaging providers, and the outcome model they share.

A provider call ends in exactly one of these, and each tells the caller what it may do next::

    SmsResult / EmailResult        accepted by the provider
    ProviderError
    ├── PermanentProviderError     refused for good (bad number, opted out, bad payload):
    │                              never retry
    ├── ProviderThrottled          "not now" (429, 503): wait retry_after_s, then try again
    ├── MaybeSent                  the request left and no clear answer came back: the message may
    │                              have been sent, so an SMS must not be re-sent automatically
    └── TransientProviderError     failed in a way that is safe to retry (nothing was sent, or the
                                   provider deduplicates, as email does with Idempotency-Key)

The split follows what a retry would cost: a duplicate SMS reaches a phone and costs money, a
duplicate email with the same Idempotency-Key is dropped by the provider.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from email.utils import parsedate_to_datetime

#: Twilio: the 'To' number is not a valid phone number.
TWILIO_INVALID_NUMBER = 21211
#: Twilio: the recipient replied STOP; sending again is refused until they opt back in.
TWILIO_UNSUBSCRIBED = 21610

DEFAULT_RETRY_AFTER_S = 30.0


class ProviderError(Exception):
    """Base of every classified provider failure."""

    def __init__(self, message: str, *, provider: str) -> None:
        self.provider = provider
        super().__init__(message)


class PermanentProviderError(ProviderError):
    """The provider refused this message for good; retrying the same request cannot succeed.

    ``code`` is the provider's own error code (Twilio's number, Resend's error name) so the
    caller can act on it, e.g. record an opt-out on Twilio 21610.
    """

    def __init__(
        self, code: int | str, message: str, *, provider: str, status: int | None = None
    ) -> None:
        self.code = code
        self.message = message
        self.status = status
        super().__init__(f"{provider} refused the message ({code}): {message}", provider=provider)

    @property
    def opted_out(self) -> bool:
        """True when the recipient unsubscribed (Twilio 21610): record it, do not just drop it."""
        return self.provider == "twilio" and self.code == TWILIO_UNSUBSCRIBED

    @property
    def invalid_recipient(self) -> bool:
        return self.provider == "twilio" and self.code == TWILIO_INVALID_NUMBER


class ProviderThrottled(ProviderError):
    """The provider asked us to slow down; nothing was sent and the same request may be retried."""

    def __init__(self, retry_after_s: float, *, provider: str, status: int | None = None) -> None:
        self.retry_after_s = retry_after_s
        self.status = status
        super().__init__(
            f"{provider} throttled the request (HTTP {status}); retry after {retry_after_s:g}s",
            provider=provider,
        )


class MaybeSent(ProviderError):
    """The request reached the provider but its fate is unknown (timeout, 5xx).

    For SMS this must be recorded as maybe-sent and left to a person or a status callback:
    re-sending risks a duplicate text on someone's phone.
    """

    def __init__(self, reason: str, *, provider: str) -> None:
        self.reason = reason
        super().__init__(
            f"{provider}: outcome unknown, message may have been sent: {reason}", provider=provider
        )


class TransientProviderError(ProviderError):
    """A failure that is safe to retry: nothing was sent, or the provider deduplicates resends."""


@dataclass(frozen=True, slots=True)
class SmsResult:
    """An SMS the provider accepted.

    ``price`` is what Twilio reports (negative for charges, ``None`` until the message is priced,
    which for a freshly queued message is almost always the case).
    """

    sid: str
    status: str
    segments: int
    price: Decimal | None = None
    price_unit: str | None = None


@dataclass(frozen=True, slots=True)
class EmailResult:
    """An email the provider accepted (or had already accepted under the same Idempotency-Key)."""

    id: str


def parse_retry_after(
    value: str | None, *, default_s: float = DEFAULT_RETRY_AFTER_S, now_s: float | None = None
) -> float:
    """Seconds to wait according to a ``Retry-After`` header (delta-seconds or HTTP-date).

    A missing or unreadable header yields ``default_s`` rather than zero, so a throttled caller
    never hammers a provider that forgot to say how long to wait.
    """
    if value is None or not value.strip():
        return default_s
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return default_s
    current = time.time() if now_s is None else now_s
    return max(0.0, when.timestamp() - current)


__all__ = [
    "DEFAULT_RETRY_AFTER_S",
    "TWILIO_INVALID_NUMBER",
    "TWILIO_UNSUBSCRIBED",
    "EmailResult",
    "MaybeSent",
    "PermanentProviderError",
    "ProviderError",
    "ProviderThrottled",
    "SmsResult",
    "TransientProviderError",
    "parse_retry_after",
]
