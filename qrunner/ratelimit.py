"""Distributed rate limits: token buckets kept in Redis and shared by every worker.

A bucket (``"sender"``, ``"api"``) has one or more windows, e.g. ``1/s`` and ``200/day``; a
take succeeds only when every window has the tokens, so a burst that fits the per-second window
still cannot overrun the daily one. Each take is one Lua script judged on the Redis clock (G7),
so workers on different hosts, with skewed clocks, share one limit. There is no lock or lease:
a worker killed right after taking tokens has merely spent them, and the bucket keeps refilling
for everyone else.

When a provider answers 429 anyway (its own limit is stricter or shared with other clients),
:meth:`RateLimiter.throttle` blocks the whole bucket until its Retry-After, so every worker
backs off instead of each discovering the 429 on its own.

The maths lives in :mod:`qrunner.tokenbucket` (pure, unit-tested); ``lua/take_tokens.lua``
mirrors it.

Jobs that find no token take their place in the bucket's line (:meth:`RateLimiter.reserve`,
``lua/reserve_turn.lua``): they are charged at once and told when their turn comes, so a backlog
above the limit costs one deferral per job rather than one per refill. A job whose turn lies
ahead is recorded under its id and runs without a second charge when it comes back. Turns are
given out strictly in the order jobs ask, so the bucket's rate and burst hold for the turns. A
turn that has come is a token set aside for its job until the job comes back (its workers may be
busy); set-aside tokens count against the bucket's capacity, so late jobs never run more at once
than the burst, and turns that come while the bucket is full of them lapse (their jobs queue
again).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from qrunner import keys
from qrunner.errors import ConfigError
from qrunner.scripts import Script
from qrunner.tokenbucket import MAX_CREDIT, Limit

log = logging.getLogger(__name__)


def turns_key(bucket: str) -> str:
    """Sorted set of the bucket's recorded turns: job id (or ``~<n>``) -> turn ms less shift."""
    return f"{keys.PREFIX}:rl:{{{bucket}}}:turns"


def reads_key(bucket: str) -> str:
    """Jobs of a gated queue allowed to a reader and not yet admitted (a short-lived count)."""
    return f"{keys.PREFIX}:rl:{{{bucket}}}:reads"


def line_key(bucket: str) -> str:
    """Hash of the bucket's line: ``shift`` (ms the line was pushed back by throttles) and
    ``seq`` (the last anonymous member)."""
    return f"{keys.PREFIX}:rl:{{{bucket}}}:line"


_UNIT_MS: dict[str, int] = {
    "ms": 1,
    "s": 1_000,
    "sec": 1_000,
    "second": 1_000,
    "m": 60_000,
    "min": 60_000,
    "minute": 60_000,
    "h": 3_600_000,
    "hour": 3_600_000,
    "d": 86_400_000,
    "day": 86_400_000,
}
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")
_RATE_HELP = (
    "expected '<tokens>/<period>' such as '10/s', '10/min', '20/h', '200/day', '10/5m' or "
    "'1/15s' (units: ms, s, m or min, h, d or day)"
)


@dataclass(frozen=True)
class Rate:
    """``tokens`` per ``period_ms`` milliseconds."""

    tokens: int
    period_ms: int

    @property
    def window(self) -> str:
        """Key suffix naming this window; two specs with the same rate share its tokens."""
        return f"{self.tokens}per{self.period_ms}ms"


def parse_rate(text: str) -> Rate:
    """Read ``"10/s"``, ``"200/day"``, ``"10/5m"``...; a typo is a :class:`ConfigError`."""
    match = _RATE_RE.match(text.lower()) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"invalid rate {text!r}: {_RATE_HELP}")
    tokens_text, count_text, unit = match.groups()
    unit_ms = _UNIT_MS.get(unit)
    if unit_ms is None and len(unit) > 2 and unit.endswith("s"):  # "days", "mins"
        unit_ms = _UNIT_MS.get(unit[:-1])
    if unit_ms is None:
        raise ConfigError(f"invalid rate {text!r}: unknown unit {unit!r}; {_RATE_HELP}")
    tokens = int(tokens_text)
    count = int(count_text) if count_text else 1
    if tokens < 1 or count < 1:
        raise ConfigError(f"invalid rate {text!r}: tokens and period must be at least 1")
    return Rate(tokens, count * unit_ms)


