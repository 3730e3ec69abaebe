"""When an outlook is for and when it is due: plain functions of their inputs, ``now`` included.

Users live in their own zones, so "today's outlook" is a local calendar date and "the morning"
is a local wall time: the time the user saved, else the top of the local hour at which they
engage most (``user_send_hours``, written by ``optimize_send_timing``), else 06:45 on weekdays
and 08:30 at weekends. A saved time wins over the learned hour: it is what the user asked for.
Keeping the rules here, free of I/O, lets them be tested with tables of zones and instants
instead of a running worker.

Everything is reduced to one instant per (user, local day), :func:`target_instant`, and the
rest compares instants, never wall times. That is what makes DST transitions safe: a local day
has exactly one target whether it lasts 23, 24 or 25 hours; a wall time repeated at fall-back
is read as its first occurrence; one skipped at spring-forward (only possible for a saved time
between 02:00 and 03:00, or a learned hour of 2) is read with the offset before the jump, so
02:30 arrives at 03:30.
Generation covers half-open windows of instants, ``[ref, ref + 24 h)``, so daily runs cover
every target once, however the local day's length or the weekday/weekend times shift it.
"""

from __future__ import annotations

import functools
import logging
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger(__name__)

DEFAULT_WEEKDAY_AT = time(6, 45)
DEFAULT_WEEKEND_AT = time(8, 30)


@functools.lru_cache(maxsize=1024)
def resolve_zone(name: str | None) -> tzinfo:
    """The user's zone, or UTC when the name is empty or unknown to this machine's tz data.

    An unknown zone must not lose the user their outlook: UTC is a wrong-but-usable guess.
    Remembered per name: ``ZoneInfo`` itself keeps only a few zones for sure, and reading one
    from the tz database again costs more than all the arithmetic done with it.
    """
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.debug("unknown time zone %r; using UTC", name)
        return UTC


def delivery_time(
    local_day: date,
    weekday_at: time | None,
    weekend_at: time | None,
    *,
    best_hour: int | None = None,
) -> time:
    """The user's preferred local delivery time on ``local_day`` (Saturday and Sunday use the
    weekend preference, falling back to the weekday one); without one, ``best_hour``:00 every
    day; without that either, 06:45 on weekdays and 08:30 at weekends."""
    saved = (weekend_at or weekday_at) if local_day.weekday() >= 5 else weekday_at
    if saved is not None:
        return saved
    if best_hour is not None:
        return time(best_hour)
    return DEFAULT_WEEKEND_AT if local_day.weekday() >= 5 else DEFAULT_WEEKDAY_AT


def target_instant(
    local_day: date,
    zone: tzinfo,
    weekday_at: time | None = None,
    weekend_at: time | None = None,
    *,
    best_hour: int | None = None,
) -> datetime:
    """The UTC instant of the delivery on ``local_day`` (see the module docstring for DST)."""
    at = delivery_time(local_day, weekday_at, weekend_at, best_hour=best_hour)
    return datetime.combine(local_day, at, zone).astimezone(UTC)


def outlook_dates_between(
    start: datetime,
    end: datetime,
    zone: tzinfo,
    weekday_at: time | None = None,
    weekend_at: time | None = None,
    *,
    best_hour: int | None = None,
) -> list[date]:
    """Local dates whose delivery instant lies in ``[start, end)``.

    Consecutive windows therefore name each date exactly once. A 24-hour window may name none
    or two dates: targets are 24 h apart give or take a DST hour and the weekday/weekend shift.
    """
    day = start.astimezone(zone).date() - timedelta(days=1)
    last = end.astimezone(zone).date() + timedelta(days=1)
    found = []
    while day <= last:
        if start <= target_instant(day, zone, weekday_at, weekend_at, best_hour=best_hour) < end:
            found.append(day)
        day += timedelta(days=1)
    return found


def outlook_date_for(
    ref: datetime,
    zone: tzinfo,
    weekday_at: time | None = None,
    weekend_at: time | None = None,
    *,
    best_hour: int | None = None,
) -> date:
    """The local date of the next delivery at or after ``ref``: today's for a user whose
    morning is still ahead, tomorrow's for one whose morning has passed (east of UTC)."""
    day = ref.astimezone(zone).date()
    while target_instant(day, zone, weekday_at, weekend_at, best_hour=best_hour) < ref:
        day += timedelta(days=1)
    return day


def is_due(
    now: datetime,
    zone: tzinfo,
    outlook_date: date,
    weekday_at: time | None = None,
    weekend_at: time | None = None,
    *,
    best_hour: int | None = None,
) -> bool:
    """True when it is ``outlook_date`` in the user's zone and their delivery time has passed.

    An outlook whose local day is over is not due: yesterday's outlook delivered tonight would
    be noise, so a worker outage skips it instead.
    """
    if now.astimezone(zone).date() != outlook_date:
        return False
    return now >= target_instant(outlook_date, zone, weekday_at, weekend_at, best_hour=best_hour)


def utc_now(override: datetime | None = None) -> datetime:
    """The current time, or ``override`` (a payload's ``now``, for tests and re-runs).

    A naive override is read as UTC rather than refused: it comes from JSON typed by hand.
    """
    if override is None:
        return datetime.now(UTC)
    return override if override.tzinfo else override.replace(tzinfo=UTC)
