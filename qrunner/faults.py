"""Redis failures turned into qrunner's typed faults, by exception type and RESP error code.

Every Redis error reply starts with an error code (``NOGROUP``, ``OOM``, ``LOADING``...), the
server's own classification; redis-py maps some codes to exception classes and leaves the rest
as :class:`~redis.exceptions.ResponseError`. This module is the one place that reads that code;
everything above it (the consumer, the client, the worker's loops) sees only
:class:`~qrunner.errors.RedisFault` subclasses and never looks at message text.

Lua scripts keep the code of the command that failed: every script's body runs under ``pcall``
and a failed command comes back as ``redis.error_reply`` with its code in front (see
:mod:`qrunner.scripts`; Redis 6.2 would otherwise wrap it in ``ERR Error running script``).
"""

from __future__ import annotations

from types import TracebackType

from redis import exceptions as rx

from . import keys
from .errors import (
    ConnectionLost,
    KeyConflict,
    OutOfMemory,
    RedisFault,
    ServerBusy,
    StreamMissing,
)

#: Error codes of replies that mean "the stream or group is gone".
_MISSING = frozenset({"NOGROUP", "UNBLOCKED"})
#: Error codes of replies that mean "the server cannot serve this right now".
_BUSY = frozenset({"BUSY", "LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN"})

#: Exceptions that mean the connection itself failed. ``RuntimeError`` is not here: the
#: connection class of :mod:`qrunner.connection` turns uvloop's closed-transport RuntimeError
#: into a redis ``ConnectionError`` where it is raised, so it is typed by the time it gets here.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    rx.ConnectionError,
    rx.TimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
)


#: A Redis Cluster failing over or resharding: redis-py refreshes its slot map and the next
#: attempt goes to the new owner.
_TOPOLOGY_CHANGING: tuple[type[BaseException], ...] = (
    rx.ClusterDownError,
    rx.SlotNotCoveredError,
    rx.MovedError,
    rx.AskError,
)


def error_code(exc: rx.ResponseError) -> str:
    """The RESP error code of a reply error (``NOGROUP``), or "" when it has none."""
    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and code:
        return code
    text = str(exc.args[0]) if exc.args else ""
    head = text.split(" ", 1)[0]
    return head if head.isupper() and head.isalpha() else ""


def classify(exc: BaseException) -> RedisFault | None:
    """The typed fault ``exc`` stands for, or None when it is not a Redis fault (a bug, a
    refused command) and should propagate as it is."""
    if isinstance(exc, RedisFault):
        return exc
    if isinstance(exc, rx.OutOfMemoryError):
        return OutOfMemory(f"Redis is out of memory: {exc}")
    if isinstance(exc, rx.BusyLoadingError | rx.ReadOnlyError | rx.TryAgainError):
        return ServerBusy(f"Redis is busy: {exc}")
    if isinstance(exc, _TOPOLOGY_CHANGING):
        return ServerBusy(f"the cluster is changing (failover, resharding): {exc}")
    if isinstance(exc, rx.ResponseError):
        code = error_code(exc)
        if code in _MISSING:
            return StreamMissing(f"stream or consumer group missing: {exc}")
        if code in _BUSY:
            return ServerBusy(f"Redis is busy: {exc}")
        if code == "OOM":
            return OutOfMemory(f"Redis is out of memory: {exc}")
        if code == "WRONGTYPE":
            return KeyConflict("Redis answered WRONGTYPE")
        return None
    if isinstance(exc, CONNECTION_ERRORS):
        return ConnectionLost(f"{type(exc).__name__}: {exc}")
    return None


def queue_key_types(queue: str) -> dict[str, str]:
    """A queue's keys and the type of value qrunner keeps in each (what ``TYPE`` answers)."""
    return {
        keys.stream(queue): "stream",
        keys.delayed(queue): "zset",
        keys.live(queue): "hash",
        keys.done(queue): "hash",
        keys.done_log(queue): "list",
        keys.dlq(queue): "stream",
    }


def name_queue(fault: RedisFault, queue: str | None) -> RedisFault:
    """Tell ``fault`` which queue's command it came from, when it cares and does not know."""
    if queue is None:
        return fault
    if isinstance(fault, StreamMissing) and fault.queue is None:
        fault.queue = queue
    if isinstance(fault, KeyConflict) and fault.queue is None:
        fault.queue = queue
        fault.expected = queue_key_types(queue)
    return fault


def raise_if_conflict(exc: rx.ResponseError, queue: str) -> None:
    """Raise ``exc`` as a :class:`~qrunner.errors.KeyConflict` naming ``queue`` when it is a
    ``WRONGTYPE`` reply; return for any other, which the caller handles as before."""
    fault = classify(exc)
    if isinstance(fault, KeyConflict):
        raise name_queue(fault, queue) from exc


class translated:
    """Re-raise Redis failures inside the block as typed faults (others pass unchanged),
    naming ``queue`` in the faults that report one.

    A class rather than an ``asynccontextmanager``: it wraps every enqueue, and a generator
    based one costs an async generator, its registration with the loop and two ``anext``
    per use."""

    __slots__ = ("queue",)

    def __init__(self, queue: str | None = None) -> None:
        self.queue = queue

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None:
            return False
        if isinstance(exc, RedisFault):
            name_queue(exc, self.queue)
            return False
        if not isinstance(exc, Exception):
            return False
        fault = classify(exc)
        if fault is None:
            return False
        raise name_queue(fault, self.queue) from exc
