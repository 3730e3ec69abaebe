"""Cron arithmetic as tables: next fires, DST in the entry's zone, catch-up policies, jitter."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter  # type: ignore[import-untyped, unused-ignore]

from qrunner.cron import (
    Catchup,
    Cron,
    CronError,
    catch_up,
    jitter_ms,
    next_fire,
    to_datetime,
    to_ms,
)

NY = ZoneInfo("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def local_days(cron: Cron, first: datetime, last: datetime) -> Counter[str]:
    """Fires per local calendar day of the entry's zone over ``[first, last)`` (local dates)."""
    slots = cron.slots(to_ms(first) - 1, to_ms(last) - 1)
    return Counter(to_datetime(s, cron.tz).date().isoformat() for s in slots)


@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        ("0 5 * * *", "UTC", utc(2026, 1, 1, 4, 59, 59), utc(2026, 1, 1, 5)),
        ("0 5 * * *", "UTC", utc(2026, 1, 1, 5), utc(2026, 1, 2, 5)),  # strictly after
        ("0 3 * * 0", "UTC", utc(2026, 1, 1), utc(2026, 1, 4, 3)),  # Thursday -> Sunday
        ("0 6 * * 1", "UTC", utc(2026, 1, 4, 7), utc(2026, 1, 5, 6)),  # Sunday -> Monday
        ("*/5 * * * *", "UTC", utc(2026, 1, 1, 10, 2, 30), utc(2026, 1, 1, 10, 5)),
        ("0 */4 * * *", "UTC", utc(2026, 1, 1, 4, 0, 1), utc(2026, 1, 1, 8)),
        ("* * * * * */15", "UTC", utc(2026, 1, 1, 10, 0, 7), utc(2026, 1, 1, 10, 0, 15)),
        ("* * * * * *", "UTC", utc(2026, 1, 1, 10, 0, 7), utc(2026, 1, 1, 10, 0, 8)),
        ("@hourly", "UTC", utc(2026, 1, 1, 10, 0, 7), utc(2026, 1, 1, 11)),
        ("0 9 * * *", "Europe/Paris", utc(2026, 1, 10), utc(2026, 1, 10, 8)),  # CET = UTC+1
        ("0 9 * * *", "Europe/Paris", utc(2026, 7, 10), utc(2026, 7, 10, 7)),  # CEST = UTC+2
        # Spring-forward: 02:30 does not exist on 2026-03-08; fires when clocks jump (03:00 EDT).
        ("30 2 * * *", "America/New_York", utc(2026, 3, 8, 5), utc(2026, 3, 8, 7)),
        # Fall-back: after the first 01:30 (EDT) the next fire is the next day, not 01:30 EST.
        ("30 1 * * *", "America/New_York", utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)),
        # Interval entry inside the repeated hour's second pass keeps its cadence.
        ("*/20 * * * *", "America/New_York", utc(2026, 11, 1, 6, 5), utc(2026, 11, 1, 6, 20)),
        # From inside the first pass, the next fires include the second pass.
        ("*/20 * * * *", "America/New_York", utc(2026, 11, 1, 5, 45), utc(2026, 11, 1, 6)),
        ("0 0 29 2 *", "UTC", utc(2026, 1, 1), utc(2028, 2, 29)),
    ],
)
def test_next_fire_table(expr: str, tz: str, after: datetime, expected: datetime) -> None:
    got = next_fire(expr, tz, after)
    assert got is not None
    # Compared in UTC: aware datetimes inside a repeated hour (fold=1) never compare equal
    # across zones (PEP 495), so comparing the zoned value directly would prove nothing.
    assert got.astimezone(UTC) == expected
    assert got.tzinfo == ZoneInfo(tz)  # reported in the entry's zone


def test_spring_forward_daily_0230_fires_once_that_day_at_the_jump() -> None:
    # Given a daily 02:30 entry in New York, around 2026-03-08 when 02:00 EST jumps to 03:00 EDT
    cron = Cron.parse("30 2 * * *", "America/New_York")
    # When listing its fires from 03-06 to 03-10 (local days)
    days = local_days(cron, datetime(2026, 3, 6, tzinfo=NY), datetime(2026, 3, 11, tzinfo=NY))
    # Then every day fires exactly once, the transition day included
    assert days == {f"2026-03-{d:02d}": 1 for d in range(6, 11)}
    transition_day = cron.slots(to_ms(utc(2026, 3, 8)), to_ms(utc(2026, 3, 9)))
    assert [to_datetime(s) for s in transition_day] == [utc(2026, 3, 8, 7)]  # 03:00 EDT


