"""Meeting status transitions and reminders, driven by the clock.

Statuses move scheduled -> active when the meeting window opens and -> completed when it
closes; both are single guarded UPDATEs, so concurrent or repeated runs agree. Reminders go out
1 hour and 24 hours ahead, one ``send_meeting_reminder`` per participant who has not declined,
stamped on the participant row after the enqueue and keyed per (kind, meeting, user), so an
hourly run, a catch-up run or a retry never reminds anyone twice.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from notifyhub.state import HandlerState
from qrunner import Context, JobSpec

from .catalog import QUEUE, registry, utc_now

log = logging.getLogger(__name__)

REMINDER_KEY_TTL_S = 3 * 24 * 3600


class UpdateMeetingStatuses(BaseModel):
    now: datetime | None = None


@registry.task(queue=QUEUE, payload=UpdateMeetingStatuses, max_retries=2, timeout_s=120)
async def update_meeting_statuses(
    ctx: Context[HandlerState], payload: UpdateMeetingStatuses
) -> dict[str, Any]:
    now = utc_now(payload.now)
    async with ctx.state.db.acquire() as conn, conn.transaction():
        started = await conn.execute(
            "UPDATE meetings SET status = 'active', updated_at = now()"
            " WHERE status = 'scheduled' AND starts_at <= $1 AND ends_at > $1",
            now,
        )
        ended = await conn.execute(
            "UPDATE meetings SET status = 'completed', updated_at = now()"
            " WHERE status IN ('scheduled', 'active') AND ends_at <= $1",
            now,
        )
    return {
        "now": now.isoformat(),
        "activated": int(started.split()[-1]),
        "completed": int(ended.split()[-1]),
    }


class SendDueMeetingReminders(BaseModel):
    """``scheduled_for`` is the cron slot; ``now`` overrides the clock in tests."""

    scheduled_for: datetime | None = None
    now: datetime | None = None


#: (kind, stamp column, window start after the slot, window end after the slot).
#: The 24 h window is two hours wide so one missed hourly run still reminds everyone.
_KINDS = (
    ("1h", "reminded_1h_at", timedelta(0), timedelta(hours=1)),
    ("24h", "reminded_24h_at", timedelta(hours=23), timedelta(hours=25)),
)


@registry.task(queue=QUEUE, payload=SendDueMeetingReminders, max_retries=2, timeout_s=300)
async def send_due_meeting_reminders(
    ctx: Context[HandlerState], payload: SendDueMeetingReminders
) -> dict[str, Any]:
    now = utc_now(payload.now)
    slot = payload.scheduled_for or now
    out: dict[str, Any] = {"now": now.isoformat()}
    async with ctx.state.db.acquire() as conn:
        for kind, column, after, until in _KINDS:
            # Never remind about a meeting that has started, even on a late catch-up run.
            lower = max(slot + after, now)
            async with conn.transaction():
                rows = await conn.fetch(
                    "SELECT mp.meeting_id, mp.user_id FROM meeting_participants mp"
                    " JOIN meetings m ON m.id = mp.meeting_id"
                    " WHERE m.status = 'scheduled' AND m.starts_at > $1 AND m.starts_at <= $2"
                    f"   AND mp.response <> 'declined' AND mp.{column} IS NULL"
                    " ORDER BY mp.meeting_id, mp.user_id"
                    " FOR UPDATE OF mp SKIP LOCKED",
                    lower,
                    slot + until,
                )
                if rows:
                    await ctx.client.enqueue_many(
                        JobSpec(
                            "send_meeting_reminder",
                            {
                                "meeting_id": r["meeting_id"],
                                "user_id": r["user_id"],
                                "window": kind,
                            },
                            key=f"meeting-reminder:{kind}:{r['meeting_id']}:{r['user_id']}",
                            key_ttl_s=REMINDER_KEY_TTL_S,
                        )
                        for r in rows
                    )
                    await conn.execute(
                        f"UPDATE meeting_participants SET {column} = $3"
                        " FROM unnest($1::bigint[], $2::bigint[]) AS t(meeting_id, user_id)"
                        " WHERE meeting_participants.meeting_id = t.meeting_id"
                        "   AND meeting_participants.user_id = t.user_id",
                        [r["meeting_id"] for r in rows],
                        [r["user_id"] for r in rows],
                        now,
                    )
            out[f"reminders_{kind}"] = len(rows)
    return out
