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
from zoneinfo import ZoneInfo

import asyncpg  # type: ignore[import-untyped]
import pytest
from notifyhub.upkeep import registry as upkeep_registry
from notifyhub.upkeep.meetings import (
    KINDS,
    RUN_PERIOD,
    ReminderKind,
    next_meeting_start,
    reminder_delay,
)
from notifyhub.upkeep.monitoring import delivery_rates, depth_alerts
from notifyhub.upkeep.redrive import is_transient, verdict
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
    #: Job ids whose stand-in send fails on every run.
    fail_always: set[str] = field(default_factory=set)


class InvitationIn(BaseModel):
    """The agreed payload of messaging's ``send_meeting_invitation``."""

    model_config = ConfigDict(extra="forbid")
    user_id: int
    meeting_id: int


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
        if ctx.job_id in e.fail_first or ctx.job_id in e.fail_always:
            e.fail_first.discard(ctx.job_id)
            raise Permanent("stand-in provider failure")

    standins = standin_registry(
        "sms_daily",
        {
            "send_meeting_reminder": ReminderIn,
            "send_meeting_invitation": InvitationIn,
            "send_sms": SmsIn,
        },
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


@pytest.mark.parametrize(
    ("error", "maybe_sent", "replays", "expected"),
    [
        ("HTTP 503 from resend", False, 0, None),
        ("HTTP 503 from resend", True, 0, "maybe_sent"),  # never re-send a maybe-sent SMS
        ("twilio refused the message (21211)", True, 0, "maybe_sent"),
        ("twilio refused the message (21211)", False, 0, "not_transient"),
        ("HTTP 503 from resend", False, 1, "exhausted"),  # bounded: one replay by default
    ],
)
def test_redrive_rules_in_order(
    error: str, maybe_sent: bool, replays: int, expected: str | None
) -> None:
    assert verdict(error, maybe_sent, replays, max_redrives=1) == expected


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


H1, H24 = KINDS
M = timedelta(minutes=1)
S = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("kind", "starts_in", "delay"),
    [
        (H1, 50 * M - S, None),  # under 50 minutes: outside the window, never sent
        (H1, 50 * M, timedelta(0)),  # the window's near edge: sent at once
        (H1, 60 * M, timedelta(0)),
        (H1, 60 * M + S, S),  # held until exactly 60 minutes before
        (H1, 65 * M - S, 5 * M - S),
        (H1, 65 * M, None),  # its moment is the next run's (runs are 5 minutes apart)
        (H24, 23 * 60 * M - S, None),
        (H24, 23 * 60 * M, timedelta(0)),
        (H24, 24 * 60 * M, timedelta(0)),
        (H24, 24 * 60 * M + 5 * M - S, 5 * M - S),
        (H24, 24 * 60 * M + 5 * M, None),
    ],
)
def test_reminder_windows_at_their_edges(
    kind: ReminderKind, starts_in: timedelta, delay: timedelta | None
) -> None:
    assert reminder_delay(kind, NOW + starts_in, NOW, NOW) == delay


@pytest.mark.parametrize("k", KINDS, ids=lambda k: k.name)
def test_runs_remind_every_meeting_once_inside_its_window(k: ReminderKind) -> None:
    # Given meetings starting at every minute of three days, known since before the first run
    for minute in range(0, 3 * 24 * 60, 7):
        starts = NOW + k.target + timedelta(minutes=minute)
        # When the runs go by every RUN_PERIOD (each also a little late)
        sends = []
        for run in range(0, 4 * 24 * 12):
            slot = NOW + run * RUN_PERIOD
            run_at = slot + timedelta(seconds=20)
            delay = reminder_delay(k, starts, run_at, slot)
            if delay is not None:
                sends.append(run_at + delay)
                break  # the participant is stamped: later runs do not see it
        # Then it is reminded once, at the target lead, and always inside the window
        (sent,) = sends
        assert k.earliest <= starts - sent <= k.latest
        assert starts - sent == k.target or minute < 1


# -- through the worker ------------------------------------------------------------------------


async def test_meeting_reminders_go_once_per_participant(env: Env) -> None:
    # Given a meeting in 1 hour (one attendee declined), one in 3 hours, one in 24 hours, and
    # one in 30 minutes: too close for the 50-70 minute window of the 1 hour reminder
    soon = await add_meeting(env.db, timedelta(hours=1))
    too_soon = await add_meeting(env.db, timedelta(minutes=30))
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
            (too_soon, cat, "accepted"),
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

    # Then Ann is reminded of the meeting in 1 hour and Cat of tomorrow's, once each
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


BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("prev_local", "every_days", "now_local", "expected_local"),
    [
        # The next interval, same wall time
        (datetime(2025, 1, 7, 18, 0), 7, datetime(2025, 1, 7, 19, 0), datetime(2025, 1, 14, 18, 0)),
        # Across the spring-forward: still 18:00 local, so 6 days 23 hours later
        (datetime(2025, 3, 27, 18, 0), 7, datetime(2025, 3, 27, 19), datetime(2025, 4, 3, 18, 0)),
        # Across the fall-back
        (datetime(2025, 10, 23, 9, 0), 7, datetime(2025, 10, 23, 10), datetime(2025, 10, 30, 9)),
        # A missed stretch is skipped: the first slot after now, never one in the past
        (datetime(2025, 1, 7, 18, 0), 7, datetime(2025, 2, 1, 12, 0), datetime(2025, 2, 4, 18, 0)),
        (datetime(2025, 1, 7, 18, 0), 7, datetime(2025, 1, 14, 18, 0), datetime(2025, 1, 21, 18)),
        (datetime(2025, 1, 7, 18, 0), 14, datetime(2025, 1, 7, 19, 0), datetime(2025, 1, 21, 18)),
    ],
)
def test_next_meeting_keeps_its_local_time_and_lies_ahead(
    prev_local: datetime, every_days: int, now_local: datetime, expected_local: datetime
) -> None:
    prev = prev_local.replace(tzinfo=BERLIN).astimezone(UTC)
    now = now_local.replace(tzinfo=BERLIN).astimezone(UTC)
    start = next_meeting_start(prev, every_days, BERLIN, now)
    assert start == expected_local.replace(tzinfo=BERLIN).astimezone(UTC)
    assert start.tzinfo is not None and start > now


async def add_tracking_user(db: asyncpg.Pool, name: str, phase: str = "tracking") -> int:
    uid: int = await db.fetchval(
        "INSERT INTO users (name, coaching_phase, time_zone) VALUES ($1, $2, 'Europe/Berlin')"
        " RETURNING id",
        name,
        phase,
    )
    return uid


async def add_coaching(db: asyncpg.Pool, coach: int, user: int, starts_in: timedelta) -> int:
    mid = await add_meeting(db, starts_in, minutes=45)
    await db.execute("UPDATE meetings SET organiser_user_id = $2 WHERE id = $1", mid, coach)
    await db.executemany(
        "INSERT INTO meeting_participants (meeting_id, user_id, role, response)"
        " VALUES ($1, $2, $3, 'accepted')",
        [(mid, coach, "organiser"), (mid, user, "attendee")],
    )
    return mid


async def test_tracking_users_get_their_next_meeting_and_one_invitation(env: Env) -> None:
    # Given a coach; Ann in the tracking phase whose weekly meeting ended an hour ago; Bob in
    # the setup phase whose meeting also ended; Dee tracking with her next meeting booked
    coach = await add_user(env.db, "Coach")
    ann = await add_tracking_user(env.db, "Ann")
    bob = await add_tracking_user(env.db, "Bob", phase="setup")
    dee = await add_tracking_user(env.db, "Dee")
    anns = await add_coaching(env.db, coach, ann, -timedelta(hours=2))
    await add_coaching(env.db, coach, bob, -timedelta(hours=2))
    await add_coaching(env.db, coach, dee, -timedelta(days=7))
    await add_coaching(env.db, coach, dee, timedelta(hours=5))

    # When the status task runs twice at once, then again (cron catch-up, a retry)
    jobs = [
        await env.client.enqueue("update_meeting_statuses", {"now": NOW.isoformat()})
        for _ in range(2)
    ]
    await env.drain()
    again = await env.run("update_meeting_statuses", {"now": NOW.isoformat()})

    # Then Ann's meeting is followed by exactly one booking, a week on, with the same people
    results = [(await env.client.status(j)).result for j in jobs]
    assert sum(r["booked"] for r in results) == 1 and again["booked"] == 0
    (booked,) = await env.db.fetch(
        "SELECT id, title, organiser_user_id, starts_at, ends_at, status FROM meetings"
        " WHERE follows_meeting_id IS NOT NULL"
    )
    follows = await env.db.fetchval(
        "SELECT follows_meeting_id FROM meetings WHERE id = $1", booked["id"]
    )
    assert follows == anns and booked["status"] == "scheduled"
    assert booked["starts_at"] == NOW - timedelta(hours=2) + timedelta(days=7)
    assert booked["ends_at"] - booked["starts_at"] == timedelta(minutes=45)
    assert booked["organiser_user_id"] == coach and booked["title"] == "Check-in"
    people = await env.db.fetch(
        "SELECT user_id, role, response, invited_at FROM meeting_participants"
        " WHERE meeting_id = $1 ORDER BY user_id",
        booked["id"],
    )
    assert [(p["user_id"], p["role"], p["response"]) for p in people] == [
        (coach, "organiser", "pending"),
        (ann, "attendee", "pending"),
    ]
    assert all(p["invited_at"] == NOW for p in people)
    # And Ann, not the organising coach, is invited once, whatever ran twice
    invitations = [(p, key) for name, p, key in env.calls if name == "send_meeting_invitation"]
    assert invitations == [
        (
            {"user_id": ann, "meeting_id": booked["id"]},
            f"meeting-invitation:{booked['id']}:{ann}",
        )
    ]
    assert sum(r["invited"] for r in results) == 1 and again["invited"] == 0
    # And neither Bob (not tracking) nor Dee (already booked) gets a meeting
    assert await env.db.fetchval("SELECT count(*) FROM meetings") == 5


