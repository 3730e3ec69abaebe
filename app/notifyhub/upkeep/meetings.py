"""Meeting status transitions and reminders, driven by the clock.

Statuses move scheduled -> active when the meeting window opens and -> completed when it
closes; both are single guarded UPDATEs, so concurrent or repeated runs agree. Reminders go out
1 hour and 24 hours ahead, one ``send_meeting_reminder`` per participant who has not declined,
stamped on the participant row after the enqueue and keyed per (kind, meeting, user), so an
hourly run, a catch-up run or a retry never reminds anyone twice.

Timing: the "1 hour" reminder must arrive 50-70 minutes before the meeting and the "24 hours"
one 23-25 hours before. An hourly run that sent at once everything starting within the hour
reminded anywhere from 0 to 60 minutes ahead. Each run now plans the reminders whose moment
(start minus 60 minutes, or minus 24 hours) comes before the next run, and enqueues each one
delayed until that moment, so it arrives on time to within the worker's promotion interval.
A meeting found later than its moment (added late, or a run missed) is reminded at once if it
is still at least the window's minimum away, and not at all otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class ReminderKind:
    name: str
    column: str
    #: Never sent closer to the start than this, nor (by construction) further than ``latest``.
    earliest: timedelta
    target: timedelta
    latest: timedelta


KINDS = (
    ReminderKind(
        "1h", "reminded_1h_at", timedelta(minutes=50), timedelta(hours=1), timedelta(minutes=70)
    ),
    ReminderKind(
        "24h", "reminded_24h_at", timedelta(hours=23), timedelta(hours=24), timedelta(hours=25)
    ),
)
#: How far apart the cron runs are (schedules.yaml): each run plans up to the next one.
RUN_PERIOD = timedelta(minutes=5)


def reminder_delay(
    kind: ReminderKind, starts_at: datetime, now: datetime, slot: datetime
) -> timedelta | None:
    """How long to hold a reminder before sending it, or None when this run does not send it
    (too close to the start for the window, or its moment is the next run's business).

    Held until ``starts_at - target``; when that moment has passed it goes at once, which is
    still inside the window because the start is then less than ``target`` (< ``latest``) and
    at least ``earliest`` away.
    """
    if starts_at - now < kind.earliest:
        return None
    send_at = starts_at - kind.target
    if send_at >= max(slot, now) + RUN_PERIOD:
        return None
    return max(send_at - now, timedelta(0))


@registry.task(queue=QUEUE, payload=SendDueMeetingReminders, max_retries=2, timeout_s=300)
async def send_due_meeting_reminders(
    ctx: Context[HandlerState], payload: SendDueMeetingReminders
) -> dict[str, Any]:
    now = utc_now(payload.now)
    slot = payload.scheduled_for or now
    out: dict[str, Any] = {"now": now.isoformat()}
    async with ctx.state.db.acquire() as conn:
        for kind in KINDS:
            async with conn.transaction():
                rows = await conn.fetch(
                    "SELECT mp.meeting_id, mp.user_id, m.starts_at FROM meeting_participants mp"
                    " JOIN meetings m ON m.id = mp.meeting_id"
                    " WHERE m.status = 'scheduled' AND m.starts_at >= $1 AND m.starts_at < $2"
                    f"   AND mp.response <> 'declined' AND mp.{kind.column} IS NULL"
                    " ORDER BY mp.meeting_id, mp.user_id"
                    " FOR UPDATE OF mp SKIP LOCKED",
                    now + kind.earliest,
                    max(slot, now) + RUN_PERIOD + kind.target,
                )
                planned = [
                    (r, delay)
                    for r in rows
                    if (delay := reminder_delay(kind, r["starts_at"], now, slot)) is not None
                ]
                if planned:
                    await ctx.client.enqueue_many(
                        JobSpec(
                            "send_meeting_reminder",
                            {
                                "meeting_id": r["meeting_id"],
                                "user_id": r["user_id"],
                                "window": kind.name,
                            },
                            delay_s=delay.total_seconds() or None,
                            key=f"meeting-reminder:{kind.name}:{r['meeting_id']}:{r['user_id']}",
                            key_ttl_s=REMINDER_KEY_TTL_S,
                        )
                        for r, delay in planned
                    )
                    await conn.execute(
                        f"UPDATE meeting_participants SET {kind.column} = $3"
                        " FROM unnest($1::bigint[], $2::bigint[]) AS t(meeting_id, user_id)"
                        " WHERE meeting_participants.meeting_id = t.meeting_id"
                        "   AND meeting_participants.user_id = t.user_id",
                        [r["meeting_id"] for r, _ in planned],
                        [r["user_id"] for r, _ in planned],
                        now,
                    )
            out[f"reminders_{kind.name}"] = len(planned)
            out[f"held_{kind.name}"] = sum(1 for _, d in planned if d)
    return out
