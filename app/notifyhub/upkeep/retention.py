"""Chat-message retention: delete messages older than the retention period, in batches.

Each batch is its own short transaction (oldest first, through the created_at index), so a
large first cleanup neither holds locks for minutes nor bloats one giant transaction, and a
crash keeps the batches already done.
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


class CleanupOldMessages(BaseModel):
    retention_days: int = Field(default=90, ge=1)
    batch_size: int = Field(default=1000, ge=1, le=50_000)
    #: Caps one run; what is left is deleted by the next daily run.
    max_batches: int = Field(default=1000, ge=1)
    now: datetime | None = None


@registry.task(queue=QUEUE, payload=CleanupOldMessages, max_retries=2, timeout_s=1800)
async def cleanup_old_messages(
    ctx: Context[HandlerState], payload: CleanupOldMessages
) -> dict[str, Any]:
    cutoff = utc_now(payload.now) - timedelta(days=payload.retention_days)
    deleted = batches = 0
    while batches < payload.max_batches:
        status = await ctx.state.db.execute(
            "DELETE FROM messages WHERE id IN ("
            "  SELECT id FROM messages WHERE created_at < $1 ORDER BY created_at LIMIT $2"
            "  FOR UPDATE SKIP LOCKED)",
            cutoff,
            payload.batch_size,
        )
        n = int(status.split()[-1])
        deleted += n
        batches += 1
        if n < payload.batch_size:
            break
    if deleted:
        log.info("deleted %d chat message(s) older than %s", deleted, cutoff.isoformat())
    return {"cutoff": cutoff.isoformat(), "deleted": deleted, "batches": batches}
