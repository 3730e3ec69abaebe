"""Rate limits against a real Redis: parsing, the Lua script, throttling, expiry, and several
OS processes sharing one limit.

Times are either passed explicitly (``now_ms``) or read from the Redis clock, never from the
test machine, as the limiter itself does (G7).
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from qrunner import keys
from qrunner.errors import ConfigError
from qrunner.ratelimit import Rate, RateLimiter, RateLimitSpec, parse_rate
from qrunner.scripts import Script
from qrunner.tokenbucket import Limit, WindowState, idle_ttl_ms, take_all
from tests.helpers.clock import redis_ms

pytestmark = pytest.mark.both_topologies

T0 = 1_700_000_000_000
WORKER = Path(__file__).parent / "helpers" / "ratelimit_worker.py"


async def read_window(redis: Redis, key: str) -> WindowState | None:
    credit, ts = await redis.hmget(key, ["credit", "ts"])
    if credit is None or ts is None:
        return None
    return WindowState(int(credit), int(ts))


async def until_gone(redis: Redis, key: str) -> None:
    """Await Redis' own "expired" event for the key, so expiry is judged on the Redis clock."""
    setting = "notify-keyspace-events"
    previous = (await redis.config_get(setting)).get(setting) or ""
    await redis.config_set(setting, "Ex")
    db = redis.connection_pool.connection_kwargs.get("db", 0)
    try:
        async with redis.pubsub() as pubsub, asyncio.timeout(10):
            await pubsub.subscribe(f"__keyevent@{db}__:expired")
            # Subscribed first, then checked: an expiry in between still sends its event.
            if not await redis.exists(key):
                return
            async for message in pubsub.listen():
                if message["type"] == "message" and message["data"] == key.encode():
                    return
    finally:
        await redis.config_set(setting, previous)


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10/s", Rate(10, 1_000)),
        ("10/m", Rate(10, 60_000)),
        ("10/min", Rate(10, 60_000)),
        ("20/h", Rate(20, 3_600_000)),
        ("200/d", Rate(200, 86_400_000)),
        ("200/day", Rate(200, 86_400_000)),
        ("10/5m", Rate(10, 300_000)),
        ("1/15s", Rate(1, 15_000)),
        ("5/100ms", Rate(5, 100)),
        (" 3 / 2days ", Rate(3, 172_800_000)),
        ("60/Minute", Rate(60, 60_000)),
    ],
)
def test_parse_rate_accepts_the_documented_forms(text: str, expected: Rate) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected '<tokens>/<period>'"),
        ("10", "expected '<tokens>/<period>'"),
        ("10/", "expected '<tokens>/<period>'"),
        ("ten/s", "expected '<tokens>/<period>'"),
        ("-1/s", "expected '<tokens>/<period>'"),
        ("1.5/s", "expected '<tokens>/<period>'"),
        ("10/fortnight", "unknown unit 'fortnight'"),
        ("10/ss", "unknown unit 'ss'"),
        ("0/s", "at least 1"),
        ("10/0s", "at least 1"),
    ],
)
def test_parse_rate_rejects_anything_else_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        parse_rate(text)

    assert repr(text) in str(raised.value)


def test_window_name_derives_from_the_rate() -> None:
    assert parse_rate("10/min").window == "10per60000ms"


def test_spec_orders_windows_shortest_first_and_puts_the_burst_on_the_shortest() -> None:
    spec = RateLimitSpec.parse(["200/day", "1/s"], burst=5)

    assert spec.rates == (Rate(1, 1_000), Rate(200, 86_400_000))
    assert spec.limits() == (Limit(1, 1_000, 5), Limit(200, 86_400_000, 200))


def test_spec_without_burst_holds_no_more_than_the_rate() -> None:
    assert RateLimitSpec.parse("10/s").limits() == (Limit(10, 1_000, 10),)


