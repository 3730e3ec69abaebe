"""Engagement analysis and send-time optimisation through a real worker and PostgreSQL.

Given a delivery log and opens, clicks and replies (as the webhooks record them, see
tests/test_delivery_webhooks.py), when the hourly analysis and the two-hourly timing task run,
then per-user engagement is stored, each user's best hour is found in their own time zone, and
a user without enough events gets no best hour.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from notifyhub.engagement import best_hour, best_send_hour, record_engagement
from notifyhub.engagement import registry as engagement_registry
from redis.asyncio import Redis

from qrunner import Registry
from tests.handler_fixtures import HandlerEnv, handler_stack

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("scores", "events", "expected"),
    [
        ({9: 3, 18: 5}, 8, 18),
        ({9: 5, 18: 5}, 8, 9),  # a tie goes to the earlier hour
        ({9: 5}, 3, None),  # too few events to say
        ({}, 0, None),
    ],
)
def test_best_hour(scores: dict[int, int], events: int, expected: int | None) -> None:
    assert best_hour(scores, events, min_events=5) == expected


@pytest.fixture
async def env(database_url: str, redis: Redis, tmp_path: Path) -> AsyncIterator[HandlerEnv]:
    async with handler_stack(
        database_url, redis, tmp_path, engagement_registry, Registry()
    ) as stack:
        yield HandlerEnv(*stack)


async def user(env: HandlerEnv, name: str, zone: str) -> int:
    uid: int = await env.db.fetchval(
        "INSERT INTO users (name, time_zone) VALUES ($1, $2) RETURNING id", name, zone
    )
    return uid


async def sent(env: HandlerEnv, uid: int, channel: str, at: datetime) -> int:
    log_id: int = await env.db.fetchval(
        "INSERT INTO delivery_log (job_id, user_id, channel, template, recipient_masked,"
        " provider, status, created_at) VALUES ('j', $1, $2, 't', '-', 'resend', 'sent', $3)"
        " RETURNING id",
        uid,
        channel,
        at,
    )
    return log_id


async def test_engagement_is_analysed_and_best_hours_found_in_local_time(
    env: HandlerEnv,
) -> None:
    # Given a user in New York who opens and clicks emails around 19:00 local time (00:00 UTC
    # in March), and replies to SMS once; and a user with a single open
    ny = await user(env, "Ada", "America/New_York")
    quiet = await user(env, "Bo", "Not/A_Zone")
    async with env.db.acquire() as conn:
        for day in range(1, 7):
            at = NOW - timedelta(days=day, hours=12)  # 00:00 UTC = 19:00 or 20:00 New York
            log_id = await sent(env, ny, "email", at - timedelta(hours=1))
            await record_engagement(
                conn,
                user_id=ny,
                channel="email",
                kind="open",
                occurred_at=at,
                delivery_log_id=log_id,
            )
            if day % 2:
                await record_engagement(
                    conn,
                    user_id=ny,
                    channel="email",
                    kind="click",
                    occurred_at=at,
                    delivery_log_id=log_id,
                )
        await sent(env, ny, "email", NOW - timedelta(hours=2))  # sent, not engaged with
        await record_engagement(
            conn, user_id=ny, channel="sms", kind="reply", occurred_at=NOW - timedelta(days=1)
        )
        await record_engagement(
            conn, user_id=quiet, channel="email", kind="open", occurred_at=NOW - timedelta(days=1)
        )
        await record_engagement(  # outside the 30-day window
            conn, user_id=ny, channel="email", kind="open", occurred_at=NOW - timedelta(days=40)
        )

    # When the hourly analysis and the send-time optimisation run (twice: re-runs replace)
    for _ in range(2):
        analysis = await env.run("analyze_user_engagement", {"now": NOW.isoformat()})
        timing = await env.run("optimize_send_timing", {"now": NOW.isoformat()})

    # Then engagement per user and channel is stored
    rows = await env.db.fetch(
        "SELECT user_id, channel, sent, opens, clicks, replies, engagement_rate"
        " FROM user_engagement ORDER BY user_id, channel"
    )
    assert [tuple(r)[:6] for r in rows] == [
        (ny, "email", 7, 6, 3, 0),
        (ny, "sms", 0, 0, 0, 1),
        (quiet, "email", 0, 1, 0, 0),
    ]
    assert float(rows[0]["engagement_rate"]) == round(6 / 7, 4)
    assert analysis["rows"] == 3
    # And the New York user's best hour is their local evening; the other has too few events
    async with env.db.acquire() as conn:
        hour = await best_send_hour(conn, ny)
        assert hour in (19, 20) and await best_send_hour(conn, quiet) is None
    assert timing["updated"] == 1 and timing["users_with_events"] == 2
