"""The job envelope: what travels through the streams, the delayed set and the dead-letter stream.

Encoded with orjson, never pickle, so any language can read a queue and a malicious entry can at
worst be malformed, never execute code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeGuard

import orjson

from .errors import InvalidPayload

#: Fields kept per failed attempt, newest last. The history is capped so a job that fails
#: hundreds of times does not grow without bound.
MAX_ERROR_HISTORY = 20


#: The 62 letters and digits of a job id, and every pair of them indexed by the number
#: (0 to 3843) they spell in base 62.
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE62_PAIRS = tuple(a + b for a in _BASE62 for b in _BASE62)
_B62_4 = 62**4
_B62_7 = 62**7


#: Random 80-bit numbers drawn from the OS in blocks: one ``getrandom`` system call per
#: :data:`_RANDOM_BLOCK` ids instead of one per id (the call showed as the costliest line of a
#: single enqueue). ``list.pop`` is atomic, so threads never share a number, and a forked child
#: starts with an empty list rather than the numbers its parent will also use.
_RANDOM_BLOCK = 128
_random_pool: list[int] = []
os.register_at_fork(after_in_child=_random_pool.clear)


def _random80() -> int:
    try:
        return _random_pool.pop()
    except IndexError:
        block = os.urandom(10 * _RANDOM_BLOCK)
        _random_pool.extend(int.from_bytes(block[i : i + 10]) for i in range(0, len(block), 10))
        return _random_pool.pop()


def new_job_id() -> str:
    """14 letters and digits (80 random bits from the OS, in base 62): unique enough, safe in
    keys, URLs and shells (never starting with '-'), and short enough for Redis to keep the
    id in a 16-byte allocation where it is a field of the queue's live index (a 16-character
    id took 24 bytes there, for each queued job).

    The 80 bits are spelled as two 7-digit halves, each from pair tables: this runs once per
    enqueued job, and a digit-by-digit loop costs more than drawing the bits."""
    hi, lo = divmod(_random80(), _B62_7)
    h1, h2 = divmod(hi, _B62_4)
    l1, l2 = divmod(lo, _B62_4)
    d, p = _BASE62, _BASE62_PAIRS
    return (
        d[h1 // 3844]
        + p[h1 % 3844]
        + p[h2 // 3844]
        + p[h2 % 3844]
        + d[l1 // 3844]
        + p[l1 % 3844]
        + p[l2 // 3844]
        + p[l2 % 3844]
    )


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    type: str
    message: str
    attempt: int
    at_ms: int
    traceback: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "attempt": self.attempt,
            "at_ms": self.at_ms,
            "traceback": self.traceback,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorRecord:
        return cls(
            type=str(data.get("type", "")),
            message=str(data.get("message", "")),
            attempt=int(data.get("attempt", 0)),
            at_ms=int(data.get("at_ms", 0)),
            traceback=str(data.get("traceback", "")),
        )


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of work. ``attempt`` is 1 on the first run and grows by one per failed run."""

    id: str
    task: str
    payload: dict[str, Any]
    queue: str
    attempt: int = 1
    enqueued_ms: int = 0
    not_before_ms: int = 0
    key: str | None = None
    errors: tuple[ErrorRecord, ...] = field(default_factory=tuple)
    #: Workflow bookkeeping written by qrunner (follow-ups, group membership, the upstream
    #: result handed to a follow-up); see :mod:`qrunner.workflow`. None for a plain job.
    flow: dict[str, Any] | None = None

    def encode(self) -> bytes:
        return encode_envelope(
            self.id,
            self.task,
            self.payload,
            self.queue,
            self.enqueued_ms,
            attempt=self.attempt,
            not_before_ms=self.not_before_ms,
            key=self.key,
            errors=self.errors,
            flow=self.flow,
        )

    @classmethod
    def decode(
        cls, raw: bytes | str, entry_id: bytes | str | None = None, queue: str | None = None
    ) -> Job:
        """Parse an envelope; raises ``MalformedJob`` with the reason when it is not one.

        Every field is checked for its type (the envelope may have been written by another
        program, or by hand): ``id``, ``task`` and ``queue`` non-empty strings, ``id`` and
        ``task`` printable (the ack's batch record is tab- and newline-separated), ``payload``
        an object, ``attempt`` an integer from 1, times non-negative integers, ``key`` a string,
        ``errors`` a list of error records. Nothing else is ever raised.

        An envelope without ``attempt`` is a first attempt. One without ``enqueued_ms`` (a job
        enqueued due now: see :func:`encode_envelope`) was enqueued when its stream entry was
        added: the time part of ``entry_id`` (Redis' clock), or 0 when no entry id is given.
        One without ``queue`` (also a job written straight to its queue's stream) belongs to
        ``queue``, the queue whose stream it was read from; it is malformed when none is given.
        """
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedJob(f"entry is not JSON: {exc}") from exc
        if type(data) is list:
            return cls._decode_compact(data, entry_id, queue)
        if not isinstance(data, dict):
            raise MalformedJob("entry is not a JSON object")
        payload = data.get("payload")
        if payload is None:
            payload = {}
        elif not isinstance(payload, dict):
            raise MalformedJob("payload is not a JSON object")
        key = data.get("key")
        if key is not None and not isinstance(key, str):
            raise MalformedJob("entry lacks a valid field: 'key' must be a string")
        errors = data.get("errors")
        if errors is None:
            errors = ()
        elif not isinstance(errors, list):
            raise MalformedJob("entry lacks a valid field: 'errors' must be a list")
        flow = data.get("flow")
        if flow is not None and not isinstance(flow, dict):
            raise MalformedJob("entry lacks a valid field: 'flow' must be an object")
        get = data.get
        job_id, task = get("id"), get("task")
        queue = get("queue", queue)
        attempt, enqueued, not_before = (
            get("attempt", 1),
            get("enqueued_ms"),
            get("not_before_ms", 0),
        )
        if enqueued is None:
            enqueued = _entry_ms(entry_id)
        # The usual case in one expression (this runs once per job); ``type(x) is int`` also
        # keeps booleans out. Anything else goes through the checks that name the field.
        if not (
            _is_name(job_id)
            and _is_name(task)
            and type(queue) is str
            and queue
            and type(attempt) is int
            and attempt >= 1
            and type(enqueued) is int
            and enqueued >= 0
            and type(not_before) is int
            and not_before >= 0
        ):
            job_id, task = (_name_field(data, f) for f in ("id", "task"))
            queue = _text_field({"queue": queue}, "queue")
            attempt = _int_field(data, "attempt", 1, 1)
            enqueued = _int_field(data, "enqueued_ms", enqueued, 0)
            not_before = _int_field(data, "not_before_ms", 0, 0)
        return _assemble(
            cls,
            job_id,
            task,
            payload,
            queue,
            attempt,
            enqueued,
            not_before,
            key,
            tuple(_error_record(e) for e in errors) if errors else (),
            flow,
        )

    @classmethod
    def _decode_compact(
        cls, data: list[Any], entry_id: bytes | str | None, queue: str | None
    ) -> Job:
        """A compact envelope ``[id, task, payload]`` (see :func:`encode_envelope`): a first
        attempt, timed by its entry id, on the queue it was read from."""
        if len(data) != 3:
            raise MalformedJob("entry is a JSON array but not [id, task, payload]")
        job_id, task, payload = data
        if not isinstance(payload, dict):
            raise MalformedJob("payload is not a JSON object")
        # _is_name for both, inline (this runs once per job)
        if not (
            type(job_id) is str
            and type(task) is str
            and job_id
            and task
            and job_id.isprintable()
            and task.isprintable()
        ):
            raise MalformedJob(
                "entry lacks a valid field: 'id' and 'task' must be non-empty printable strings"
            )
        if not (type(queue) is str and queue):
            queue = _text_field({"queue": queue}, "queue")
        try:  # _entry_ms inline for the usual str id (this runs once per job)
            enqueued = int(entry_id.partition("-")[0])  # type: ignore[union-attr,arg-type]
        except (AttributeError, TypeError, ValueError):
            enqueued = _entry_ms(entry_id)
        return _assemble(cls, job_id, task, payload, queue, 1, enqueued, 0, None, (), None)

    def failed(self, record: ErrorRecord) -> Job:
        """The envelope for the next attempt: attempt + 1 and the error appended to the history."""
        history = (*self.errors, record)[-MAX_ERROR_HISTORY:]
        return replace(self, attempt=self.attempt + 1, errors=history)

    def with_error(self, record: ErrorRecord) -> Job:
        """The envelope with the error recorded, attempt unchanged (dead letter, deferral)."""
        history = (*self.errors, record)[-MAX_ERROR_HISTORY:]
        return replace(self, errors=history)


