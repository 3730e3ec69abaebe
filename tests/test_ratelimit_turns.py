"""Turns in a bucket's line against a real Redis: ``reserve_turn.lua`` and ``bucket_allowance.lua``
mirror the pure maths, a deferred job keeps its turn and runs without a second charge, a
throttle moves the whole line back, and the gate waits in place, defers once, or leaves a gated
queue unread until its turn comes.

Times are passed explicitly (``now_ms``) wherever the outcome depends on them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from redis.asyncio import Redis

from qrunner import Context, Registry, keys
from qrunner.admission import TokenBucketGate, bucket_name
from qrunner.errors import ConfigError
from qrunner.ratelimit import (
    DeferralLog,
    LineView,
    RateLimiter,
    RateLimitSpec,
    line_key,
    reads_key,
    turns_key,
)
from qrunner.scripts import Script
from qrunner.tokenbucket import WindowState, allowance, idle_ttl_ms, schedule
from tests.helpers.clock import redis_ms
from tests.test_ratelimit import T0, mirror_cases, read_window

SPEC_20 = RateLimitSpec.parse("20/s", burst=20)
SPEC_10 = RateLimitSpec.parse("10/s")


# --- the scripts mirror the pure maths --------------------------------------------------------


async def test_reserve_turn_schedules_as_the_pure_maths_says(redis: Redis) -> None:
    script = Script("reserve_turn")
    await script.ensure_loaded(redis)
    for index, (limits, states, now_ms, cost, blocked) in enumerate(mirror_cases()):
        # Given the windows' stored states and the block, and nobody in line
        bucket = f"mirror{index}"
        window_keys = [keys.ratelimit(bucket, f"w{i}") for i in range(len(limits))]
        for key, state in zip(window_keys, states, strict=True):
            if state is not None:
                await redis.hset(key, mapping={"credit": state.credit, "ts": state.last_ms})
        if blocked is not None:
            await redis.set(keys.ratelimit_block(bucket), blocked)
        args: list[int | str] = [cost, now_ms, 1, 0, 3_600_000, 1, "", 2**50]
        for lim in limits:
            args += [lim.tokens, lim.period_ms, lim.capacity]
        line = [
            keys.ratelimit_block(bucket),
            turns_key(bucket),
            line_key(bucket),
            reads_key(bucket),
        ]

        # When a job asks at now_ms (read back in the same transaction: tiny windows expire)
        pipe = redis.pipeline(transaction=True)
        script.queue_in(pipe, [*window_keys, *line], args)
        for key in window_keys:
            pipe.hmget(key, ["credit", "ts"])
            pipe.pttl(key)
        (code, wait, waiting, _, judged_at), *readback = await pipe.execute()

        # Then its turn, the charge and the keys' lifetimes are the pure maths'
        expected = schedule(limits, states, now_ms, cost, blocked)
        case = f"case {index}: {limits} {states} now={now_ms} cost={cost} blocked={blocked}"
        assert wait == expected.turn_ms - now_ms, case
        assert code == (1 if wait == 0 else 3), case
        assert waiting == -1, case  # a grant or a wait in place leaves the line as it was
        assert judged_at == now_ms, case
        stored = [WindowState(int(c), int(t)) for c, t in readback[::2]]
        assert stored == list(expected.states), case
        for ttl, lim, state in zip(readback[1::2], limits, expected.states, strict=True):
            assert 0 <= ttl <= max(0, state.last_ms - now_ms) + idle_ttl_ms(lim, state.credit)


async def test_bucket_allowance_counts_as_the_pure_maths_says(redis: Redis) -> None:
    script = Script("bucket_allowance")
    for index, (limits, states, now_ms, _, blocked) in enumerate(mirror_cases()):
        bucket = f"allow{index}"
        window_keys = [keys.ratelimit(bucket, f"w{i}") for i in range(len(limits))]
        for key, state in zip(window_keys, states, strict=True):
            if state is not None:
                await redis.hset(key, mapping={"credit": state.credit, "ts": state.last_ms})
        if blocked is not None:
            await redis.set(keys.ratelimit_block(bucket), blocked)
        horizon = (index * 37) % 5_000
        args: list[int | str] = [now_ms, horizon, 0, 0, 0]
        for lim in limits:
            args += [lim.tokens, lim.period_ms, lim.capacity]
        bucket_keys = [*window_keys, keys.ratelimit_block(bucket), reads_key(bucket)]

        count, first, busy = await script(redis, bucket_keys, args)

        expected_count, expected_first = allowance(limits, states, now_ms, horizon, blocked)
        assert (count, first, busy) == (expected_count, expected_first - now_ms, 0), index


async def test_an_allowance_is_shared_out_among_readers_asking_together(redis: Redis) -> None:
    limiter = RateLimiter(redis)

    # Given a full 20/s bucket (burst 20): 40 turns within the next second
    first = await limiter.allowance("q", SPEC_20, 1_000, settle_ms=200, now_ms=T0)
    second = await limiter.allowance("q", SPEC_20, 1_000, settle_ms=200, now_ms=T0)
    assert first == (40, 0, 0)
    # Then a second reader asking at once is told to wait until the first one's share lapses
    assert second[0] == 0 and 0 < second[2] <= 200
    assert await read_window(redis, keys.ratelimit("q", "20per1000ms")) is None  # only read


async def test_a_reader_is_set_aside_only_what_it_will_read(redis: Redis) -> None:
    limiter = RateLimiter(redis)

    # Given a full 20/s bucket (40 turns within the next second) and a reader with 10 free slots
    first = await limiter.allowance("q", SPEC_20, 1_000, settle_ms=200, most=10, now_ms=T0)
    # Then it is allowed 10, and a second reader asking at once the other 30
    second = await limiter.allowance("q", SPEC_20, 1_000, settle_ms=200, now_ms=T0)
    assert (first[0], second[0]) == (10, 30)


async def test_a_reader_waits_to_read_a_batch_while_the_line_is_longer_than_the_lead(
    redis: Redis,
) -> None:
    limiter = RateLimiter(redis)
    # Given a 20/s bucket (burst 20) with 26 jobs charged: the next turn is 350 ms away
    jobs = [(f"j{i}", 1_000) for i in range(26)]
    await limiter.reserve_many("q", SPEC_20, jobs, reserve=False, now_ms=T0)

    # Then without a lead a reader may fetch the 4 jobs whose turns fall within 500 ms
    assert await limiter.allowance("q", SPEC_20, 500, now_ms=T0) == (4, 350, 0)
    # And with a lead of 250 ms it is told to come back for a batch, and nothing is set aside
    held = await limiter.allowance("q", SPEC_20, 500, settle_ms=200, lead_ms=250, now_ms=T0)
    assert held == (0, 350, 0)
    assert await redis.get(reads_key("q")) is None
    # 100 ms later the line is 250 ms long: the reader is allowed the batch
    later = await limiter.allowance("q", SPEC_20, 500, settle_ms=200, lead_ms=250, now_ms=T0 + 100)
    assert later == (6, 250, 0)


async def test_readers_taking_turns_within_the_settle_time_keep_the_full_rate(
    redis: Redis,
) -> None:
    """Given a gated 20/s bucket (burst 20) drained, and two readers that each ask for an
    allowance every 100 ms in turns (within one settle time of each other, so the reads key
    never lapses) and admit every job they were allowed at once: over 3 s they are allowed
    and admitted 20 jobs a second, not half that. Jobs admitted leave the reads key; counted
    both there and in the windows' credit, each allowance came out one job a turn short."""
    limiter = RateLimiter(redis)
    drained = [(f"d{i}", 0) for i in range(20)]
    await limiter.reserve_many("g", SPEC_20, drained, reserve=False, now_ms=T0)
    admitted = 0
    for step in range(1, 31):
        now = T0 + 100 * step
        count, _, _ = await limiter.allowance("g", SPEC_20, 500, settle_ms=200, now_ms=now)
        if count:
            jobs = [(f"r{step}-{i}", 500) for i in range(count)]
            answers = await limiter.reserve_many("g", SPEC_20, jobs, reserve=False, now_ms=now)
            admitted += sum(1 for a in answers if a.kind != "refused")
    # 3 s of turns at 20/s, plus the 500 ms read ahead of the last reader
    assert 60 <= admitted <= 70, admitted