def test_fall_back_daily_0130_fires_once_at_first_occurrence() -> None:
    # Given a daily 01:30 entry in New York, around 2026-11-01 when 01:00-02:00 happens twice
    cron = Cron.parse("30 1 * * *", "America/New_York")
    # When listing its fires over the surrounding days
    days = local_days(cron, datetime(2026, 10, 30, tzinfo=NY), datetime(2026, 11, 3, tzinfo=NY))
    # Then the transition day fires once, at 01:30 EDT (05:30 UTC), not again at 01:30 EST
    assert days == {"2026-10-30": 1, "2026-10-31": 1, "2026-11-01": 1, "2026-11-02": 1}
    transition_day = cron.slots(to_ms(utc(2026, 11, 1)), to_ms(utc(2026, 11, 2)))
    assert [to_datetime(s) for s in transition_day] == [utc(2026, 11, 1, 5, 30)]


def test_hourly_keeps_its_cadence_across_both_transitions() -> None:
    # Given an hourly entry in New York
    cron = Cron.parse("0 * * * *", "America/New_York")
    # When counting fires per local day across both 2026 transitions
    spring = local_days(cron, datetime(2026, 3, 7, tzinfo=NY), datetime(2026, 3, 10, tzinfo=NY))
    fall = local_days(cron, datetime(2026, 10, 31, tzinfo=NY), datetime(2026, 11, 3, tzinfo=NY))
    # Then it fires once per real hour: 23 on the short day, 25 on the long day, 24 otherwise
    assert spring == {"2026-03-07": 24, "2026-03-08": 23, "2026-03-09": 24}
    assert fall == {"2026-10-31": 24, "2026-11-01": 25, "2026-11-02": 24}
    # And consecutive fires are exactly one hour apart throughout, never doubled or skipped
    for first, last in ((utc(2026, 3, 7), utc(2026, 3, 10)), (utc(2026, 10, 31), utc(2026, 11, 3))):
        slots = cron.slots(to_ms(first), to_ms(last))
        assert {b - a for a, b in itertools.pairwise(slots)} == {3_600_000}


def test_fixed_times_inside_the_spring_gap_fire_once_not_twice() -> None:
    # Given an entry at 02:00 and 03:00 local; on 2026-03-08 02:00 does not exist
    cron = Cron.parse("0 2,3 * * *", "America/New_York")
    # When listing that day's fires
    slots = cron.slots(to_ms(utc(2026, 3, 8, 5)), to_ms(utc(2026, 3, 8, 12)))
    # Then the missing 02:00 and the real 03:00 are the same instant and fire once
    assert [to_datetime(s) for s in slots] == [utc(2026, 3, 8, 7)]


