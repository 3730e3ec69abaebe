"""The cron loop against a real Redis: once per slot across workers and processes, crash-safe,
catch-up policies after an outage, jitter, hooks and the ``schedules`` listing."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from qrunner import keys
from qrunner.clock import ManualClock, RedisClock
from qrunner.cron import jitter_ms, to_ms
from qrunner.queue import Client
from qrunner.scheduler import Scheduler, describe, describe_live, read_last_fired
from qrunner.schedules import Schedule

pytestmark = pytest.mark.both_topologies

ROOT = Path(__file__).resolve().parent.parent
HELPER = ROOT / "tests" / "helpers" / "cron_process.py"

SEC = 1000
MIN = 60 * SEC
T0 = to_ms(datetime(2026, 1, 1, 5, tzinfo=UTC))  # a slot of every schedule below
DAILY = Schedule(name="nightly", task="report", cron="0 5 * * *", payload={"kind": "daily"})
MINUTELY = Schedule(name="minutely", task="probe", cron="* * * * *")
SECONDLY = Schedule(name="every_second", task="probe", cron="* * * * * *")


class Recorder:
    """The real client, plus a log of every enqueue call the scheduler made."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.calls: list[dict[str, Any]] = []

    async def enqueue(
        self,
        task: str,
        payload: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        delay_s: float | None = None,
        at: datetime | None = None,
        key: str | None = None,
        key_ttl_s: float | None = None,
        job_id: str | None = None,
    ) -> str:
        self.calls.append(
            {"task": task, "payload": payload, "queue": queue, "key": key, "job_id": job_id}
            | {"key_ttl_s": key_ttl_s, "delay_s": delay_s, "at": at}
        )
        return await self.client.enqueue(
            task, payload, queue=queue, key=key, key_ttl_s=key_ttl_s, job_id=job_id
        )


class DiesAfterEnqueue(Recorder):
    """Enqueues, then fails as a process killed right after its enqueue returned would."""

    async def enqueue(self, task: str, payload: Mapping[str, Any] | None = None, **kw: Any) -> str:
        await super().enqueue(task, payload, **kw)
        raise ConnectionResetError("worker died after the enqueue")


async def jobs(redis: aioredis.Redis, queue: str = "default") -> list[dict[str, Any]]:
    """Every job envelope in the queue's stream, oldest first."""
    entries = await redis.xrange(keys.stream(queue)) or []
    return [orjson.loads(fields[b"j"]) for _, fields in entries if fields]


async def job_ids(redis: aioredis.Redis, queue: str = "default") -> list[str]:
    return [job["id"] for job in await jobs(redis, queue)]


async def last_of(redis: aioredis.Redis, name: str) -> int | None:
    raw = await redis.get(keys.cron_last(name))
    return None if raw is None else int(raw)


def make(
    redis: aioredis.Redis, entries: list[Schedule], clock: ManualClock, **kw: Any
) -> tuple[Scheduler, Recorder]:
    recorder = Recorder(Client(redis))
    return Scheduler(redis, recorder, entries, clock, **kw), recorder


# -- one process ---------------------------------------------------------------------------------


async def test_due_slot_is_enqueued_once_with_its_slot_key_and_job_id(
    redis: aioredis.Redis,
) -> None:
    # Given a daily 05:00 entry and a clock half a second past 05:00
    clock = ManualClock(T0 + 500)
    scheduler, recorder = make(redis, [DAILY], clock)
    # When the loop ticks twice
    first, second = await scheduler.tick(), await scheduler.tick()
    # Then the slot was enqueued once, keyed and named by schedule and slot
    assert (first, second) == (1, 0)
    assert recorder.calls == [
        {
            "task": "report",
            "payload": {"kind": "daily"},  # as configured, nothing merged in
            "queue": None,
            "key": f"cron:nightly:{T0}",
            "job_id": f"cron-nightly-{T0}",
            "key_ttl_s": 2 * 24 * 3600.0,  # two days (more than a day of catch-up window + grace)
            "delay_s": None,
            "at": None,
        }
    ]
    assert await job_ids(redis) == [f"cron-nightly-{T0}"]
    assert await last_of(redis, "nightly") == T0


async def test_scheduled_for_is_merged_only_when_the_entry_asks(redis: aioredis.Redis) -> None:
    asks = replace(DAILY, name="asks", add_scheduled_for=True)
    scheduler, _ = make(redis, [asks, DAILY], ManualClock(T0))
    assert await scheduler.tick() == 2
    payloads = {job["id"]: job["payload"] for job in await jobs(redis)}
    assert payloads == {
        f"cron-asks-{T0}": {"kind": "daily", "scheduled_for": "2026-01-01T05:00:00+00:00"},
        f"cron-nightly-{T0}": {"kind": "daily"},
    }


