"""Job timeouts on a few shared loop timers instead of one timer per job.

A timer handle per job (``loop.call_later`` to start, ``cancel`` at the end) cost about 3 µs
a job under uvloop, a tenth of a no-op job's whole cost in the worker. Here each deadline is
rounded up to a slot, and every job whose deadline falls in the same slot shares one timer:
starting a job is a dict look-up and an insertion, finishing it a removal. A slot's timer is
never cancelled: a slot whose jobs all ended stays, empty, until its moment comes, when the
timer drops it. (Cancelling it made a job that starts and ends within a slot, as a short job
does when it runs at once, pay for a timer of its own again.) A job whose handler returns
without ever waiting is never added at all: nothing could have timed it out (the runner steps
the handler once itself, :mod:`qrunner.firststep`). Slots are made only for
deadlines ahead, one per step, so there are at most about ``timeout / step`` of them per
timeout in use, whatever the number of jobs.

Slots are 10 ms apart for timeouts up to 10 s and about a thousandth of the timeout beyond
(a power-of-two multiple of 10 ms): a job times out at most that much after its timeout, never
before it. There are therefore at most about 1,000 slots (and timers) per timeout.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: The finest step between slots, in seconds.
DEFAULT_TICK_S = 0.01
#: Past ``1000 * tick``, the step grows with the timeout (at most about 0.1 % of it).
_STEPS_PER_TIMEOUT = 1000

Expire = Callable[["asyncio.Task[Any]"], None]


class Deadlines:
    """Calls ``expire(task)`` once ``timeout_s`` has passed for each task added and not yet
    removed. Used on one event loop (a worker's)."""

    def __init__(self, expire: Expire, tick_s: float = DEFAULT_TICK_S) -> None:
        if tick_s <= 0:
            raise ValueError("a deadline tick must be positive")
        self._expire = expire
        self._tick_s = tick_s
        #: Loop time of the slot -> the tasks due then, in the order added. Each slot has a
        #: timer at its moment, which drops it.
        self._slots: dict[float, dict[asyncio.Task[Any], None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Timeout -> slot step (a task's timeout is fixed, so this stays small).
        self._steps: dict[float, float] = {}

    def step_for(self, timeout_s: float) -> float:
        """The distance between slots for deadlines ``timeout_s`` away."""
        step = self._steps.get(timeout_s)
        if step is None:
            step = self._tick_s
            while step * _STEPS_PER_TIMEOUT < timeout_s:
                step *= 2
            if len(self._steps) > 1000:  # timeouts computed per job: do not grow without end
                self._steps.clear()
            self._steps[timeout_s] = step
        return step

    def add(self, task: asyncio.Task[Any], timeout_s: float, elapsed_s: float = 0.0) -> float:
        """Watch ``task``, due ``timeout_s`` after it started, ``elapsed_s`` ago (a deadline
        already past fires at the loop's next turn); returns its slot (the loop time it
        expires at), for :meth:`remove`."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # run again on another loop: the old loop's timers are gone
            self._slots.clear()
            self._loop = loop
        step = self._steps.get(timeout_s) or self.step_for(timeout_s)
        when = math.ceil((loop.time() + timeout_s - elapsed_s) / step) * step
        slot = self._slots.get(when)
        if slot is None:
            slot = self._slots[when] = {}
            loop.call_at(when, self._fire, when)
        slot[task] = None
        return when

    def remove(self, when: float, task: asyncio.Task[Any]) -> None:
        """Stop watching ``task`` (its job ended before its deadline, or after: both fine)."""
        slot = self._slots.get(when)
        if slot is not None:
            slot.pop(task, None)

    def __len__(self) -> int:
        """Tasks watched now."""
        return sum(len(tasks) for tasks in self._slots.values())

    @property
    def slots(self) -> int:
        """Slots (and so loop timers) pending now, empty ones included."""
        return len(self._slots)

    def _fire(self, when: float) -> None:
        slot = self._slots.pop(when, None)
        if slot is None:
            return
        for task in slot:
            try:
                self._expire(task)
            except Exception:  # one task's failure must not spare the others their timeout
                log.exception("could not time out %r", task)
