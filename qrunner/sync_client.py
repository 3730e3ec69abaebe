"""A synchronous client for producers that are not asyncio programs: Flask and Django views,
cron scripts, management commands.

:class:`SyncClient` has the enqueue side of :class:`~qrunner.Client` with the same guarantees:
the same validation before anything is written (task, payload model, queue name, key, delay),
the same Lua scripts (so the same status records, deduplication and delayed jobs), the same
client-made job ids (a lost reply is retried without ever writing a job twice), and the same
errors (``EnqueueError`` subclasses, ``ServerFull``, ``EnqueueUncertain``,
``BackendUnavailable``). It uses redis-py's synchronous client, one connection pool per
``SyncClient``; it is safe to share between threads (redis-py's pool is).

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

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar, cast

import redis as sync_redis

from . import jobstatus, keys
from .errors import (
    BackendUnavailable,
    ConfigError,
    ConnectionLost,
    JobNotFound,
    ServerBusy,
)
from .faults import classify
from .queue import Client, EnqueueRetries, JobSpec, JobStatus
from .redis_url import parse_redis_url
from .scripts import Script
from .task import Registry

T = TypeVar("T")


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
            self.redis.sadd(keys.queues_set(), *new)
            self._known_queues.update(new)

    def _call(self, script: Script, script_keys: list[str], argv: list[Any]) -> Any:
        return script.call_sync(self.redis, script_keys, argv)

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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _where(redis: Any) -> str:
    kwargs = getattr(getattr(redis, "connection_pool", None), "connection_kwargs", {})
    if "path" in kwargs:
        return str(kwargs["path"])
    if "host" in kwargs:
        return f"{kwargs['host']}:{kwargs.get('port', 6379)}"
    return "the cluster"
