"""Meeting status transitions, follow-up bookings and reminders, driven by the clock.

Statuses move scheduled -> active when the meeting window opens and -> completed when it
closes; both are single guarded UPDATEs, so concurrent or repeated runs agree.

Users in the tracking phase of coaching meet every ``meeting_interval_days`` (weekly by
default). When such a user's latest meeting (cancelled ones aside) has completed, the same
run books its successor: same title, organiser, place, length and participants, at the same
local wall time in the user's zone, the first interval after now (a missed stretch is skipped,
never booked in the past). ``meetings.follows_meeting_id`` is unique, so a repeated or
concurrent run cannot book a meeting twice, and a cancelled successor is not replaced. Each
participant of a booked meeting other than its organiser is sent ``send_meeting_invitation``
once: keyed per (meeting, user) and stamped ``invited_at`` after the enqueue. Reminders go out
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
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from pydantic import BaseModel

from notifyhub.outlook.timing import resolve_zone
from notifyhub.state import HandlerState
from qrunner import Context, JobSpec

from .catalog import QUEUE, registry, utc_now

log = logging.getLogger(__name__)

REMINDER_KEY_TTL_S = 3 * 24 * 3600
INVITATION_KEY_TTL_S = 3 * 24 * 3600


class UpdateMeetingStatuses(BaseModel):
    now: datetime | None = None


@registry.task(queue=QUEUE, payload=UpdateMeetingStatuses, max_retries=2, timeout_s=120)
async def update_meeting_statuses(
    ctx: Context[HandlerState], payload: UpdateMeetingStatuses
) -> dict[str, Any]:
    now = utc_now(payload.now)
    async with ctx.state.db.acquire() as conn:
        async with conn.transaction():
            started, ended, booked = await _advance(conn, now)
        invited = await _invite_to_booked(ctx, conn, now)
    return {
        "now": now.isoformat(),
        "activated": int(started.split()[-1]),
        "completed": int(ended.split()[-1]),
        "booked": booked,
        "invited": invited,
    }


async def _advance(conn: asyncpg.Connection, now: datetime) -> tuple[str, str, int]:
    """Move statuses on, then book the follow-ups of the meetings that are now over."""
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
    return started, ended, await _book_follow_ups(conn, now)


def next_meeting_start(
    prev_start: datetime, every_days: int, zone: tzinfo, now: datetime
) -> datetime:
    """The first start after ``now`` that is a whole number (at least one) of ``every_days``
    after ``prev_start``, at its local wall time in ``zone``: a weekly 18:00 stays 18:00
    across DST. A wall time skipped by a spring-forward is read as in :mod:`.outlook.timing`."""
    local = prev_start.astimezone(zone)
    wall = time(local.hour, local.minute, local.second, local.microsecond)
    step = max(1, (now - prev_start).days // every_days)
    while True:
        day = local.date() + timedelta(days=every_days * step)
        start = datetime.combine(day, wall, zone).astimezone(UTC)
        if start > now:
            return start
        step += 1


# Per tracking user, their latest meeting that was not cancelled; of those, the completed ones
# without a successor. A meeting shared by several tracking users follows the shortest interval.
_DUE_FOLLOW_UPS = """
WITH latest AS (
    SELECT DISTINCT ON (u.id) u.id AS user_id, u.time_zone, u.meeting_interval_days,
           m.id AS meeting_id, m.status, m.starts_at, m.ends_at
    FROM users u
    JOIN meeting_participants mp ON mp.user_id = u.id
    JOIN meetings m ON m.id = mp.meeting_id AND m.status <> 'cancelled'
    WHERE u.coaching_phase = 'tracking'
    ORDER BY u.id, m.starts_at DESC, m.id DESC
)
SELECT DISTINCT ON (l.meeting_id) l.meeting_id, l.time_zone, l.meeting_interval_days,
       l.starts_at, l.ends_at