async def test_nothing_fires_before_the_slot(redis: aioredis.Redis) -> None:
    clock = ManualClock(T0 - 1)
    scheduler, _ = make(redis, [DAILY], clock)
    assert await scheduler.tick() == 0
    assert await job_ids(redis) == []
    clock.advance(0.001)
    assert await scheduler.tick() == 1


async def test_disabled_entries_never_fire(redis: aioredis.Redis) -> None:
    scheduler, recorder = make(redis, [replace(DAILY, enabled=False)], ManualClock(T0))
    assert await scheduler.tick() == 0
    assert recorder.calls == []


async def test_two_workers_ticking_together_enqueue_and_count_a_slot_once(
    redis: aioredis.Redis,
) -> None:
    # Given two workers with their own clients on one Redis, both at 05:00
    a, _ = make(redis, [DAILY], ManualClock(T0))
    b, _ = make(redis, [DAILY], ManualClock(T0))
    # When both tick at once
    counts = await asyncio.gather(a.tick(), b.tick())
    # Then one job exists and exactly one worker counts it
    assert sorted(counts) == [0, 1]
    assert await job_ids(redis) == [f"cron-nightly-{T0}"]


async def test_worker_dying_between_enqueue_and_record_neither_loses_nor_doubles(
    redis: aioredis.Redis,
) -> None:
    # Given a worker that dies right after its enqueue returned, before recording the slot
    dying = Scheduler(redis, DiesAfterEnqueue(Client(redis)), [DAILY], ManualClock(T0))
    with pytest.raises(ConnectionResetError):
        await dying.tick()
    assert await last_of(redis, "nightly") is None
    # When another worker ticks
    survivor, recorder = make(redis, [DAILY], ManualClock(T0 + 2 * SEC))
    fired = await survivor.tick()
    # Then it retries the slot, the enqueue deduplicates, and the slot is counted once
    assert len(recorder.calls) == 1
    assert fired == 1
    assert await job_ids(redis) == [f"cron-nightly-{T0}"]
    assert await last_of(redis, "nightly") == T0


async def test_refused_enqueue_counts_as_missed_and_does_not_stall_the_schedule(
    redis: aioredis.Redis,
) -> None:
    from qrunner.task import Registry

    misses: list[int] = []
    clock = ManualClock(T0)
    strict = Client(redis, Registry())  # knows no task: every enqueue is refused
    scheduler = Scheduler(
        redis, strict, [MINUTELY], clock, on_miss=lambda name, n: misses.append(n)
    )
    assert await scheduler.tick() == 0
    assert misses == [1]
    assert await last_of(redis, "minutely") == T0  # moved on; not retried every second


# -- outages --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "window_s", "fired_minutes", "missed"),
    [
        ("skip", 3600, [], 10),
        ("latest", 3600, [10], 9),
        ("latest", 20, [], 10),  # the newest missed slot is 30 s old: outside the window
        ("all", 3600, list(range(1, 11)), 0),
        ("all", 300, [6, 7, 8, 9, 10], 5),  # 5 min window: ages 270 s .. 30 s fire
    ],
)
async def test_missed_slots_after_an_outage_follow_the_policy_and_are_counted(
    redis: aioredis.Redis, policy: Any, window_s: float, fired_minutes: list[int], missed: int
) -> None:
    # Given a per-minute entry that fired at T0
    entry = replace(MINUTELY, catchup=policy, catchup_window_s=window_s)
    clock = ManualClock(T0)
    fires: list[int] = []
    misses: list[int] = []
    scheduler, _ = make(
        redis,
        [entry],
        clock,
        grace_s=5,
        on_fire=lambda name, n: fires.append(n),
        on_miss=lambda name, n: misses.append(n),
    )
    assert await scheduler.tick() == 1
    # When no worker runs for 10.5 minutes (ten slots, none within the 5 s grace)
    clock.advance(10 * 60 + 30)
    fired = await scheduler.tick()
    # Then the policy picks the slots, the rest are reported missed, and last moves past all
    expected = [T0 + m * MIN for m in fired_minutes]
    assert fired == len(expected)
    assert fires == ([1, len(expected)] if expected else [1])
    assert misses == ([missed] if missed else [])
    assert await job_ids(redis) == [f"cron-minutely-{s}" for s in [T0, *expected]]
    assert await last_of(redis, "minutely") == T0 + 10 * MIN
    # And a later tick does not revisit the outage
    assert await scheduler.tick() == 0
    assert misses == ([missed] if missed else [])


