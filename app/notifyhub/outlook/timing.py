"""When an outlook is for and when it is due: plain functions of their inputs, ``now`` included.

Users live in their own zones, so "today's outlook" is a local calendar date and "the morning"
is a local wall time. Keeping the rules here, free of I/O, lets them be tested with tables of
zones and instants instead of a running worker.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger(__name__)

DEFAULT_DELIVERY_AT = time(7, 0)


def resolve_zone(name: str | None) -> tzinfo:
    """The user's zone, or UTC when the name is empty or unknown to this machine's tz data.

    An unknown zone must not lose the user their outlook: UTC is a wrong-but-usable guess.
    """
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.debug("unknown time zone %r; using UTC", name)
        return UTC


def delivery_time(local_day: date, weekday_at: time | None, weekend_at: time | None) -> time:
    """The user's preferred local delivery time on ``local_day`` (Saturday and Sunday use the
    weekend preference), falling back to the other preference, then to 07:00."""
    weekend = local_day.weekday() >= 5
    preferred = weekend_at if weekend else weekday_at
    return preferred or (weekday_at if weekend else None) or DEFAULT_DELIVERY_AT


def outlook_date_for(
    ref: datetime, zone: tzinfo, weekday_at: time | None = None, weekend_at: time | None = None
) -> date:
    """The local date of the next morning delivery at or after ``ref``.

    Generation runs once a day at a fixed UTC time. For a user whose morning is still ahead
    that is today's local date; for one whose morning has passed (east of UTC) it is
    tomorrow's, so every user has an outlook ready before their own morning.
    """
    local = ref.astimezone(zone)
    day = local.date()
    if local.timetz().replace(tzinfo=None) >= delivery_time(day, weekday_at, weekend_at):
        return day + timedelta(days=1)
    return day


def is_due(
    now: datetime,
    zone: tzinfo,
    outlook_date: date,
    weekday_at: time | None = None,
    weekend_at: time | None = None,
) -> bool:
    """True when it is ``outlook_date`` in the user's zone and their delivery time has passed.

    An outlook whose local day is over is not due: yesterday's outlook delivered tonight would
    be noise, so a worker outage skips it instead.
    """
    local = now.astimezone(zone)
    if local.date() != outlook_date:
        return False
    return local.time() >= delivery_time(outlook_date, weekday_at, weekend_at)


def utc_now(override: datetime | None = None) -> datetime:
    """The current time, or ``override`` (a payload's ``now``, for tests and re-runs).

    A naive override is read as UTC rather than refused: it comes from JSON typed by hand.
    """
    if override is None:
        return datetime.now(UTC)
    return override if override.tzinfo else override.replace(tzinfo=UTC)