@pytest.mark.parametrize(
    ("expr", "tz", "message"),
    [
        ("not a cron", "UTC", "expected 5"),
        ("61 * * * *", "UTC", "invalid cron expression"),
        ("* * * * * * *", "UTC", "has 7 fields"),
        ("0 0 30 2 *", "UTC", "never fires"),
        ("0 5 * * *", "Mars/Olympus_Mons", "unknown time zone 'Mars/Olympus_Mons'"),
    ],
)
def test_parse_refuses_bad_expressions_and_zones(expr: str, tz: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        Cron.parse(expr, tz)


def test_fixed_and_interval_entries_are_told_apart() -> None:
    assert not Cron.parse("30 1 * * *").interval
    assert not Cron.parse("@daily").interval
    assert Cron.parse("0 * * * *").interval
    assert Cron.parse("*/5 * * * *").interval
    assert Cron.parse("* * * * * *").interval


MIN = 60_000
NOW = 100 * MIN
TEN_MISSED = [NOW - k * MIN for k in range(10, 0, -1)]  # ages 10 min .. 1 min
LAST_FIVE = TEN_MISSED[5:]


@pytest.mark.parametrize(
    ("policy", "due", "window_s", "fire", "missed"),
    [
        # On-time slots (age <= grace of 5 s) always fire, whatever the policy.
        ("skip", [NOW - 2_000], 3600, [NOW - 2_000], 0),
        ("latest", [NOW - 2_000], 3600, [NOW - 2_000], 0),
        ("all", [NOW - 2_000], 3600, [NOW - 2_000], 0),
        # Ten missed minutes, nothing on time.
        ("skip", TEN_MISSED, 3600, [], 10),
        ("latest", TEN_MISSED, 3600, [NOW - MIN], 9),
        ("all", TEN_MISSED, 3600, TEN_MISSED, 0),
        # The window bounds how old a missed slot may be and still fire.
        ("all", TEN_MISSED, 330, LAST_FIVE, 5),
        ("latest", TEN_MISSED, 30, [], 10),
        # With an on-time slot, latest coalesces: the on-time run does the missed work.
        ("latest", [NOW - 2 * MIN, NOW - MIN, NOW], 3600, [NOW], 2),
        ("skip", [NOW - 2 * MIN, NOW - MIN, NOW], 3600, [NOW], 2),
        ("all", [NOW - 2 * MIN, NOW - MIN, NOW], 3600, [NOW - 2 * MIN, NOW - MIN, NOW], 0),
        ("latest", [], 3600, [], 0),
    ],
)
def test_catch_up_policies(
    policy: Catchup, due: list[int], window_s: float, fire: list[int], missed: int
) -> None:
    assert catch_up(due, NOW, policy, window_s=window_s, grace_s=5) == (fire, missed)


def test_latest_leaves_missed_slots_of_an_older_batch_to_the_final_batch() -> None:
    due = [NOW - k * MIN for k in range(10, 5, -1)]
    assert catch_up(due, NOW, "latest", window_s=3600, grace_s=5, newer_follow=True) == ([], 5)


def test_catch_up_refuses_unknown_policy() -> None:
    with pytest.raises(ValueError, match="unknown catch-up policy 'sometimes'"):
        catch_up([NOW], NOW, "sometimes", window_s=1, grace_s=1)  # type: ignore[arg-type]


def test_jitter_is_deterministic_bounded_and_spread() -> None:
    slots = [to_ms(utc(2026, 1, 1)) + k * MIN for k in range(2000)]
    first = [jitter_ms("monitor_queue_depth", s, 30) for s in slots]
    # Same (schedule, slot) -> same delay, so every worker agrees on when a slot is due
    assert first == [jitter_ms("monitor_queue_depth", s, 30) for s in slots]
    # Bounded by jitter_s and actually spread over the range
    assert min(first) >= 0 and max(first) <= 30_000
    assert min(first) < 3_000 and max(first) > 27_000
    assert len(set(first)) > 1500
    # Another schedule sharing the minute gets different delays
    assert first != [jitter_ms("track_delivery_rates", s, 30) for s in slots]
    # No jitter configured -> none applied
    assert {jitter_ms("x", s, 0) for s in slots} == {0}


def test_to_ms_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        to_ms(datetime(2026, 1, 1))
    five = utc(2026, 1, 1, 5)
    assert to_datetime(to_ms(five) + 1) == five + timedelta(milliseconds=1)


@pytest.mark.parametrize(
    ("tz", "jump"),
    [
        ("America/New_York", utc(2026, 3, 8, 7)),
        ("America/New_York", utc(2026, 11, 1, 6)),
        ("Europe/London", utc(2026, 10, 25, 1)),
        ("Australia/Lord_Howe", utc(2026, 4, 4, 15)),  # 30-minute shifts
        ("Australia/Lord_Howe", utc(2026, 10, 3, 15, 30)),
    ],
)
@pytest.mark.parametrize("expr", ["*/15 * * * *", "0 * * * *", "45 */2 * * *"])
def test_interval_entries_match_a_minute_by_minute_oracle(
    tz: str, jump: datetime, expr: str
) -> None:
    # Oracle: every real minute whose local wall time the expression matches fires, repeats and
    # all; wall times inside a spring-forward gap never occur, so they never fire.
    cron = Cron.parse(expr, tz)
    start = jump - timedelta(hours=5)
    minutes = [start + timedelta(minutes=m) for m in range(1, 10 * 60 + 1)]
    assert start.astimezone(cron.tz).utcoffset() != minutes[-1].astimezone(cron.tz).utcoffset()
    expected = [
        to_ms(m)
        for m in minutes
        if croniter.match(expr, m.astimezone(cron.tz).replace(tzinfo=None))
    ]
    assert cron.slots(to_ms(start), to_ms(minutes[-1])) == expected