# Job.decode runs once per job and fills the slots directly: a frozen dataclass's __init__
# sets each field through object.__setattr__, which made it the most expensive line of the
# decode (3 µs of a 4.7 µs decode). _assemble fills an instance of _OpenJob, a plain class with
# Job's very slots (so plain attribute stores, the cheapest write Python has: 0.22 µs for the
# ten against 0.48 through the slots' descriptors), then makes it a Job: the layouts are the
# same, so Python allows the class change, and refuses it (TypeError) if they ever differ.
# The order below is checked against the fields at import, so a field added to Job without a
# line here fails loudly instead of staying unset.
_new_job = object.__new__
_JOB_SLOTS = (
    "id",
    "task",
    "payload",
    "queue",
    "attempt",
    "enqueued_ms",
    "not_before_ms",
    "key",
    "errors",
    "flow",
)
if tuple(f.name for f in fields(Job)) != _JOB_SLOTS:  # pragma: no cover - a developer's slip
    raise RuntimeError("Job's fields changed: update _JOB_SLOTS and Job.decode")


class _OpenJob:
    """A :class:`Job` under construction (see above); never seen outside :func:`_assemble`."""

    __slots__ = Job.__slots__
    id: str
    task: str
    payload: dict[str, Any]
    queue: str
    attempt: int
    enqueued_ms: int
    not_before_ms: int
    key: str | None
    errors: tuple[ErrorRecord, ...]
    flow: dict[str, Any] | None