FROM latest l
WHERE l.status = 'completed'
  AND NOT EXISTS (SELECT 1 FROM meetings n WHERE n.follows_meeting_id = l.meeting_id)
ORDER BY l.meeting_id, l.meeting_interval_days, l.user_id
"""


async def _book_follow_ups(conn: asyncpg.Connection, now: datetime) -> int:
    """Book the successor of each completed meeting that ends a tracking user's series.

    A concurrent run that books the same successor first makes this insert wait for it and
    then skip the row (ON CONFLICT on the unique ``follows_meeting_id``).
    """
    due = await conn.fetch(_DUE_FOLLOW_UPS)
    if not due:
        return 0
    starts = [
        next_meeting_start(
            r["starts_at"], r["meeting_interval_days"], resolve_zone(r["time_zone"]), now
        )
        for r in due
    ]
    booked = await conn.fetch(
        "INSERT INTO meetings (title, organiser_user_id, starts_at, ends_at, location, url,"
        "  follows_meeting_id)"
        " SELECT m.title, m.organiser_user_id, b.starts_at,"
        "  b.starts_at + (m.ends_at - m.starts_at), m.location, m.url, m.id"
        " FROM unnest($1::bigint[], $2::timestamptz[]) AS b(follows, starts_at)"
        " JOIN meetings m ON m.id = b.follows"
        " ON CONFLICT (follows_meeting_id) DO NOTHING"
        " RETURNING id, follows_meeting_id",
        [r["meeting_id"] for r in due],
        starts,
    )
    if booked:
        await conn.execute(
            "INSERT INTO meeting_participants (meeting_id, user_id, role)"
            " SELECT b.id, mp.user_id, mp.role"
            " FROM unnest($1::bigint[], $2::bigint[]) AS b(id, follows)"
            " JOIN meeting_participants mp ON mp.meeting_id = b.follows",
            [r["id"] for r in booked],
            [r["follows_meeting_id"] for r in booked],
        )
        log.info("booked %d follow-up meeting(s) for users in the tracking phase", len(booked))
    return len(booked)


async def _invite_to_booked(
    ctx: Context[HandlerState], conn: asyncpg.Connection, now: datetime
) -> int:
    """Enqueue the invitations to booked meetings not yet sent, then stamp them.

    Rows a concurrent run holds are skipped (it is inviting them). A crash between the enqueue
    and the commit leaves them unstamped; the next run enqueues again and the key drops it.
    """
    async with conn.transaction():
        rows = await conn.fetch(
            "SELECT mp.meeting_id, mp.user_id, mp.user_id = m.organiser_user_id AS organiser"
            " FROM meeting_participants mp JOIN meetings m ON m.id = mp.meeting_id"
            " WHERE m.follows_meeting_id IS NOT NULL AND m.status = 'scheduled'"
            "   AND mp.invited_at IS NULL"
            " ORDER BY mp.meeting_id, mp.user_id"
            " FOR UPDATE OF mp SKIP LOCKED"
        )
        invite = [r for r in rows if not r["organiser"]]
        if invite:
            await ctx.client.enqueue_many(
                JobSpec(
                    "send_meeting_invitation",
                    {"meeting_id": r["meeting_id"], "user_id": r["user_id"]},
                    key=f"meeting-invitation:{r['meeting_id']}:{r['user_id']}",
                    key_ttl_s=INVITATION_KEY_TTL_S,
                )
                for r in invite
            )
        if rows:
            await conn.execute(
                "UPDATE meeting_participants SET invited_at = $3"
                " FROM unnest($1::bigint[], $2::bigint[]) AS t(meeting_id, user_id)"
                " WHERE meeting_participants.meeting_id = t.meeting_id"
                "   AND meeting_participants.user_id = t.user_id",
                [r["meeting_id"] for r in rows],
                [r["user_id"] for r in rows],
                now,
            )
    return len(invite)


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
