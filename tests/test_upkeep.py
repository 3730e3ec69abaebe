"""Upkeep tasks through a real worker, PostgreSQL and Redis, with ``now`` injected.

Given meetings, chat messages and a delivery log, when the periodic tasks run (twice where a
re-run must change nothing), then statuses follow the clock, each participant is reminded once,
only old messages are deleted, and only transient failures are re-driven, once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from notifyhub.upkeep import registry as upkeep_registry
from notifyhub.upkeep.monitoring import delivery_rates, depth_alerts
from notifyhub.upkeep.redrive import is_transient
from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from qrunner import Context, Permanent
from tests.handler_fixtures import HandlerEnv, SmsIn, handler_stack, standin_registry

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2024, 3, 5, 10, 0, tzinfo=UTC)


@dataclass
class Env(HandlerEnv):
    calls: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    #: Job ids whose stand-in send fails (permanently) on its first run.
    fail_first: set[str] = field(default_factory=set)


class ReminderIn(BaseModel):
    """The agreed payload of messaging's ``send_meeting_reminder``."""

    model_config = ConfigDict(extra="forbid")
    user_id: int
    meeting_id: int
    window: str = "24h"


@pytest.fixture
async def env(database_url: str, redis: Redis, tmp_path: Path) -> AsyncIterator[Env]:
    e: Env

    async def record(name: str, ctx: Context[Any], payload: BaseModel) -> None:
        e.calls.append((name, payload.model_dump(), ctx.job.key or ctx.job_id))
        if ctx.job_id in e.fail_first:
            e.fail_first.discard(ctx.job_id)
            raise Permanent("stand-in provider failure")

    standins = standin_registry(
        "sms_daily",
        {"send_meeting_reminder": ReminderIn, "send_sms": SmsIn},
        record,
        max_retries=0,
    )
    async with handler_stack(database_url, redis, tmp_path, upkeep_registry, standins) as stack:
        e = Env(*stack)
        yield e


async def add_user(db: asyncpg.Pool, name: str) -> int:
    uid: int = await db.fetchval("INSERT INTO users (name) VALUES ($1) RETURNING id", name)
    return uid


async def add_meeting(db: asyncpg.Pool, starts_in: timedelta, minutes: int = 30) -> int:
    start = NOW + starts_in
    mid: int = await db.fetchval(
        "INSERT INTO meetings (title, starts_at, ends_at) VALUES ('Check-in', $1, $2) RETURNING id",
        start,
        start + timedelta(minutes=minutes),
    )
    return mid


# -- pure --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        ("TransientProviderError: 503 Service Unavailable", True),
        ("ReadTimeout: timed out", True),
        ("ProviderThrottled: 429", True),
        ("HTTP 502 bad_gateway: upstream", True),
        ("twilio unreachable before the request was sent (ClientConnectorError)", True),
        ("resend is still processing an earlier attempt with this key: x", True),
        ("twilio refused the message (21211): The 'To' number is not valid", False),
        ("PermanentProviderError: 400 invalid 'To' phone number", False),
        ("recipient opted out", False),
        (None, False),
    ],
)
def test_transient_errors_are_told_apart(error: str | None, transient: bool) -> None:
    assert is_transient(error) is transient


def test_delivery_rates_ignore_held_back_messages() -> None:
    rates = delivery_rates(
        [
            ("sms", "sent", 8),
            ("sms", "maybe_sent", 1),
            ("sms", "failed", 1),
            ("sms", "suppressed", 5),
            ("email", "sandbox", 2),
        ]
    )
    assert rates["sms"]["success_rate"] == 0.8 and rates["sms"]["attempted"] == 10
    assert rates["email"]["success_rate"] == 1.0


def test_depth_alerts_use_per_queue_thresholds() -> None:
    stats = [
        {"queue": "sms_critical", "depth": 20, "delayed": 0, "dead": 0},
        {"queue": "reports", "depth": 20, "delayed": 5, "dead": 3},
    ]
    alerts = depth_alerts(stats, 1000, {"sms_critical": 10}, 2)
    assert alerts == [
        "queue sms_critical: 20 jobs waiting (threshold 10)",
        "queue reports: 3 dead-lettered jobs (threshold 2)",
    ]


# -- through the worker ------------------------------------------------------------------------


async def test_meeting_reminders_go_once_per_participant(env: Env) -> None:
    # Given a meeting in 30 minutes (one attendee declined), one in 3 hours, one in 24 hours
    soon = await add_meeting(env.db, timedelta(minutes=30))
    later = await add_meeting(env.db, timedelta(hours=3))
    tomorrow = await add_meeting(env.db, timedelta(hours=24))
    ann, bob, cat = [await add_user(env.db, n) for n in ("Ann", "Bob", "Cat")]
    await env.db.executemany(
        "INSERT INTO meeting_participants (meeting_id, user_id, response) VALUES ($1, $2, $3)",
        [
            (soon, ann, "accepted"),
            (soon, bob, "declined"),
            (later, ann, "pending"),
            (tomorrow, cat, "pending"),
        ],
    )

    # When the hourly task runs for its slot, and runs again (catch-up or retry)
    first = await env.run(
        "send_due_meeting_reminders", {"scheduled_for": NOW.isoformat(), "now": NOW.isoformat()}
    )
    await env.run(
        "send_due_meeting_reminders",
        {"scheduled_for": NOW.isoformat(), "now": (NOW + timedelta(minutes=10)).isoformat()},
    )

    # Then Ann is reminded of the meeting in 30 minutes and Cat of tomorrow's, once each
    assert first["reminders_1h"] == 1 and first["reminders_24h"] == 1
    assert sorted(key for _, _, key in env.calls) == [
        f"meeting-reminder:1h:{soon}:{ann}",
        f"meeting-reminder:24h:{tomorrow}:{cat}",
    ]
    assert {"meeting_id": soon, "user_id": ann, "window": "1h"} in [p for _, p, _ in env.calls]
    stamped = await env.db.fetchval(
        "SELECT reminded_1h_at FROM meeting_participants WHERE meeting_id = $1 AND user_id = $2",
        soon,
        ann,
    )
    assert stamped == NOW