def _assemble(
    cls: type[Job],
    job_id: str,
    task: str,
    payload: dict[str, Any],
    queue: str,
    attempt: int,
    enqueued_ms: int,
    not_before_ms: int,
    key: str | None,
    errors: tuple[ErrorRecord, ...],
    flow: dict[str, Any] | None,
) -> Job:
    """A Job from checked fields, its slots filled directly (see above). A subclass of Job
    (whose layout may differ) is made through its own constructor."""
    if cls is not Job:
        return cls(
            job_id, task, payload, queue, attempt, enqueued_ms, not_before_ms, key, errors, flow
        )
    job = _new_job(_OpenJob)
    job.id = job_id
    job.task = task
    job.payload = payload
    job.queue = queue
    job.attempt = attempt
    job.enqueued_ms = enqueued_ms
    job.not_before_ms = not_before_ms
    job.key = key
    job.errors = errors
    job.flow = flow
    job.__class__ = cls  # type: ignore[assignment]
    return job  # type: ignore[return-value]


def encode_envelope(
    job_id: str,
    task: str,
    payload: dict[str, Any],
    queue: str | None,
    enqueued_ms: int,
    *,
    attempt: int = 1,
    not_before_ms: int = 0,
    key: str | None = None,
    errors: tuple[ErrorRecord, ...] = (),
    flow: dict[str, Any] | None = None,
) -> bytes:
    """The envelope of a :class:`Job` with these fields (``Job.encode``); the client calls it
    directly, once per enqueued job, without building the frozen ``Job`` first. The id comes
    first: the scripts read it from the head of the envelope.

    ``attempt`` 1 and ``enqueued_ms`` 0 are left out: a job waiting in a stream is most of the
    memory a queue holds, and these two were 40 of its ~100 bytes. The client passes 0 for a
    job it adds to the stream at once, whose entry id tells when (:meth:`Job.decode`); a
    delayed or parked job, a retry and a dead letter carry their time. Older workers read such
    an envelope as before (attempt 1; no wait time).

    ``queue`` None leaves the queue out, for the same reason: a job added at once to its
    queue's stream is read from that stream, which names the queue (18 bytes of the 71 a
    no-op job's envelope took on the default queue). A delayed, parked, retried or
    dead-lettered job names its queue. Workers older than this envelope need the field: upgrade
    workers before producers (see docs/upgrading.md).

    Such a job with nothing else to say (no key, no workflow) is written as the JSON array
    ``[id, task, payload]``: the object's keys were 22 of the 55 bytes of a no-op job's
    envelope. Every other envelope is an object with the id first."""
    try:
        if queue is None and key is None and not flow and attempt == 1 and not errors:
            if not enqueued_ms and not not_before_ms:
                return orjson.dumps((job_id, task, payload))
    except TypeError as exc:
        raise InvalidPayload(f"payload of task {task!r} is not JSON-serialisable: {exc}") from exc
    data: dict[str, Any] = {"id": job_id, "task": task, "payload": payload}
    if queue is not None:
        data["queue"] = queue
    if attempt != 1:
        data["attempt"] = attempt
    if enqueued_ms:
        data["enqueued_ms"] = enqueued_ms
    if not_before_ms:
        data["not_before_ms"] = not_before_ms
    if key is not None:
        data["key"] = key
    if errors:
        data["errors"] = [e.to_dict() for e in errors]
    if flow:
        data["flow"] = flow
    try:
        return orjson.dumps(data)
    except TypeError as exc:
        raise InvalidPayload(f"payload of task {task!r} is not JSON-serialisable: {exc}") from exc


