"""The event-loop watchdog against real loops and threads: a coroutine that blocks the loop (a
blocking wait inside ``async def`` is the thing under test) is reported once with the jobs in
flight and its stack, recovery is logged, the process is ended past the limit, and a stop signal
that arrives while the loop is blocked still ends the process. Given / When / Then in each
test's docstring."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qrunner.errors import ConfigError
from qrunner.settings import Settings
from qrunner.watchdog import EX_SOFTWARE, EXIT_SECOND_SIGNAL, LoopWatchdog

WAIT_S = 10.0


class Records(logging.Handler):
    """Keeps the watchdog's log records; sets an event when one matching a predicate arrives."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._waiters: list[tuple[Callable[[logging.LogRecord], bool], threading.Event]] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock:
            self.records.append(record)
            for match, event in self._waiters:
                if match(record):
                    event.set()

    def event_for(self, match: Callable[[logging.LogRecord], bool]) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._waiters.append((match, event))
            if any(match(r) for r in self.records):
                event.set()
        return event

    def messages(self, level: int, containing: str) -> list[str]:
        with self._lock:
            return [
                r.getMessage()
                for r in self.records
                if r.levelno == level and containing in r.getMessage()
            ]


@pytest.fixture
def records() -> Iterator[Records]:
    logger = logging.getLogger("qrunner.watchdog")
    handler = Records()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


