"""Engagement per user and channel, and each user's best hour to receive messages (seed 000).

Opens and clicks come from Resend's webhooks, replies from inbound SMS (see
:mod:`notifyhub.messaging.webhooks`); each is one ``engagement_events`` row. Two periodic
tasks read them:

- ``analyze_user_engagement`` (hourly) rewrites ``user_engagement``: per user and channel over
  a trailing window, messages sent, opens, clicks, replies and the share of messages engaged
  with;
- ``optimize_send_timing`` (every 2 h) stores in ``user_send_hours`` the local hour (in the
  user's own zone) at which each user engages most, once there are enough events to say.

Senders ask :func:`best_send_hour`; ``None`` means "no evidence yet, keep the default".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped]
from pydantic import BaseModel, Field

from qrunner import Context, Registry

if TYPE_CHECKING:
    from .state import HandlerState

registry = Registry()
QUEUE = "maintenance"
KINDS = ("open", "click", "reply")
#: A click or a reply says more about a good moment than an open (which mail clients may fake
#: by prefetching images).
WEIGHTS: Mapping[str, int] = {"open": 1, "click": 2, "reply": 2}


def _now(override: datetime | None) -> datetime:
    if override is None:
        return datetime.now(UTC)
    return override if override.tzinfo else override.replace(tzinfo=UTC)


async def record_engagement(
    conn: asyncpg.Connection,
    *,
    user_id: int,
    channel: str,
    kind: str,
    occurred_at: datetime | None = None,
    delivery_log_id: int | None = None,
    inbound_event_id: int | None = None,
) -> None:
    """Store one open, click or reply; a second call for the same inbound event adds nothing."""
    if kind not in KINDS:
        raise ValueError(f"unknown engagement kind {kind!r}")
    await conn.execute(
        """
        INSERT INTO engagement_events
            (user_id, channel, kind, delivery_log_id, inbound_event_id, occurred_at)
        VALUES ($1, $2, $3, $4, $5, coalesce($6, clock_timestamp()))
        ON CONFLICT (inbound_event_id) DO NOTHING
        """,
        user_id,
        channel,
        kind,
        delivery_log_id,
        inbound_event_id,
        occurred_at,
    )


async def best_send_hour(conn: asyncpg.Connection, user_id: int) -> int | None:
    """The user's best local hour (0-23) to receive a message, or ``None`` without evidence."""
    hour: int | None = await conn.fetchval(
        "SELECT best_hour FROM user_send_hours WHERE user_id = $1", user_id
    )
    return hour


# -- analyze_user_engagement -------------------------------------------------------------------


class AnalyzeUserEngagement(BaseModel):
    window_days: int = Field(default=30, ge=1, le=365)
    now: datetime | None = None


_ANALYZE = """
WITH sent AS (
    SELECT user_id, channel, count(*) AS n
    FROM delivery_log
    WHERE user_id IS NOT NULL AND status IN ('sent', 'sandbox')
      AND created_at >= $1 AND created_at < $2
    GROUP BY user_id, channel
), ev AS (
    SELECT user_id, channel,
           count(*) FILTER (WHERE kind = 'open')  AS opens,
           count(*) FILTER (WHERE kind = 'click') AS clicks,
           count(*) FILTER (WHERE kind = 'reply') AS replies,
           count(DISTINCT delivery_log_id)
             + count(*) FILTER (WHERE delivery_log_id IS NULL) AS engaged
    FROM engagement_events
    WHERE occurred_at >= $1 AND occurred_at < $2
    GROUP BY user_id, channel
)
INSERT INTO user_engagement (user_id, channel, window_start, window_end, sent, opens, clicks,
                             replies, engagement_rate, computed_at)
SELECT coalesce(s.user_id, e.user_id), coalesce(s.channel, e.channel), $1, $2,
       coalesce(s.n, 0), coalesce(e.opens, 0), coalesce(e.clicks, 0), coalesce(e.replies, 0),
       CASE WHEN s.n > 0 THEN least(1, coalesce(e.engaged, 0)::numeric / s.n) END,
       clock_timestamp()
FROM sent s
FULL JOIN ev e ON e.user_id = s.user_id AND e.channel = s.channel
JOIN users u ON u.id = coalesce(s.user_id, e.user_id)
"""


