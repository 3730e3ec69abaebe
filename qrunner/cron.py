"""Cron arithmetic: when a schedule fires, which slots are due, which missed slots to catch up.

Pure functions of their inputs (``now`` included), so every rule here is tested with tables and
no Redis. Slots are identified by their epoch milliseconds: an integer is what the scheduler
stores in Redis and puts in idempotency keys, and it cannot be ambiguous the way a local wall time
can.

Expressions have 5 fields (minute hour day-of-month month day-of-week) or 6, the sixth being
seconds as croniter reads it (``* * * * * */15`` fires every 15 seconds), or one of the
``@hourly``/``@daily``/``@weekly``/``@monthly``/``@yearly`` aliases.

Daylight saving time, judged in the entry's own zone, follows ISC (Vixie) cron, which is what
operators already expect of a crontab:

* **Fixed-time entries** (neither the minute nor the hour field starts with ``*``, e.g.
  ``30 1 * * *``) name a wall time. When that wall time occurs twice (fall-back), the entry fires
  once, at the first occurrence. When it does not exist (spring-forward), the entry fires once at
  the instant the clocks jump, so no day is skipped.
* **Interval entries** (the minute or hour field starts with ``*``: ``*/5 * * * *``,
  ``0 * * * *``) describe a cadence. They keep firing by elapsed time: the repeated hour of a
  fall-back day gets its fires (an hourly entry fires 25 times that day) and the vanished hour of
  a spring-forward day has none (23 times), because firing a missing 02:00 at 03:00 next to the
  real 03:00 would double the cadence, and pausing a monitor for an hour would hide an outage.

croniter alone gets the fixed-time fall-back case wrong (it fires ``30 1 * * *`` twice on a
fall-back day), so this module walks croniter over naive wall times and maps each wall time to
instants itself.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import (  # type: ignore[import-untyped, unused-ignore]
    CroniterBadDateError,
    croniter,
)

Catchup = Literal["skip", "latest", "all"]
CATCHUP_POLICIES: tuple[str, ...] = get_args(Catchup)

ALIASES: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Where validation looks for a first fire; any fixed instant works, it only has to be fixed.
_PROBE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


class CronError(ValueError):
    """A cron expression or time zone that cannot be used; the message says why."""


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; raises :class:`CronError` for names the tz database lacks."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(f"unknown time zone {name!r}") from exc


def to_datetime(ms: int, tz: ZoneInfo | None = None) -> datetime:
    """Epoch milliseconds as an aware datetime (UTC unless a zone is given)."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment if tz is None else moment.astimezone(tz)


def to_ms(moment: datetime) -> int:
    """An aware datetime as epoch milliseconds; naive datetimes are refused, not guessed."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("expected a timezone-aware datetime")
    return (moment - _EPOCH) // timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed expression bound to a zone. Build it with :meth:`parse`."""

    expr: str
    fields: str
    tz: ZoneInfo
    interval: bool

    @classmethod
    def parse(cls, expr: str, tz: str | ZoneInfo = "UTC") -> Cron:
        """Validate ``expr`` and ``tz``; raises :class:`CronError` naming the problem.

        An expression that is well-formed but can never fire (``0 0 30 2 *``) is refused too,
        because a schedule that silently never runs is a configuration error.
        """
        zinfo = zone(tz) if isinstance(tz, str) else tz
        text = " ".join(expr.split())
        fields = ALIASES.get(text.lower(), text)
        parts = fields.split(" ")
        if len(parts) not in (5, 6):
            raise CronError(
                f"cron expression {expr!r} has {len(parts)} fields; expected 5 "
                "(minute hour day month weekday) or 6 (the sixth is seconds)"
            )
        if not croniter.is_valid(fields):
            raise CronError(f"invalid cron expression {expr!r}")
        cron = cls(expr, fields, zinfo, parts[0].startswith("*") or parts[1].startswith("*"))
        if cron.next_after(_PROBE_MS) is None:
            raise CronError(f"cron expression {expr!r} never fires")
        return cron

    def iter_after(self, after_ms: int) -> Iterator[int]:
        """Fire instants strictly after ``after_ms``, ascending, each once."""
        start = to_datetime(after_ms, self.tz)
        wall = start.replace(tzinfo=None, microsecond=0)
        # Inside a repeated hour, wall times earlier than ``start``'s still have instants after
        # it (their second occurrence), so the walk starts that much earlier.
        other = start.replace(fold=1 - start.fold)
        offsets = (start.utcoffset(), other.utcoffset())
        lookback = abs(offsets[0] - offsets[1]) if None not in offsets else timedelta(0)  # type: ignore[operator]
        walker = croniter(self.fields, wall - lookback - timedelta(seconds=1))
        pending: list[int] = []
        last = after_ms
        while True:
            try:
                naive: datetime | None = walker.get_next(datetime)
            except CroniterBadDateError:  # no further match within croniter's search horizon
                naive = None
            instants, frontier = ((), None) if naive is None else self._instants(naive)
            while pending and (frontier is None or pending[0] <= frontier):
                moment = heapq.heappop(pending)
                if moment > last:
                    last = moment
                    yield moment
            if frontier is None:
                return
            for moment in instants:
                if moment > after_ms:
                    heapq.heappush(pending, moment)

    def next_after(self, after_ms: int) -> int | None:
        """The first fire strictly after ``after_ms``; None if the expression never fires again."""
        return next(self.iter_after(after_ms), None)

    def slots(self, after_ms: int, until_ms: int, limit: int | None = None) -> list[int]:
        """Fire instants in ``(after_ms, until_ms]``, ascending, at most ``limit`` of them."""
        out: list[int] = []
        if until_ms <= after_ms:
            return out
        for moment in self.iter_after(after_ms):
            if moment > until_ms or (limit is not None and len(out) >= limit):
                break
            out.append(moment)
        return out

    def _instants(self, naive: datetime) -> tuple[tuple[int, ...], int]:
        """The instants one wall time fires at, and a lower bound for every later wall time's."""
        first = naive.replace(tzinfo=self.tz, fold=0)
        second = naive.replace(tzinfo=self.tz, fold=1)
        a, b = to_ms(first), to_ms(second)
        if a == b:
            return (a,), a
        if to_datetime(a, self.tz).replace(tzinfo=None) == naive:
            # Ambiguous (fall-back): fold=0 is the first occurrence.
            early, late = min(a, b), max(a, b)
            return ((early, late) if self.interval else (early,)), early
        # Non-existent (spring-forward): the clocks jump somewhere between the two readings.
        jump = _transition(self.tz, min(a, b), max(a, b))
        return ((), jump) if self.interval else ((jump,), jump)


