"""The low-credit check: one ``send_low_credit_alert`` per user each time their balance falls
below the threshold, never one per run.

``user_credits.low_balance_alerted_at`` is the latch. The check stamps it in the transaction
that enqueues the alert, and clears it for balances back at or above the threshold (a top-up
clears it too, see :mod:`notifyhub.webhooks.payments`), so the next fall alerts again. The
alert's key is the balance row's ``updated_at``: a retry after a failed commit finds the same
balance state and enqueues nothing twice.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field

from notifyhub.state import HandlerState
from qrunner import Context, JobSpec

from .catalog import QUEUE, registry, utc_now

ALERT_KEY_TTL_S = 7 * 24 * 3600


class CheckLowCredits(BaseModel):
    threshold: Decimal = Field(default=Decimal("10"), gt=0)
    batch_size: int = Field(default=500, ge=1, le=10_000)
    now: datetime | None = None


@registry.task(queue=QUEUE, payload=CheckLowCredits, max_retries=3, timeout_s=600)
async def check_low_credits(ctx: Context[HandlerState], payload: CheckLowCredits) -> dict[str, Any]:
    now = utc_now(payload.now)
    alerted = 0
    async with ctx.state.db.acquire() as conn:
        rearmed = await conn.execute(
            "UPDATE user_credits SET low_balance_alerted_at = NULL"
            " WHERE low_balance_alerted_at IS NOT NULL AND balance >= $1",
            payload.threshold,
        )
        while True:
            async with conn.transaction():
                rows = await conn.fetch(
                    "UPDATE user_credits SET low_balance_alerted_at = $3 WHERE user_id IN ("
                    "  SELECT user_id FROM user_credits"
                    "  WHERE balance < $1 AND low_balance_alerted_at IS NULL"
                    "  ORDER BY user_id LIMIT $2 FOR UPDATE SKIP LOCKED)"
                    " RETURNING user_id, balance, updated_at",
                    payload.threshold,
                    payload.batch_size,
                    now,
                )
                await ctx.client.enqueue_many(
                    JobSpec(
                        "send_low_credit_alert",
                        {
                            "user_id": r["user_id"],
                            "balance": str(r["balance"]),
                            "threshold": str(payload.threshold),
                        },
                        key=f"low-credit:{r['user_id']}:{r['updated_at'].timestamp():.6f}",
                        key_ttl_s=ALERT_KEY_TTL_S,
                    )
                    for r in rows
                )
            alerted += len(rows)
            if len(rows) < payload.batch_size:
                break
    return {"alerted": alerted, "rearmed": int(rearmed.split()[-1])}