async def test_a_cancelled_follow_up_is_not_booked_again(env: Env) -> None:
    # Given Ann, tracking, whose meeting ended and whose booked follow-up the coach cancelled
    coach = await add_user(env.db, "Coach")
    ann = await add_tracking_user(env.db, "Ann")
    await add_coaching(env.db, coach, ann, -timedelta(hours=2))
    first = await env.run("update_meeting_statuses", {"now": NOW.isoformat()})
    assert first["booked"] == 1
    await env.db.execute(
        "UPDATE meetings SET status = 'cancelled' WHERE follows_meeting_id IS NOT NULL"
    )

    # When the status task runs again
    again = await env.run("update_meeting_statuses", {"now": NOW.isoformat()})

    # Then nothing is booked in its place
    assert again["booked"] == 0 and again["invited"] == 0
    assert await env.db.fetchval("SELECT count(*) FROM meetings") == 2


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
            (uid, "sent", NOW - timedelta(hours=23)),
            (uid, "failed", NOW - timedelta(hours=25)),
        ],  # the last is outside the trailing 24 hours
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
    assert rates["window_minutes"] == 24 * 60
    assert rates["channels"]["sms"]["counts"] == {"sent": 2, "failed": 1}
    assert rates["channels"]["sms"]["success_rate"] == 0.6667


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


async def dead_sms(env: Env, n: int, *, always: bool = False) -> list[str]:
    jobs = [
        await env.client.enqueue("send_sms", {"user_id": 1, "body": f"sms {i}"}) for i in range(n)
    ]
    (env.fail_always if always else env.fail_first).update(jobs)
    await env.drain()
    assert [(await env.client.status(j)).state for j in jobs] == ["dead"] * n
    return jobs


async def log_failure(env: Env, job: str, error: str, **extra: Any) -> None:
    uid = await add_user(env.db, f"user of {job}")
    await env.db.execute(
        "INSERT INTO delivery_log (job_id, user_id, channel, template, recipient_masked, provider,"
        " status, error, created_at, resolved_from, idempotency_key)"
        " VALUES ($1, $2, 'sms', 't', '+1***', 'twilio', 'failed', $3, $4, $5, $6)",
        job,
        uid,
        error,
        extra.get("at", NOW - timedelta(hours=1)),
        extra.get("resolved_from"),
        extra.get("key"),
    )


async def test_maybe_sent_sms_are_never_redriven_whatever_resolved_them(env: Env) -> None:
    # Given two dead-lettered SMS jobs with transient errors: one whose maybe-sent outcome a
    # status callback later resolved as failed, one whose ledger entry is still maybe-sent
    resolved, ledgered = await dead_sms(env, 2)
    await log_failure(env, resolved, "MaybeSent: HTTP 500 from Twilio", resolved_from="maybe_sent")
    await log_failure(env, ledgered, "HTTP 503 from Twilio", key="k-ledgered")
    await env.db.execute(
        "INSERT INTO effect_ledger (idempotency_key, job_id, channel, recipient_hash, template,"
        " state) VALUES ('k-ledgered', $1, 'sms', 'h', 't', 'maybe_sent')",
        ledgered,
    )
    env.calls.clear()
    # When the failed-message task runs
    result = await env.run("process_failed_messages", {"now": NOW.isoformat()})
    # Then neither is sent again, and both are settled for good
    assert result["replayed"] == [] and result["maybe_sent"] == 2 and env.calls == []
    assert [(await env.client.status(j)).state for j in (resolved, ledgered)] == ["dead"] * 2
    outcomes = await env.db.fetch("SELECT outcome FROM delivery_redrives")
    assert [r["outcome"] for r in outcomes] == ["maybe_sent", "maybe_sent"]


async def test_a_job_is_replayed_at_most_max_redrives_times(env: Env) -> None:
    # Given an SMS job that fails every time, dead-lettered after a transient error
    (job,) = await dead_sms(env, 1, always=True)
    await log_failure(env, job, "HTTP 503 from Twilio")
    env.calls.clear()
    # When the task re-drives it and the replay fails again (logged as the sender would)
    first = await env.run("process_failed_messages", {"now": NOW.isoformat()})
    assert first["replayed"] == [job] and (await env.client.status(job)).state == "dead"
    await log_failure(env, job, "HTTP 503 from Twilio", at=NOW - timedelta(minutes=10))
    second = await env.run("process_failed_messages", {"now": NOW.isoformat()})
    # Then the second failure is left dead: one replay was its bound
    assert second["replayed"] == [] and second["exhausted"] == 1
    assert len(env.calls) == 1 and (await env.client.status(job)).state == "dead"