@dataclass(frozen=True)
class RateLimitSpec:
    """The windows of one bucket, shortest first, and the burst of the shortest one.

    ``burst`` is the capacity of the shortest window: how many tokens may go at once after an
    idle spell. By default it equals that window's tokens (no burst above the rate). Longer
    windows hold exactly their tokens, so ``200/day`` never allows more than 200 in a day.
    """

    rates: tuple[Rate, ...]
    burst: int | None = None

    def __post_init__(self) -> None:
        if not self.rates:
            raise ConfigError("a rate limit needs at least one rate")
        periods = [rate.period_ms for rate in self.rates]
        if len(set(periods)) != len(periods):
            # "10/s" with "5/s" means only "5/s"; saying so beats guessing which one had the burst.
            raise ConfigError(f"rate limit has two rates over the same period: {self.rates}")
        if self.burst is not None and self.burst < 1:
            raise ConfigError(f"burst must be at least 1, got {self.burst}")
        object.__setattr__(self, "rates", tuple(sorted(self.rates, key=lambda r: r.period_ms)))
        self.limits()  # fails now, at configuration time, rather than on first use

    @classmethod
    def parse(cls, rate: str | Sequence[str], burst: int | None = None) -> RateLimitSpec:
        """Build a spec from ``"10/s"`` or ``["1/s", "200/day"]``."""
        texts = [rate] if isinstance(rate, str) else list(rate)
        return cls(tuple(parse_rate(text) for text in texts), burst)

    @property
    def capacity(self) -> int:
        """Largest cost that can ever be granted: the smallest capacity of any window."""
        return min(limit.capacity for limit in self.limits())

    def limits(self) -> tuple[Limit, ...]:
        """The windows as :mod:`qrunner.tokenbucket` limits, capacities filled in."""
        first = self.rates[0]
        capacities = [self.burst or first.tokens, *(r.tokens for r in self.rates[1:])]
        for rate, capacity in zip(self.rates, capacities, strict=True):
            if capacity * rate.period_ms > MAX_CREDIT:
                raise ConfigError(
                    f"rate {rate.tokens}/{rate.period_ms}ms with capacity {capacity} is too "
                    "large to count exactly; use a shorter period"
                )
        return tuple(
            Limit(r.tokens, r.period_ms, c) for r, c in zip(self.rates, capacities, strict=True)
        )

    def check_cost(self, cost: int) -> None:
        """Refuse a cost no window could ever grant, rather than wait for it forever."""
        if cost < 1:
            raise ConfigError(f"rate-limit cost must be at least 1, got {cost}")
        if cost > self.capacity:
            raise ConfigError(
                f"rate-limit cost {cost} exceeds this limit's capacity of {self.capacity} tokens "
                "and could never be granted; raise the burst or split the work"
            )


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer of :meth:`RateLimiter.reserve` for one job."""

    #: How the job was admitted: ``granted`` (tokens taken now), ``claimed`` (its recorded turn
    #: is due), ``hold`` (its turn is within the hold: wait ``wait_ms`` in place, then run),
    #: ``deferred`` (its turn is recorded; come back in ``wait_ms``) or ``refused`` (nothing
    #: charged or recorded; ask again in ``wait_ms``).
    kind: str
    wait_ms: int
    #: Jobs deferred to a recorded turn of this bucket, after this call; -1 when not looked up
    #: (a grant, or a wait in place, leaves the recorded turns as they were).
    waiting: int
    #: Milliseconds until the earliest recorded turn (0 if due); -1 when none, or not looked up.
    next_turn_ms: int
    #: When the job's token is its own, on the Redis clock (ms since epoch): the moment it was
    #: judged for ``granted`` and ``claimed``, the end of the wait for ``hold``; None otherwise.
    turn_at_ms: int | None = None

    @property
    def runs_now(self) -> bool:
        return self.kind in ("granted", "claimed")


class Verdict(NamedTuple):
    """What a worker's rate gate decided for one job."""

    #: Seconds until the job may ask again (0.0: it runs now).
    wait_s: float
    #: The bucket judged; None for a task without a limit.
    bucket: str | None
    #: When the job's token became its own, on the Redis clock (ms); None unless it runs now.
    turn_ms: int | None = None