class ExitRecorder:
    """Stands in for os._exit: records the status and releases the blocked loop."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.called = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.called.set()


async def hog_the_loop(until: threading.Event) -> bool:
    """Blocks the event loop (no await) until ``until`` is set or WAIT_S passes."""
    return until.wait(WAIT_S)


async def spin_the_loop(until: threading.Event) -> bool:
    """Blocks the event loop in pure Python (``while True: pass`` with an exit) until ``until``
    is set or WAIT_S passes. Python runs signal handlers between these bytecodes; a blocking C
    call would delay a signal that lands just before it until the call returns."""
    deadline = time.monotonic() + WAIT_S
    while not until.is_set():
        if time.monotonic() > deadline:
            return False
    return True


async def wait_in_thread(event: threading.Event) -> bool:
    """Await a threading.Event without blocking the loop."""
    return await asyncio.to_thread(event.wait, WAIT_S)


async def test_blocked_loop_warns_once_with_jobs_and_stack_then_recovers(
    records: Records,
) -> None:
    """Given a watchdog (warn 0.2 s) and a job's task that blocks the loop through several
    checks, then exactly one warning names the job in flight, the blocking task and the
    blocking coroutine's line, on_stall is called on each check with growing stall times (and
    can tell which task blocks), and recovery is logged once the loop runs again."""
    stalls: list[float] = []
    blockers: list[str | None] = []
    enough = threading.Event()

    def on_stall(stalled_s: float) -> None:
        stalls.append(stalled_s)
        current = watchdog.current_task()
        blockers.append(None if current is None else current.get_name())
        if len(stalls) >= 4:
            enough.set()

    recovered = records.event_for(lambda r: "recovered" in r.getMessage())
    watchdog = LoopWatchdog(
        warn_s=0.2,
        limit_s=0,
        describe=lambda: [("crunch_numbers", "job-42")],
        on_stall=on_stall,
    )
    watchdog.start()
    try:
        job = asyncio.create_task(hog_the_loop(enough), name="job crunch_numbers job-42")
        assert await job, "on_stall was not called while the loop was blocked"
        assert await wait_in_thread(recovered), "no recovery logged"
    finally:
        watchdog.stop()

    warnings = records.messages(logging.WARNING, "event loop blocked")
    assert len(warnings) == 1, warnings
    assert "blocking asyncio task: job crunch_numbers job-42 (hog_the_loop)" in warnings[0]
    assert "jobs in flight: crunch_numbers job-42" in warnings[0]
    assert set(blockers) == {"job crunch_numbers job-42"}
    assert "hog_the_loop" in warnings[0]
    assert "until.wait(WAIT_S)" in warnings[0]  # the blocking line itself
    assert len(stalls) >= 4 and stalls == sorted(stalls) and stalls[0] > 0.2
    [recovery] = records.messages(logging.WARNING, "recovered after")
    assert float(recovery.split("after a ")[1].split("s")[0]) >= stalls[-1] - 0.1


async def test_failing_on_stall_is_logged_once_and_watching_goes_on(records: Records) -> None:
    """Given an on_stall callback that always raises, when the loop blocks, then the failure is
    logged once per stall with its traceback and the watchdog still reports the recovery."""
    calls = threading.Semaphore(0)
    called = 0
    enough = threading.Event()

    def on_stall(stalled_s: float) -> None:
        nonlocal called
        called += 1
        calls.release()
        if called >= 3:
            enough.set()
        raise RuntimeError("side connection down")

    recovered = records.event_for(lambda r: "recovered" in r.getMessage())
    watchdog = LoopWatchdog(warn_s=0.1, limit_s=0, on_stall=on_stall)
    watchdog.start()
    try:
        assert await hog_the_loop(enough)
        assert await wait_in_thread(recovered)
    finally:
        watchdog.stop()
    failures = [r for r in records.records if "on_stall failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert "side connection down" in str(failures[0].exc_info[1])
    assert records.messages(logging.WARNING, "jobs in flight: (none)")


async def test_no_warning_while_the_loop_is_busy_but_yielding(records: Records) -> None:
    """Given a loop doing CPU work for 1 s but yielding between small slices, then the
    watchdog neither warns nor calls on_stall."""
    stalls: list[float] = []
    watchdog = LoopWatchdog(warn_s=0.5, limit_s=1.0, on_stall=stalls.append)
    watchdog.start()
    slices = 0
    try:
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            sum(range(5000))
            slices += 1
            await asyncio.sleep(0)
        assert watchdog.stalled_s < 0.5
    finally:
        watchdog.stop()
    assert slices > 100
    assert stalls == []
    assert [r for r in records.records if r.levelno >= logging.WARNING] == []


async def test_stall_past_the_limit_records_jobs_and_exits_70(records: Records) -> None:
    """Given warn 0.1 s and limit 0.5 s, when a coroutine blocks the loop, then on_limit gets
    the stall time and the jobs in flight, an error naming the limit and the blocking coroutine
    is logged, and the exit function is called with 70 (EX_SOFTWARE)."""
    exit_process = ExitRecorder()
    limits: list[tuple[float, list[tuple[str, str]]]] = []

    def on_limit(stalled_s: float, running: list[tuple[str, str]]) -> None:
        limits.append((stalled_s, running))

    watchdog = LoopWatchdog(
        warn_s=0.1,
        limit_s=0.5,
        describe=lambda: [("monthly_report", "job-1"), ("greet", "job-2")],
        on_limit=on_limit,
        exit_process=exit_process,
    )
    watchdog.start()
    try:
        assert await hog_the_loop(exit_process.called), "the watchdog never ended the process"
    finally:
        watchdog.stop()
    assert exit_process.codes == [EX_SOFTWARE] == [70]
    [(stalled_s, running)] = limits
    assert stalled_s > 0.5
    assert running == [("monthly_report", "job-1"), ("greet", "job-2")]
    [error] = records.messages(logging.ERROR, "over the 0.5s limit")
    assert "exit status 70" in error and "monthly_report job-1" in error
    assert "hog_the_loop" in error


async def test_stop_signal_while_blocked_ends_the_process_after_grace(records: Records) -> None:
    """Given the loop's own SIGTERM handler (as the worker installs it) and the escape on top,
    when SIGTERM arrives while a coroutine blocks the loop, then the watchdog ends the process
    once the loop has stayed blocked for the grace (on_limit told first), the loop's handler
    still runs once the loop is free, and stop() puts the loop's handler back."""
    loop = asyncio.get_running_loop()
    original = signal.getsignal(signal.SIGTERM)
    seen_by_loop = asyncio.Event()
    stalled = threading.Event()
    exit_process = ExitRecorder()
    limits: list[float] = []
    signalled_at: list[float] = []
    loop.add_signal_handler(signal.SIGTERM, seen_by_loop.set)
    try:
        loop_handler = signal.getsignal(signal.SIGTERM)
        watchdog = LoopWatchdog(
            warn_s=0.1,
            limit_s=0,
            describe=lambda: [("spin", "job-7")],
            on_stall=lambda s: stalled.set(),
            on_limit=lambda s, running: limits.append(s),
            exit_process=exit_process,
        )
        watchdog.install_signal_escape((signal.SIGTERM,), grace_s=0.3)
        assert signal.getsignal(signal.SIGTERM) is not loop_handler

        def send_sigterm_once_stalled() -> None:
            if stalled.wait(WAIT_S):
                signalled_at.append(time.monotonic())
                os.kill(os.getpid(), signal.SIGTERM)

        sender = threading.Thread(target=send_sigterm_once_stalled)
        watchdog.start()
        try:
            sender.start()
            assert await spin_the_loop(exit_process.called), "SIGTERM did not end the process"
            ended_at = time.monotonic()
            await asyncio.wait_for(seen_by_loop.wait(), WAIT_S)
        finally:
            watchdog.stop()
            sender.join(WAIT_S)
        assert signal.getsignal(signal.SIGTERM) is loop_handler
        watchdog.stop()  # idempotent
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, original)
    assert exit_process.codes == [EX_SOFTWARE]
    assert ended_at - signalled_at[0] >= 0.3
    assert len(limits) == 1
    [error] = records.messages(logging.ERROR, "asked to stop")
    assert "spin job-7" in error and "spin_the_loop" in error


