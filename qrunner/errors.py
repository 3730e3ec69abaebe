"""Every exception qrunner raises or understands.

Failures (something went wrong)::

    QrunnerError
    ├── ConfigError              bad settings, schedules.yaml, unknown QRUNNER_* variable
    ├── EnqueueError             the caller's job was refused; nothing was enqueued
    │   ├── UnknownTask          task name not registered (names the known ones)
    │   ├── InvalidPayload       payload is not JSON-serialisable or fails the task's model
    │   └── PayloadTooLarge      encoded payload over the size limit
    │   └── ServerFull           Redis is out of memory (maxmemory + noeviction); nothing written
    ├── BackendUnavailable       a backend cannot be reached (host:port, never a password)
    │   └── EnqueueUncertain     the reply to an enqueue was lost: it may have been written
    ├── RedisFault               a Redis condition the worker rides out (see qrunner.faults)
    │   ├── ConnectionLost       reset, refused, timed out, or a closed transport (uvloop)
    │   ├── StreamMissing        NOGROUP / UNBLOCKED: a stream or group vanished (FLUSHALL)
    │   ├── ServerBusy           LOADING, BUSY, MASTERDOWN, READONLY, TRYAGAIN, CLUSTERDOWN
    │   ├── OutOfMemory          OOM under maxmemory with noeviction
    │   └── KeyConflict          WRONGTYPE: a key qrunner owns holds another type of value
    ├── NotOwner                 this consumer no longer owns the entry (its lease lapsed)
    └── JobNotFound              no status record for a job id (expired or never existed)

Control-flow signals raised by handlers (not failures of qrunner; the worker turns each into an
outcome). They derive from ``JobSignal`` so ``except Exception`` in a handler can let them through
with ``except JobSignal: raise``::

    JobSignal
    ├── Retry(after_s)           run again after the given delay; counts as an attempt
    ├── RateLimited(retry_after_s, bucket=None)
    │                            "not now" (provider or limit): wait, no attempt spent
    └── Permanent(reason)        never retry; dead-letter at once
"""

from __future__ import annotations


class QrunnerError(Exception):
    """Base class of qrunner's failures."""


class ConfigError(QrunnerError):
    """Invalid configuration; the message names the offending setting or entry."""


class EnqueueError(QrunnerError):
    """The job was refused at enqueue time and nothing was written."""


class UnknownTask(EnqueueError):
    def __init__(self, task: str, known: list[str]) -> None:
        self.task = task
        self.known = sorted(known)
        listing = ", ".join(self.known) if self.known else "(none registered)"
        super().__init__(f"unknown task {task!r}; known tasks: {listing}")


class InvalidPayload(EnqueueError):
    """The payload cannot be encoded as JSON or does not match the task's payload model."""


class PayloadTooLarge(EnqueueError):
    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"payload is {size} bytes encoded, over the {limit}-byte limit")


class ServerFull(EnqueueError):
    """Redis refused the write for lack of memory (``maxmemory`` with ``noeviction``).

    ``job_ids`` are the ids of the call's jobs in input order and ``written`` how many of them
    were enqueued before the refusal (0 for a single enqueue: nothing was written). Workers keep
    draining; enqueue the same jobs again (same ids: those written are skipped) once memory is
    free, or raise ``maxmemory``.
    """

    def __init__(self, where: str, job_ids: list[str], written: int = 0) -> None:
        self.job_ids = job_ids
        self.written = written
        done = "nothing was enqueued" if not written else f"{written} of {len(job_ids)} enqueued"
        super().__init__(
            f"Redis at {where} is out of memory (maxmemory with noeviction): {done}; retry "
            "once workers have drained the queues, or raise maxmemory"
        )


class BackendUnavailable(QrunnerError):
    """Redis or another backend unreachable. The message carries host and port only."""