def _entry_ms(entry_id: bytes | str | None) -> int:
    """The time part (ms) of a stream entry id ``<ms>-<seq>``; 0 when there is none."""
    if entry_id is None:
        return 0
    head = (
        entry_id.partition(b"-")[0] if isinstance(entry_id, bytes) else entry_id.partition("-")[0]
    )
    try:
        return int(head)
    except ValueError:
        return 0


class MalformedJob(ValueError):
    """A stream entry that is not a valid envelope. It is dead-lettered with its raw bytes."""


def _is_name(value: object) -> TypeGuard[str]:
    """A job id or task name as an envelope may carry it: a non-empty string of printable
    characters (the ack's batch record is tab- and newline-separated)."""
    return type(value) is str and value != "" and value.isprintable()


def _text_field(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedJob(f"entry lacks a valid field: {name!r} must be a non-empty string")
    return value


def _name_field(data: dict[str, Any], name: str) -> str:
    """:func:`_text_field`, printable as :func:`_is_name` asks."""
    value = _text_field(data, name)
    if not value.isprintable():
        raise MalformedJob(
            f"entry lacks a valid field: {name!r} must be printable (no tabs, newlines or "
            "other control characters)"
        )
    return value


def _int_field(data: dict[str, Any], name: str, default: int, least: int) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise MalformedJob(
            f"entry lacks a valid field: {name!r} must be an integer of at least {least}"
        )
    return value


def _error_record(data: Any) -> ErrorRecord:
    if not isinstance(data, dict):
        raise MalformedJob("entry lacks a valid field: 'errors' must hold objects")
    try:
        return ErrorRecord(
            type=_plain_text(data, "type"),
            message=_plain_text(data, "message"),
            attempt=_int_field(data, "attempt", 0, 0),
            at_ms=_int_field(data, "at_ms", 0, 0),
            traceback=_plain_text(data, "traceback"),
        )
    except MalformedJob as exc:
        raise MalformedJob(f"{exc} (in 'errors')") from None


def _plain_text(data: dict[str, Any], name: str) -> str:
    value = data.get(name, "")
    if not isinstance(value, str):
        raise MalformedJob(f"entry lacks a valid field: {name!r} must be a string")
    return value
