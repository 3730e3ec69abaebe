"""Quiet hours: when a message may reach a phone, judged in the recipient's own time zone.

Pure functions of their inputs, ``now`` included, so the rules are tested as tables.

A message due inside the window is deferred to the window's end, never dropped (G8). A user
whose time zone is unknown (a typo, a zone missing from this machine's tz data) is judged by
every zone they plausibly live in: the UTC-offset span of their country (from ``country_code``,
else from the phone's calling code) sampled every 30 minutes, and a message may go only when it
is outside quiet hours at *all* of them (the union of the windows). For the US and the default
21:00-08:00 that leaves 18:00-01:00 UTC. When the country is unknown too, or the union leaves no
gap at all (a span wider than the allowed part of the day), the span's middle offset is used,
and with no country at all UTC: a message must eventually go, and the migration's rule for an
unknown zone is UTC.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: UTC offsets (hours, standard and summer time) each country spans. Countries not listed
#: fall back to UTC when the zone is unknown.
COUNTRY_OFFSETS_H: dict[str, tuple[float, float]] = {
    "US": (-10, -4),
    "CA": (-8, -2.5),
    "MX": (-8, -5),
    "BR": (-5, -2),
    "AR": (-3, -3),
    "GB": (0, 1),
    "IE": (0, 1),
    "PT": (-1, 1),
    "ES": (0, 2),
    "FR": (1, 2),
    "DE": (1, 2),
    "NL": (1, 2),
    "BE": (1, 2),
    "IT": (1, 2),
    "AT": (1, 2),
    "CH": (1, 2),
    "SE": (1, 2),
    "NO": (1, 2),
    "DK": (1, 2),
    "PL": (1, 2),
    "FI": (2, 3),
    "GR": (2, 3),
    "NG": (1, 1),
    "ZA": (2, 2),
    "KE": (3, 3),
    "GH": (0, 0),
    "IN": (5.5, 5.5),
    "CN": (8, 8),
    "JP": (9, 9),
    "KR": (9, 9),
    "SG": (8, 8),
    "AU": (8, 11),
    "NZ": (12, 13.75),
}
#: Calling code -> country, for users without a country (longest prefix wins).
CALLING_CODES: dict[str, str] = {
    "1": "US",
    "44": "GB",
    "49": "DE",
    "33": "FR",
    "34": "ES",
    "39": "IT",
    "31": "NL",
    "81": "JP",
    "82": "KR",
    "86": "CN",
    "91": "IN",
    "61": "AU",
    "64": "NZ",
    "55": "BR",
    "52": "MX",
    "234": "NG",
    "27": "ZA",
    "254": "KE",
    "233": "GH",
    "353": "IE",
}


@dataclass(frozen=True, slots=True)
class Window:
    """A daily window in local time; ``start > end`` wraps midnight, ``start == end`` is empty."""

    start: time
    end: time

    def contains(self, local: time) -> bool:
        t = local.replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= t < self.end
        if self.start > self.end:
            return t >= self.start or t < self.end
        return False


def parse_window(text: str) -> Window:
    """``"21:00-08:00"`` -> Window; raises ValueError naming the text."""
    try:
        start, end = (time.fromisoformat(p.strip()) for p in text.split("-"))
    except ValueError as exc:
        raise ValueError(f"quiet hours {text!r} are not 'HH:MM-HH:MM'") from exc
    return Window(start, end)


@dataclass(frozen=True, slots=True)
class Zones:
    """The zones a recipient is judged in, and how they were chosen (for the log)."""

    zones: tuple[tzinfo, ...]
    basis: str

    @property
    def primary(self) -> tzinfo:
        """The zone to write local times in."""
        return self.zones[len(self.zones) // 2]


def country_of(country_code: str | None, phone: str | None) -> str | None:
    if country_code:
        return country_code.upper()
    if phone and phone.startswith("+"):
        digits = phone[1:]
        for size in (3, 2, 1):
            found = CALLING_CODES.get(digits[:size])
            if found:
                return found
    return None


def _offset_zones(low_h: float, high_h: float) -> tuple[tzinfo, ...]:
    steps = round((high_h - low_h) * 2)
    return tuple(timezone(timedelta(hours=low_h + i / 2)) for i in range(steps + 1))


@functools.lru_cache(maxsize=1024)
def _known_zone(name: str) -> ZoneInfo | None:
    """``ZoneInfo(name)``, remembered: ``ZoneInfo`` keeps only a few zones for sure and reads
    the others from the tz database again, which every message would pay for."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def resolve_zones(zone_name: str | None, country_code: str | None, phone: str | None) -> Zones:
    """The recipient's zone, or the plausible zones of their country when it is unknown."""
    if zone_name:
        zone = _known_zone(zone_name)
        if zone is not None:
            return Zones((zone,), zone_name)
    country = country_of(country_code, phone)
    span = COUNTRY_OFFSETS_H.get(country or "")
    if span is None:
        return Zones((UTC,), "UTC (time zone and country unknown)")
    return Zones(
        _offset_zones(*span), f"UTC{span[0]:+g}..{span[1]:+g} (zone unknown, country {country})"
    )


def _window_end(at: datetime, window: Window, zone: tzinfo) -> datetime:
    local = at.astimezone(zone)
    day = (
        local.date()
        if local.time().replace(tzinfo=None) < window.end
        else local.date() + timedelta(days=1)
    )
    end = datetime.combine(day, window.end, tzinfo=zone).astimezone(UTC)
    # A DST jump can put the computed end at or before ``at``; never return the past.
    return end if end > at else at + timedelta(minutes=1)


def seconds_until_allowed(now: datetime, window: Window, zones: Sequence[tzinfo]) -> float | None:
    """0.0 when a message may go now; else seconds until it is outside ``window`` in every zone;
    None when no such moment exists within a day and a half (the windows cover the clock)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    at = now.astimezone(UTC)
    limit = at + timedelta(hours=36)
    while at <= limit:
        ends = [
            _window_end(at, window, z) for z in zones if window.contains(at.astimezone(z).time())
        ]
        if not ends:
            return (at - now).total_seconds()
        at = max(ends)
    return None


def quiet_wait_s(now: datetime, window: Window, zones: Zones) -> float:
    """Seconds to defer a message (0.0: send now), with the fallbacks the module doc describes."""
    wait = seconds_until_allowed(now, window, zones.zones)
    if wait is None:
        wait = seconds_until_allowed(now, window, (zones.primary,))
    return wait or 0.0
