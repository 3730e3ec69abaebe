"""Shared job timers (qrunner.deadlines): a task times out after its timeout, never before and
at most one tick after; a task removed in time is left alone; tasks share timers by tick."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from qrunner.deadlines import Deadlines


async def _sleeper() -> None:
    await asyncio.sleep(3600)


def _mid_next_tick(tick_s: float) -> float:
    """A timeout that lands in the middle of the next tick but one, so deadlines added one
    after another fall in the same tick whatever the clock reads."""
    now = asyncio.get_running_loop().time()
    return (int(now / tick_s) + 2.5) * tick_s - now


async def test_a_task_is_expired_after_its_timeout_and_within_a_tick() -> None:
    loop = asyncio.get_running_loop()
    fired: asyncio.Future[float] = loop.create_future()

    def expire(task: asyncio.Task[Any]) -> None:
        fired.set_result(loop.time())
        task.cancel()

    deadlines = Deadlines(expire, tick_s=0.05)
    task = asyncio.create_task(_sleeper())
    start = loop.time()
    deadlines.add(task, 0.12)
    at = await fired
    with pytest.raises(asyncio.CancelledError):
        await task
    # uvloop and asyncio timers may fire up to a millisecond early on their own clock.
    assert at - start >= 0.12 - 0.002
    assert at - start <= 0.12 + 0.05 + 0.5  # one tick late at most, plus a loaded machine
    assert len(deadlines) == 0


async def test_a_removed_task_is_not_expired() -> None:
    loop = asyncio.get_running_loop()
    expired: list[asyncio.Task[Any]] = []
    deadlines = Deadlines(expired.append, tick_s=0.01)
    kept = asyncio.create_task(_sleeper())
    dropped = asyncio.create_task(_sleeper())
    tick_kept = deadlines.add(kept, 0.03)
    tick_dropped = deadlines.add(dropped, 0.03)
    deadlines.remove(tick_dropped, dropped)
    done = loop.create_future()
    loop.call_at(tick_kept, done.set_result, None)  # the shared timer's own moment
    await done
    await asyncio.sleep(0)  # the shared timer was scheduled first, so it has run by now
    assert expired == [kept]
    deadlines.remove(tick_kept, kept)  # after the fact: harmless
    for task in (kept, dropped):
        task.cancel()


async def test_tasks_in_one_tick_share_a_timer_and_all_expire() -> None:
    loop = asyncio.get_running_loop()
    expired: list[asyncio.Task[Any]] = []
    all_done = loop.create_future()

    def expire(task: asyncio.Task[Any]) -> None:
        expired.append(task)
        if len(expired) == 3:
            all_done.set_result(None)

    deadlines = Deadlines(expire, tick_s=0.05)
    tasks = [asyncio.create_task(_sleeper()) for _ in range(3)]
    ticks = {deadlines.add(t, _mid_next_tick(0.05)) for t in tasks}
    assert len(ticks) == 1
    assert len(deadlines) == 3
    await all_done
    assert expired == tasks  # in the order they were added
    for task in tasks:
        task.cancel()


async def test_a_failing_expiry_spares_no_other_task(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    expired: list[asyncio.Task[Any]] = []
    second = loop.create_future()

    def expire(task: asyncio.Task[Any]) -> None:
        if not expired:
            expired.append(task)
            raise RuntimeError("boom")
        expired.append(task)
        second.set_result(None)

    deadlines = Deadlines(expire, tick_s=0.05)
    tasks = [asyncio.create_task(_sleeper()) for _ in range(2)]
    assert len({deadlines.add(task, _mid_next_tick(0.05)) for task in tasks}) == 1
    await second
    assert expired == tasks
    assert "could not time out" in caplog.text
    for task in tasks:
        task.cancel()


async def test_emptied_slots_expire_nothing_and_are_dropped_at_their_moment() -> None:
    loop = asyncio.get_running_loop()
    expired: list[asyncio.Task[Any]] = []
    deadlines = Deadlines(expired.append, tick_s=0.01)
    tasks = [asyncio.create_task(_sleeper()) for _ in range(50)]
    watched = [(deadlines.add(t, 0.05 + 0.01 * (i % 5)), t) for i, t in enumerate(tasks)]
    assert deadlines.slots >= 5
    for when, task in watched:
        deadlines.remove(when, task)
    assert len(deadlines) == 0
    last = loop.create_future()
    # Scheduled after every slot's timer for the same moment, so it runs after them.
    loop.call_at(max(when for when, _ in watched), last.set_result, None)
    await last
    assert expired == []
    assert deadlines.slots == 0
    for task in tasks:
        task.cancel()


def test_jobs_that_start_and_end_within_a_tick_share_one_timer() -> None:
    """A short job started and finished at once must not pay for a timer of its own."""
    timers: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        call_at = loop.call_at

        def counting_call_at(when: float, *args: Any) -> asyncio.TimerHandle:
            timers.append(when)
            return call_at(when, *args)

        loop.call_at = counting_call_at  # type: ignore[method-assign]
        deadlines = Deadlines(lambda task: None, tick_s=0.01)
        task = asyncio.create_task(_sleeper())
        start = loop.time()
        for _ in range(2000):
            deadlines.remove(deadlines.add(task, 1.0), task)
        ticks_passed = (loop.time() - start) / 0.01
        assert 1 <= len(timers) <= ticks_passed + 2 < 2000
        assert deadlines.slots == len(timers)
        task.cancel()

    # A plain asyncio loop, whose call_at can be wrapped on the instance.
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        runner.run(main())


def test_deadlines_used_again_on_a_new_loop_still_expire() -> None:
    """The first loop's timers went with it; a slot it left must not hide a new deadline."""
    fired: list[asyncio.Task[Any]] = []
    deadlines = Deadlines(fired.append, tick_s=0.01)
    slot: list[float] = []

    async def first() -> None:
        task = asyncio.create_task(_sleeper())
        slot.append(deadlines.add(task, 0.5))
        task.cancel()

    async def second() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(_sleeper())
        when = deadlines.add(task, slot[0] - loop.time() - 0.005)
        assert when == slot[0]  # the very slot the first loop left behind
        done = loop.create_future()
        loop.call_at(when, done.set_result, None)
        await asyncio.wait_for(done, 5)
        await asyncio.sleep(0)
        assert fired == [task]
        task.cancel()

    asyncio.run(first())
    asyncio.run(second())


