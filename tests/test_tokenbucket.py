"""Unit tests of the pure token-bucket maths (no Redis).

``test_ratelimit.py`` runs tables of inputs through both this code and ``take_tokens.lua`` to
show the two agree; here the Python side is checked against hand-worked answers.
"""

from __future__ import annotations

import random

import pytest

from qrunner.tokenbucket import (
    Decision,
    Limit,
    Turn,
    WindowState,
    allowance,
    idle_ttl_ms,
    refill,
    schedule,
    take,
    take_all,
    wait_ms,
)

PER_S_10 = Limit(tokens=10, period_ms=1_000, capacity=10)
PER_S_3 = Limit(tokens=3, period_ms=1_000, capacity=3)
BURST_20 = Limit(tokens=20, period_ms=1_000, capacity=20)
PER_DAY_200 = Limit(tokens=200, period_ms=86_400_000, capacity=200)
ONE_PER_15S = Limit(tokens=1, period_ms=15_000, capacity=1)

T0 = 1_700_000_000_000


@pytest.mark.parametrize(
    ("limit", "state", "now_ms", "expected"),
    [
        # A missing window (expired while idle) is full, refilled as of now.
        (PER_S_10, None, T0, WindowState(10_000, T0)),
        # No time passed: nothing earned.
        (PER_S_10, WindowState(0, T0), T0, WindowState(0, T0)),
        # 1 ms earns `tokens` credit, i.e. 10/1000 of a token.
        (PER_S_10, WindowState(0, T0), T0 + 1, WindowState(10, T0 + 1)),
        # 250 ms earns 2.5 tokens.
        (PER_S_10, WindowState(1_000, T0), T0 + 250, WindowState(3_500, T0 + 250)),
        # Refill stops at capacity, however long the idle spell.
        (PER_S_10, WindowState(9_000, T0), T0 + 10_000, WindowState(10_000, T0 + 10_000)),
        # A clock going backwards earns nothing and keeps the later timestamp.
        (PER_S_10, WindowState(4_000, T0), T0 - 500, WindowState(4_000, T0)),
        # A capacity lowered since the state was written caps the stored credit.
        (PER_S_3, WindowState(9_000, T0), T0, WindowState(3_000, T0)),
        # A daily window earns 200 credit per ms; one token is 86.4 M credit.
        (PER_DAY_200, WindowState(0, T0), T0 + 432_000, WindowState(86_400_000, T0 + 432_000)),
    ],
)
def test_refill_earns_tokens_per_elapsed_ms_up_to_capacity(
    limit: Limit, state: WindowState | None, now_ms: int, expected: WindowState
) -> None:
    assert refill(limit, state, now_ms) == expected


@pytest.mark.parametrize(
    ("limit", "credit", "cost", "expected_ms"),
    [
        (PER_S_10, 10_000, 1, 0),  # already enough
        (PER_S_10, 0, 1, 100),  # one token every 100 ms
        (PER_S_10, 50, 1, 95),  # partial token already earned
        (PER_S_10, 0, 3, 300),  # an SMS of three segments
        (PER_S_3, 0, 1, 334),  # 333.3 ms rounds up: never wake too early
        (ONE_PER_15S, 0, 1, 15_000),
        (PER_DAY_200, 0, 1, 432_000),  # 200/day: one every 7.2 min
    ],
)
def test_wait_ms_is_the_time_until_cost_tokens_rounded_up(
    limit: Limit, credit: int, cost: int, expected_ms: int
) -> None:
    assert wait_ms(limit, credit, cost) == expected_ms


@pytest.mark.parametrize(
    ("limit", "state", "now_ms", "cost", "granted", "credit_after", "wait"),
    [
        (PER_S_10, None, T0, 1, True, 9_000, 0),
        (PER_S_10, None, T0, 10, True, 0, 0),  # the whole burst at once
        (PER_S_10, WindowState(0, T0), T0 + 99, 1, False, 990, 1),
        (PER_S_10, WindowState(0, T0), T0 + 100, 1, True, 0, 0),
        (PER_S_10, WindowState(2_000, T0), T0, 3, False, 2_000, 100),
        (BURST_20, WindowState(0, T0), T0, 3, False, 0, 150),
    ],
)
def test_take_deducts_when_enough_and_otherwise_reports_the_wait(
    limit: Limit,
    state: WindowState | None,
    now_ms: int,
    cost: int,
    granted: bool,
    credit_after: int,
    wait: int,
) -> None:
    result = take(limit, state, now_ms, cost)

    assert (result.granted, result.state.credit, result.wait_ms) == (granted, credit_after, wait)


