"""The subscription-renewal check: remind a business's owner before its plan's period ends, and
mark what the period end passed without a renewal.

- An active plan ending within ``remind_days`` gets one reminder per period: ``reminded_for``
  holds the period end it was about, so a renewal (a new period end) re-arms it.
- An auto-renewing plan whose period has ended without the renewal moving it forward becomes
  ``past_due`` (the payment failed or is late); after ``grace_days`` more it ``expired``.
- A plan set not to renew ``expired`` when its period ends.

Each change is one guarded UPDATE whose RETURNING rows are emailed in the same transaction, so
concurrent or repeated runs agree and no notice is sent for a change that did not commit;
the emails' keys name the subscription, the change and the period end.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from pydantic import BaseModel, Field

from notifyhub.state import HandlerState
from qrunner import Context, JobSpec

from .catalog import QUEUE, registry, utc_now

MAIL_KEY_TTL_S = 14 * 24 * 3600


class CheckSubscriptionRenewals(BaseModel):
    remind_days: int = Field(default=3, ge=1, le=60)
    grace_days: int = Field(default=7, ge=0, le=60)
    now: datetime | None = None


_RETURNING = """
RETURNING s.id, s.plan, s.auto_renew, s.current_period_end,
  (SELECT b.name FROM businesses b WHERE b.id = s.business_id) AS business,
  (SELECT b.owner_user_id FROM businesses b WHERE b.id = s.business_id) AS owner
"""

#: (change, UPDATE whose $1 is now and $2, where used, the reminder or grace interval).
_CHANGES = (
    (
        "reminder",
        "UPDATE business_subscriptions s SET reminded_for = current_period_end"
        " WHERE status = 'active' AND current_period_end > $1"
        "   AND current_period_end <= $1 + $2"
        "   AND reminded_for IS DISTINCT FROM current_period_end",
    ),
    (
        "expired",
        "UPDATE business_subscriptions s SET status = 'expired', updated_at = $1"
        " WHERE ((status = 'active' AND NOT auto_renew AND current_period_end <= $1)"
        "   OR (status = 'past_due' AND current_period_end + $2 <= $1))",
    ),
    (
        "past_due",
        "UPDATE business_subscriptions s SET status = 'past_due', updated_at = $1"
        " WHERE status = 'active' AND auto_renew AND current_period_end <= $1",
    ),
)


def _notice(change: str, r: asyncpg.Record, grace_days: int) -> tuple[str, str]:
    end = f"{r['current_period_end']:%Y-%m-%d %H:%M} UTC"
    plan, business = r["plan"], r["business"]
    if change == "reminder" and r["auto_renew"]:
        return (
            f"Your {plan} plan renews soon: {business}",
            f"The {plan} plan of {business} renews on {end}.\n\n"
            "Make sure your payment method is up to date.\n",
        )
    if change == "reminder":
        return (
            f"Your {plan} plan ends soon: {business}",
            f"The {plan} plan of {business} ends on {end} and is not set to renew.\n\n"
            "Renew it to keep using the service.\n",
        )
    if change == "past_due":
        return (
            f"Renewal of your {plan} plan is overdue: {business}",
            f"The {plan} plan of {business} was due for renewal on {end}, and the payment has "
            f"not arrived.\n\nThe plan expires {grace_days} day(s) after that date.\n",
        )
    return (
        f"Your {plan} plan has expired: {business}",
        f"The {plan} plan of {business} has expired.\n\nRenew it to keep using the service.\n",
    )


@registry.task(queue=QUEUE, payload=CheckSubscriptionRenewals, max_retries=2, timeout_s=600)
async def check_subscription_renewals(
    ctx: Context[HandlerState], payload: CheckSubscriptionRenewals
) -> dict[str, Any]:
    now = utc_now(payload.now)
    counts: dict[str, int] = {}
    async with ctx.state.db.acquire() as conn:
        for change, sql in _CHANGES:
            days = {"reminder": payload.remind_days, "expired": payload.grace_days}.get(change)
            args = (now,) if days is None else (now, timedelta(days=days))
            async with conn.transaction():
                rows = await conn.fetch(sql + _RETURNING, *args)
                specs = []
                for r in rows:
                    if r["owner"] is None:
                        continue
                    subject, body = _notice(change, r, payload.grace_days)
                    specs.append(
                        JobSpec(
                            "send_email",
                            {
                                "user_id": r["owner"],
                                "subject": subject,
                                "body": body,
                                "template": f"subscription_{change}",
                            },
                            key=f"subscription:{change}:{r['id']}:"
                            f"{r['current_period_end'].timestamp():.0f}",
                            key_ttl_s=MAIL_KEY_TTL_S,
                        )
                    )
                await ctx.client.enqueue_many(specs)
            counts[change] = len(rows)
    return {
        "reminded": counts["reminder"],
        "past_due": counts["past_due"],
        "expired": counts["expired"],
    }