@pytest.mark.parametrize(
    ("rates", "burst", "message"),
    [
        ([], None, "at least one rate"),
        (["10/s", "10/1000ms"], None, "two rates over the same period"),
        (["10/s", "5/s"], None, "two rates over the same period"),
        (["10/s"], 0, "burst must be at least 1"),
        (["1/d"], 2**30, "too large to count exactly"),
    ],
)
def test_spec_rejects_unusable_configurations(
    rates: list[str], burst: int | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        RateLimitSpec.parse(rates, burst=burst)


@pytest.mark.needs_admin
async def test_cost_above_capacity_is_a_config_error_not_an_endless_wait(redis: Redis) -> None:
    spec = RateLimitSpec.parse(["10/s", "2/min"], burst=10)

    with pytest.raises(ConfigError, match="cost 3 exceeds this limit's capacity of 2"):
        await RateLimiter(redis).acquire("sms", spec, cost=3, now_ms=T0)

    assert await redis.keys("qr:rl:*") == []


async def test_the_script_itself_refuses_a_cost_above_capacity(redis: Redis) -> None:
    """Callers that skip the Python check still get an error, not a wait that never ends."""
    script = Script("take_tokens")
    window, block = keys.ratelimit("x", "2per1000ms"), keys.ratelimit_block("x")

    with pytest.raises(ResponseError, match="QRCOSTOVERCAPACITY cost 3 exceeds capacity 2"):
        await script(redis, [window, block], [3, T0, 2, 1_000, 2])
    with pytest.raises(ResponseError, match="QRBADARGS"):
        await script(redis, [window, block], [1, T0, 2, 1_000])


# --- the Lua script mirrors the pure maths --------------------------------------------------

MirrorCase = tuple[tuple[Limit, ...], tuple[WindowState | None, ...], int, int, int | None]


def mirror_cases() -> list[MirrorCase]:
    """Hand-picked edge cases plus a seeded random table covering refill, caps and blocks."""
    per_s = Limit(10, 1_000, 10)
    per_day = Limit(200, 86_400_000, 200)
    cases: list[MirrorCase] = [
        ((per_s,), (None,), T0, 1, None),
        ((per_s,), (WindowState(0, T0),), T0 + 99, 1, None),
        ((per_s,), (WindowState(0, T0),), T0 + 100, 1, None),
        ((per_s,), (WindowState(5_000, T0),), T0 - 1_000, 1, None),
        ((per_s,), (WindowState(50_000, T0),), T0, 1, None),  # above a lowered capacity
        ((Limit(3, 1_000, 3),), (WindowState(0, T0),), T0, 1, None),
        ((per_s, per_day), (WindowState(10_000, T0), WindowState(0, T0)), T0 + 1, 1, None),
        ((per_s, per_day), (None, None), T0, 1, T0 + 1),
        ((per_s, per_day), (None, None), T0, 1, T0),
        ((Limit(7, 86_400_000, 10**6),), (WindowState(1, T0 - 10**9),), T0, 999_999, None),
    ]
    rng = random.Random(20240601)
    periods = [1, 7, 100, 1_000, 15_000, 60_000, 3_600_000, 86_400_000]
    for _ in range(300):
        limits = []
        for _ in range(rng.randint(1, 3)):
            tokens = rng.randint(1, 50)
            limits.append(Limit(tokens, rng.choice(periods), rng.randint(1, 3 * tokens)))
        states = tuple(
            None
            if rng.random() < 0.2
            else WindowState(rng.randint(0, 2 * lim.full_credit), T0 + rng.randint(-5_000, 5_000))
            for lim in limits
        )
        blocked = None if rng.random() < 0.7 else T0 + rng.randint(-10_000, 100_000)
        cost = rng.randint(1, min(lim.capacity for lim in limits))
        cases.append((tuple(limits), states, T0 + rng.randint(-1_000, 200_000), cost, blocked))
    return cases


@pytest.mark.needs_admin
@pytest.mark.single_topology  # one server's transactions and keyspace events
async def test_lua_script_agrees_with_the_pure_maths_on_every_case(redis: Redis) -> None:
    script = Script("take_tokens")
    await script.ensure_loaded(redis)
    for index, (limits, states, now_ms, cost, blocked) in enumerate(mirror_cases()):
        # Given the windows' stored states and the block
        window_keys = [keys.ratelimit(f"mirror{index}", f"w{i}") for i in range(len(limits))]
        block_key = keys.ratelimit_block(f"mirror{index}")
        for key, state in zip(window_keys, states, strict=True):
            if state is not None:
                await redis.hset(key, mapping={"credit": state.credit, "ts": state.last_ms})
        if blocked is not None:
            await redis.set(block_key, blocked)
        args: list[int | str] = [cost, now_ms]
        for lim in limits:
            args += [lim.tokens, lim.period_ms, lim.capacity]

        # When the script takes tokens at now_ms, read back in the same transaction because
        # windows of a few milliseconds expire almost at once
        pipe = redis.pipeline(transaction=True)
        script.queue_in(pipe, [*window_keys, block_key], args)
        for key in window_keys:
            pipe.hmget(key, ["credit", "ts"])
            pipe.pttl(key)
        (granted, wait), *readback = await pipe.execute()

        # Then it decides, stores and expires exactly as the pure maths says
        expected = take_all(limits, states, now_ms, cost, blocked)
        case = f"case {index}: {limits} {states} now={now_ms} cost={cost} blocked={blocked}"
        assert (bool(granted), wait) == (expected.granted, expected.wait_ms), case
        stored = [
            None if credit is None else WindowState(int(credit), int(ts))
            for credit, ts in readback[::2]
        ]
        assert stored == list(expected.states if expected.granted else states), case
        if expected.granted:
            for ttl, lim, state in zip(readback[1::2], limits, expected.states, strict=True):
                assert 0 <= ttl <= idle_ttl_ms(lim, state.credit), case


# --- acquire with explicit time -------------------------------------------------------------


async def test_acquire_grants_the_burst_then_reports_the_wait(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse("10/s", burst=3)

    granted = [await limiter.acquire("email", spec, now_ms=T0) for _ in range(3)]
    denied = await limiter.acquire("email", spec, now_ms=T0 + 40)
    after_wait = await limiter.acquire("email", spec, now_ms=T0 + 100)

    assert granted == [0.0, 0.0, 0.0]
    assert denied == pytest.approx(0.06)
    assert after_wait == 0.0


async def test_several_windows_take_all_or_nothing(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse(["2/s", "3/min"])
    per_second = keys.ratelimit("sms", "2per1000ms")

    # Given two takes at T0 and a third a second later (the minute window's last token)
    assert await limiter.acquire("sms", spec, now_ms=T0) == 0.0
    assert await limiter.acquire("sms", spec, now_ms=T0) == 0.0
    assert await limiter.acquire("sms", spec, now_ms=T0 + 1_000) == 0.0
    before = await read_window(redis, per_second)

    # When the per-second window has tokens again but the per-minute one has not
    wait = await limiter.acquire("sms", spec, now_ms=T0 + 2_000)

    # Then the wait is the minute window's (20 s per token, 2 s earned) and nothing was taken
    assert wait == pytest.approx(18.0)
    assert await read_window(redis, per_second) == before == WindowState(1_000, T0 + 1_000)


async def test_a_three_segment_sms_costs_three_tokens(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse("10/s")

    three_sms = [await limiter.acquire("twilio", spec, cost=3, now_ms=T0) for _ in range(3)]
    fourth = await limiter.acquire("twilio", spec, cost=3, now_ms=T0)
    one_segment = await limiter.acquire("twilio", spec, cost=1, now_ms=T0)

    assert three_sms == [0.0, 0.0, 0.0]
    assert fourth == pytest.approx(0.2)  # one token left, two more at 100 ms each
    assert one_segment == 0.0  # the refused take of three left the last token in place


async def test_acquire_on_the_redis_clock_grants_without_now_ms(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse("1/min")
    key = keys.ratelimit("clock", "1per60000ms")

    first = await limiter.acquire("clock", spec)
    second = await limiter.acquire("clock", spec)
    stored = await read_window(redis, key)
    now = await redis_ms(redis)

    assert first == 0.0
    assert 50.0 < second <= 60.0  # a minute per token, less the moments between the calls
    assert stored is not None and now - 10_000 <= stored.last_ms <= now


# --- throttle -------------------------------------------------------------------------------


@pytest.mark.single_topology  # one server's transactions and keyspace events
async def test_throttle_blocks_every_caller_until_its_time(redis: Redis, redis_url: str) -> None:
    other = Redis.from_url(redis_url)
    try:
        mine, theirs = RateLimiter(redis), RateLimiter(other)
        spec = RateLimitSpec.parse("10/s")

        # Given a provider 429 with Retry-After 30 s at T0
        await mine.throttle("twilio", 30, now_ms=T0)

        # Then every caller, on any connection, waits for the rest of the 30 s
        assert await mine.acquire("twilio", spec, now_ms=T0 + 1) == pytest.approx(29.999)
        assert await theirs.acquire("twilio", spec, now_ms=T0 + 10_000) == pytest.approx(20.0)
        # And a shorter report does not cut the block short
        await theirs.throttle("twilio", 5, now_ms=T0 + 1_000)
        assert await theirs.acquire("twilio", spec, now_ms=T0 + 29_999) == pytest.approx(0.001)
        # And once its time has come, tokens flow again
        assert await theirs.acquire("twilio", spec, now_ms=T0 + 30_000) == 0.0
        # While another bucket was never blocked
        assert await mine.acquire("resend", spec, now_ms=T0 + 1) == 0.0
    finally:
        await other.aclose()


@pytest.mark.single_topology  # one server's transactions and keyspace events
async def test_throttle_on_the_redis_clock_holds_grants_until_the_block_ends(
    redis: Redis, redis_url: str
) -> None:
    others = [Redis.from_url(redis_url) for _ in range(2)]
    try:
        spec = RateLimitSpec.parse("100/s")
        await RateLimiter(redis).throttle("push", 0.2)
        blocked_until = int(await redis.get(keys.ratelimit_block("push")) or 0)

        async def first_grant(client: Redis) -> int:
            limiter = RateLimiter(client)
            # Sleeping the returned wait is how a caller uses the limiter, not a poll.
            while (wait := await limiter.acquire("push", spec)) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            return await redis_ms(client)

        async with asyncio.timeout(10):
            grant_times = await asyncio.gather(*(first_grant(c) for c in others))

        assert blocked_until > 0
        assert all(t >= blocked_until for t in grant_times)
    finally:
        for client in others:
            await client.aclose()


# --- idle keys vanish -----------------------------------------------------------------------


@pytest.mark.needs_admin
@pytest.mark.single_topology  # one server's transactions and keyspace events
async def test_idle_bucket_keys_expire_once_full_again_and_read_as_full(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    spec = RateLimitSpec.parse("5/100ms")
    key = keys.ratelimit("idle", "5per100ms")

    # Given an emptied window, whose key lives until it would be full again
    assert await limiter.acquire("idle", spec, cost=5) == 0.0
    assert 0 < await redis.pttl(key) <= 101

    # When it sits idle, the key goes away
    await until_gone(redis, key)

    # Then the bucket reads as full: the whole burst is granted again
    assert await limiter.acquire("idle", spec, cost=5) == 0.0


@pytest.mark.needs_admin
@pytest.mark.single_topology  # one server's transactions and keyspace events
async def test_lifted_throttle_leaves_no_key(redis: Redis) -> None:
    await RateLimiter(redis).throttle("idle", 0.05)
    key = keys.ratelimit_block("idle")
    assert 0 < await redis.pttl(key) <= 50

    await until_gone(redis, key)

    assert await redis.exists(key) == 0


# --- several OS processes share one limit ---------------------------------------------------

RATE, BURST = 20, 20


@dataclass(frozen=True)
class Grant:
    pid: int
    before_ms: int  # Redis clock before the acquire call
    after_ms: int  # Redis clock after it returned a grant; the grant lies in between


async def run_workers(
    redis: Redis, redis_url: str, run: str, duration_ms: int, die_after: list[int]
) -> tuple[int, int, list[asyncio.subprocess.Process]]:
    """Start one worker process per ``die_after`` entry (0: never), release them together,
    and return (go_ms, end_ms, processes) on the Redis clock."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            redis_url,
            "shared",
            run,
            "--rate",
            f"{RATE}/s",
            "--burst",
            str(BURST),
            "--die-after",
            str(n),
        )
        for n in die_after
    ]
    try:
        for _ in procs:
            assert await redis.blpop([f"test:{run}:ready"], timeout=60) is not None
        go_ms = await redis_ms(redis)
        end_ms = go_ms + duration_ms
        await redis.rpush(f"test:{run}:go", *[end_ms] * len(procs))
    except BaseException:
        await stop(procs)
        raise
    return go_ms, end_ms, procs


async def stop(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def read_grants(redis: Redis, run: str) -> list[Grant]:
    rows = await redis.lrange(f"test:{run}:grants", 0, -1)
    return [Grant(*map(int, row.split())) for row in rows]


def most_in_any_window(grants: list[Grant], span_ms: int) -> int:
    """Most grants certainly inside one window [t, t + span) of the Redis clock.

    A grant counts only when its whole [before, after] bracket lies inside, so scheduling
    delays on a busy machine can never make a correct limiter look wrong. The maximum is
    reached with t at some grant's ``before``, so those are the only windows to try.
    """
    return max(
        sum(1 for g in grants if t <= g.before_ms and g.after_ms < t + span_ms)
        for t in (g.before_ms for g in grants)
    )


@pytest.mark.cluster_once
async def test_three_processes_share_one_limit(redis: Redis, redis_url: str) -> None:
    # Given three OS processes hammering one 20/s bucket (burst 20) for 10 s of Redis time
    go_ms, end_ms, procs = await run_workers(redis, redis_url, "share", 10_000, [0, 0, 0])
    try:
        async with asyncio.timeout(60):
            codes = [await proc.wait() for proc in procs]
    finally:
        await stop(procs)
    grants = await read_grants(redis, "share")

    # Then all three took part, and no second of the Redis clock saw more than rate + burst
    assert codes == [0, 0, 0]
    assert {g.pid for g in grants} == {proc.pid for proc in procs}
    assert most_in_any_window(grants, 1_000) <= RATE + BURST
    # And together they got the rate over the run, plus the initial burst, within 5%
    expected = BURST + RATE * (end_ms - go_ms) / 1_000
    assert abs(len(grants) - expected) <= 0.05 * expected, (len(grants), expected)


@pytest.mark.cluster_once
async def test_a_process_killed_after_taking_tokens_does_not_stall_the_bucket(
    redis: Redis, redis_url: str
) -> None:
    # Given three processes sharing a 20/s bucket, one of which is SIGKILLed right after its
    # 15th grant (well past the initial burst)
    _, end_ms, procs = await run_workers(redis, redis_url, "kill", 4_000, [15, 0, 0])
    victim, survivors = procs[0], procs[1:]
    try:
        async with asyncio.timeout(60):
            victim_code = await victim.wait()
            killed_by_ms = await redis_ms(redis)
            survivor_codes = [await proc.wait() for proc in survivors]
    finally:
        await stop(procs)
    grants = await read_grants(redis, "kill")

    # Then the victim died by SIGKILL, with no chance to clean up
    assert victim_code == -signal.SIGKILL
    assert survivor_codes == [0, 0]
    # And from its death to the end the others kept getting tokens at the rate
    after_death = [g for g in grants if g.before_ms >= killed_by_ms]
    expected = RATE * (end_ms - killed_by_ms) / 1_000
    assert {g.pid for g in after_death} <= {proc.pid for proc in survivors}
    assert abs(len(after_death) - expected) <= max(3.0, 0.1 * expected), (
        len(after_death),
        expected,
    )
