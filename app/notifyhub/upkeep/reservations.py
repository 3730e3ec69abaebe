"""Expired stock reservations: stock held for a cart or an unpaid order goes back on the shelf
when the hold expires.

Each batch is one transaction that marks the holds released, adds their quantity back to
``products.stock`` and records a ``stock_movements`` row per hold, so stock and its history
never disagree; ``SKIP LOCKED`` lets an overlapping run (or a checkout committing a hold) pass
rows another transaction is working on instead of waiting for them.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from notifyhub.state import HandlerState
from qrunner import Context

from .catalog import QUEUE, registry, utc_now

log = logging.getLogger(__name__)


class ReleaseExpiredReservations(BaseModel):
    batch_size: int = Field(default=500, ge=1, le=10_000)
    max_batches: int = Field(default=100, ge=1)
    now: datetime | None = None


_RELEASE = """
WITH released AS (
  UPDATE stock_reservations SET status = 'released', released_at = $1
  WHERE id IN (
    SELECT id FROM stock_reservations WHERE status = 'held' AND expires_at <= $1
    ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
  RETURNING id, product_id, quantity
), restocked AS (
  UPDATE products p SET stock = p.stock + r.quantity, updated_at = now()
  FROM (SELECT product_id, sum(quantity) AS quantity FROM released GROUP BY product_id) r
  WHERE p.id = r.product_id
  RETURNING p.id
)
INSERT INTO stock_movements (product_id, quantity, reason, reference, created_at)
SELECT product_id, quantity, 'adjustment', 'reservation ' || id || ' expired', $1 FROM released
"""


@registry.task(queue=QUEUE, payload=ReleaseExpiredReservations, max_retries=2, timeout_s=600)
async def release_expired_reservations(
    ctx: Context[HandlerState], payload: ReleaseExpiredReservations
) -> dict[str, Any]:
    now = utc_now(payload.now)
    released = batches = 0
    while batches < payload.max_batches:
        status = await ctx.state.db.execute(_RELEASE, now, payload.batch_size)
        n = int(status.split()[-1])
        released += n
        batches += 1
        if n < payload.batch_size:
            break
    if released:
        log.info("released %d expired stock reservation(s)", released)
    return {"released": released}
