"""Token-bucket arithmetic, with no I/O, mirrored line for line by ``lua/take_tokens.lua``.

A window refills ``tokens`` tokens every ``period_ms`` milliseconds, continuously, up to
``capacity`` tokens. The level of a window is kept as an integer *credit* in units of
``1 / period_ms`` of a token, so one token is ``period_ms`` credit and each millisecond adds
exactly ``tokens`` credit. Integers keep Python and Lua (whose numbers are doubles, exact below
2**53) bit-for-bit identical, so a table of cases can be run through both and compared; floats
would drift apart by rounding and make such a comparison meaningless.

A missing state means a bucket that has been idle long enough for its key to expire, and such a
bucket is full. Several windows on one bucket are taken all-or-nothing, and a bucket can be
*blocked* until an absolute time (a provider answered 429).

:func:`take_all` only takes what is there. :func:`schedule` also answers for a job that cannot
run yet: it charges the job now, letting the credit go below zero, and says when the job's turn
comes. The next job to ask is then scheduled after it, so jobs waiting for one bucket form a
line whose places are known in advance (``lua/reserve_turn.lua`` mirrors it).
:func:`allowance` counts how many jobs joining now would have their turn within a horizon.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: Largest credit a window may hold. Lua numbers are doubles; past 2**53 integers stop being exact.
MAX_CREDIT = 2**53


@dataclass(frozen=True, slots=True)
class Limit:
    """One window: ``tokens`` per ``period_ms`` milliseconds, holding at most ``capacity``."""

    tokens: int
    period_ms: int
    capacity: int

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.period_ms < 1 or self.capacity < 1:
            raise ValueError(f"tokens, period_ms and capacity must be >= 1, got {self}")
        if self.full_credit > MAX_CREDIT:
            raise ValueError(f"capacity x period_ms exceeds 2**53 for {self}")

    @property
    def full_credit(self) -> int:
        return self.capacity * self.period_ms


@dataclass(frozen=True, slots=True)
class WindowState:
    """What Redis stores per window: ``credit`` (token / period_ms units) at ``last_ms``."""

    credit: int
    last_ms: int


@dataclass(frozen=True, slots=True)
class Take:
    """Outcome of a take on one window.

    ``state`` is the state to store when the take is committed: after the refill, and after the
    cost is deducted when ``granted``. ``wait_ms`` is 0 when granted, else the time until the
    window holds ``cost`` tokens, assuming no one else takes any meanwhile.
    """

    granted: bool
    state: WindowState
    wait_ms: int

    def tokens(self, limit: Limit) -> float:
        """Tokens left, as a float, for display only."""
        return self.state.credit / limit.period_ms


@dataclass(frozen=True, slots=True)
class Decision:
    """Outcome of an all-or-nothing take across the windows of one bucket."""

    granted: bool
    wait_ms: int
    #: States to store, one per window, only when ``granted`` (a denial writes nothing).
    states: tuple[WindowState, ...]


@dataclass(frozen=True, slots=True)
class Turn:
    """When a job joining a bucket's line now would run, and the windows once it is charged.

    ``turn_ms == now_ms`` is an ordinary grant. A later turn means the job has spent tokens the
    bucket only earns by ``turn_ms``: its windows' credit is below what it needed, possibly below
    zero, so whoever asks next is scheduled after it.
    """

    turn_ms: int
    #: One state per window, with the cost deducted: what to store when the turn is committed.
    states: tuple[WindowState, ...]


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def refill(limit: Limit, state: WindowState | None, now_ms: int) -> WindowState:
    """Return the state at ``now_ms``: the credit earned since ``last_ms``, capped at capacity.

    A clock that goes backwards (an explicit ``now_ms`` in the past, a Redis fail-over) earns
    nothing and keeps ``last_ms``, so the same interval is never credited twice.
    """
    if state is None:
        return WindowState(limit.full_credit, now_ms)
    if now_ms <= state.last_ms:
        return WindowState(min(state.credit, limit.full_credit), state.last_ms)
    earned = (now_ms - state.last_ms) * limit.tokens
    return WindowState(min(limit.full_credit, state.credit + earned), now_ms)


def wait_ms(limit: Limit, credit: int, cost: int) -> int:
    """Milliseconds until ``credit`` grows to ``cost`` tokens (0 if it already has)."""
    missing = cost * limit.period_ms - credit
    if missing <= 0:
        return 0
    return _ceil_div(missing, limit.tokens)


def take(limit: Limit, state: WindowState | None, now_ms: int, cost: int) -> Take:
    """Take ``cost`` tokens from one window if it holds them; otherwise say how long to wait.

    A cost above capacity could never be granted, and waiting for it would wait forever, so it
    is refused with ``ValueError`` rather than answered with a wait.
    """
    if cost < 1:
        raise ValueError(f"cost must be >= 1, got {cost}")
    if cost > limit.capacity:
        raise ValueError(f"cost {cost} exceeds capacity {limit.capacity}; it can never be granted")
    current = refill(limit, state, now_ms)
    need = cost * limit.period_ms
    if current.credit >= need:
        return Take(True, WindowState(current.credit - need, current.last_ms), 0)
    return Take(False, current, wait_ms(limit, current.credit, cost))


def idle_ttl_ms(limit: Limit, credit: int) -> int:
    """How long a window's key must live: until it would be full again, plus one millisecond.

    A key that expires when its window is full loses nothing, because a missing window reads
    as full; so idle buckets vanish from Redis without changing any decision.
    """
    return _ceil_div(limit.full_credit - credit, limit.tokens) + 1


def take_all(
    limits: Sequence[Limit],
    states: Sequence[WindowState | None],
    now_ms: int,
    cost: int,
    blocked_until_ms: int | None = None,
) -> Decision:
    """Take ``cost`` tokens from every window, or from none.

    The wait on a denial is the longest of the windows' waits and of the block, because the
    caller can only succeed once every one of them allows it.
    """
    if len(limits) != len(states):
        raise ValueError("one state (or None) per limit")
    takes = [take(limit, state, now_ms, cost) for limit, state in zip(limits, states, strict=True)]
    longest = max((t.wait_ms for t in takes), default=0)
    if blocked_until_ms is not None and blocked_until_ms > now_ms:
        longest = max(longest, blocked_until_ms - now_ms)
    if longest > 0:
        return Decision(False, longest, ())
    return Decision(True, 0, tuple(t.state for t in takes))


def schedule(
    limits: Sequence[Limit],
    states: Sequence[WindowState | None],
    now_ms: int,
    cost: int,
    blocked_until_ms: int | None = None,
    set_aside: int = 0,
) -> Turn:
    """The turn of a job of ``cost`` tokens that joins the bucket's line at ``now_ms``.

    Each window's turn is when its credit reaches ``cost`` tokens, counted from ``now_ms`` or
    from the window's stored time when that lies ahead (a window paused by a throttle earns
    nothing before it). The job's turn is the latest of its windows' and of the block. Every
    window is charged whatever the turn, so the credit may go below zero: that is the line.

    ``set_aside`` tokens belong to jobs whose turn has come and who have not claimed it yet;
    they count against each window's capacity, so its credit is at most capacity less them.

    It grants exactly when :func:`take_all` does, except that a stored time ahead of ``now_ms``
    (a pause, or a clock that went backwards) postpones the turn to it instead of granting from
    the level.
    """
    if len(limits) != len(states):
        raise ValueError("one state (or None) per limit")
    if cost < 1:
        raise ValueError(f"cost must be >= 1, got {cost}")
    turn = now_ms
    after: list[WindowState] = []
    for limit, state in zip(limits, states, strict=True):
        if cost > limit.capacity:
            raise ValueError(
                f"cost {cost} exceeds capacity {limit.capacity}; it can never be granted"
            )
        current = refill(limit, state, now_ms)
        credit = min(current.credit, limit.full_credit - set_aside * limit.period_ms)
        start = max(now_ms, current.last_ms)
        turn = max(turn, start + wait_ms(limit, credit, cost))
        after.append(WindowState(credit - cost * limit.period_ms, current.last_ms))
    if blocked_until_ms is not None:
        turn = max(turn, blocked_until_ms)
    return Turn(turn, tuple(after))


def allowance(
    limits: Sequence[Limit],
    states: Sequence[WindowState | None],
    now_ms: int,
    horizon_ms: int,
    blocked_until_ms: int | None = None,
) -> tuple[int, int]:
    """``(count, first_ms)``: how many one-token jobs joining the line at ``now_ms`` one after
    the other would have their turn by ``now_ms + horizon_ms``, and the turn of the first.

    A window whose credit is ``c`` at ``start`` serves its k-th such job at
    ``start + ceil((k * period_ms - c) / tokens)``, so it serves
    ``floor((c + (end - start) * tokens) / period_ms)`` of them by ``end``.
    """
    if len(limits) != len(states):
        raise ValueError("one state (or None) per limit")
    end = now_ms + max(0, horizon_ms)
    first = schedule(limits, states, now_ms, 1, blocked_until_ms).turn_ms
    if blocked_until_ms is not None and blocked_until_ms > end:
        return 0, first
    count: int | None = None
    for limit, state in zip(limits, states, strict=True):
        current = refill(limit, state, now_ms)
        start = max(now_ms, current.last_ms)
        served = 0
        if end >= start:
            served = max(0, (current.credit + (end - start) * limit.tokens) // limit.period_ms)
        count = served if count is None else min(count, served)
    return count or 0, first