@registry.task(queue=QUEUE, payload=AnalyzeUserEngagement, max_retries=2, timeout_s=600)
async def analyze_user_engagement(
    ctx: Context[HandlerState], payload: AnalyzeUserEngagement
) -> dict[str, Any]:
    """Rewrite ``user_engagement`` from the trailing window; a re-run replaces, never adds."""
    now = _now(payload.now)
    since = now - timedelta(days=payload.window_days)
    async with ctx.state.db.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM user_engagement")
        await conn.execute(_ANALYZE, since, now)
        totals = await conn.fetchrow(
            "SELECT count(*) AS rows, coalesce(sum(opens), 0) AS opens,"
            " coalesce(sum(clicks), 0) AS clicks, coalesce(sum(replies), 0) AS replies"
            " FROM user_engagement"
        )
    return {"since": since.isoformat(), "until": now.isoformat(), **dict(totals)}


# -- optimize_send_timing ----------------------------------------------------------------------


class OptimizeSendTiming(BaseModel):
    window_days: int = Field(default=30, ge=1, le=365)
    #: Fewer events than this and a "best hour" is noise: the user keeps the default.
    min_events: int = Field(default=5, ge=1)
    now: datetime | None = None


def best_hour(scores: Mapping[int, int], events: int, min_events: int) -> int | None:
    """The hour with the highest weighted score (the earliest on a tie), or ``None`` when
    fewer than ``min_events`` events back it."""
    if events < min_events or not scores:
        return None
    return min(scores, key=lambda hour: (-scores[hour], hour))


def best_hours(
    rows: Iterable[tuple[int, str, int, str, int]], min_events: int
) -> dict[int, tuple[int, int, str]]:
    """From (user, zone, local hour, kind, count) rows: user -> (best hour, events, zone)."""
    scores: dict[int, dict[int, int]] = {}
    events: dict[int, int] = {}
    zones: dict[int, str] = {}
    for user_id, zone, hour, kind, n in rows:
        per_hour = scores.setdefault(user_id, {})
        per_hour[hour] = per_hour.get(hour, 0) + WEIGHTS.get(kind, 1) * n
        events[user_id] = events.get(user_id, 0) + n
        zones[user_id] = zone
    out: dict[int, tuple[int, int, str]] = {}
    for user_id, per_hour in scores.items():
        best = best_hour(per_hour, events[user_id], min_events)
        if best is not None:
            out[user_id] = (best, events[user_id], zones[user_id])
    return out


# A zone PostgreSQL does not know would fail the whole query; such users are read in UTC.
_LOCAL_HOURS = """
WITH zones AS (
    SELECT u.id, coalesce(z.name, 'UTC') AS zone
    FROM users u LEFT JOIN pg_timezone_names z ON z.name = u.time_zone
    WHERE u.id IN (SELECT user_id FROM engagement_events
                   WHERE occurred_at >= $1 AND occurred_at < $2)
)
SELECT e.user_id, zones.zone,
       extract(hour FROM e.occurred_at AT TIME ZONE zones.zone)::int AS hour,
       e.kind, count(*)::int AS n
FROM engagement_events e JOIN zones ON zones.id = e.user_id
WHERE e.occurred_at >= $1 AND e.occurred_at < $2
GROUP BY 1, 2, 3, 4
"""


@registry.task(queue=QUEUE, payload=OptimizeSendTiming, max_retries=2, timeout_s=600)
async def optimize_send_timing(
    ctx: Context[HandlerState], payload: OptimizeSendTiming
) -> dict[str, Any]:
    """Store each user's best local send hour. A user without enough recent events keeps the
    hour found earlier: old evidence beats none, and the default applies when there is none."""
    now = _now(payload.now)
    since = now - timedelta(days=payload.window_days)
    async with ctx.state.db.acquire() as conn, conn.transaction():
        rows = await conn.fetch(_LOCAL_HOURS, since, now)
        found = best_hours(
            ((r["user_id"], r["zone"], r["hour"], r["kind"], r["n"]) for r in rows),
            payload.min_events,
        )
        await conn.executemany(
            """
            INSERT INTO user_send_hours (user_id, best_hour, events, time_zone, computed_at)
            VALUES ($1, $2, $3, $4, clock_timestamp())
            ON CONFLICT (user_id) DO UPDATE SET best_hour = EXCLUDED.best_hour,
                events = EXCLUDED.events, time_zone = EXCLUDED.time_zone,
                computed_at = EXCLUDED.computed_at
            """,
            [(u, hour, n, zone) for u, (hour, n, zone) in found.items()],
        )
    return {
        "users_with_events": len({r["user_id"] for r in rows}),
        "updated": len(found),
        "hours": {str(u): hour for u, (hour, _, _) in sorted(found.items())},
    }
