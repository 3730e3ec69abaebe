"""Inactive-account cleanup: point-of-sale sign-ups never activated within ``max_age_days``
are deleted, in batches.

Only users with a pending ``account_signups`` row qualify (see migration 0401): the users
table is shared with the other apps, whose users may never "activate" anything and must never
be swept. A sign-up that owns a business or has bought credits is kept whatever its state:
deleting it would take data someone relies on with it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from notifyhub.state import HandlerState
from qrunner import Context

from .catalog import QUEUE, registry, utc_now

log = logging.getLogger(__name__)


class CleanupInactiveUsers(BaseModel):
    max_age_days: int = Field(default=30, ge=1)
    batch_size: int = Field(default=500, ge=1, le=10_000)
    max_batches: int = Field(default=100, ge=1)
    now: datetime | None = None


_DELETE = """
DELETE FROM users WHERE id IN (
  SELECT s.user_id FROM account_signups s
  WHERE s.activated_at IS NULL AND s.created_at < $1
    AND NOT EXISTS (SELECT 1 FROM businesses b WHERE b.owner_user_id = s.user_id)
    AND NOT EXISTS (SELECT 1 FROM credit_purchases c WHERE c.user_id = s.user_id)
  ORDER BY s.created_at LIMIT $2
  FOR UPDATE OF s SKIP LOCKED)
"""


@registry.task(queue=QUEUE, payload=CleanupInactiveUsers, max_retries=2, timeout_s=1800)
async def cleanup_inactive_users(
    ctx: Context[HandlerState], payload: CleanupInactiveUsers
) -> dict[str, Any]:
    cutoff = utc_now(payload.now) - timedelta(days=payload.max_age_days)
    deleted = batches = 0
    while batches < payload.max_batches:
        status = await ctx.state.db.execute(_DELETE, cutoff, payload.batch_size)
        n = int(status.split()[-1])
        deleted += n
        batches += 1
        if n < payload.batch_size:
            break
    if deleted:
        log.info("deleted %d sign-up(s) never activated since %s", deleted, cutoff.isoformat())
    return {"cutoff": cutoff.isoformat(), "deleted": deleted}
