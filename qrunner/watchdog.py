"""Event-loop watchdog: notices when a handler blocks the event loop, says which one, and ends
the process when the loop stays blocked too long.

Everything that keeps a worker honest runs on its event loop: lease renewal, job timeouts (they
are ``loop.call_later`` cancels), the SIGTERM handler installed with ``loop.add_signal_handler``.
A handler that blocks the loop (a synchronous CPU-heavy body, ``time.sleep``, a blocking client,
``while True: pass``) silently stops all of them. CPU-bound or blocking bodies belong in a thread
(``run_in_thread=True`` on the task) or a process pool, never on the loop.

:class:`LoopWatchdog` keeps a heartbeat on the loop (a ``call_later`` callback that stores
``time.monotonic()``) and a daemon thread that checks it. When the heartbeat is late by more
than ``warn_s`` it logs one warning per stall with the jobs in flight and the loop thread's
stack, calls ``on_stall`` on every check while the stall lasts (the worker renews its leases
there, from a connection of its own), and logs once when the loop recovers. Past ``limit_s`` it
calls ``on_limit``, logs an error and ends the process with ``os._exit`` so that the jobs it
held are redelivered to healthy workers.

:meth:`LoopWatchdog.install_signal_escape` covers shutdown: a signal handler installed with
``loop.add_signal_handler`` only runs once the loop gets control back, which a blocked loop never
does. The escape chains a plain Python signal handler in front of it (Python runs those in the
main thread between bytecodes, even while pure-Python code blocks the loop), and when the loop
stays blocked for ``grace_s`` after SIGTERM/SIGINT the watchdog ends the process.

Limits: the watchdog thread needs the GIL. A C call that holds the GIL for its whole duration
(a huge regex match, some extension code) stops this thread too; it reports the stall only when
that call returns. Pure-Python loops and calls that release the GIL (``time.sleep``, socket and
file I/O, ``threading.Event.wait``) are seen while they happen. Likewise the escape needs the
main thread to run Python bytecode or to be woken by the signal: a signal that lands just
before a blocking C call starts is handled only when that call returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)

#: Exit status when the loop stayed blocked past the limit, or past the grace after a stop
#: signal (EX_SOFTWARE from sysexits.h).
EX_SOFTWARE = 70
#: Exit status for a second stop signal while the loop is blocked; the same as the worker's
#: "second signal: exit now".
EXIT_SECOND_SIGNAL = 130

#: (task name, job id) of each job in flight.
Running = list[tuple[str, str]]
PyHandler = Callable[[int, FrameType | None], Any]
SignalHandler = PyHandler | int | None


def _interval_for(warn_s: float) -> float:
    return min(0.25, warn_s / 4)


class LoopWatchdog:
    """Watches one running event loop from a daemon thread.

    Args:
        warn_s: a heartbeat later than this is a stall: one warning (jobs in flight, the loop
            thread's stack), then ``on_stall`` on every check until the loop recovers.
        limit_s: a stall longer than this ends the process (0 = never).
        describe: returns (task name, job id) for each job in flight. It is called from the
            watchdog thread while the loop is blocked, so it must only read plain data (copy a
            dict's values, say): no awaiting, no locks the loop thread might hold, no I/O.
        on_stall: ``on_stall(stalled_s)``, called in the watchdog thread on each check
            (about every ``interval_s``) while stalled past ``warn_s``; meant for renewing
            leases from a synchronous side connection. Keep it short: the next check waits for
            it. Exceptions are logged and swallowed.
        on_limit: ``on_limit(stalled_s, running)``, called in a helper thread just before the
            watchdog ends the process (stall past ``limit_s``, or a stop signal left unanswered
            for the escape's grace); meant for recording on each job that the loop was blocked.
            It gets at most ``final_timeout_s``; exceptions are logged and swallowed.
        exit_code: the exit status past the limit or the signal grace (70, EX_SOFTWARE).
        exit_process: ends the process; ``os._exit`` (no cleanup: the loop thread is stuck, so a
            normal exit would wait for it forever). Tests pass a recorder instead.
        stop_grace_s: how long the loop may stay blocked after :meth:`request_stop` before the
            process is ended; :meth:`install_signal_escape` can set it.
        final_timeout_s: time allowed for the last log lines and ``on_limit`` before exiting.
        stack_frames: how many of the loop thread's innermost frames a report shows.
    """

    def __init__(
        self,
        *,
        warn_s: float = 2.0,
        limit_s: float = 60.0,
        describe: Callable[[], Iterable[tuple[str, str]]] | None = None,
        on_stall: Callable[[float], object] | None = None,
        on_stall_after_s: float | None = None,
        on_limit: Callable[[float, Running], object] | None = None,
        exit_code: int = EX_SOFTWARE,
        exit_process: Callable[[int], object] = os._exit,
        stop_grace_s: float = 30.0,
        final_timeout_s: float = 10.0,
        stack_frames: int = 15,
    ) -> None:
        if warn_s <= 0:
            raise ConfigError(f"loop stall warning threshold must be above 0, got {warn_s:g}")
        if limit_s < 0:
            raise ConfigError(f"loop stall limit must be 0 (never) or above, got {limit_s:g}")
        if stop_grace_s < 0:
            raise ConfigError(f"stop grace must be 0 or above, got {stop_grace_s:g}")
        self.warn_s = warn_s
        self.limit_s = limit_s
        #: ``on_stall`` runs once the stall passes this (default: ``warn_s``); a worker sets it
        #: to a third of its lease, so leases are renewed before they lapse.
        self.on_stall_after_s = warn_s if on_stall_after_s is None else on_stall_after_s
        self.interval_s = _interval_for(min(warn_s, max(0.05, self.on_stall_after_s)))
        self.exit_code = exit_code
        self.stop_grace_s = stop_grace_s
        self.final_timeout_s = final_timeout_s
        self.stack_frames = stack_frames
        self._describe = describe
        self._on_stall = on_stall
        self._on_limit = on_limit
        self._exit = exit_process
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread_id: int | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self._active = False
        self._stopped = False
        self._last_beat = 0.0
        # Monotonic times of stop requests; appended to from signal handlers (a list append is
        # atomic, and a signal handler must not take locks the interrupted code might hold).
        self._stop_requests: list[float] = []
        # One bound-method object, installed for every signal, so that stop() can tell whether
        # the escape is still the installed handler.
        self._signal_handler: PyHandler = self._on_signal
        self._previous_handlers: dict[int, SignalHandler] = {}

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> LoopWatchdog:
        """A watchdog with ``QRUNNER_LOOP_STALL_WARN_S`` / ``_LIMIT_S`` and the worker's
        shutdown grace (``QRUNNER_GRACE_S``) as the stop grace; ``kwargs`` win."""
        kwargs.setdefault("warn_s", settings.loop_stall_warn_s)
        kwargs.setdefault("limit_s", settings.loop_stall_limit_s)
        kwargs.setdefault("stop_grace_s", settings.grace_s)
        return cls(**kwargs)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching the running loop. Call it from a coroutine or callback on that loop."""
        if self._thread is not None or self._stopped:
            raise RuntimeError("a LoopWatchdog starts once")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread_id = threading.get_ident()
        self._active = True
        self._last_beat = time.monotonic()
        self._handle = loop.call_later(self.interval_s, self._beat)
        self._thread = threading.Thread(
            target=self._watch, name="qrunner-loop-watchdog", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and the heartbeat and put back the signal handlers the escape replaced.

        Idempotent. Call it from the loop thread (signal handlers can only be restored from the
        main thread; from another thread they are left in place).
        """
        if self._stopped:
            return
        self._stopped = True
        self._active = False
        self._halt.set()
        handle, self._handle = self._handle, None
        if handle is not None and self._loop is not None:
            if threading.get_ident() == self._loop_thread_id:
                handle.cancel()
            else:
                try:
                    self._loop.call_soon_threadsafe(handle.cancel)
                except RuntimeError:  # the loop is closed: nothing left to cancel
                    pass
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(1.0, 4 * self.interval_s))
        self._restore_signal_handlers()

    def current_task(self) -> asyncio.Task[Any] | None:
        """The asyncio task the loop is running right now, None between tasks.

        Safe from the watchdog's callbacks: while the loop is blocked inside a coroutine this
        is the task that blocks it (name job tasks, e.g. ``task.set_name(f"{name} {job_id}")``,
        to recognise them).
        """
        if self._loop is None:
            return None
        try:
            return asyncio.current_task(self._loop)
        except Exception:  # a loop implementation that does not track its tasks
            return None

    @property
    def stalled_s(self) -> float:
        """How late the loop's heartbeat is right now (0.0 when it is on time or not started)."""
        if not self._active or self._loop is None or not self._loop.is_running():
            return 0.0
        return max(0.0, time.monotonic() - self._last_beat - self.interval_s)

    # -- shutdown while blocked ----------------------------------------------------------------

    def request_stop(self) -> None:
        """Note that the process was asked to stop.

        Safe to call from a plain ``signal.signal`` handler. If the loop then stays blocked for
        ``stop_grace_s`` the watchdog ends the process with ``exit_code``; a second request
        while the loop is blocked ends it at once with status 130.
        """
        self._stop_requests.append(time.monotonic())

    def install_signal_escape(
        self,
        signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
        grace_s: float | None = None,
    ) -> None:
        """Make ``signals`` reach the watchdog even while the loop is blocked.

        Call it from the main thread *after* ``loop.add_signal_handler`` has installed the
        loop's own handlers: for each signal the current Python-level handler is wrapped, so
        the loop's handling is unchanged (asyncio and uvloop both learn of the signal through
        their wakeup fd, which the C-level handler writes whatever Python handler is set, and
        the wrapped handler is still called). Installing loop handlers afterwards would
        replace the escape. :meth:`stop` restores the wrapped handlers.
        """
        if grace_s is not None:
            if grace_s < 0:
                raise ConfigError(f"stop grace must be 0 or above, got {grace_s:g}")
            self.stop_grace_s = grace_s
        for sig in signals:
            current = signal.getsignal(sig)
            if current is self._signal_handler:
                continue
            signal.signal(sig, self._signal_handler)
            # signal.signal() drops the SA_RESTART flag loop.add_signal_handler() sets.
            signal.siginterrupt(sig, False)
            self._previous_handlers[sig] = current

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop()
        previous = self._previous_handlers.get(signum)
        if callable(previous):
            previous(signum, frame)

    def _restore_signal_handlers(self) -> None:
        if not self._previous_handlers:
            return
        if threading.current_thread() is not threading.main_thread():
            log.debug("loop watchdog stopped outside the main thread; signal escape left on")
            return
        for sig, previous in self._previous_handlers.items():
            if signal.getsignal(sig) is self._signal_handler:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous_handlers.clear()

    # -- the loop side -------------------------------------------------------------------------

    def _beat(self) -> None:
        self._last_beat = time.monotonic()
        if self._active and self._loop is not None:
            self._handle = self._loop.call_later(self.interval_s, self._beat)

    # -- the watchdog thread --------------------------------------------------------------------

    def _watch(self) -> None:
        loop = self._loop
        assert loop is not None
        stall_beat: float | None = None  # the last heartbeat before the stall being reported
        stall_failures = 0
        while not self._halt.wait(self.interval_s):
            if loop.is_closed():
                return
            now = time.monotonic()
            if not loop.is_running():
                # Between runs (or shutting down) the loop is idle, not blocked.
                self._last_beat = now
                continue
            beat = self._last_beat
            if stall_beat is not None and beat != stall_beat:
                log.warning(
                    "event loop recovered after a %.1fs stall",
                    max(0.0, beat - stall_beat - self.interval_s),
                )
                stall_beat = None
            stalled = max(0.0, now - beat - self.interval_s)
            if stalled <= min(self.on_stall_after_s, self.warn_s):
                stall_failures = 0  # healthy: the next stall logs its first failure again
            if self._on_stall is not None and stalled > self.on_stall_after_s:
                try:
                    self._on_stall(stalled)
                except Exception:
                    stall_failures += 1
                    if stall_failures == 1:
                        log.exception("loop watchdog: on_stall failed")
            if stalled > self.warn_s:
                if stall_beat is None:
                    stall_beat = beat
                    log.warning(
                        "event loop blocked for %.1fs: no handler, timeout, lease renewal or "
                        "signal can run; blocking asyncio task: %s; jobs in flight: %s; loop "
                        "thread stack (most recent call last):\n%s",
                        stalled,
                        self._task_text(),
                        self._running_text(self._running()),
                        self._stack(),
                    )
                if self._halt.is_set():
                    return
                if self.limit_s > 0 and stalled > self.limit_s:
                    self._end(
                        stalled,
                        f"event loop blocked for {stalled:.1f}s, over the {self.limit_s:g}s limit",
                        self.exit_code,
                    )
                    return
            if self._stop_requests and self._escape_due(now, beat):
                return

    def _escape_due(self, now: float, beat: float) -> bool:
        """End the process when a stop request has gone unanswered by the loop. True if so."""
        requests = self._stop_requests
        silent = now - max(requests[0], beat) - self.interval_s
        if len(requests) >= 2 and now - max(requests[1], beat) - self.interval_s > self.interval_s:
            self._end(
                max(0.0, now - beat - self.interval_s),
                "second stop signal while the event loop is blocked: exiting now",
                EXIT_SECOND_SIGNAL,
                final_words=False,
            )
            return True
        if silent >= self.stop_grace_s:
            stalled = max(0.0, now - beat - self.interval_s)
            self._end(
                stalled,
                f"asked to stop, but the event loop has been blocked for {stalled:.1f}s "
                f"({silent:.1f}s since the request, grace {self.stop_grace_s:g}s)",
                self.exit_code,
            )
            return True
        return False

    def _end(self, stalled: float, why: str, code: int, *, final_words: bool = True) -> None:
        running = self._running()
        stack = self._stack()
        blocking = self._task_text()

        def last_words() -> None:
            log.error(
                "%s; ending the process (exit status %d) so its jobs are redelivered; blocking "
                "asyncio task: %s; jobs in flight: %s; loop thread stack (most recent call "
                "last):\n%s",
                why,
                code,
                blocking,
                self._running_text(running),
                stack,
            )
            if final_words and self._on_limit is not None:
                try:
                    self._on_limit(stalled, running)
                except Exception:
                    log.exception("loop watchdog: on_limit failed")
            _flush_logs()

        # Bounded: logging or on_limit could block on something the stuck loop thread holds,
        # and the process must end regardless.
        helper = threading.Thread(target=last_words, name="qrunner-loop-watchdog-exit", daemon=True)
        helper.start()
        helper.join(self.final_timeout_s)
        self._exit(code)

    # -- reports -------------------------------------------------------------------------------

    def _running(self) -> Running:
        if self._describe is None:
            return []
        try:
            return [(str(task), str(job)) for task, job in self._describe()]
        except Exception:
            log.exception("loop watchdog: describe failed")
            return []

    def _task_text(self) -> str:
        task = self.current_task()
        if task is None:
            return "(none: blocked outside any task, in a callback)"
        coro = task.get_coro()
        name = getattr(coro, "__qualname__", type(coro).__name__)
        return f"{task.get_name()} ({name})"

    @staticmethod
    def _running_text(running: Running) -> str:
        if not running:
            return "(none)"
        return ", ".join(f"{task} {job}" for task, job in running)

    def _stack(self) -> str:
        frame = sys._current_frames().get(self._loop_thread_id or -1)
        if frame is None:
            return "  (loop thread not found)\n"
        return "".join(traceback.format_stack(frame)[-self.stack_frames :])


def _flush_logs() -> None:
    logger: logging.Logger | None = log
    while logger is not None:
        for handler in logger.handlers:
            try:
                handler.flush()
            except Exception:  # a broken handler must not keep the process alive
                pass
        logger = logger.parent if logger.propagate else None
    for stream in (sys.stderr, sys.stdout):
        try:
            stream.flush()
        except Exception:
            pass