async def test_long_timeouts_share_coarser_slots_never_early_at_most_a_thousandth_late() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(lambda task: None, tick_s=0.01)
    task = asyncio.create_task(_sleeper())
    for timeout_s in (0.05, 1.0, 10.0, 300.0, 3600.0):
        step = deadlines.step_for(timeout_s)
        assert step == 0.01 or step <= 2 * timeout_s / 1000
        now = loop.time()
        when = deadlines.add(task, timeout_s)
        assert now + timeout_s - 1e-9 <= when <= loop.time() + timeout_s + step
        deadlines.remove(when, task)
    assert deadlines.step_for(300.0) > 0.01  # about 3 slots a second for a 5-minute timeout
    assert len(deadlines) == 0
    task.cancel()


def test_a_tick_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Deadlines(lambda task: None, tick_s=0)


async def test_deadlines_added_back_to_back_each_stay_within_their_bounds() -> None:
    """Jobs with the same timeout started back to back share slots, and each one's deadline is
    never before its own start plus its timeout, and at most a step after."""
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(lambda task: None, tick_s=0.01)
    task = asyncio.create_task(_sleeper())
    slots: set[float] = set()
    start = loop.time()
    while loop.time() - start < 0.05:  # across several ticks
        now = loop.time()
        when = deadlines.add(task, 0.2)
        after = loop.time()
        assert now + 0.2 - 1e-9 <= when <= after + 0.2 + 0.01
        deadlines.remove(when, task)
        slots.add(when)
        await asyncio.sleep(0)
    assert 2 <= len(slots) <= deadlines.slots
    task.cancel()


async def test_a_slot_that_fired_is_not_given_to_a_later_deadline() -> None:
    loop = asyncio.get_running_loop()
    expired: list[asyncio.Task[Any]] = []
    deadlines = Deadlines(expired.append, tick_s=0.01)
    first = asyncio.create_task(_sleeper())
    when = deadlines.add(first, 0.001)
    done = loop.create_future()
    loop.call_at(when, done.set_result, None)
    await done
    await asyncio.sleep(0)
    assert expired == [first]
    later = asyncio.create_task(_sleeper())
    again = deadlines.add(later, 0.001)
    assert again > when
    done = loop.create_future()
    loop.call_at(again, done.set_result, None)
    await done
    await asyncio.sleep(0)
    assert expired == [first, later]  # its own slot fired for it
    first.cancel()
    later.cancel()
