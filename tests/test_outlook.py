"""Daily outlooks through a real worker, PostgreSQL and Redis.

Given seeded users in several zones, when the cron tasks run (with ``now`` injected in the
payload instead of waiting for mornings), then each active user gets exactly one outlook and
is notified only once their local morning has come.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from notifyhub.outlook import registry as outlook_registry
from notifyhub.outlook import tasks as outlook_tasks
from notifyhub.outlook.content import Bill, Goal, Spending, build_outlook
from notifyhub.outlook.timing import is_due, outlook_date_for, resolve_zone
from pydantic import BaseModel
from redis.asyncio import Redis

from qrunner import Context
from tests.handler_fixtures import HandlerEnv, PreferredIn, handler_stack, standin_registry

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2024, 3, 5, 5, 0, tzinfo=UTC)  # a Tuesday, 05:00 UTC: the generation slot


@dataclass
class Env(HandlerEnv):
    sent: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)


@pytest.fixture
async def env(database_url: str, redis: Redis, tmp_path: Path) -> AsyncIterator[Env]:
    e: Env

    async def record(name: str, ctx: Context[Any], payload: BaseModel) -> None:
        e.sent.append((name, payload.model_dump(), ctx.job.key))

    standins = standin_registry("email_education", {"send_preferred": PreferredIn}, record)
    async with handler_stack(database_url, redis, tmp_path, outlook_registry, standins) as stack:
        e = Env(*stack)
        yield e


async def add_user(
    db: asyncpg.Pool,
    name: str,
    zone: str,
    active_days_ago: float | None,
    *,
    phone: str | None = None,
    consents: tuple[str, ...] = ("email",),
) -> int:
    active = None if active_days_ago is None else NOW - timedelta(days=active_days_ago)
    uid: int = await db.fetchval(
        "INSERT INTO users (name, email, phone, time_zone, last_active_at)"
        " VALUES ($1, $2, $3, $4, $5) RETURNING id",
        name,
        f"{name.lower()}@example.com",
        phone,
        zone,
        active,
    )
    for channel in consents:
        await db.execute(
            "INSERT INTO consents (user_id, channel, opted_in_at, opt_in_source)"
            " VALUES ($1, $2, $3, 'signup')",
            uid,
            channel,
            NOW - timedelta(days=60),
        )
    return uid


# -- pure rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "ref", "expected"),
    [
        ("America/New_York", NOW, date(2024, 3, 5)),  # 00:00 local: morning still ahead
        ("Asia/Tokyo", NOW, date(2024, 3, 6)),  # 14:00 local: next morning is tomorrow's
        ("America/Los_Angeles", NOW, date(2024, 3, 5)),  # 21:00 on the 4th: next day's morning
        ("Mars/Olympus", NOW, date(2024, 3, 5)),  # unknown zone: read as UTC, 05:00
    ],
)
def test_outlook_date_is_the_users_next_local_morning(
    zone: str, ref: datetime, expected: date
) -> None:
    assert outlook_date_for(ref, resolve_zone(zone)) == expected


@pytest.mark.parametrize(
    ("utc", "weekday_at", "due"),
    [
        (datetime(2024, 3, 5, 11, 44, tzinfo=UTC), None, False),  # 06:44 in New York
        (datetime(2024, 3, 5, 11, 45, tzinfo=UTC), None, True),  # 06:45: the weekday default
        (datetime(2024, 3, 5, 10, 30, tzinfo=UTC), time(5, 30), True),  # own earlier time
        (datetime(2024, 3, 6, 12, 0, tzinfo=UTC), None, False),  # the day is over: stale
    ],
)
def test_due_once_local_delivery_time_has_passed(
    utc: datetime, weekday_at: time | None, due: bool
) -> None:
    zone = resolve_zone("America/New_York")
    assert is_due(utc, zone, date(2024, 3, 5), weekday_at) is due


@pytest.mark.parametrize(
    ("utc", "weekday_at", "best_hour", "due"),
    [
        (datetime(2024, 3, 5, 11, 45, tzinfo=UTC), None, 9, False),  # 06:45: not the hour yet
        (datetime(2024, 3, 5, 13, 59, tzinfo=UTC), None, 9, False),  # 08:59
        (datetime(2024, 3, 5, 14, 0, tzinfo=UTC), None, 9, True),  # 09:00: the learned hour
        (datetime(2024, 3, 5, 10, 30, tzinfo=UTC), time(5, 30), 9, True),  # saved time wins
    ],
)
def test_due_at_the_learned_hour_without_a_saved_time(
    utc: datetime, weekday_at: time | None, best_hour: int, due: bool
) -> None:
    zone = resolve_zone("America/New_York")
    assert is_due(utc, zone, date(2024, 3, 5), weekday_at, best_hour=best_hour) is due


def test_outlook_date_follows_the_learned_hour() -> None:
    # 14:00 in Tokyo: the 06:45 default has passed, but a learned 20:00 is still ahead today
    zone = resolve_zone("Asia/Tokyo")
    assert outlook_date_for(NOW, zone) == date(2024, 3, 6)
    assert outlook_date_for(NOW, zone, best_hour=20) == date(2024, 3, 5)


def test_urgent_bill_leads_the_outlook() -> None:
    content = build_outlook(
        "Ava Johnson",
        date(2024, 3, 5),
        [Bill("Rent", __import__("decimal").Decimal("1200.00"), "USD", date(2024, 3, 6))],
        [],
        [],
    )
    assert content["type"] == "bills"
    assert content["greeting"] == "Good morning, Ava"
    assert "Rent (1200.00 USD) is due Mar 06" in content["headline"]


# -- through the worker ------------------------------------------------------------------------


async def test_fan_out_creates_one_outlook_per_active_user_and_a_rerun_creates_none(
    env: Env,
) -> None:
    # Given three active users (one in an unknown zone), one lapsed and one never active
    ny = await add_user(env.db, "Ava", "America/New_York", 1)
    tokyo = await add_user(env.db, "Haruto", "Asia/Tokyo", 3)
    odd = await add_user(env.db, "Zed", "Mars/Olympus", 10)
    await add_user(env.db, "Lapsed", "UTC", 40)
    await add_user(env.db, "Never", "UTC", None)
    await env.db.execute(
        "INSERT INTO bills (user_id, payee, amount, currency, due_date)"
        " VALUES ($1, 'Rent', 1200, 'USD', '2024-03-07')",
        ny,
    )
    await env.db.execute(
        "INSERT INTO goals (user_id, title, target_amount, current_amount, currency)"
        " VALUES ($1, 'Holiday', 1000, 250, 'JPY')",
        tokyo,
    )

    # When the 05:00 UTC slot fires
    first = await env.run("generate_daily_outlooks", {"scheduled_for": NOW.isoformat()})

    # Then each active user has one outlook, dated by their own next local morning
    rows = await env.db.fetch(
        "SELECT user_id, outlook_date, content FROM daily_outlooks ORDER BY user_id"
    )
    assert [(r["user_id"], r["outlook_date"]) for r in rows] == [
        (ny, date(2024, 3, 5)),
        (tokyo, date(2024, 3, 6)),
        (odd, date(2024, 3, 5)),
    ]
    assert first == {
        "reference": NOW.isoformat(),
        "total_users": 3,
        "enqueued": 3,
        "batches": 1,
        "skipped_existing": 0,
    }
    types = {r["user_id"]: r["content"]["type"] for r in rows}
    assert types == {ny: "bills", tokyo: "goals", odd: "encouragement"}

    # When it runs again (a catch-up or a manual re-run)
    again = await env.run("generate_daily_outlooks", {"now": NOW.isoformat()})

    # Then nothing new is enqueued or stored
    assert again["enqueued"] == 0 and again["skipped_existing"] == 3
    assert await env.db.fetchval("SELECT count(*) FROM daily_outlooks") == 3


async def test_delivery_waits_for_each_users_local_morning(env: Env) -> None:
    # Given today's outlooks for users in four zones, one reachable by SMS only
    london = await add_user(env.db, "Oliver", "Europe/London", 1)
    tokyo = await add_user(
        env.db, "Haruto", "Asia/Tokyo", 1, phone="+15555550103", consents=("sms",)
    )
    ny = await add_user(env.db, "Ava", "America/New_York", 1)
    odd = await add_user(env.db, "Zed", "Nowhere/Land", 1)
    for uid in (london, tokyo, ny, odd):
        content = build_outlook("Someone", date(2024, 3, 5), [], [], [])
        await env.db.execute(
            "INSERT INTO daily_outlooks (user_id, outlook_date, content) VALUES ($1, $2, $3)",
            uid,
            date(2024, 3, 5),
            content,
        )

    # When the delivery task runs at 11:20 UTC (06:20 in New York, before its lookahead)
    at_1120 = datetime(2024, 3, 5, 11, 20, tzinfo=UTC)
    result = await env.run("deliver_due_outlooks", {"now": at_1120.isoformat()})

    # Then London, Tokyo and the unknown zone (read as UTC) are notified; New York is not
    assert result == {
        "now": at_1120.isoformat(),
        "due": 3,
        "sent": 3,
        "no_channel": 0,
        "scheduled": 0,
    }
    by_user = {p["user_id"]: (task, key) for task, p, key in env.sent}
    assert by_user == {
        # One preferred-channel job each: push, else email, else SMS, judged when it runs
        london: ("send_preferred", f"outlook-notify:{await _outlook_id(env, london)}"),
        tokyo: ("send_preferred", f"outlook-notify:{await _outlook_id(env, tokyo)}"),
        odd: ("send_preferred", f"outlook-notify:{await _outlook_id(env, odd)}"),
    }
    first = next(p for _, p, _ in env.sent)
    assert first["template"] == "daily_outlook" and first["quiet_hours_exempt"] is True
    undelivered = await env.db.fetch(
        "SELECT user_id FROM daily_outlooks WHERE delivered_at IS NULL"
    )
    assert [r["user_id"] for r in undelivered] == [ny]

    # When it runs again five minutes later, and again once New York's 06:45 has passed
    await env.run("deliver_due_outlooks", {"now": (at_1120 + timedelta(minutes=5)).isoformat()})
    assert len(env.sent) == 3
    await env.run("deliver_due_outlooks", {"now": "2024-03-05T11:46:00+00:00"})

    # Then only New York's outlook goes out, once
    assert len(env.sent) == 4 and env.sent[-1][1]["user_id"] == ny


async def _outlook_id(env: Env, user_id: int) -> int:
    oid: int = await env.db.fetchval("SELECT id FROM daily_outlooks WHERE user_id = $1", user_id)
    return oid


async def test_content_stats_flag_low_view_rates(env: Env) -> None:
    # Given a week of delivered outlooks: bills are viewed and rated, goals mostly ignored
    uids = [await add_user(env.db, f"User{i}", "UTC", 1) for i in range(4)]
    day = date(2024, 3, 1)
    for i, uid in enumerate(uids):
        for d in range(3):
            kind = "bills" if i < 2 else "goals"
            viewed = kind == "bills" or (i == 2 and d == 0)
            await env.db.execute(
                "INSERT INTO daily_outlooks (user_id, outlook_date, content, delivered_at,"
                " viewed_at, rating) VALUES ($1, $2, $3, now(), $4, $5)",
                uid,
                day + timedelta(days=d),
                {"type": kind},
                NOW if viewed else None,
                5 if viewed else None,
            )

    # When the weekly analysis runs with a small sample threshold
    result = await env.run("optimize_outlook_content", {"now": NOW.isoformat(), "min_sample": 3})

    # Then goals (1 of 6 viewed) are flagged and the numbers are stored per content type
    assert result["low_performing"] == ["goals"]
    stats = await env.db.fetch(
        "SELECT content_type, delivered, viewed, view_rate FROM outlook_content_stats"
        " ORDER BY content_type"
    )
    assert [(r["content_type"], r["delivered"], r["viewed"]) for r in stats] == [
        ("bills", 6, 6),
        ("goals", 6, 1),
    ]


async def test_content_ab_test_assigns_each_user_a_stable_variant(env: Env) -> None:
    # Given the content experiment running and users with bills and goals
    from notifyhub.experiments import assign, create_experiment
    from notifyhub.outlook.content import CONTENT_EXPERIMENT, CONTENT_VARIANTS

    async with env.db.acquire() as conn:
        await create_experiment(conn, CONTENT_EXPERIMENT, CONTENT_VARIANTS, min_sample=10)
    users = [await add_user(env.db, f"U{n}", "UTC", 1) for n in range(12)]
    # When each user's outlook is generated (twice: a rerun must not reassign)
    for _ in range(2):
        for uid in users:
            await env.run(
                "generate_user_outlook",
                {"user_id": uid, "outlook_date": "2024-03-05", "force": True},
            )
    # Then each outlook carries the user's deterministic variant, and "focus" is shorter
    rows = await env.db.fetch("SELECT user_id, content FROM daily_outlooks ORDER BY user_id")
    seen = set()
    for r in rows:
        content = r["content"]
        expected = assign(CONTENT_EXPERIMENT, r["user_id"], CONTENT_VARIANTS)
        assert content["variant"] == expected
        seen.add(expected)
        if expected == "focus":
            assert len(content["sections"]) <= 1
    assert seen == set(CONTENT_VARIANTS)  # 12 users: both arms have members
    assigned = await env.db.fetchval(
        "SELECT count(*) FROM experiment_assignments WHERE experiment = $1", CONTENT_EXPERIMENT
    )
    assert assigned == len(users)


# -- batches -----------------------------------------------------------------------------------

BATCH_DAY = date(2024, 3, 5)


async def _user_with_data(env: Env, name: str, zone: str) -> int:
    """A user with two bills due this week (and one paid, one next month), a goal and orders on
    either side of the start of their local day."""
    uid = await add_user(env.db, name, zone, 1)
    await env.db.execute(
        "INSERT INTO bills (user_id, payee, amount, currency, due_date, status) VALUES"
        " ($1, 'Rent', 1200, 'USD', '2024-03-07', 'due'),"
        " ($1, 'Phone', 30, 'USD', '2024-03-06', 'due'),"
        " ($1, 'Gym', 40, 'USD', '2024-03-06', 'paid'),"
        " ($1, 'Car', 300, 'USD', '2024-04-01', 'due')",
        uid,
    )
    await env.db.execute(
        "INSERT INTO goals (user_id, title, target_amount, current_amount, currency)"
        " VALUES ($1, 'Holiday', 1000, 250, 'USD')",
        uid,
    )
    shop = await env.db.fetchval(
        "INSERT INTO businesses (slug, name, currency) VALUES ($1, 'Shop', 'USD') RETURNING id",
        f"shop-{uid}",
    )
    start = datetime.combine(BATCH_DAY, time(0), resolve_zone(zone))
    for n, placed in enumerate([start - timedelta(minutes=30), start + timedelta(minutes=30)]):
        await env.db.execute(
            "INSERT INTO orders (business_id, number, user_id, customer_email, status, total,"
            " currency, placed_at) VALUES ($1, $2, $3, 'a@example.com', 'paid', $4, 'USD', $5)",
            shop,
            f"N{n}",
            uid,
            Decimal("10.50") * (n + 1),
            placed,
        )
    return uid


async def test_one_batch_job_stores_each_outlook_once_even_when_run_again(env: Env) -> None:
    # Given users in three zones with bills, goals and orders, plain users, and an id that is
    # no user's (deleted since the fan-out), one of them listed twice
    rich = [await _user_with_data(env, f"Rich{n}", z) for n, z in enumerate(["Asia/Tokyo", "UTC"])]
    plain = [await add_user(env.db, f"Plain{n}", "America/New_York", 1) for n in range(4)]
    users = [*rich, *plain, plain[0], 999_999]
    payload = {"user_ids": users, "outlook_dates": [BATCH_DAY.isoformat()] * len(users)}

    # When one batch job generates them all
    first = await env.run("generate_outlook_batch", payload)

    # Then each real user has exactly one outlook and the missing one is reported
    assert first == {
        "outlooks": 7,
        "created": 6,
        "exists": 0,
        "regenerated": 0,
        "kept_delivered": 0,
        "user_gone": 1,
    }
    rows = await env.db.fetch(
        "SELECT user_id, outlook_date, content, generated_at FROM daily_outlooks ORDER BY user_id"
    )
    assert [(r["user_id"], r["outlook_date"]) for r in rows] == [
        (u, BATCH_DAY) for u in sorted({*rich, *plain})
    ]
    # And the content is what the rules build from each user's own rows: the two due bills in
    # date order, the goal, and only the order placed before the start of their local day
    for uid in rich:
        content = next(r["content"] for r in rows if r["user_id"] == uid)
        name = await env.db.fetchval("SELECT name FROM users WHERE id = $1", uid)
        assert content == build_outlook(
            name,
            BATCH_DAY,
            [
                Bill("Phone", Decimal("30.00"), "USD", date(2024, 3, 6)),
                Bill("Rent", Decimal("1200.00"), "USD", date(2024, 3, 7)),
            ],
            [Goal("Holiday", Decimal("1000.00"), Decimal("250.00"), "USD", None)],
            [Spending("USD", Decimal("10.50"), 1)],
        )
    assert all(r["content"]["type"] == "encouragement" for r in rows if r["user_id"] in plain)

    # When the same batch runs again (a retry, a second fan-out)
    again = await env.run("generate_outlook_batch", payload)

    # Then nothing is stored again and nothing changes
    assert again["exists"] == 6 and again["created"] == 0 and again["user_gone"] == 1
    after = await env.db.fetch(
        "SELECT user_id, content, generated_at FROM daily_outlooks ORDER BY user_id"
    )
    assert [(r["user_id"], r["content"], r["generated_at"]) for r in after] == [
        (r["user_id"], r["content"], r["generated_at"]) for r in rows
    ]


async def test_a_forced_batch_regenerates_only_undelivered_outlooks(env: Env) -> None:
    # Given two stored outlooks, one of them already delivered
    sent, waiting = [await add_user(env.db, f"U{n}", "UTC", 1) for n in range(2)]
    payload = {"user_ids": [sent, waiting], "outlook_dates": [BATCH_DAY.isoformat()] * 2}
    await env.run("generate_outlook_batch", payload)
    await env.db.execute("UPDATE daily_outlooks SET delivered_at = now() WHERE user_id = $1", sent)
    await env.db.execute(
        "INSERT INTO goals (user_id, title, target_amount, current_amount, currency) VALUES"
        " ($1, 'Bike', 500, 100, 'USD'), ($2, 'Bike', 500, 100, 'USD')",
        sent,
        waiting,
    )
    # When a forced batch runs over both
    result = await env.run("generate_outlook_batch", {**payload, "force": True})
    # Then only the undelivered one shows the new goal
    assert result["regenerated"] == 1 and result["kept_delivered"] == 1
    types = dict(await env.db.fetch("SELECT user_id, content->>'type' FROM daily_outlooks"))
    assert types == {sent: "encouragement", waiting: "goals"}


async def test_fan_out_shares_users_into_batches_and_never_stores_twice(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given five active users and batches of two
    monkeypatch.setattr(outlook_tasks, "GENERATION_BATCH", 2)
    users = [await add_user(env.db, f"U{n}", "Europe/London", 1) for n in range(5)]
    # When the slot's fan-out is enqueued twice before any batch has run (a catch-up racing
    # the scheduled run), then everything is drained
    for _ in range(2):
        await env.client.enqueue("generate_daily_outlooks", {"scheduled_for": NOW.isoformat()})
    await env.drain()
    # Then every user has one outlook for their next local morning
    rows = await env.db.fetch("SELECT user_id, outlook_date FROM daily_outlooks ORDER BY user_id")
    assert [(r["user_id"], r["outlook_date"]) for r in rows] == [
        (u, date(2024, 3, 5)) for u in users
    ]
    # And a later run finds them all generated
    again = await env.run("generate_daily_outlooks", {"scheduled_for": NOW.isoformat()})
    assert again["enqueued"] == 0 and again["batches"] == 0 and again["skipped_existing"] == 5


async def test_fan_out_batches_hold_at_most_the_batch_size(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outlook_tasks, "GENERATION_BATCH", 2)
    users = [await add_user(env.db, f"U{n}", "Asia/Tokyo", 1) for n in range(5)]
    result = await env.run("generate_daily_outlooks", {"scheduled_for": NOW.isoformat()})
    assert (result["enqueued"], result["batches"]) == (5, 3)
    stored = await env.db.fetchval(
        "SELECT count(*) FROM daily_outlooks WHERE user_id = ANY($1::bigint[])", users
    )
    assert stored == 5


async def test_a_batch_gives_each_user_their_ab_variant(env: Env) -> None:
    from notifyhub.experiments import assign, create_experiment
    from notifyhub.outlook.content import CONTENT_EXPERIMENT, CONTENT_VARIANTS

    async with env.db.acquire() as conn:
        await create_experiment(conn, CONTENT_EXPERIMENT, CONTENT_VARIANTS, min_sample=10)
    users = [await _user_with_data(env, f"V{n}", "UTC") for n in range(8)]
    payload = {"user_ids": users, "outlook_dates": [BATCH_DAY.isoformat()] * len(users)}
    for force in (False, True):  # a forced rerun must not reassign
        await env.run("generate_outlook_batch", {**payload, "force": force})
    rows = await env.db.fetch("SELECT user_id, content FROM daily_outlooks")
    variants = {r["user_id"]: r["content"]["variant"] for r in rows}
    assert variants == {u: assign(CONTENT_EXPERIMENT, u, CONTENT_VARIANTS) for u in users}
    assert set(variants.values()) == set(CONTENT_VARIANTS)
    for r in rows:
        sections = len(r["content"]["sections"])
        assert sections == (1 if variants[r["user_id"]] == "focus" else 3)
    recorded = await env.db.fetch(
        "SELECT user_id, variant FROM experiment_assignments WHERE experiment = $1",
        CONTENT_EXPERIMENT,
    )
    assert dict((r["user_id"], r["variant"]) for r in recorded) == variants
