"""Lifecycle hooks: the worker reports what happens to jobs; metrics (or tests) listen.

The runtime calls these synchronously on the event loop, so implementations must be cheap and
must not block (counter increments, not I/O).
"""

from __future__ import annotations


class Observer:
    """No-op base; subclass and override what you need."""

    def job_started(self, task: str, queue: str, wait_ms: int | None) -> None:
        """A job's handler is about to run; ``wait_ms`` is enqueue-to-start when known."""

    def job_finished(self, task: str, queue: str, outcome: str, duration_s: float) -> None:
        """``outcome`` is one of succeeded, retried, deferred, dead."""

    def job_redelivered(self, queue: str, count: int) -> None:
        """Entries reclaimed from a consumer whose lease lapsed (they will run again)."""

    def ack_refused(self, queue: str, count: int) -> None:
        """Finishing writes refused because another consumer owns the entry now."""

    def group_recreated(self, queue: str) -> None:
        """A stream or group vanished (FLUSHALL, restart without data) and was recreated."""

    def rate_limit_wait(self, task: str, wait_s: float) -> None:
        """A job found no token and was deferred."""

    def cron_fired(self, schedule: str, count: int) -> None:
        """Slots of a schedule enqueued by this process."""

    def cron_missed(self, schedule: str, count: int) -> None:
        """Slots skipped by a schedule's catch-up policy."""


class Observers(Observer):
    """Fan out to several observers."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = list(observers)

    def job_started(self, task: str, queue: str, wait_ms: int | None) -> None:
        for o in self.observers:
            o.job_started(task, queue, wait_ms)

    def job_finished(self, task: str, queue: str, outcome: str, duration_s: float) -> None:
        for o in self.observers:
            o.job_finished(task, queue, outcome, duration_s)

    def job_redelivered(self, queue: str, count: int) -> None:
        for o in self.observers:
            o.job_redelivered(queue, count)

    def ack_refused(self, queue: str, count: int) -> None:
        for o in self.observers:
            o.ack_refused(queue, count)

    def group_recreated(self, queue: str) -> None:
        for o in self.observers:
            o.group_recreated(queue)

    def rate_limit_wait(self, task: str, wait_s: float) -> None:
        for o in self.observers:
            o.rate_limit_wait(task, wait_s)

    def cron_fired(self, schedule: str, count: int) -> None:
        for o in self.observers:
            o.cron_fired(schedule, count)

    def cron_missed(self, schedule: str, count: int) -> None:
        for o in self.observers:
            o.cron_missed(schedule, count)
