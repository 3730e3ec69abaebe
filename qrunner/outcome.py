"""What happens to a job after a run: a pure function of the run's exception and the job.

Kept free of I/O so the retry policy reads as a table: succeeded, retry in N ms (an attempt
spent), defer N ms (no attempt spent: rate limits, quiet hours), or dead-letter because X.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

from .backoff import backoff_delay_s
from .errors import InvalidPayload, Permanent, RateLimited, Retry
from .job import ErrorRecord, Job
from .names import MAX_DELAY_S
from .redact import mask
from .task import Task

TRACEBACK_TAIL_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Succeeded:
    result: bytes


@dataclass(frozen=True, slots=True)
class RetryLater:
    delay_ms: int
    job: Job  # the next attempt's envelope
    error: str


@dataclass(frozen=True, slots=True)
class Deferred:
    delay_ms: int
    job: Job
    reason: str
    bucket: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLettered:
    reason: str  # masked (see qrunner.redact): it is logged and kept as the job's last error
    job: Job | None
    raw: bytes | None = None  # the entry as found, when it was not a valid envelope

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", mask(self.reason))


Outcome = Succeeded | RetryLater | Deferred | DeadLettered


def error_record(exc: BaseException, attempt: int, now_ms: int) -> ErrorRecord:
    """The error history entry of a failed run. Message and traceback are masked (phone
    numbers, email addresses, tokens): they are logged and stored with the job."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    message = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError) and not str(exc):
        message = "timed out"
    return ErrorRecord(
        type=type(exc).__name__[:200],
        message=mask(message[:1200])[:1000],
        attempt=attempt,
        at_ms=now_ms,
        traceback=mask(tb[-TRACEBACK_TAIL_CHARS - 200 :])[-TRACEBACK_TAIL_CHARS:],
    )


def classify(
    exc: BaseException, job: Job, task: Task, now_ms: int, *, draw: float | None = None
) -> Outcome:
    """Decide the fate of a job whose handler raised ``exc``."""
    if isinstance(exc, RateLimited):
        return Deferred(_ms(exc.retry_after_s), job, mask(exc.reason), exc.bucket)
    record = error_record(exc, job.attempt, now_ms)
    if isinstance(exc, Permanent | InvalidPayload):
        return DeadLettered(f"permanent: {record.message}", job.with_error(record))
    if job.attempt > task.max_retries:
        reason = (
            f"failed {job.attempt} times (max_retries={task.max_retries}); "
            f"last: {record.type}: {record.message}"
        )
        return DeadLettered(reason, job.with_error(record))
    if isinstance(exc, Retry):
        delay_s = exc.after_s
    else:
        delay_s = backoff_delay_s(
            job.attempt, task.backoff_base_s, task.backoff_cap_s, jitter=task.jitter, draw=draw
        )
    return RetryLater(_ms(delay_s), job.failed(record), f"{record.type}: {record.message}")


def _ms(seconds: float) -> int:
    """A handler's delay in ms, capped at 366 days (an infinite ``Retry`` is not a crash)."""
    return int(min(seconds, MAX_DELAY_S) * 1000)
