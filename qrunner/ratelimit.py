"""Distributed rate limits: token buckets kept in Redis and shared by every worker.

A bucket (``"twilio"``, ``"resend"``) has one or more windows, e.g. ``1/s`` and ``200/day``; a
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
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from qrunner import keys
from qrunner.errors import ConfigError
from qrunner.scripts import Script
from qrunner.tokenbucket import MAX_CREDIT, Limit

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


class RateLimiter:
    """Typed client of ``take_tokens.lua`` and ``throttle_bucket.lua``."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._take = Script("take_tokens")
        self._throttle = Script("throttle_bucket")

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

    async def throttle(self, bucket: str, seconds: float, *, now_ms: int | None = None) -> None:
        """Block ``bucket`` for every caller for ``seconds`` (never shortening a longer block)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"throttle seconds must be finite and >= 0, got {seconds}")
        block_ms = math.ceil(seconds * 1000)
        await self._throttle(
            self._redis,
            [keys.ratelimit_block(bucket)],
            [block_ms, "" if now_ms is None else now_ms],
        )