_ADMISSION_KINDS = {1: "granted", 2: "claimed", 3: "hold", 4: "deferred", 5: "refused"}


class RateLimiter:
    """Typed client of ``take_tokens.lua``, ``reserve_turn.lua``, ``bucket_allowance.lua`` and
    ``throttle_bucket.lua``."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._take = Script("take_tokens")
        self._reserve = Script("reserve_turn")
        self._allowance = Script("bucket_allowance")
        self._throttle = Script("throttle_bucket")

    @staticmethod
    def _window_keys(bucket: str, spec: RateLimitSpec) -> list[str]:
        return [keys.ratelimit(bucket, rate.window) for rate in spec.rates]

    @staticmethod
    def _window_args(spec: RateLimitSpec) -> list[int | str]:
        args: list[int | str] = []
        for limit in spec.limits():
            args += [limit.tokens, limit.period_ms, limit.capacity]
        return args

    async def acquire(
        self, bucket: str, spec: RateLimitSpec, cost: int = 1, *, now_ms: int | None = None
    ) -> float:
        """Take ``cost`` tokens: 0.0 when granted, else the seconds to wait (nothing taken).

        The wait is exact for a lone caller; with competitors, whoever arrives first after it
        wins, so a loser simply asks again. ``now_ms`` replaces the Redis clock (tests only).
        """
        spec.check_cost(cost)
        limits = spec.limits()
        bucket_keys = [keys.ratelimit(bucket, rate.window) for rate in spec.rates]
        bucket_keys.append(keys.ratelimit_block(bucket))
        args: list[int | str] = [cost, "" if now_ms is None else now_ms]
        for limit in limits:
            args += [limit.tokens, limit.period_ms, limit.capacity]
        try:
            granted, wait_ms = await self._take(self._redis, bucket_keys, args)
        except ResponseError as exc:
            if "QRCOSTOVERCAPACITY" in str(exc) or "QRBADARGS" in str(exc):
                raise ConfigError(f"rate limit {bucket!r}: {exc}") from exc
            raise
        return 0.0 if int(granted) else int(wait_ms) / 1000.0

    async def reserve(
        self,
        bucket: str,
        spec: RateLimitSpec,
        cost: int = 1,
        *,
        job_id: str | None = None,
        hold_ms: int = 0,
        reserve: bool = True,
        max_wait_ms: int = 0,
        stale_ms: int = 3_600_000,
        now_ms: int | None = None,
    ) -> Admission:
        """Admit one job: run it now, or give it its turn in the bucket's line.

        A job that finds no token is charged now and its turn is when the bucket will have
        earned it, after every job that asked before it. A turn at most ``hold_ms`` away is the
        caller's to wait for in place (``hold``); a later one is recorded under ``job_id`` and
        the job is told to come back then (``deferred``), when it runs without a second charge
        (``claimed``). ``max_wait_ms`` caps the wait reported for a recorded turn: the job then
        asks again and is told the rest. Without ``job_id`` a returning job claims the earliest
        turn that is due, whoever it was recorded for. With ``reserve=False`` a job whose turn
        is further than ``hold_ms`` is ``refused`` and nothing is charged. Recorded turns
        overdue by more than ``stale_ms`` are forgotten. ``now_ms`` replaces the Redis clock
        (tests only).
        """
        answers = await self.reserve_many(
            bucket,
            spec,
            [(job_id, hold_ms)],
            cost,
            reserve=reserve,
            max_wait_ms=max_wait_ms,
            stale_ms=stale_ms,
            now_ms=now_ms,
        )
        return answers[0]

    async def reserve_many(
        self,
        bucket: str,
        spec: RateLimitSpec,
        jobs: Sequence[tuple[str | None, int]],
        cost: int = 1,
        *,
        reserve: bool = True,
        max_wait_ms: int = 0,
        stale_ms: int = 3_600_000,
        now_ms: int | None = None,
    ) -> list[Admission]:
        """:meth:`reserve` for several jobs of one bucket and cost, given as ``(job_id,
        hold_ms)``, in one round trip; judged in order, as separate calls would judge them."""
        spec.check_cost(cost)
        bucket_keys = self._window_keys(bucket, spec)
        bucket_keys += [
            keys.ratelimit_block(bucket),
            turns_key(bucket),
            line_key(bucket),
            reads_key(bucket),
        ]
        args: list[int | str] = [
            cost,
            "" if now_ms is None else now_ms,
            1 if reserve else 0,
            max(0, max_wait_ms),
            max(0, stale_ms),
            len(jobs),
        ]
        for job_id, hold_ms in jobs:
            args += [job_id or "", max(0, hold_ms)]
        args += self._window_args(spec)
        try:
            reply = await self._reserve(self._redis, bucket_keys, args)
        except ResponseError as exc:
            if "QRCOSTOVERCAPACITY" in str(exc) or "QRBADARGS" in str(exc):
                raise ConfigError(f"rate limit {bucket!r}: {exc}") from exc
            raise
        waiting, next_ms, judged_at = int(reply[-3]), int(reply[-2]), int(reply[-1])
        answers = []
        for i in range(len(jobs)):
            code, wait = int(reply[2 * i]), int(reply[2 * i + 1])
            turn_at = judged_at + wait if code <= 3 else None
            answers.append(Admission(_ADMISSION_KINDS[code], wait, waiting, next_ms, turn_at))
        return answers

    async def allowance(
        self,
        bucket: str,
        spec: RateLimitSpec,
        horizon_ms: int,
        *,
        settle_ms: int = 0,
        most: int = 0,
        lead_ms: int = 0,
        now_ms: int | None = None,
    ) -> tuple[int, int, int]:
        """``(count, first_ms, busy_ms)``: how many one-token jobs a reader may fetch now (at
        most ``most`` when above 0), whose turns would all be within ``horizon_ms``; the ms
        until the first such turn; and, when the count is 0 only because other readers were
        just allowed those turns, the ms until their share lapses. With ``lead_ms`` above 0 the
        count is 0 while that first turn is further away than ``lead_ms`` (the line is long
        enough: read later, in one batch). What a reader is allowed is
        set aside for ``settle_ms`` or until its jobs are admitted (:meth:`reserve_many` with
        ``reserve=False`` takes them out), whichever comes first; the bucket itself is only
        read.
        """
        bucket_keys = [
            *self._window_keys(bucket, spec),
            keys.ratelimit_block(bucket),
            reads_key(bucket),
        ]
        args: list[int | str] = [
            "" if now_ms is None else now_ms,
            max(0, horizon_ms),
            max(0, settle_ms),
            max(0, most),
            max(0, lead_ms),
            *self._window_args(spec),
        ]
        count, first_ms, busy_ms = await self._allowance(self._redis, bucket_keys, args)
        return int(count), int(first_ms), int(busy_ms)

    async def throttle(
        self,
        bucket: str,
        seconds: float,
        *,
        spec: RateLimitSpec | None = None,
        now_ms: int | None = None,
    ) -> None:
        """Block ``bucket`` for every caller for ``seconds`` (never shortening a longer block).

        With the bucket's ``spec`` the bucket is paused rather than only blocked: its windows
        earn nothing meanwhile and every turn given out by :meth:`reserve` moves back by the
        length of the pause, so the jobs in line neither run inside the block nor all at once
        when it ends.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"throttle seconds must be finite and >= 0, got {seconds}")
        block_ms = math.ceil(seconds * 1000)
        bucket_keys = [keys.ratelimit_block(bucket)]
        args: list[int | str] = [block_ms, "" if now_ms is None else now_ms]
        if spec is not None:
            bucket_keys += [line_key(bucket), turns_key(bucket), *self._window_keys(bucket, spec)]
            args += self._window_args(spec)
        await self._throttle(self._redis, bucket_keys, args)