class EnqueueUncertain(BackendUnavailable):
    """Redis stopped answering while an enqueue was on the wire: it may or may not have been
    written. Enqueuing again with the same ``job_id`` is safe (ids are written at most once)."""

    def __init__(self, job_ids: list[str], where: str, cause: BaseException) -> None:
        self.job_ids = job_ids
        shown = job_ids[0] if len(job_ids) == 1 else f"{job_ids[0]} and {len(job_ids) - 1} more"
        super().__init__(
            f"Redis at {where} did not answer ({type(cause).__name__}); the job may have been "
            f"enqueued as {shown}: enqueue again with the same job_id to be sure (never twice)"
        )


class NotReplicated(BackendUnavailable):
    """A durable enqueue (``wait_replicas``) was written to the master but fewer replicas than
    asked confirmed it in time: a failover now could lose it. Enqueuing it again with the same
    ``job_id`` is safe."""

    def __init__(self, job_id: str, acked: int, wanted: int) -> None:
        self.job_id = job_id
        super().__init__(
            f"job {job_id} is enqueued but only {acked} of {wanted} replica(s) confirmed it in "
            "time; enqueue again with the same job_id once replicas are back (never twice)"
        )


class RedisFault(QrunnerError):
    """A Redis condition that a worker waits out instead of dying; see :mod:`qrunner.faults`."""


class ConnectionLost(RedisFault):
    """The connection was reset, refused or timed out (or its transport was already closed)."""


class StreamMissing(RedisFault):
    """A queue's stream or consumer group is gone (FLUSHALL, restart without data)."""

    def __init__(self, message: str, queue: str | None = None) -> None:
        self.queue = queue
        super().__init__(message)


class ServerBusy(RedisFault):
    """Redis is loading, running a long script, or failing over: try again shortly."""


class OutOfMemory(RedisFault):
    """Redis refused a write for lack of memory (``maxmemory`` with ``noeviction``)."""


class KeyConflict(RedisFault):
    """A key qrunner owns holds another type of value (``WRONGTYPE``): something other than
    qrunner writes under its ``qr:`` prefix. The refused command wrote nothing; trying again
    cannot help until the key is renamed or deleted, so it is never retried.

    ``queue`` names the queue whose command was refused and ``expected`` its keys with the type
    qrunner keeps in each (set by :func:`qrunner.faults.translated`), when known."""

    def __init__(self, detail: str, queue: str | None = None) -> None:
        self.detail = detail
        self.queue = queue
        self.expected: dict[str, str] = {}
        super().__init__(detail)

    def __str__(self) -> str:
        where = "a key qrunner owns" if self.queue is None else f"a key of queue {self.queue!r}"
        text = (
            f"{where} holds another type of value than qrunner keeps there ({self.detail}): "
            "something other than qrunner writes under its 'qr:' prefix"
        )
        if self.expected:
            listed = ", ".join(f"{k} ({t})" for k, t in self.expected.items())
            text += f". Check TYPE of {listed}"
        return text + "; rename or delete the odd key"


class NotOwner(QrunnerError):
    """This consumer no longer owns the entry: another worker claimed it after a lapsed lease."""


class JobNotFound(QrunnerError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no record of job {job_id!r} (never enqueued, or its status expired)")


class JobSignal(Exception):
    """Base of the signals a handler raises to steer its job."""


class Retry(JobSignal):
    """Run the job again after ``after_s`` seconds; spends one retry attempt."""

    def __init__(self, after_s: float, reason: str = "retry requested") -> None:
        self.after_s = max(0.0, float(after_s))
        self.reason = reason
        super().__init__(f"{reason} (retry in {self.after_s:g}s)")


class RateLimited(JobSignal):
    """Not now: wait ``retry_after_s`` and run again without spending a retry attempt.

    When ``bucket`` names a rate-limit bucket, the whole bucket is throttled for that long, so
    every worker backs off, not only this job.
    """

    def __init__(self, retry_after_s: float, bucket: str | None = None, reason: str = "") -> None:
        self.retry_after_s = max(0.0, float(retry_after_s))
        self.bucket = bucket
        self.reason = reason or "rate limited"
        super().__init__(f"{self.reason} (retry after {self.retry_after_s:g}s)")


class Permanent(JobSignal):
    """A failure that no retry can fix: the job goes to the dead-letter stream at once."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