async def test_long_outage_of_a_per_second_schedule_is_worked_through_in_batches(
    redis: aioredis.Redis,
) -> None:
    # Given a per-second entry (latest) that fired at T0, and an outage of 2510.5 s
    clock = ManualClock(T0)
    misses: list[int] = []
    scheduler, _ = make(
        redis, [SECONDLY], clock, grace_s=0.2, on_miss=lambda name, n: misses.append(n)
    )
    assert await scheduler.tick() == 1
    clock.advance(2510.5)
    # When it ticks
    fired = await scheduler.tick()
    # Then only the newest missed slot fires, although it sits in the third batch of 1000
    assert fired == 1
    assert await job_ids(redis) == [
        f"cron-every_second-{T0}",
        f"cron-every_second-{T0 + 2510 * SEC}",
    ]
    assert sum(misses) == 2509
    assert await last_of(redis, "every_second") == T0 + 2510 * SEC


async def test_first_tick_without_history_fires_only_within_grace(redis: aioredis.Redis) -> None:
    # A new schedule (or a Redis that lost its data) knows of no outage: a slot 30 s old still
    # fires under a 60 s grace, older ones are not invented as "missed".
    scheduler, _ = make(redis, [MINUTELY], ManualClock(T0 + 30 * SEC), grace_s=60)
    assert await scheduler.tick() == 1
    assert await job_ids(redis) == [f"cron-minutely-{T0}"]


async def test_jitter_delays_a_slot_by_its_fixed_offset(redis: aioredis.Redis) -> None:
    entry = replace(DAILY, jitter_s=30)
    delay = jitter_ms("nightly", T0, 30)
    assert 0 < delay <= 30 * SEC
    clock = ManualClock(T0 + delay - 1)
    scheduler, _ = make(redis, [entry], clock)
    assert await scheduler.tick() == 0
    clock.advance(0.001)
    assert await scheduler.tick() == 1
    assert await job_ids(redis) == [f"cron-nightly-{T0}"]  # still identified by its slot


# -- the loop ------------------------------------------------------------------------------------


async def test_run_ticks_on_the_clock_survives_a_failing_tick_and_stops_on_request(
    redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a loop whose first enqueue fails (Redis hiccup), on a manual clock at T0
    fired: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    clock = ManualClock(T0)
    recorder = Recorder(Client(redis))
    failures: list[Exception] = [RedisConnectionError("redis hiccup")]

    class Flaky:
        async def enqueue(self, task: str, payload: Any = None, **kw: Any) -> str:
            if failures:
                raise failures.pop()
            return await recorder.enqueue(task, payload, **kw)

    scheduler = Scheduler(
        redis, Flaky(), [MINUTELY], clock, on_fire=lambda name, n: fired.put_nowait((name, n))
    )
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="qrunner.scheduler"):
        loop = asyncio.create_task(scheduler.run(stop))
        # When the clock moves one tick, then a minute
        await clock.until_sleeping()
        assert "cron tick failed" in caplog.text
        clock.advance(1)
        assert await fired.get() == ("minutely", 1)  # retried on the next tick
        assert await job_ids(redis) == [f"cron-minutely-{T0}"]
        await clock.until_sleeping()
        clock.advance(59)
        assert await fired.get() == ("minutely", 1)
        # Then setting stop ends the loop while it sleeps
        await clock.until_sleeping()
        stop.set()
        await loop
    assert await job_ids(redis) == [f"cron-minutely-{T0}", f"cron-minutely-{T0 + MIN}"]


async def test_run_ends_with_the_error_when_a_tick_fails_with_a_bug(
    redis: aioredis.Redis,
) -> None:
    # Given an enqueuer with a bug (not a Redis fault)
    class Broken:
        async def enqueue(self, task: str, payload: Any = None, **kw: Any) -> str:
            raise KeyError("a bug")

    scheduler = Scheduler(redis, Broken(), [MINUTELY], ManualClock(T0))
    # Then the loop does not log and go on forever: it raises, and the worker stops loudly
    with pytest.raises(KeyError):
        await scheduler.run(asyncio.Event())


async def test_a_fresh_redis_fires_only_the_newest_slot_of_the_grace_period(
    redis: aioredis.Redis,
) -> None:
    # Given a per-second schedule that never fired (a new or flushed Redis), 30 s past a minute
    every_second = Schedule(name="secondly", task="t", cron="* * * * * *")
    clock = ManualClock(T0 + 30_000)
    scheduler, _ = make(redis, [every_second], clock)
    # Then one tick enqueues the current slot only, not the 30 seconds before it
    assert await scheduler.tick() == 1
    assert await job_ids(redis) == [f"cron-secondly-{T0 + 30_000}"]
    assert await last_of(redis, "secondly") == T0 + 30_000


