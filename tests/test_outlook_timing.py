"""Outlooks arrive at 06:45 local on weekdays and 08:30 at weekends, once per local day; at
the user's saved time, or else at the top of their learned best hour, when they have one.

Given users in New York, Tokyo and Berlin without saved preferences, when the delivery sweep
runs shortly before their local delivery time (its clock injected through the payload's
``now``), then the outlook is delivered within a minute after that time, by push to a user
with a device and by email to one without (through the real messaging tasks, into the
sandbox outbox: no provider credentials here); and across the US and EU DST transitions every
local day gets exactly one outlook.

The delayed delivery waits in real time: each sweep runs :data:`LEAD` before the target, so the
wait is that long. The arrival is read on the injected clock: the sweep's ``now`` plus the real
time elapsed since the sweep was enqueued.
"""

from __future__ import annotations

import time as wall
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg  # type: ignore[import-untyped]
import pytest
from notifyhub.messaging import registry as messaging_registry
from notifyhub.messaging.push_devices import register_device
from notifyhub.outlook import registry as outlook_registry
from notifyhub.outlook.tasks import GENERATION_WINDOW
from notifyhub.outlook.timing import outlook_dates_between, target_instant
from pydantic import BaseModel
from redis.asyncio import Redis

from qrunner import Context, Registry
from tests.handler_fixtures import HandlerEnv, PreferredIn, handler_stack, standin_registry

pytestmark = pytest.mark.timeout(120)

LEAD = timedelta(seconds=2)
ZONES = ("America/New_York", "Asia/Tokyo", "Europe/Berlin")
#: (zone, local date, expected local time); weekdays, weekends and two DST Sundays.
ARRIVALS = [
    ("Asia/Tokyo", date(2025, 1, 15), time(6, 45)),  # Wednesday
    ("Europe/Berlin", date(2025, 1, 15), time(6, 45)),
    ("America/New_York", date(2025, 1, 15), time(6, 45)),
    ("Asia/Tokyo", date(2025, 1, 18), time(8, 30)),  # Saturday
    ("Europe/Berlin", date(2025, 1, 18), time(8, 30)),
    ("America/New_York", date(2025, 1, 18), time(8, 30)),
    ("America/New_York", date(2025, 3, 9), time(8, 30)),  # US spring-forward Sunday
    ("Europe/Berlin", date(2025, 10, 26), time(8, 30)),  # EU fall-back Sunday
]
#: Transition Sundays: US spring-forward and fall-back, EU spring-forward and fall-back.
TRANSITIONS = [date(2025, 3, 9), date(2025, 11, 2), date(2025, 3, 30), date(2025, 10, 26)]


@dataclass
class Env(HandlerEnv):
    #: (task, payload, real epoch seconds when the send task ran)
    sent: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)


@pytest.fixture
async def env(database_url: str, redis: Redis, tmp_path: Path) -> AsyncIterator[Env]:
    e: Env

    async def record(name: str, ctx: Context[Any], payload: BaseModel) -> None:
        e.sent.append((name, payload.model_dump(), wall.time()))

    standins = standin_registry("email_education", {"send_preferred": PreferredIn}, record)
    async with handler_stack(database_url, redis, tmp_path, outlook_registry, standins) as stack:
        e = Env(*stack)
        yield e


@pytest.fixture
async def live(database_url: str, redis: Redis, tmp_path: Path) -> AsyncIterator[Env]:
    """The outlook tasks with the real messaging tasks behind them."""
    registry = outlook_registry.merge(messaging_registry)
    async with handler_stack(database_url, redis, tmp_path, registry, Registry()) as stack:
        yield Env(*stack)


async def add_user(db: asyncpg.Pool, name: str, zone: str, active_at: datetime) -> int:
    uid: int = await db.fetchval(
        "INSERT INTO users (name, email, time_zone, last_active_at)"
        " VALUES ($1, $2, $3, $4) RETURNING id",
        name,
        f"{name.lower()}@example.com",
        zone,
        active_at,
    )
    await db.execute(
        "INSERT INTO consents (user_id, channel, opted_in_at, opt_in_source)"
        " VALUES ($1, 'email', $2, 'signup')",
        uid,
        active_at - timedelta(days=60),
    )
    return uid


