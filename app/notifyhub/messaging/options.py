"""Knobs of the messaging handlers that are not deployment settings.

Deployment settings (credentials, sender identities, the default quiet hours, the public URL and
signing secret) live in :class:`notifyhub.settings.AppSettings`. What is here is policy that code
owns (prices, sequence spacing, which tasks may break quiet hours) plus two seams for tests:
``clock`` lets a test say "it is 22:00 in New York" without waiting for it, and
``quiet_defer_cap_s`` / ``backoff_scale`` shrink hour-long waits to fractions of a second.
Production uses the defaults. The options reach handlers on the handler state
(``ctx.state.messaging.options``, see :mod:`.services`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal


def utc_now() -> datetime:
    return datetime.now(UTC)


#: Spacing of the onboarding emails: the delay before each step, counted from the step before.
DEFAULT_ONBOARDING_DELAYS_S: tuple[float, ...] = (0.0, 86_400.0, 2 * 86_400.0, 4 * 86_400.0)


@dataclass(frozen=True, slots=True)
class MessagingOptions:
    #: Where "now" comes from for quiet hours; must return an aware datetime.
    clock: Callable[[], datetime] = utc_now
    #: Test seam: the longest a quiet-hours deferral may be before the job looks again (the
    #: job re-checks, so a shorter cap never sends early; it only polls more often).
    quiet_defer_cap_s: float | None = None
    #: Test seam: multiplies the backoff of every ``Retry`` the sender raises after a transient
    #: provider failure. (The runtime's own backoff, for a handler that crashed, is the task's
    #: declared ``backoff_base_s``; a test shortens that on a copy of the registry's tasks.)
    backoff_scale: float = 1.0
    #: What one SMS segment costs when the provider has not priced the message yet (Twilio
    #: prices asynchronously, so the create answer almost never carries a price).
    sms_price_per_segment: Decimal = Decimal("0.0079")
    sms_price_currency: str = "USD"
    #: Tasks whose SMS may go out inside quiet hours (an overdraft alert at 23:00 is the point).
    quiet_hours_exempt: frozenset[str] = frozenset({"send_critical_financial_alert"})
    onboarding_delays_s: tuple[float, ...] = DEFAULT_ONBOARDING_DELAYS_S
    #: How long the Redis copy of a ledger entry lives; PostgreSQL keeps the row for good.
    ledger_ttl_s: int = 7 * 86_400
    #: A 'pending' SMS ledger row older than this was left by a worker that died mid-call:
    #: the text may have gone out, so it is settled as maybe-sent, never re-sent.
    sms_pending_stale_s: float = 60.0
    app_name: str = "qrunner"
    support_email: str = "support@example.com"