def test_take_refuses_a_cost_above_capacity_instead_of_waiting_forever() -> None:
    with pytest.raises(ValueError, match="exceeds capacity 3"):
        take(PER_S_3, None, T0, 4)


def test_take_refuses_a_cost_below_one() -> None:
    with pytest.raises(ValueError, match="cost must be >= 1"):
        take(PER_S_3, None, T0, 0)


@pytest.mark.parametrize(
    ("limit", "credit", "expected_ms"),
    [
        (PER_S_10, 10_000, 1),  # already full: gone almost at once, and reads as full
        (PER_S_10, 0, 1_001),
        (PER_S_3, 0, 1_001),
        (PER_S_10, 9_990, 2),
        (PER_DAY_200, 0, 86_400_001),
    ],
)
def test_idle_ttl_lasts_until_the_window_is_full_again(
    limit: Limit, credit: int, expected_ms: int
) -> None:
    assert idle_ttl_ms(limit, credit) == expected_ms


# (name, limits, states, now_ms, cost, blocked_until_ms, expected decision).
CASES: list[
    tuple[
        str,
        tuple[Limit, ...],
        tuple[WindowState | None, ...],
        int,
        int,
        int | None,
        Decision,
    ]
] = [
    (
        "fresh bucket grants from every window",
        (PER_S_10, PER_DAY_200),
        (None, None),
        T0,
        1,
        None,
        Decision(True, 0, (WindowState(9_000, T0), WindowState(199 * 86_400_000, T0))),
    ),
    (
        "short window empty: wait for it, take nothing",
        (PER_S_10, PER_DAY_200),
        (WindowState(0, T0), WindowState(100 * 86_400_000, T0)),
        T0 + 40,
        1,
        None,
        Decision(False, 60, ()),
    ),
    (
        "daily window empty: the long wait wins although the short window has tokens",
        (PER_S_10, PER_DAY_200),
        (WindowState(10_000, T0), WindowState(0, T0)),
        T0 + 1_000,
        1,
        None,
        Decision(False, 432_000 - 1_000, ()),
    ),
    (
        "both windows short: the longer wait",
        (PER_S_10, PER_DAY_200),
        (WindowState(0, T0), WindowState(86_400_000 - 200, T0)),
        T0,
        1,
        None,
        Decision(False, 100, ()),
    ),
    (
        "cost three, exactly available",
        (BURST_20,),
        (WindowState(2_000, T0),),
        T0 + 50,
        3,
        None,
        Decision(True, 0, (WindowState(0, T0 + 50),)),
    ),
    (
        "blocked: the block's remaining time, even with tokens",
        (PER_S_10,),
        (None,),
        T0,
        1,
        T0 + 30_000,
        Decision(False, 30_000, ()),
    ),
    (
        "blocked, and the window needs longer than the block",
        (ONE_PER_15S,),
        (WindowState(0, T0),),
        T0,
        1,
        T0 + 5_000,
        Decision(False, 15_000, ()),
    ),
    (
        "block in the past is ignored",
        (PER_S_10,),
        (WindowState(5_000, T0),),
        T0 + 100,
        1,
        T0 + 100,
        Decision(True, 0, (WindowState(5_000, T0 + 100),)),
    ),
    (
        "clock behind the stored timestamp: no refill, still granted from the level",
        (PER_S_10,),
        (WindowState(1_500, T0),),
        T0 - 10_000,
        1,
        None,
        Decision(True, 0, (WindowState(500, T0),)),
    ),
    (
        "non-integer refill: 3/s needs 334 ms for one token",
        (PER_S_3,),
        (WindowState(0, T0),),
        T0,
        1,
        None,
        Decision(False, 334, ()),
    ),
]