# -- pure rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("zone_name", [*ZONES, "Australia/Sydney", "America/Sao_Paulo"])
@pytest.mark.parametrize("sunday", TRANSITIONS)
def test_each_local_day_has_one_target_at_its_local_time(zone_name: str, sunday: date) -> None:
    # Given the days around a DST transition
    zone = ZoneInfo(zone_name)
    days = [sunday + timedelta(days=n) for n in range(-3, 4)]
    targets = [target_instant(d, zone) for d in days]

    # Then each day's target is on that local day at 06:45 (weekday) or 08:30 (weekend)
    for day, target in zip(days, targets, strict=True):
        local = target.astimezone(zone)
        expected = time(8, 30) if day.weekday() >= 5 else time(6, 45)
        assert (local.date(), local.time()) == (day, expected)
    # And targets strictly increase, so no two days share one
    assert targets == sorted(set(targets))


@pytest.mark.parametrize("zone_name", [*ZONES, "Pacific/Kiritimati", "Pacific/Pago_Pago"])
@pytest.mark.parametrize("sunday", TRANSITIONS)
def test_daily_generation_windows_name_every_day_once(zone_name: str, sunday: date) -> None:
    # Given the 05:00 UTC generation slots of the fortnight around a transition
    zone = ZoneInfo(zone_name)
    slots = [datetime.combine(sunday + timedelta(days=n), time(5), UTC) for n in range(-7, 8)]
    # When each slot generates the dates whose delivery falls in its window
    named = [d for s in slots for d in outlook_dates_between(s, s + GENERATION_WINDOW, zone)]

    # Then every local day between the first and last named is named exactly once
    assert len(named) == len(set(named))
    assert sorted(named) == [
        min(named) + timedelta(days=n) for n in range((max(named) - min(named)).days + 1)
    ]


def test_saved_times_and_a_time_in_the_spring_forward_gap() -> None:
    ny = ZoneInfo("America/New_York")
    # A saved weekday time also serves weekends when no weekend time is saved
    assert target_instant(date(2025, 1, 18), ny, time(5, 30)).astimezone(ny).time() == time(5, 30)
    # 02:30 does not exist on 9 March 2025 in New York: read with the offset before the jump
    gap = target_instant(date(2025, 3, 9), ny, None, time(2, 30))
    assert gap == datetime(2025, 3, 9, 7, 30, tzinfo=UTC)  # 03:30 EDT
    # 01:30 happens twice on 2 November 2025: the first occurrence (EDT) is the one
    twice = target_instant(date(2025, 11, 2), ny, None, time(1, 30))
    assert twice == datetime(2025, 11, 2, 5, 30, tzinfo=UTC)


@pytest.mark.parametrize("zone_name", [*ZONES, "Australia/Sydney"])
@pytest.mark.parametrize("sunday", TRANSITIONS)
def test_a_learned_hour_replaces_the_defaults_every_day(zone_name: str, sunday: date) -> None:
    # Given a user without saved times whose best hour is 19
    zone = ZoneInfo(zone_name)
    days = [sunday + timedelta(days=n) for n in range(-3, 4)]
    # Then every day's target is 19:00 local, weekends included, across the transition
    for day in days:
        local = target_instant(day, zone, best_hour=19).astimezone(zone)
        assert (local.date(), local.time()) == (day, time(19))
    # And daily generation windows still name every day once
    slots = [datetime.combine(sunday + timedelta(days=n), time(5), UTC) for n in range(-7, 8)]
    named = [
        d
        for s in slots
        for d in outlook_dates_between(s, s + GENERATION_WINDOW, zone, best_hour=19)
    ]
    assert len(named) == len(set(named))
    assert sorted(named) == [
        min(named) + timedelta(days=n) for n in range((max(named) - min(named)).days + 1)
    ]


def test_saved_times_win_over_a_learned_hour() -> None:
    ny = ZoneInfo("America/New_York")
    weekday, saturday = date(2025, 1, 15), date(2025, 1, 18)
    local = [
        target_instant(day, ny, *saved, best_hour=21).astimezone(ny).time()
        for day in (weekday, saturday)
        for saved in ((time(5, 30), None), (None, time(9, 15)), (None, None))
    ]
    # A saved weekday time serves weekends too; a weekend-only one leaves weekdays to the hour
    assert local == [time(5, 30), time(21), time(21), time(5, 30), time(9, 15), time(21)]
    # A learned 02:00 on the spring-forward night arrives at 03:00 EDT, like a saved 02:00
    assert target_instant(date(2025, 3, 9), ny, best_hour=2) == datetime(
        2025, 3, 9, 7, 0, tzinfo=UTC
    )