async def test_meeting_statuses_follow_the_clock(env: Env) -> None:
    running = await add_meeting(env.db, -timedelta(minutes=10), minutes=30)
    over = await add_meeting(env.db, -timedelta(hours=2), minutes=30)
    future = await add_meeting(env.db, timedelta(hours=1))
    cancelled = await add_meeting(env.db, -timedelta(minutes=5))
    await env.db.execute("UPDATE meetings SET status = 'cancelled' WHERE id = $1", cancelled)

    result = await env.run("update_meeting_statuses", {"now": NOW.isoformat()})

    assert result["activated"] == 1 and result["completed"] == 1
    rows = await env.db.fetch("SELECT id, status FROM meetings")
    assert {r["id"]: r["status"] for r in rows} == {
        running: "active",
        over: "completed",
        future: "scheduled",
        cancelled: "cancelled",
    }


async def test_cleanup_deletes_only_old_messages_in_batches(env: Env) -> None:
    await env.db.executemany(
        "INSERT INTO messages (body, created_at) VALUES ($1, $2)",
        [(f"old {i}", NOW - timedelta(days=91 + i)) for i in range(5)]
        + [(f"new {i}", NOW - timedelta(days=89)) for i in range(2)],
    )

    result = await env.run("cleanup_old_messages", {"now": NOW.isoformat(), "batch_size": 2})

    assert result["deleted"] == 5 and result["batches"] == 3
    left = await env.db.fetch("SELECT body FROM messages ORDER BY body")
    assert [r["body"] for r in left] == ["new 0", "new 1"]


async def test_monitors_report_health_depth_and_rates(env: Env) -> None:
    uid = await add_user(env.db, "Ann")
    await env.db.executemany(
        "INSERT INTO delivery_log (job_id, user_id, channel, template, recipient_masked, provider,"
        " status, created_at) VALUES ('j', $1, 'sms', 't', '+1***', 'twilio', $2, $3)",
        [
            (uid, "sent", NOW - timedelta(minutes=5)),
            (uid, "failed", NOW - timedelta(minutes=5)),
            (uid, "sent", NOW - timedelta(hours=2)),
        ],  # outside the 30-minute window
    )
    # A delayed job on a queue this test's worker does not serve, so burst mode still ends
    await env.client.enqueue(
        "send_sms", {"user_id": uid, "body": "queued"}, delay_s=3600, queue="sms_critical"
    )

    health = await env.run("health_check", {})
    depth = await env.run("monitor_queue_depth", {"thresholds": {"sms_critical": 0}})
    rates = await env.run("track_delivery_rates", {"now": NOW.isoformat()})

    assert health["ok"] and health["redis"]["ok"] and health["postgres"]["ok"]
    assert depth["queues"]["sms_critical"]["delayed"] == 1
    assert depth["alerts"] == ["queue sms_critical: 1 jobs waiting (threshold 0)"]
    assert rates["channels"]["sms"]["success_rate"] == 0.5


async def test_transient_failures_are_redriven_once_and_maybe_sent_never(env: Env) -> None:
    # Given three SMS jobs that the provider stand-in fails, so they are dead-lettered
    jobs = [
        await env.client.enqueue("send_sms", {"user_id": 1, "body": f"sms {i}"}) for i in range(3)
    ]
    env.fail_first.update(jobs)
    await env.drain()
    assert [(await env.client.status(j)).state for j in jobs] == ["dead"] * 3
    transient, ambiguous, refused = jobs
    # And a delivery log that says: a 503, a timeout later recorded maybe-sent, an invalid number
    uid = await add_user(env.db, "Ann")
    await env.db.executemany(
        "INSERT INTO delivery_log (job_id, user_id, channel, template, recipient_masked, provider,"
        " status, error, created_at) VALUES ($1, $2, 'sms', 't', '+1***', 'twilio', $3, $4, $5)",
        [
            (transient, uid, "failed", "TransientProviderError: 503", NOW - timedelta(hours=1)),
            (ambiguous, uid, "failed", "timeout", NOW - timedelta(hours=1)),
            (ambiguous, uid, "maybe_sent", "MaybeSent: read timeout", NOW - timedelta(minutes=50)),
            (
                refused,
                uid,
                "failed",
                "PermanentProviderError: 400 invalid number",
                NOW - timedelta(hours=1),
            ),
        ],
    )
    env.calls.clear()

    # When the failed-message task runs twice
    first = await env.run("process_failed_messages", {"now": NOW.isoformat()})
    second = await env.run("process_failed_messages", {"now": NOW.isoformat()})

    # Then only the transient failure was sent again, once, under its original job id
    assert first["replayed"] == [transient] and first["not_transient"] == 1
    assert [key for _, _, key in env.calls] == [transient]
    assert (await env.client.status(transient)).state == "succeeded"
    assert second["examined"] == 0 and second["replayed"] == []
    assert (await env.client.status(ambiguous)).state == "dead"