@pytest.mark.parametrize(
    ("limits", "states", "now_ms", "cost", "blocked", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_take_all_is_all_or_nothing_with_the_longest_wait(
    limits: tuple[Limit, ...],
    states: tuple[WindowState | None, ...],
    now_ms: int,
    cost: int,
    blocked: int | None,
    expected: Decision,
) -> None:
    assert take_all(limits, states, now_ms, cost, blocked) == expected


@pytest.mark.parametrize(
    ("limit", "duration_ms", "expected"),
    [
        (PER_S_10, 10_000, 10 + 100),
        (BURST_20, 10_000, 20 + 200),
        (Limit(tokens=20, period_ms=1_000, capacity=5), 2_000, 5 + 40),
        (PER_S_3, 1_000, 3 + 3),
    ],
)
def test_greedy_caller_gets_exactly_capacity_plus_rate_times_duration(
    limit: Limit, duration_ms: int, expected: int
) -> None:
    """Asking every millisecond for ``duration_ms`` (inclusive) yields burst + rate x time."""
    state: WindowState | None = None
    granted = 0
    for now in range(T0, T0 + duration_ms + 1):
        result = take(limit, state, now, 1)
        state = result.state
        granted += result.granted

    assert granted == expected


def test_limit_rejects_values_that_would_not_count_exactly_in_lua() -> None:
    with pytest.raises(ValueError, match="2\\*\\*53"):
        Limit(tokens=1, period_ms=86_400_000, capacity=2**30)


# --- the line: schedule() and allowance() -----------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "states", "now_ms", "cost", "blocked", "expected"),
    [
        # A token is there: the turn is now, exactly as take_all grants it.
        ((PER_S_10,), (None,), T0, 1, None, Turn(T0, (WindowState(9_000, T0),))),
        # No token: charged anyway, below zero, and the turn is when the token is earned.
        (
            (PER_S_10,),
            (WindowState(0, T0),),
            T0,
            1,
            None,
            Turn(T0 + 100, (WindowState(-1_000, T0),)),
        ),
        # Three jobs already in line (credit -3 tokens): the fourth runs 400 ms from now.
        (
            (PER_S_10,),
            (WindowState(-3_000, T0),),
            T0,
            1,
            None,
            Turn(T0 + 400, (WindowState(-4_000, T0),)),
        ),
        # Time passed since: the line moved on by what was earned.
        (
            (PER_S_10,),
            (WindowState(-3_000, T0),),
            T0 + 250,
            1,
            None,
            Turn(T0 + 400, (WindowState(-1_500, T0 + 250),)),
        ),
        # A window paused until T0 + 5 s (a throttle): nothing before, then its level.
        (
            (PER_S_10,),
            (WindowState(2_000, T0 + 5_000),),
            T0,
            1,
            None,
            Turn(T0 + 5_000, (WindowState(1_000, T0 + 5_000),)),
        ),
        # The daily window decides; both are charged.
        (
            (PER_S_10, PER_DAY_200),
            (WindowState(10_000, T0), WindowState(0, T0)),
            T0,
            1,
            None,
            Turn(T0 + 432_000, (WindowState(9_000, T0), WindowState(-86_400_000, T0))),
        ),
        # Blocked: not before the block ends, even with tokens.
        ((PER_S_10,), (None,), T0, 1, T0 + 30_000, Turn(T0 + 30_000, (WindowState(9_000, T0),))),
    ],
)
def test_schedule_charges_the_job_and_gives_its_turn(
    limits: tuple[Limit, ...],
    states: tuple[WindowState | None, ...],
    now_ms: int,
    cost: int,
    blocked: int | None,
    expected: Turn,
) -> None:
    assert schedule(limits, states, now_ms, cost, blocked) == expected


def test_schedule_grants_exactly_when_take_all_does() -> None:
    rng = random.Random(7)
    for _ in range(2_000):
        limits = []
        for _ in range(rng.randint(1, 2)):
            tokens = rng.randint(1, 30)
            period = rng.choice([1, 100, 1_000, 60_000])
            limits.append(Limit(tokens, period, rng.randint(1, 3 * tokens)))
        states = [
            None if rng.random() < 0.2 else WindowState(rng.randint(-5, 2) * lim.period_ms, T0)
            for lim in limits
        ]
        blocked = None if rng.random() < 0.7 else T0 + rng.randint(-100, 100)
        now = T0 + rng.randint(0, 2_000)
        cost = rng.randint(1, min(lim.capacity for lim in limits))
        turn = schedule(limits, states, now, cost, blocked)
        decision = take_all(limits, states, now, cost, blocked)
        assert (turn.turn_ms == now) == decision.granted
        if decision.granted:
            assert turn.states == decision.states
        else:
            assert turn.turn_ms - now >= decision.wait_ms


def test_a_backlog_gets_turns_spaced_at_the_rate_after_the_burst() -> None:
    # Given 100 jobs asking at the same moment of a 20/s bucket with a burst of 20
    states: tuple[WindowState | None, ...] = (None,)
    turns = []
    for _ in range(100):
        turn = schedule((BURST_20,), states, T0, 1)
        states = turn.states
        turns.append(turn.turn_ms - T0)

    # Then the burst runs now and the rest every 50 ms, in the order they asked
    assert turns[:20] == [0] * 20
    assert turns[20:] == [50 * k for k in range(1, 81)]
    # And no second holds more than rate + burst
    assert max(sum(1 for t in turns if s <= t < s + 1_000) for s in turns) <= 40


@pytest.mark.parametrize(
    ("limits", "states", "now_ms", "horizon", "blocked", "expected"),
    [
        ((PER_S_10,), (None,), T0, 0, None, (10, T0)),
        ((PER_S_10,), (None,), T0, 250, None, (12, T0)),
        # Five jobs in line: the sixth job's turn is 600 ms away.
        ((PER_S_10,), (WindowState(-5_000, T0),), T0, 1_000, None, (5, T0 + 600)),
        ((PER_S_10,), (WindowState(-5_000, T0),), T0, 500, None, (0, T0 + 600)),
        # Paused until T0 + 2 s.
        ((PER_S_10,), (WindowState(0, T0 + 2_000),), T0, 1_000, None, (0, T0 + 2_100)),
        ((PER_S_10,), (None,), T0, 1_000, T0 + 5_000, (0, T0 + 5_000)),
        ((PER_S_10,), (None,), T0, 1_000, T0 + 500, (20, T0 + 500)),
        ((PER_S_10, PER_DAY_200), (None, WindowState(0, T0)), T0, 1_000, None, (0, T0 + 432_000)),
    ],
)
def test_allowance_counts_the_turns_within_the_horizon(
    limits: tuple[Limit, ...],
    states: tuple[WindowState | None, ...],
    now_ms: int,
    horizon: int,
    blocked: int | None,
    expected: tuple[int, int],
) -> None:
    assert allowance(limits, states, now_ms, horizon, blocked) == expected


def test_allowance_agrees_with_scheduling_jobs_one_after_the_other() -> None:
    rng = random.Random(11)
    for _ in range(300):
        tokens = rng.randint(1, 20)
        limits = (Limit(tokens, rng.choice([100, 1_000, 15_000]), rng.randint(1, 2 * tokens)),)
        states: tuple[WindowState | None, ...] = (
            None
            if rng.random() < 0.3
            else WindowState(rng.randint(-10, 2) * limits[0].period_ms, T0 + rng.randint(-99, 99)),
        )
        horizon = rng.randint(0, 3_000)
        count, first = allowance(limits, states, T0, horizon)
        within = 0
        for k in range(count + 5):
            turn = schedule(limits, states, T0, 1)
            if k == 0:
                assert turn.turn_ms == first
            if turn.turn_ms > T0 + horizon:
                break
            within += 1
            states = turn.states
        assert within == count


def test_tokens_set_aside_for_due_turns_count_against_the_capacity() -> None:
    # A full 10/s window (capacity 10) while 4 jobs whose turn came have not claimed it yet:
    # only 6 more may run now, the 7th waits for a token to be earned.
    states: tuple[WindowState | None, ...] = (None,)
    turns = []
    for _ in range(7):
        turn = schedule((PER_S_10,), states, T0, 1, set_aside=4)
        states = turn.states
        turns.append(turn.turn_ms - T0)

    assert turns == [0, 0, 0, 0, 0, 0, 100]