def _transition(tz: ZoneInfo, lo_ms: int, hi_ms: int) -> int:
    """The first millisecond in ``(lo_ms, hi_ms]`` whose UTC offset differs from ``lo_ms``'s."""
    before = to_datetime(lo_ms, tz).utcoffset()
    lo, hi = lo_ms, hi_ms
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if to_datetime(mid, tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return hi


def next_fire(expr: str, tz: str, after: datetime) -> datetime | None:
    """The first fire of ``expr`` in zone ``tz`` strictly after ``after``, in that zone."""
    cron = Cron.parse(expr, tz)
    moment = cron.next_after(to_ms(after))
    return None if moment is None else to_datetime(moment, cron.tz)


def slots_between(expr: str, tz: str, start: datetime, end: datetime) -> list[int]:
    """Slots (epoch ms) of ``expr`` in zone ``tz`` within ``(start, end]``."""
    return Cron.parse(expr, tz).slots(to_ms(start), to_ms(end))


def catch_up(
    due: Sequence[int],
    now_ms: int,
    policy: Catchup,
    *,
    window_s: float,
    grace_s: float,
    newer_follow: bool = False,
) -> tuple[list[int], int]:
    """Which of the ``due`` slots (ascending, all ``<= now_ms``) to fire, and how many are missed.

    A slot at most ``grace_s`` old is on time and always fires: a busy event loop or a restart
    is not an outage. Older slots were missed, and the policy decides:

    * ``skip``: none of them fire.
    * ``latest``: the newest missed slot fires, unless an on-time slot fires anyway (that run
      already does the work the missed ones would have done), or it is older than ``window_s``.
    * ``all``: every missed slot at most ``window_s`` old fires, oldest first.

    ``newer_follow`` says more due slots come after this batch (the scheduler works through a
    long outage in batches), so ``latest`` leaves this batch's missed slots to the final batch.
    Returns ``(slots_to_fire, missed_count)``; every due slot is one or the other.
    """
    if policy not in CATCHUP_POLICIES:
        raise ValueError(f"unknown catch-up policy {policy!r}")
    grace_ms = max(0, round(grace_s * 1000))
    window_ms = max(grace_ms, round(window_s * 1000))
    on_time = [s for s in due if now_ms - s <= grace_ms]
    late = [s for s in due if now_ms - s > grace_ms]
    fire: list[int]
    if policy == "skip":
        fire = on_time
    elif policy == "latest":
        if on_time or newer_follow or not late or now_ms - late[-1] > window_ms:
            fire = on_time
        else:
            fire = [late[-1]]
    else:
        fire = [s for s in late if now_ms - s <= window_ms] + on_time
    return fire, len(due) - len(fire)


def jitter_ms(name: str, slot_ms: int, jitter_s: float) -> int:
    """A delay in ``[0, jitter_s]`` (ms) fixed by (schedule, slot).

    Derived from a hash, not a random generator, so every scheduler process agrees on when a
    slot becomes due, and the same slot gets the same delay after a restart.
    """
    span = round(jitter_s * 1000)
    if span <= 0:
        return 0
    digest = hashlib.blake2b(f"{name}\x00{slot_ms}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (span + 1)


__all__ = [
    "ALIASES",
    "CATCHUP_POLICIES",
    "Catchup",
    "Cron",
    "CronError",
    "catch_up",
    "jitter_ms",
    "next_fire",
    "slots_between",
    "to_datetime",
    "to_ms",
    "zone",
]