@dataclass(frozen=True, slots=True)
class LineView:
    """What a worker last heard about the line of a task's bucket(s)."""

    #: Jobs deferred to a recorded turn (summed over the task's buckets when it has several).
    waiting: int
    #: Seconds until the earliest of those turns (0 if due), None when none is recorded.
    next_turn_s: float | None


@dataclass(slots=True)
class _Pending:
    since: float
    deferred: int = 0
    waited_s: float = 0.0
    longest_s: float = 0.0


class DeferralLog:
    """Rate-limit deferrals as one DEBUG line per job and one INFO summary per task per interval.

    A backlog above a limit defers every job once (to its turn); an INFO line for each would
    flood the log with thousands of lines. The worker calls :meth:`deferred` instead. The first
    deferral of a task after a quiet interval is reported at once, then at most one summary per
    task per ``interval_s``::

        rate limited: send_receipt: 9870 jobs waiting, next turn in 0.8 s (312 deferred
        by this worker in the last 60 s, longest wait 3600.0 s)

    ``line`` (usually :meth:`qrunner.admission.TokenBucketGate.line_view`) supplies the jobs
    waiting and the next turn, as the worker last heard them from Redis. :meth:`tick` emits
    summaries that are due without a new deferral; :meth:`flush` emits what is pending (at
    shutdown).
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        interval_s: float = 60.0,
        line: Callable[[str], LineView | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = logger or log
        self.interval_s = interval_s
        self.line = line
        self.clock = clock
        self._pending: dict[str, _Pending] = {}
        self._last_summary: dict[str, float] = {}

    def deferred(self, task: str, job_id: str, wait_s: float, reason: str = "rate limited") -> None:
        """One job of ``task`` was deferred by ``wait_s`` seconds for its rate limit."""
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("deferred %s %s by %.1fs: %s", task, job_id, wait_s, reason)
        now = self.clock()
        pending = self._pending.get(task)
        if pending is None:
            pending = self._pending[task] = _Pending(since=now)
        pending.deferred += 1
        pending.waited_s += wait_s
        pending.longest_s = max(pending.longest_s, wait_s)
        last = self._last_summary.get(task)
        if last is None or now - last >= self.interval_s:
            self._emit(task, now)

    def tick(self) -> None:
        """Emit the summaries whose interval is over."""
        now = self.clock()
        for task in list(self._pending):
            if now - self._last_summary.get(task, -math.inf) >= self.interval_s:
                self._emit(task, now)

    def flush(self) -> None:
        """Emit every pending summary now."""
        now = self.clock()
        for task in list(self._pending):
            self._emit(task, now)

    def _emit(self, task: str, now: float) -> None:
        pending = self._pending.pop(task, None)
        if pending is None:
            return
        self._last_summary[task] = now
        view = self.line(task) if self.line is not None else None
        span = max(now - pending.since, 0.0)
        here = (
            f"{pending.deferred} deferred by this worker in the last {span:.0f} s, "
            f"longest wait {pending.longest_s:.1f} s"
        )
        if view is None:
            self.log.info("rate limited: %s: %s", task, here)
            return
        turn = "none" if view.next_turn_s is None else f"in {view.next_turn_s:.1f} s"
        self.log.info(
            "rate limited: %s: %d jobs waiting, next turn %s (%s)", task, view.waiting, turn, here
        )