# -- through the worker -------------------------------------------------------------------------


async def test_outlooks_arrive_at_the_learned_hour_unless_a_time_is_saved(env: Env) -> None:
    day = date(2025, 1, 15)  # a Wednesday
    #: (zone, saved weekday time, learned best hour, expected local arrival)
    cases = [
        ("Asia/Tokyo", None, 19, time(19)),
        ("Europe/Berlin", time(6, 0), 20, time(6, 0)),
        ("America/New_York", None, None, time(6, 45)),
    ]
    for n, (zone_name, saved, hour, local_at) in enumerate(cases):
        zone = ZoneInfo(zone_name)
        target = datetime.combine(day, local_at, zone).astimezone(UTC)
        # Given a user with or without a saved time and a best hour, and their outlook
        uid = await add_user(env.db, f"Learner{n}", zone_name, target - timedelta(days=1))
        await env.db.execute("UPDATE users SET outlook_weekday_at = $2 WHERE id = $1", uid, saved)
        if hour is not None:
            await env.db.execute(
                "INSERT INTO user_send_hours (user_id, best_hour, events, time_zone)"
                " VALUES ($1, $2, 9, $3)",
                uid,
                hour,
                zone_name,
            )
        await env.run("generate_user_outlook", {"user_id": uid, "outlook_date": day.isoformat()})

        # When the sweep runs shortly before the expected instant
        swept_at = target - LEAD
        started = wall.time()
        result = await env.run("deliver_due_outlooks", {"now": swept_at.isoformat()})

        # Then it holds the outlook for that instant and it arrives within a minute after it
        assert result["scheduled"] == 1 and result["due"] == 0, (zone_name, result)
        (ran_at,) = [at for _, p, at in env.sent if p["user_id"] == uid]
        arrived = swept_at + timedelta(seconds=ran_at - started)
        assert target <= arrived <= target + timedelta(seconds=60), (zone_name, arrived)
        delivered_at = await env.db.fetchval(
            "SELECT delivered_at FROM daily_outlooks WHERE user_id = $1", uid
        )
        assert delivered_at == target


async def test_generation_names_the_day_whose_learned_hour_falls_in_its_window(env: Env) -> None:
    # Given a Tokyo user whose best hour is 22 (13:00 UTC) and a 05:00 UTC generation slot
    slot = datetime(2025, 1, 15, 5, 0, tzinfo=UTC)
    uid = await add_user(env.db, "Owl", "Asia/Tokyo", slot)
    await env.db.execute(
        "INSERT INTO user_send_hours (user_id, best_hour, events, time_zone)"
        " VALUES ($1, 22, 9, 'Asia/Tokyo')",
        uid,
    )
    # When generation runs for the slot
    await env.run("generate_daily_outlooks", {"scheduled_for": slot.isoformat()})
    # Then the outlook is for the local day whose 22:00 comes next (the 15th, 13:00 UTC), not
    # the day the 06:45 default would name (the 16th, 21:45 UTC on the 15th)
    days = await env.db.fetch("SELECT outlook_date FROM daily_outlooks WHERE user_id = $1", uid)
    assert [r["outlook_date"] for r in days] == [date(2025, 1, 15)]