# --- turns ------------------------------------------------------------------------------------


async def test_a_backlog_is_deferred_once_each_to_turns_spaced_at_the_rate(redis: Redis) -> None:
    limiter = RateLimiter(redis)

    # Given 60 jobs asking at the same moment of a 20/s bucket with a burst of 20
    answers = [
        await limiter.reserve("sms", SPEC_20, job_id=f"job{i}", now_ms=T0) for i in range(60)
    ]

    # Then the burst runs now and the other 40 are deferred to turns 50 ms apart, in order
    assert [a.kind for a in answers] == ["granted"] * 20 + ["deferred"] * 40
    assert [a.wait_ms for a in answers[20:]] == [50 * k for k in range(1, 41)]
    assert answers[-1].waiting == 40
    assert await redis.zcard(turns_key("sms")) == 40


async def test_a_deferred_job_runs_on_its_turn_without_a_second_charge(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse("10/s", burst=1)
    window = keys.ratelimit("sms", "10per1000ms")
    assert (await limiter.reserve("sms", spec, job_id="a", now_ms=T0)).kind == "granted"
    b = await limiter.reserve("sms", spec, job_id="b", now_ms=T0)
    c = await limiter.reserve("sms", spec, job_id="c", now_ms=T0)
    assert (b.kind, b.wait_ms, c.kind, c.wait_ms) == ("deferred", 100, "deferred", 200)
    charged = await read_window(redis, window)

    # When b comes back early (redelivered), it is told the rest of its wait, and charged nothing
    early = await limiter.reserve("sms", spec, job_id="b", now_ms=T0 + 60)
    assert (early.kind, early.wait_ms) == ("deferred", 40)
    assert await read_window(redis, window) == charged

    # When b comes back on its turn it runs, still without a charge, and its turn is gone
    on_time = await limiter.reserve("sms", spec, job_id="b", now_ms=T0 + 100)
    assert on_time.kind == "claimed"
    assert await read_window(redis, window) == charged
    assert await redis.zscore(turns_key("sms"), "b") is None

    # And a newcomer queues behind c, whose turn is still recorded
    newcomer = await limiter.reserve("sms", spec, job_id="d", now_ms=T0 + 100)
    assert (newcomer.kind, newcomer.wait_ms, newcomer.waiting) == ("deferred", 200, 2)

    # And c, coming back late, still runs on its turn
    assert (await limiter.reserve("sms", spec, job_id="c", now_ms=T0 + 900)).kind == "claimed"


async def test_a_turn_within_the_hold_is_waited_for_in_place_and_not_recorded(
    redis: Redis,
) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse("10/s", burst=1)
    await limiter.reserve("sms", spec, job_id="a", now_ms=T0)

    held = await limiter.reserve("sms", spec, job_id="b", hold_ms=150, now_ms=T0)
    also_held = await limiter.reserve("sms", spec, job_id="c", hold_ms=200, now_ms=T0)
    deferred = await limiter.reserve("sms", spec, job_id="d", hold_ms=200, now_ms=T0)

    assert (held.kind, held.wait_ms) == ("hold", 100)
    assert (also_held.kind, also_held.wait_ms) == ("hold", 200)
    assert (deferred.kind, deferred.wait_ms, deferred.waiting) == ("deferred", 300, 1)
    assert await redis.zrange(turns_key("sms"), 0, -1) == [b"d"]


async def test_a_long_wait_is_cut_into_deferrals_that_keep_the_turn(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse("1/min", burst=1)
    await limiter.reserve("mail", spec, job_id="a", now_ms=T0)
    await limiter.reserve("mail", spec, job_id="x", max_wait_ms=90_000, now_ms=T0)

    # Given a job whose turn is two minutes away and deferrals capped at 50 s
    first = await limiter.reserve("mail", spec, job_id="late", max_wait_ms=50_000, now_ms=T0)
    # When it comes back after each capped deferral (and x runs on its turn meanwhile)
    second = await limiter.reserve(
        "mail", spec, job_id="late", max_wait_ms=50_000, now_ms=T0 + 50_000
    )
    assert (await limiter.reserve("mail", spec, job_id="x", now_ms=T0 + 60_000)).runs_now
    third = await limiter.reserve(
        "mail", spec, job_id="late", max_wait_ms=50_000, now_ms=T0 + 100_000
    )
    last = await limiter.reserve(
        "mail", spec, job_id="late", max_wait_ms=50_000, now_ms=T0 + 120_000
    )

    # Then it is told the rest each time and runs on its original turn
    assert [(a.kind, a.wait_ms) for a in (first, second, third)] == [
        ("deferred", 50_000),
        ("deferred", 50_000),
        ("deferred", 20_000),
    ]
    assert last.kind == "claimed"


async def test_anonymous_jobs_claim_the_earliest_turn_that_is_due(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse("10/s", burst=1)
    await limiter.reserve("sms", spec, now_ms=T0)
    waits = [(await limiter.reserve("sms", spec, now_ms=T0)).wait_ms for _ in range(3)]
    assert waits == [100, 200, 300]

    # A job coming back at T0 + 100 finds a due turn and runs; the next one, too early, does not
    assert (await limiter.reserve("sms", spec, now_ms=T0 + 100)).kind == "claimed"
    too_early = await limiter.reserve("sms", spec, now_ms=T0 + 150)
    assert (too_early.kind, too_early.wait_ms) == ("deferred", 250)
    assert await redis.zcard(turns_key("sms")) == 3


async def test_turns_overdue_beyond_stale_are_forgotten(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse("10/s", burst=1)
    await limiter.reserve("sms", spec, job_id="a", now_ms=T0)
    await limiter.reserve("sms", spec, job_id="gone", stale_ms=5_000, now_ms=T0)

    # A job whose turn passed more than stale_ms ago is a newcomer again
    again = await limiter.reserve("sms", spec, job_id="gone", stale_ms=5_000, now_ms=T0 + 5_200)

    assert again.kind == "granted"
    assert await redis.zcard(turns_key("sms")) == 0


async def test_a_batch_is_judged_as_the_same_calls_one_after_the_other(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse("10/s", burst=2)
    jobs = [("a", 0), ("b", 0), ("c", 150), ("d", 150), (None, 0), ("e", 0)]
    await limiter.reserve("one", spec, job_id="x", now_ms=T0)
    await limiter.reserve("many", spec, job_id="x", now_ms=T0)

    one_by_one = [
        await limiter.reserve("one", spec, job_id=job, hold_ms=hold, now_ms=T0)
        for job, hold in jobs
    ]
    batch = await limiter.reserve_many("many", spec, jobs, now_ms=T0)

    assert [(a.kind, a.wait_ms) for a in batch] == [(a.kind, a.wait_ms) for a in one_by_one]
    assert [(a.kind, a.wait_ms) for a in batch] == [
        ("granted", 0),
        ("deferred", 100),
        ("deferred", 200),
        ("deferred", 300),
        ("deferred", 400),
        ("deferred", 500),
    ]
    assert batch[-1].waiting == one_by_one[-1].waiting == 5
    one = await read_window(redis, keys.ratelimit("one", "10per1000ms"))
    many = await read_window(redis, keys.ratelimit("many", "10per1000ms"))
    assert one == many == WindowState(-5_000, T0)


async def test_jobs_coming_back_late_never_run_more_at_once_than_the_burst(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse("20/s", burst=5)

    # Given 35 jobs asking at T0: the burst of 5 runs, 30 are deferred to T0 + 50 ms .. 1.5 s
    answers = [await limiter.reserve("sms", spec, job_id=f"j{i}", now_ms=T0) for i in range(35)]
    assert [a.kind for a in answers].count("deferred") == 30

    # When their workers were stuck and all 30 come back at T0 + 3 s, with a newcomer
    late = await limiter.reserve_many(
        "sms", spec, [(f"j{i}", 0) for i in range(5, 35)], now_ms=T0 + 3_000
    )
    newcomer = await limiter.reserve("sms", spec, job_id="new", now_ms=T0 + 3_000)

    # Then only as many as the burst run at once (the earliest turns: a full bucket earned no
    # more); the others join the line again, behind them, 50 ms apart, and so does the newcomer
    assert [a.kind for a in late[:5]] == ["claimed"] * 5
    assert [a.kind for a in late[5:]] == ["deferred"] * 25
    assert [a.wait_ms for a in late[5:]] == [50 * k for k in range(1, 26)]
    assert (newcomer.kind, newcomer.wait_ms) == ("deferred", 1_300)


async def test_due_turns_not_yet_claimed_count_against_the_burst_of_newcomers(
    redis: Redis,
) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse("10/s", burst=3)
    for i in range(6):
        await limiter.reserve("sms", spec, job_id=f"j{i}", now_ms=T0)

    # At T0 + 2 s the bucket would be full again (3 tokens), but the turns of j3..j5 came and
    # their jobs have not claimed them: those three tokens are theirs, none is left for others
    newcomer = await limiter.reserve("sms", spec, job_id="new", now_ms=T0 + 2_000)
    back = [
        await limiter.reserve("sms", spec, job_id=f"j{i}", now_ms=T0 + 2_000) for i in (3, 4, 5)
    ]

    assert (newcomer.kind, newcomer.wait_ms) == ("deferred", 100)
    assert [a.kind for a in back] == ["claimed"] * 3


async def test_refused_without_reserving_charges_nothing(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse("10/s", burst=1)
    window = keys.ratelimit("q", "10per1000ms")
    await limiter.reserve("q", spec, job_id="a", now_ms=T0)
    before = await read_window(redis, window)

    refused = await limiter.reserve("q", spec, job_id="b", hold_ms=50, reserve=False, now_ms=T0)
    held = await limiter.reserve("q", spec, job_id="c", hold_ms=100, reserve=False, now_ms=T0)

    assert (refused.kind, refused.wait_ms) == ("refused", 100)
    assert (held.kind, held.wait_ms) == ("hold", 100)
    assert before == WindowState(0, T0)
    assert await read_window(redis, window) == WindowState(-1_000, T0)
    assert await redis.zcard(turns_key("q")) == 0


async def test_reserve_refuses_a_cost_above_capacity(redis: Redis) -> None:
    with pytest.raises(ConfigError, match="exceeds this limit's capacity"):
        await RateLimiter(redis).reserve("x", SPEC_10, cost=11, now_ms=T0)


async def test_turn_keys_expire_with_the_last_turn(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse("10/s", burst=1)
    await limiter.reserve("sms", spec, job_id="a", now_ms=T0)
    await limiter.reserve("sms", spec, now_ms=T0, stale_ms=1_000)

    ttls = [await redis.pttl(turns_key("sms")), await redis.pttl(line_key("sms"))]
    assert all(0 < ttl <= 1_101 for ttl in ttls), ttls


# --- throttle ---------------------------------------------------------------------------------


async def test_a_throttle_moves_the_whole_line_back_by_the_pause(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse("10/s", burst=1)
    await limiter.reserve("twilio", spec, job_id="a", now_ms=T0)
    for name in ("b", "c", "d"):
        await limiter.reserve("twilio", spec, job_id=name, now_ms=T0)

    # Given a 429 with Retry-After 30 s at T0 + 50, while b, c and d wait for T0 + 100..300
    await limiter.throttle("twilio", 30, spec=spec, now_ms=T0 + 50)

    # Then b, back on its old turn, is told to wait out the pause and keeps its place
    b = await limiter.reserve("twilio", spec, job_id="b", now_ms=T0 + 100)
    assert (b.kind, b.wait_ms) == ("deferred", 30_000)
    # And the line resumes after the block with its spacing: b at +30.1 s, c at +30.2 s, and
    # a newcomer after d
    assert (await limiter.reserve("twilio", spec, job_id="b", now_ms=T0 + 30_100)).runs_now
    c = await limiter.reserve("twilio", spec, job_id="c", now_ms=T0 + 30_250)
    assert c.kind == "claimed"
    newcomer = await limiter.reserve("twilio", spec, job_id="e", now_ms=T0 + 30_250)
    assert (newcomer.kind, newcomer.wait_ms) == ("deferred", 150)
    # And nobody runs inside the block
    assert (await limiter.reserve("twilio", spec, job_id="f", now_ms=T0 + 20_000)).wait_ms > 10_000


async def test_a_throttle_on_an_idle_bucket_pauses_it_then_lets_the_burst_through(
    redis: Redis,
) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse("10/s", burst=3)

    await limiter.throttle("resend", 5, spec=spec, now_ms=T0)

    during = await limiter.reserve("resend", spec, job_id="a", hold_ms=0, now_ms=T0 + 1_000)
    assert (during.kind, during.wait_ms) == ("deferred", 4_000)
    after = [
        await limiter.reserve("resend", spec, job_id=f"n{i}", now_ms=T0 + 5_000) for i in range(3)
    ]
    assert [a.kind for a in after] == ["granted", "granted", "deferred"]
    assert after[-1].wait_ms == 100
    assert (await limiter.reserve("resend", spec, job_id="a", now_ms=T0 + 5_000)).kind == "claimed"


async def test_a_shorter_throttle_changes_nothing(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse("10/s", burst=1)
    await limiter.reserve("x", spec, job_id="a", now_ms=T0)
    await limiter.reserve("x", spec, job_id="b", now_ms=T0)
    await limiter.throttle("x", 10, spec=spec, now_ms=T0)
    shift = await redis.hget(line_key("x"), "shift")

    await limiter.throttle("x", 2, spec=spec, now_ms=T0 + 1_000)

    assert await redis.hget(line_key("x"), "shift") == shift == b"10000"


# --- per-key buckets --------------------------------------------------------------------------


async def test_per_key_buckets_keep_separate_lines(redis: Redis) -> None:
    registry = Registry()

    @registry.task(queue="sms", rate_limit="1/15s", rate_key=lambda p: p["to"])
    async def notify(ctx: Context[Any], payload: dict[str, Any]) -> None: ...

    task = registry.get("notify")
    gate = TokenBucketGate(redis, registry, hold_s=0)

    # Given two jobs to one number and one to another
    first = await gate.admit(task, {"to": "+15550001"}, "j1")
    second = await gate.admit(task, {"to": "+15550001"}, "j2")
    other = await gate.admit(task, {"to": "+15550002"}, "j3")

    # Then the second to the same number waits 15 s in that number's line; the other runs now
    assert first[0] == 0.0 and other[0] == 0.0
    assert 14.0 < second[0] <= 15.0
    assert first[1] == second[1] != other[1]
    assert await redis.zcard(turns_key(second[1] or "")) == 1
    assert b"+1555" not in b"".join(await redis.keys("*"))


# --- the gate ---------------------------------------------------------------------------------


def limited_registry(rate: str = "20/s", burst: int | None = 20) -> Registry:
    registry = Registry()

    @registry.task(queue="limited", rate_limit=rate, rate_burst=burst)
    async def limited(ctx: Context[Any], payload: dict[str, Any]) -> None: ...

    @registry.task(queue="mixed", rate_limit=rate, rate_burst=burst)
    async def mixed_limited(ctx: Context[Any], payload: dict[str, Any]) -> None: ...

    @registry.task(queue="mixed")
    async def mixed_free(ctx: Context[Any], payload: dict[str, Any]) -> None: ...

    return registry


async def test_gate_runs_the_burst_holds_near_turns_and_defers_later_ones(redis: Redis) -> None:
    registry = limited_registry()
    gate = TokenBucketGate(redis, registry, hold_s=0.2)
    task = registry.get("mixed_limited")

    async def admit(i: int) -> float:
        wait, _, _ = await gate.admit(task, {}, f"j{i}")
        return wait

    loop = asyncio.get_running_loop()
    started = loop.time()
    waits = await asyncio.gather(*(admit(i) for i in range(40)))
    elapsed = loop.time() - started

    # The burst of 20 ran at once, about 4 jobs waited in place (up to 0.2 s), the rest deferred
    ran = sum(1 for w in waits if w == 0.0)
    deferred = sorted(w for w in waits if w > 0)
    assert 23 <= ran <= 25, waits
    assert len(deferred) == 40 - ran
    assert deferred[-1] <= 1.0
    assert 0.1 <= elapsed < 1.0
    counts = gate.counts["mixed_limited"]
    assert (counts.granted, counts.held + counts.granted, counts.deferred) == (20, ran, 40 - ran)
    view = gate.line_view("mixed_limited")
    assert view is not None and 0 < view.waiting <= 40 - ran


async def test_gate_holds_no_more_than_max_holding_at_once(redis: Redis) -> None:
    registry = limited_registry(rate="10/s", burst=1)
    gate = TokenBucketGate(redis, registry, hold_s=5, max_holding=3)
    task = registry.get("mixed_limited")
    await gate.admit(task, {}, "first")

    results = await asyncio.gather(*(gate.admit(task, {}, f"j{i}") for i in range(6)))

    assert sum(1 for wait, _, _ in results if wait == 0.0) == 3
    assert gate.holding == 0


async def test_gate_only_gates_a_queue_whose_every_job_needs_one_bucket(redis: Redis) -> None:
    registry = limited_registry()

    @registry.task(queue="keyed", rate_limit="1/s", rate_key=lambda p: p["to"])
    async def keyed(ctx: Context[Any], payload: dict[str, Any]) -> None: ...

    gate = TokenBucketGate(redis, registry)

    assert gate.gated("limited")
    assert not gate.gated("mixed")
    assert not gate.gated("keyed")
    assert not gate.gated("unknown")


async def test_plan_reads_reads_a_gated_queue_only_as_far_as_its_turns(redis: Redis) -> None:
    now = [1000.0]
    registry = limited_registry(rate="20/s", burst=5)
    gate = TokenBucketGate(redis, registry, read_ahead_s=0.5, settle_s=0.2, clock=lambda: now[0])
    task = registry.get("limited")
    bucket, spec = bucket_name(task, {}), gate.specs["limited"]

    # A full bucket: its burst plus the turns of the next 500 ms
    plan = await gate.plan_reads(["mixed", "limited"], 100)
    assert plan.reads == [("mixed", 100), ("limited", 15)]
    assert plan.wait_queues == ["mixed", "limited"]
    assert plan.wait_count == 15

    # Just read: held while the jobs read take their turns; the other queues read as usual
    plan = await gate.plan_reads(["mixed", "limited"], 100)
    assert plan.reads == [("mixed", 100)]
    assert plan.wait_queues == ["mixed"]
    assert plan.max_wait_ms is not None and plan.max_wait_ms <= 201

    # When 45 jobs have taken the burst and 2 s of turns, it is held until 250 ms are left
    for i in range(45):
        await gate.limiter.reserve(bucket, spec, job_id=f"j{i}")
    await redis.delete(reads_key(bucket))
    now[0] += 1
    plan = await gate.plan_reads(["limited"], 100)
    assert plan.reads == []
    assert plan.wait_queues == []
    assert plan.max_wait_ms is not None and 1_650 <= plan.max_wait_ms <= 2_000
    assert gate.queue_hold_ms("limited") == plan.max_wait_ms - 1
    assert gate.queue_hold_ms("mixed") == 0

    # And then the next read fetches a batch: the turns of the next 500 ms after the line
    now[0] += plan.max_wait_ms / 1000
    await asyncio.sleep(plan.max_wait_ms / 1000)
    plan = await gate.plan_reads(["limited"], 100)
    assert len(plan.reads) == 1 and 3 <= plan.reads[0][1] <= 9


async def test_gated_jobs_are_refused_rather_than_recorded(redis: Redis) -> None:
    registry = limited_registry(rate="10/s", burst=1)
    gate = TokenBucketGate(redis, registry, hold_s=0.15)
    task = registry.get("limited")
    await gate.plan_reads(["limited"], 10)  # the worker reads the queue through the gate

    first = await gate.admit(task, {}, "j0")
    later = await asyncio.gather(gate.admit(task, {}, "j1"), gate.admit(task, {}, "j2"))
    waits = [first[0], *sorted(wait for wait, _, _ in later)]

    assert waits[:2] == [0.0, 0.0]  # granted, then waited 100 ms in place
    assert 0.1 <= waits[2] <= 0.2  # refused: asks again later, nothing charged for it
    assert gate.counts["limited"].refused == 1
    assert await redis.zcard(turns_key(bucket_name(task, {}))) == 0


async def test_the_gate_says_when_each_run_got_its_token_on_the_redis_clock(redis: Redis) -> None:
    """Given a bucket of 10/s with burst 1: the first job is granted now, the second waits in
    place for its turn 100 ms later, a third is refused; the first two are told the Redis time
    their token became theirs (what the limit holds for), the refused one is told none."""
    registry = limited_registry(rate="10/s", burst=1)
    gate = TokenBucketGate(redis, registry, hold_s=0.15)
    task = registry.get("limited")
    await gate.plan_reads(["limited"], 10)
    before = await redis_ms(redis)

    first = await gate.admit(task, {}, "j0")
    held, refused = await asyncio.gather(gate.admit(task, {}, "j1"), gate.admit(task, {}, "j2"))

    after = await redis_ms(redis)
    assert first.turn_ms is not None and before <= first.turn_ms <= after
    assert held.wait_s == 0.0 and held.turn_ms == first.turn_ms + 100
    assert refused.wait_s > 0 and refused.turn_ms is None


async def test_a_gated_queue_read_without_plan_reads_records_turns_as_usual(
    redis: Redis,
) -> None:
    registry = limited_registry(rate="10/s", burst=1)
    gate = TokenBucketGate(redis, registry, hold_s=0.15)
    task = registry.get("limited")

    first = await gate.admit(task, {}, "j0")
    later = await asyncio.gather(gate.admit(task, {}, "j1"), gate.admit(task, {}, "j2"))

    assert first[0] == 0.0
    assert sorted(wait for wait, _, _ in later)[0] == 0.0
    assert gate.counts["limited"].deferred == 1
    assert await redis.zcard(turns_key(bucket_name(task, {}))) == 1


async def test_gate_throttle_pauses_the_task_bucket(redis: Redis) -> None:
    registry = limited_registry(rate="10/s", burst=1)
    gate = TokenBucketGate(redis, registry, hold_s=0)
    task = registry.get("mixed_limited")
    await gate.admit(task, {}, "a")
    await gate.admit(task, {}, "b")

    await gate.throttle(task, {}, None, 30)

    wait, bucket, _ = await gate.admit(task, {}, "c")
    assert 29.5 < wait <= 30.3
    assert await redis.hget(line_key(bucket or ""), "shift") is not None


async def test_jobs_waiting_in_place_ask_again_after_a_throttle_of_this_process(
    redis: Redis,
) -> None:
    registry = limited_registry(rate="10/s", burst=1)
    gate = TokenBucketGate(redis, registry, hold_s=1.0)
    task = registry.get("mixed_limited")
    await gate.admit(task, {}, "first")

    # Given three jobs waiting in place for turns 100-300 ms away
    waiting = [asyncio.create_task(gate.admit(task, {}, f"j{i}")) for i in range(3)]
    await asyncio.sleep(0.05)
    # When the provider says "slow down" for 2 s
    await gate.throttle(task, {}, None, 2)

    # Then none of them runs now: each asks again when the pause is over
    waits = [wait for wait, _, _ in await asyncio.gather(*waiting)]
    assert all(1.5 < wait <= 2.0 for wait in waits), waits


# --- the deferral log -------------------------------------------------------------------------


def test_deferral_log_summarises_per_task_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    views = {"send_welcome_email": LineView(9_870, 0.8)}
    deferrals = DeferralLog(interval_s=60, line=views.get, clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="qrunner.ratelimit")

    # Given 1000 deferrals of one task over two minutes and one of another
    for i in range(1_000):
        now[0] = i * 0.12
        deferrals.deferred("send_welcome_email", f"j{i}", 3600.0 if i == 500 else 2.0)
    deferrals.deferred("send_sms", "x", 1.5)
    deferrals.flush()

    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    # Then each deferral is a DEBUG line, and INFO has one line per task per minute at most
    assert len(debug) == 1_001
    assert len(info) == 4
    welcome = [m for m in info if "welcome" in m]
    assert len(welcome) == 3  # the first at once, then at 60 s, then the rest at the end
    assert info[0].startswith(
        "rate limited: send_welcome_email: 9870 jobs waiting, next turn in 0.8 s (1 deferred"
    )
    assert "longest wait 3600.0 s" in "".join(info)
    assert sum(int(m.split("(")[1].split()[0]) for m in info if "welcome" in m) == 1_000
    assert any(m.startswith("rate limited: send_sms: 1 deferred by this worker") for m in info)


def test_deferral_log_tick_emits_what_is_due(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    deferrals = DeferralLog(interval_s=10, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="qrunner.ratelimit")
    deferrals.deferred("t", "a", 1.0)
    deferrals.deferred("t", "b", 1.0)
    deferrals.tick()
    now[0] = 10.0
    deferrals.tick()
    deferrals.tick()

    assert [r.getMessage().split(": ")[2][:1] for r in caplog.records] == ["1", "1"]


async def test_rate_limit_state_is_exported_as_metrics(redis: Redis) -> None:
    """Given a backlog above a limit run by a worker with the gate and the metrics observer, the
    exposition shows admissions, time waited and the jobs waiting per task."""
    from prometheus_client.parser import text_string_to_metric_families

    from qrunner.admission import TokenBucketGate
    from qrunner.metrics import Metrics
    from qrunner.queue import Client
    from qrunner.worker import Worker
    from tests.helpers import limited_tasks
    from tests.worker_fixtures import FAST

    client = Client(redis, limited_tasks.registry)
    await client.enqueue_many([("mixed_limited", {}) for _ in range(30)])
    gate = TokenBucketGate(redis, limited_tasks.registry)
    metrics = Metrics(tasks=limited_tasks.registry.names)
    metrics.watch_gate(gate)
    await Worker(
        redis,
        limited_tasks.registry,
        burst=True,
        settings=FAST,
        gate=gate,
        observer=metrics,
        queues=["mixed"],
    ).run()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
    }
    granted = samples[
        ("qrunner_rate_limit_admissions_total", (("kind", "granted"), ("task", "mixed_limited")))
    ]
    waited = [
        v for (name, _), v in samples.items() if name == "qrunner_rate_limit_wait_seconds_total"
    ]
    assert granted >= 1 and sum(waited) > 0
    assert ("qrunner_rate_limit_waiting", (("task", "mixed_limited"),)) in samples
