"""A synchronous client for producers that are not asyncio programs: Flask and Django views,
cron scripts, management commands.

:class:`SyncClient` has the enqueue side of :class:`~qrunner.Client` with the same guarantees:
the same validation before anything is written (task, payload model, queue name, key, delay),
the same Lua scripts (so the same status records, deduplication and delayed jobs), the same
client-made job ids (a lost reply is retried without ever writing a job twice), and the same
errors (``EnqueueError`` subclasses, ``ServerFull``, ``EnqueueUncertain``,
``BackendUnavailable``). It uses redis-py's synchronous client, one connection pool per
``SyncClient``; it is safe to share between threads.

On a single server the enqueue calls skip redis-py's per-command machinery (the pool's lock,
pid check, counters and events, its retry): the client keeps its idle connections in a list of
its own, and each call pops one (or takes one from the pool when the list is empty), sends
EVALSHA (or the SADD naming a new queue), reads the reply and appends the connection back.
``list.pop`` and ``list.append`` are atomic, so no two threads ever hold the same connection; a
forked child starts a new list and never touches the parent's sockets. A connection idle for
more than ``TRUSTED_IDLE_S`` goes through the pool's check first. One that failed goes back to
the pool disconnected, with the client's other idle ones (the pool checks each before its next
use), and only the enqueue retry policy tries again. A cluster client, and a client pinned to
one connection, go through redis-py's ``evalsha`` as before; status reads always do.

What it does not do: ``wait_replicas`` (use :class:`~qrunner.Client`), workflows' groups, and a
Sentinel URL (give the master's URL, or use the async client).

::

    from qrunner import SyncClient
    from myapp.tasks import registry

    jobs = SyncClient.from_url(os.environ["QRUNNER_REDIS_URL"], registry)

    @app.post("/orders")
    def create_order():
        ...
        jobs.enqueue("confirm_order", {"order_id": order.id})
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar, cast

import redis as sync_redis
from redis.exceptions import NoScriptError, ResponseError

from . import jobstatus, keys
from .errors import (
    BackendUnavailable,
    ConfigError,
    ConnectionLost,
    JobNotFound,
    ServerBusy,
)
from .faults import classify, raise_if_conflict
from .queue import Client, EnqueueRetries, JobSpec, JobStatus
from .redis_url import parse_redis_url
from .scripts import Script
from .task import Registry

T = TypeVar("T")

#: A connection the client used less than this many seconds ago is sent on as it is; one idle
#: for longer goes back through the pool first, which checks it before handing it out (and
#: reconnects it when the server has closed it), as it does for every redis-py command.
TRUSTED_IDLE_S = 1.0


class SyncClient:
    """Enqueue jobs and read their status from synchronous code."""

    def __init__(
        self,
        redis: sync_redis.Redis,
        registry: Registry | None = None,
        *,
        max_payload_bytes: int = 512 * 1024,
        status_ttl_s: int = 7 * 24 * 3600,
    ) -> None:
        self.redis = redis
        self.registry = registry
        # The async client's validation and argument building are pure: reused as they are.
        self._plan = Client(
            cast(Any, None),
            registry,
            max_payload_bytes=max_payload_bytes,
            status_ttl_s=status_ttl_s,
        )
        self._known_queues: set[str] = set()
        # The direct path's pool: a single server's, unless the client is pinned to one
        # connection (single_connection_client) or is a cluster client (no single pool).
        pool = getattr(redis, "connection_pool", None)
        direct = isinstance(redis, sync_redis.Redis) and redis.connection is None
        self._pool: Any = pool if direct else None
        # Idle connections of the direct path, each with when it was last used.
        self._idle: list[tuple[Any, float]] = []
        self._pid = os.getpid()

    @classmethod
    def from_url(cls, url: str, registry: Registry | None = None, **options: Any) -> SyncClient:
        """A client for ``redis://``, ``rediss://``, ``unix://`` or ``redis+cluster://``."""
        target = parse_redis_url(url)
        common: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}
        if target.kind == "single":
            client: Any = sync_redis.Redis.from_url(url, **common)
        elif target.kind == "cluster":
            from redis.cluster import ClusterNode, RedisCluster

            client = RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],  # type: ignore[no-untyped-call]
                username=target.username,
                password=target.password,
                ssl=target.tls,
                **common,
            )
        else:
            raise ConfigError(
                "SyncClient: a Sentinel URL is not supported; give the master's URL or use Client"
            )
        return cls(client, registry, **options)

    def close(self) -> None:
        """Hand the idle connections back to the pool, then close the redis-py client."""
        if self._pid == os.getpid():
            self._give_back(self._idle)
        else:  # a forked child: they are the parent's
            self._idle = []
        self.redis.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- enqueue -----------------------------------------------------------------------------

    def enqueue(
        self,
        task: str,
        payload: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        delay_s: float | None = None,
        at: datetime | None = None,
        key: str | None = None,
        key_ttl_s: float | None = None,
        job_id: str | None = None,
        on_success: JobSpec | None = None,
        on_failure: JobSpec | None = None,
    ) -> str:
        """Enqueue one job; returns its id (the first job's id when ``key`` deduplicated it).
        The arguments are :meth:`qrunner.Client.enqueue`'s."""
        queue_name, job_keys, args = self._plan._prepare_parts(
            task, payload, queue, delay_s, at, key, key_ttl_s, job_id, on_success, on_failure, None
        )

        def send() -> Any:
            script, script_keys, argv = self._plan._call_for(queue_name, [(job_keys, args)])
            self._register([queue_name])
            with _conflicts_named(queue_name):
                return self._call(script, script_keys, argv)

        res = self._send([args[0]], send)
        return _text(res[0])

    def enqueue_many(
        self, jobs: Iterable[JobSpec | tuple[str, Mapping[str, Any] | None]]
    ) -> list[str]:
        """Enqueue many jobs in one pipeline per queue; every job is validated before the first
        write, so a bad one refuses the whole batch. Returns ids in input order."""
        specs = [j if isinstance(j, JobSpec) else JobSpec(j[0], j[1]) for j in jobs]
        prepared = [self._plan._prepare(s) for s in specs]
        if not prepared:
            return []
        by_queue: dict[str, list[tuple[int, list[str], list[Any]]]] = {}
        for index, (queue, job_keys, args) in enumerate(prepared):
            by_queue.setdefault(queue, []).append((index, job_keys, args))
        out = [""] * len(prepared)

        def send() -> None:
            self._register(by_queue)
            for queue, all_items in by_queue.items():
                # Jobs with a fairness key go through their own script (their keys differ).
                fair = [it for it in all_items if len(it[1]) == 3]
                plain = [it for it in all_items if len(it[1]) != 3]
                for items in (plain, fair):
                    for start in range(0, len(items), 500):
                        chunk = items[start : start + 500]
                        script, ks, argv = self._plan._call_for(
                            queue, [(k, a) for _, k, a in chunk]
                        )
                        with _conflicts_named(queue):
                            res = self._call(script, ks, argv)
                        for pos, (index, _, _) in enumerate(chunk):
                            out[index] = _text(res[2 * pos])

        self._send([args[0] for _, _, args in prepared], send)
        return out

    # -- status ------------------------------------------------------------------------------

    def status(self, job_id: str, queue: str | None = None) -> JobStatus:
        """The job's status record; raises :class:`JobNotFound` when there is none."""
        queues = [queue] if queue else self._queues()
        hit = self._io(lambda: jobstatus.find_sync(self.redis, queues, job_id))
        if hit is None:
            raise JobNotFound(job_id)
        return Client._status_from(job_id, hit[0], hit[1])

    def _queues(self) -> list[str]:
        names = {_text(q) for q in self._io(lambda: self.redis.smembers(keys.queues_set()))}
        if self.registry is not None:
            names.update(self.registry.queues())
        order = self.registry.queue_order if self.registry is not None else ()
        ordered = [q for q in order if q in names]
        return ordered + sorted(names - set(ordered))

    # -- plumbing ----------------------------------------------------------------------------

    def _register(self, queues: Iterable[str]) -> None:
        new = [q for q in queues if q not in self._known_queues]
        if new:
            if self._pool is None:
                self.redis.sadd(keys.queues_set(), *new)
            else:  # on the direct path's connections: no second connection for it
                self._direct(("SADD", keys.queues_set(), *new))
            self._known_queues.update(new)

    def _call(self, script: Script, script_keys: list[str], argv: list[Any]) -> Any:
        if self._pool is None:
            return script.call_sync(self.redis, script_keys, argv)
        return self._direct(
            ("EVALSHA", script.sha, len(script_keys), *script_keys, *argv), script.source
        )

    def _direct(self, command: tuple[Any, ...], source: str | None = None) -> Any:
        """Send ``command`` on an idle connection of this client's own (the module docstring)
        and return the reply; ``source`` is the script of an EVALSHA, loaded on NOSCRIPT.

        Never sent twice here: a connection that fails is dropped and the error raised, and
        only :meth:`_send`'s policy tries again (every enqueue script writes each id at most once).
        The reply is what ``Redis.evalsha`` (``sadd``) returns: redis-py has no response
        callback for either, and ``read_response`` decodes as ``execute_command`` does."""
        pool = self._pool
        if self._pid != os.getpid():
            # A forked child: the listed connections hold the parent's sockets; leave them.
            self._idle = []
            self._pid = os.getpid()
        idle = self._idle
        try:
            conn, since = idle.pop()
        except IndexError:
            conn = pool.get_connection()
        else:
            if time.monotonic() - since > TRUSTED_IDLE_S:
                pool.release(conn)  # checked (reconnected if closed) on its way back out
                conn = pool.get_connection()
        try:
            try:
                conn.send_command(*command)
                result = conn.read_response()
            except NoScriptError:
                if source is None:
                    raise
                # The script did not run: load it on this connection and send it again.
                conn.send_command("SCRIPT", "LOAD", source)
                conn.read_response()
                conn.send_command(*command)
                result = conn.read_response()
        except ResponseError:
            # An error reply, read whole: the connection is in step with the server.
            self._put_back(conn, idle)
            raise
        except BaseException:
            # Lost, timed out or interrupted mid-reply: the connection is out of step. Its
            # idle siblings may have died with it (a restart): the pool checks each of them.
            conn.disconnect()
            pool.release(conn)
            self._give_back(idle)
            raise
        self._put_back(conn, idle)
        return result

    def _put_back(self, conn: Any, idle: list[tuple[Any, float]]) -> None:
        if conn.should_reconnect():  # a maintenance notification: the pool reconnects it
            self._pool.release(conn)
        else:
            idle.append((conn, time.monotonic()))

    def _give_back(self, idle: list[tuple[Any, float]]) -> None:
        """Release every connection of ``idle`` to the pool (other threads may pop too)."""
        while idle:
            try:
                conn, _ = idle.pop()
            except IndexError:
                return
            self._pool.release(conn)

    def _io(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except Exception as exc:
            if isinstance(classify(exc), ConnectionLost | ServerBusy):
                raise BackendUnavailable(f"Redis is unreachable: {type(exc).__name__}") from exc
            raise

    def _send(self, job_ids: list[str], send: Callable[[], T]) -> T:
        """The async client's retry policy (:class:`qrunner.queue.EnqueueRetries`)."""
        policy = None  # made on the first failure: most enqueues never need one
        while True:
            try:
                return send()
            except Exception as exc:
                if policy is None:
                    policy = EnqueueRetries(job_ids, _where(self.redis))
                time.sleep(policy.after(exc))


@contextmanager
def _conflicts_named(queue: str) -> Iterator[None]:
    """``WRONGTYPE`` as a :class:`~qrunner.errors.KeyConflict` naming ``queue``; other errors
    pass as redis-py raised them (the enqueue retry policy classifies those)."""
    try:
        yield
    except ResponseError as exc:
        raise_if_conflict(exc, queue)
        raise


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _where(redis: Any) -> str:
    kwargs = getattr(getattr(redis, "connection_pool", None), "connection_kwargs", {})
    if "path" in kwargs:
        return str(kwargs["path"])
    if "host" in kwargs:
        return f"{kwargs['host']}:{kwargs.get('port', 6379)}"
    return "the cluster"