async def test_outlooks_arrive_within_a_minute_of_local_delivery_time(live: Env) -> None:
    env = live
    for n, (zone_name, day, local_at) in enumerate(ARRIVALS):
        zone = ZoneInfo(zone_name)
        target = datetime.combine(day, local_at, zone).astimezone(UTC)
        # Given a user without preferences and their outlook for that local day; every other
        # user has a phone app registered for push and agreed to push
        uid = await add_user(env.db, f"User{n}", zone_name, target - timedelta(days=1))
        by_push = n % 2 == 0
        if by_push:
            async with env.db.acquire() as conn:
                await register_device(conn, uid, "fcm", f"device-token-{n}-0123456789")
                await conn.execute(
                    "INSERT INTO consents (user_id, channel, opted_in_at, opt_in_source)"
                    " VALUES ($1, 'push', now() - interval '1 day', 'app')",
                    uid,
                )
        await env.run("generate_user_outlook", {"user_id": uid, "outlook_date": day.isoformat()})

        # When the sweep runs shortly before the target
        swept_at = target - LEAD
        mark = await env.db.fetchval("SELECT coalesce(max(id), 0) FROM sandbox_outbox")
        started = wall.time()
        result = await env.run("deliver_due_outlooks", {"now": swept_at.isoformat()})

        # Then it schedules the delivery rather than sending early
        assert result["scheduled"] == 1 and result["due"] == 0, result
        # And it is delivered within a minute after the target, never before: by push to the
        # user with a device, by email to the one without
        (row,) = await env.db.fetch(
            "SELECT channel, subject, body, extract(epoch FROM created_at) AS at"
            " FROM sandbox_outbox WHERE id > $1 ORDER BY id",
            mark,
        )
        arrived = swept_at + timedelta(seconds=float(row["at"]) - started)
        assert target <= arrived <= target + timedelta(seconds=60), (zone_name, day, arrived)
        assert row["channel"] == ("push" if by_push else "email"), row
        shown = row["subject"] if row["subject"] else row["body"]
        assert day.strftime("%d").lstrip("0") in shown
        delivered_at = await env.db.fetchval(
            "SELECT delivered_at FROM daily_outlooks WHERE user_id = $1", uid
        )
        assert delivered_at == target


@pytest.mark.parametrize("sunday", TRANSITIONS)
async def test_dst_transitions_give_one_outlook_per_user_per_local_day(
    env: Env, sunday: date
) -> None:
    # Given a user in each zone, active throughout
    first_slot = datetime.combine(sunday - timedelta(days=2), time(5), UTC)
    users = {z: await add_user(env.db, z.split("/")[1], z, first_slot) for z in ZONES}

    # When the daily 05:00 UTC generation runs for five days around the transition
    runs = [
        await env.run(
            "generate_daily_outlooks",
            {"scheduled_for": (first_slot + timedelta(days=n)).isoformat()},
        )
        for n in range(5)
    ]
    # Then no run regenerates a date another run already covered
    assert sum(r["skipped_existing"] for r in runs) == 0
    rows = await env.db.fetch(
        "SELECT user_id, outlook_date FROM daily_outlooks ORDER BY user_id, outlook_date"
    )
    for zone_name, uid in users.items():
        days = [r["outlook_date"] for r in rows if r["user_id"] == uid]
        # And each user has one outlook for each consecutive local day, none skipped
        assert days == [days[0] + timedelta(days=n) for n in range(len(days))], zone_name
        assert len(days) >= 4 and sunday - timedelta(days=1) in days and sunday in days

    # When sweeps run just after each outlook's delivery time, and again an hour later
    outlooks = await env.db.fetch(
        "SELECT o.user_id, o.outlook_date, u.time_zone FROM daily_outlooks o"
        " JOIN users u ON u.id = o.user_id ORDER BY o.outlook_date, u.time_zone"
    )
    instants = sorted(target_instant(r["outlook_date"], ZoneInfo(r["time_zone"])) for r in outlooks)
    for at in instants:
        for later in (timedelta(seconds=30), timedelta(hours=1)):
            # Far from other targets only: a sweep within the lookahead of one would wait for it
            if all(not (at + later < t <= at + later + timedelta(minutes=15)) for t in instants):
                await env.run("deliver_due_outlooks", {"now": (at + later).isoformat()})

    # Then every outlook went out exactly once, at its own local morning
    assert {name for name, _, _ in env.sent} == {"send_preferred"}
    sent = [(p["user_id"], p["title"]) for _, p, _ in env.sent]
    assert len(sent) == len(set(sent)) == len(outlooks)
    delivered = await env.db.fetch(
        "SELECT o.outlook_date, o.delivered_at, u.time_zone FROM daily_outlooks o"
        " JOIN users u ON u.id = o.user_id"
    )
    for r in delivered:
        target = target_instant(r["outlook_date"], ZoneInfo(r["time_zone"]))
        assert target <= r["delivered_at"] <= target + timedelta(hours=1)