async def test_second_stop_signal_while_blocked_exits_at_once() -> None:
    """Given the escape with a long grace, when two SIGTERMs arrive while the loop is blocked,
    then the process is ended with 130 without waiting for the grace."""
    original = signal.getsignal(signal.SIGTERM)
    stalled = threading.Event()
    handled = threading.Semaphore(0)
    exit_process = ExitRecorder()
    watchdog = LoopWatchdog(
        warn_s=0.1, limit_s=0, on_stall=lambda s: stalled.set(), exit_process=exit_process
    )

    def send_two_sigterms() -> None:
        # Signals of one kind that arrive together are merged; send the second only once the
        # first has reached the Python handlers (the escape calls the handler it wraps).
        for _ in range(2):
            if stalled.wait(WAIT_S):
                os.kill(os.getpid(), signal.SIGTERM)
                handled.acquire(timeout=WAIT_S)

    sender = threading.Thread(target=send_two_sigterms)
    try:
        signal.signal(signal.SIGTERM, lambda signum, frame: handled.release())
        watchdog.install_signal_escape((signal.SIGTERM,), grace_s=60)
        watchdog.start()
        sender.start()
        t0 = time.monotonic()
        assert await spin_the_loop(exit_process.called)
        assert time.monotonic() - t0 < 30
    finally:
        watchdog.stop()
        sender.join(WAIT_S)
        signal.signal(signal.SIGTERM, original)
    assert exit_process.codes == [EXIT_SECOND_SIGNAL] == [130]


async def test_signal_on_a_healthy_loop_is_left_to_the_loop() -> None:
    """Given the escape with a short grace, when SIGTERM arrives while the loop keeps running,
    then the loop's own handler runs and the watchdog does not end the process."""
    loop = asyncio.get_running_loop()
    original = signal.getsignal(signal.SIGTERM)
    seen_by_loop = asyncio.Event()
    exit_process = ExitRecorder()
    loop.add_signal_handler(signal.SIGTERM, seen_by_loop.set)
    watchdog = LoopWatchdog(warn_s=0.2, limit_s=0, exit_process=exit_process)
    try:
        watchdog.install_signal_escape((signal.SIGTERM,), grace_s=0.2)
        watchdog.start()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(seen_by_loop.wait(), WAIT_S)
        # Nothing to wait for: the loop stays responsive through several grace periods.
        await asyncio.sleep(1.0)
    finally:
        watchdog.stop()
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, original)
    assert exit_process.codes == []


async def test_stop_is_idempotent_and_a_watchdog_starts_once() -> None:
    watchdog = LoopWatchdog(warn_s=1)
    watchdog.stop()
    watchdog.stop()
    with pytest.raises(RuntimeError, match="starts once"):
        watchdog.start()
    other = LoopWatchdog(warn_s=1)
    other.start()
    try:
        with pytest.raises(RuntimeError, match="starts once"):
            other.start()
    finally:
        other.stop()
        other.stop()


def test_thresholds_are_checked_and_read_from_settings() -> None:
    with pytest.raises(ConfigError, match="above 0"):
        LoopWatchdog(warn_s=0)
    with pytest.raises(ConfigError, match="limit"):
        LoopWatchdog(warn_s=1, limit_s=-1)
    watchdog = LoopWatchdog.from_settings(
        Settings(loop_stall_warn_s=3, loop_stall_limit_s=90, grace_s=12)
    )
    assert (watchdog.warn_s, watchdog.limit_s, watchdog.stop_grace_s) == (3, 90, 12)
    assert watchdog.interval_s == 0.25
    assert LoopWatchdog(warn_s=0.4).interval_s == pytest.approx(0.1)


def test_a_real_process_blocked_past_the_limit_exits_70() -> None:
    """Given a process whose loop spins in ``while True: pass``, when the stall passes the
    limit, then the process really ends with status 70 after logging the error."""
    script = textwrap.dedent(
        """
        import asyncio, logging
        from qrunner.watchdog import LoopWatchdog

        logging.basicConfig(level=logging.WARNING)

        async def spin_forever() -> None:
            while True:
                pass

        async def main() -> None:
            LoopWatchdog(warn_s=0.1, limit_s=0.5, describe=lambda: [("spin", "j1")]).start()
            await spin_forever()

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 70, done.stderr
    assert "over the 0.5s limit" in done.stderr
    assert "spin j1" in done.stderr and "spin_forever" in done.stderr