async def test_describe_lists_last_and_next_fire_in_the_entry_zone(redis: aioredis.Redis) -> None:
    paris = Schedule(name="paris", task="t", cron="0 9 * * *", timezone="Europe/Paris")
    off = replace(MINUTELY, enabled=False)
    scheduler, _ = make(redis, [DAILY, paris], ManualClock(T0))
    await scheduler.tick()
    rows = describe([DAILY, paris, off], await read_last_fired(redis, [DAILY, paris, off]), T0)
    summary = [
        (
            r.name,
            r.enabled,
            r.last_fire and r.last_fire.isoformat(),
            r.next_fire and r.next_fire.isoformat(),
        )
        for r in rows
    ]
    assert summary == [
        ("nightly", True, "2026-01-01T05:00:00+00:00", "2026-01-02T05:00:00+00:00"),
        ("paris", True, None, "2026-01-01T09:00:00+01:00"),
        ("minutely", False, None, None),
    ]


# -- several OS processes ------------------------------------------------------------------------


SLOTS = 200
EXPECTED = {f"cron-every_second-{T0 + i * SEC}" for i in range(SLOTS)}


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Processes started by a test; any still alive afterwards are killed."""
    started: list[asyncio.subprocess.Process] = []
    yield started
    for proc in started:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def spawn(
    started: list[asyncio.subprocess.Process], redis_url: str, *extra: str
) -> asyncio.subprocess.Process:
    """Start one cron loop process and wait until it is connected and at its start barrier."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HELPER),
        "--redis-url",
        redis_url,
        "--start-ms",
        str(T0),
        "--slots",
        str(SLOTS),
        *extra,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    started.append(proc)
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    if line != b"ready\n":
        assert proc.stderr is not None
        pytest.fail(f"cron process did not start: {line!r} {await proc.stderr.read()!r}")
    return proc


def go(*procs: asyncio.subprocess.Process) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")


async def finished(proc: asyncio.subprocess.Process) -> int:
    """Wait for a process to end normally and return how many slots it counted as its own."""
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return int(orjson.loads(out.splitlines()[-1])["fired"])


async def test_three_processes_enqueue_each_of_200_slots_exactly_once(
    redis: aioredis.Redis, redis_url: str, processes: list[asyncio.subprocess.Process]
) -> None:
    # Given three cron loops in separate processes, each with its own clock, released together
    procs = [await spawn(processes, redis_url) for _ in range(3)]
    go(*procs)
    # When each steps its clock over the same 200 per-second slots
    counts = [await finished(p) for p in procs]
    # Then every slot is one job, and the processes together counted each slot once
    ids = await job_ids(redis)
    assert len(ids) == SLOTS
    assert set(ids) == EXPECTED
    assert sum(counts) == SLOTS
    assert await last_of(redis, "every_second") == T0 + (SLOTS - 1) * SEC


async def test_process_killed_mid_tick_loses_and_doubles_no_slot(
    redis: aioredis.Redis, redis_url: str, processes: list[asyncio.subprocess.Process]
) -> None:
    # Given a loop SIGKILLed right after its 100th enqueue, before recording that slot
    victim = await spawn(processes, redis_url, "--hang-after", "100")
    go(victim)
    assert victim.stdout is not None
    assert await victim.stdout.readline() == f"hang cron-every_second-{T0 + 99 * SEC}\n".encode()
    victim.send_signal(signal.SIGKILL)
    assert await victim.wait() == -signal.SIGKILL
    assert await last_of(redis, "every_second") == T0 + 98 * SEC
    # When a restarted loop and a second survivor cover the same 200 slots concurrently
    procs = [await spawn(processes, redis_url) for _ in range(2)]
    go(*procs)
    counts = [await finished(p) for p in procs]
    # Then there are exactly 200 jobs, one per slot, and the slot the victim enqueued but did
    # not record is counted once, by whoever recorded it: 99 by the victim + 101 by the others
    ids = await job_ids(redis)
    assert len(ids) == SLOTS
    assert set(ids) == EXPECTED
    assert sum(counts) == SLOTS - 99


async def test_describe_live_reads_last_fire_and_now_from_redis(redis: aioredis.Redis) -> None:
    server_now = await RedisClock(redis).now_ms()
    await redis.set(keys.cron_last("nightly"), T0)
    (row,) = await describe_live(redis, [DAILY])
    assert row.last_fire is not None and to_ms(row.last_fire) == T0
    assert row.next_fire is not None and to_ms(row.next_fire) > server_now
    assert to_ms(row.next_fire) - server_now <= 24 * 3600 * SEC


async def test_run_without_enabled_entries_only_waits_for_stop(redis: aioredis.Redis) -> None:
    clock = ManualClock(T0)
    scheduler, _ = make(redis, [replace(DAILY, enabled=False)], clock)
    stop = asyncio.Event()
    loop = asyncio.create_task(scheduler.run(stop))
    await asyncio.sleep(0)
    assert clock.sleepers == 0 and not loop.done()  # parked on stop, not ticking
    stop.set()
    await loop
