"""The enqueue side: everything a web app needs to put work on qrunner's queues.

Importing this module pulls in redis, orjson and pydantic, never the worker, the scheduler or the
HTTP server, so an app process stays small.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import jobstatus, keys, workflow
from .connection import describe
from .errors import (
    BackendUnavailable,
    ConnectionLost,
    EnqueueError,
    EnqueueUncertain,
    InvalidPayload,
    JobNotFound,
    KeyConflict,
    NotReplicated,
    OutOfMemory,
    PayloadTooLarge,
    ServerBusy,
    ServerFull,
    StreamMissing,
)
from .faults import classify, name_queue, translated
from .job import encode_envelope, new_job_id
from .names import MAX_DELAY_S, InvalidDelay, check_delay, check_key, check_queue_name
from .progress import progress_fields
from .scripts import Script
from .task import Registry

log = logging.getLogger(__name__)

#: Undelivered entries a queue's stream may hold before parked fair jobs wait, until a
#: worker of the queue has said how many it wants (its concurrency).
FAIR_BACKLOG_DEFAULT = 10
#: Jobs per script call in bulk enqueues; several calls go out in one pipeline.
BULK_CHUNK = 500
DEFAULT_DEDUP_TTL_S = 24 * 3600
#: With status records off, how long an enqueued id is remembered so that a retried enqueue
#: is skipped. Retries happen within seconds; the marker costs memory while it lives.
ID_MARKER_TTL_MS = keys.ID_MARKER_TTL_MS
#: Attempts of an enqueue whose connection failed or whose server was busy, and the first
#: pause between them (doubling). Safe: an id is written at most once.
ENQUEUE_ATTEMPTS = 5
ENQUEUE_BACKOFF_S = 0.1


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job of a bulk enqueue."""

    task: str
    payload: Mapping[str, Any] | None = None
    queue: str | None = None
    delay_s: float | None = None
    at: datetime | None = None
    key: str | None = None
    key_ttl_s: float | None = None
    job_id: str | None = None
    #: Follow-up jobs: enqueued when this job succeeds, or when it is dead-lettered. The
    #: follow-up reads this job's outcome from ``ctx.upstream`` (see :mod:`qrunner.workflow`).
    on_success: JobSpec | None = None
    on_failure: JobSpec | None = None
    #: Workflow bookkeeping written by qrunner itself (group membership, upstream outcome).
    flow: Mapping[str, Any] | None = None

    def to_flow(self) -> dict[str, Any]:
        """The spec as stored in an envelope, for a follow-up or callback enqueued later."""
        out: dict[str, Any] = {"task": self.task, "payload": dict(self.payload or {})}
        if self.queue is not None:
            out["queue"] = self.queue
        if self.delay_s is not None:
            out["delay_s"] = self.delay_s
        if self.job_id is not None:
            out["job_id"] = self.job_id
        if self.on_success is not None:
            out["on_success"] = self.on_success.to_flow()
        if self.on_failure is not None:
            out["on_failure"] = self.on_failure.to_flow()
        return out

    @classmethod
    def from_flow(cls, data: Mapping[str, Any]) -> JobSpec:
        ok, fail = data.get("on_success"), data.get("on_failure")
        return cls(
            task=str(data["task"]),
            payload=data.get("payload") or {},
            queue=data.get("queue"),
            delay_s=data.get("delay_s"),
            job_id=data.get("job_id"),
            on_success=cls.from_flow(ok) if ok else None,
            on_failure=cls.from_flow(fail) if fail else None,
        )


@dataclass(frozen=True, slots=True)
class Group:
    """An enqueued group: its id (for :meth:`Client.group_status`) and its members' job ids."""

    id: str
    job_ids: list[str]
    callback_job_id: str | None


@dataclass(frozen=True, slots=True)
class JobStatus:
    id: str
    queue: str
    state: str
    task: str
    attempt: int
    enqueued_ms: int | None
    not_before_ms: int | None
    finished_ms: int | None
    result: Any
    last_error: str | None
    dlq_id: str | None
    #: Last reported progress (0..1) and its meta (``ctx.progress``); None before any report.
    progress: float | None = None
    progress_meta: Any = None
    #: For a job that enqueued children with ``parent=<its id>``: total, succeeded, failed and
    #: remaining children; None for any other job.
    children: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queue": self.queue,
            "state": self.state,
            "task": self.task,
            "attempt": self.attempt,
            "enqueued_ms": self.enqueued_ms,
            "not_before_ms": self.not_before_ms,
            "finished_ms": self.finished_ms,
            "result": self.result,
            "last_error": self.last_error,
            "dlq_id": self.dlq_id,
            "progress": self.progress,
            "progress_meta": self.progress_meta,
            "children": self.children,
        }


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    depth: int
    pending: int
    delayed: int
    dead: int
    consumers: int
    #: Why the queue could not be read (a key of another type under its name, see
    #: :class:`~qrunner.errors.KeyConflict`); its counts are then 0. None for a healthy queue.
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "queue": self.queue,
            "depth": self.depth,
            "pending": self.pending,
            "delayed": self.delayed,
            "dead": self.dead,
            "consumers": self.consumers,
        }
        if self.problem is not None:
            out["problem"] = self.problem
        return out


def _check_at(at: Any) -> None:
    if not isinstance(at, datetime):
        raise InvalidDelay("at", f"must be a datetime, got {type(at).__name__}")
    if at.tzinfo is None:
        raise InvalidDelay("at", "must be a timezone-aware datetime")
    if at.timestamp() - time.time() > MAX_DELAY_S:
        raise InvalidDelay("at", f"must be at most 366 days ahead, got {at.isoformat()}")


def _where(redis: Redis) -> str:
    return describe(redis)


def _redis_down(redis: Redis, exc: Exception) -> BackendUnavailable:
    return BackendUnavailable(
        f"Redis at {_where(redis)} is unreachable: {type(exc).__name__}: {exc}"
    )


def _ms(value: Any) -> int | None:
    return None if value is None else int(value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


#: At most this many (task, queue) plans per client: task names come from code, but a client
#: without a registry takes any name.
_MAX_PLANS = 1024


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every plain enqueue of one task to one queue sends (see :meth:`Client._plan`)."""

    queue: str
    stream_keys: list[str]
    #: The task's payload model check, or None when it has none.
    validate: Callable[[Mapping[str, Any]], Any] | None


class EnqueueRetries:
    """The retry policy of an enqueue, shared by :class:`Client` and the synchronous client:
    lost connections and busy servers are retried with a doubling pause (safe: every job id
    is written at most once); out of memory, other errors and the last failure are raised as
    qrunner errors."""

    def __init__(self, job_ids: list[str], where: str) -> None:
        self.job_ids = job_ids
        self.where = where
        self.attempt = 0
        self.pause = ENQUEUE_BACKOFF_S
        self.lost: BaseException | None = None

    def after(self, exc: Exception) -> float:
        """Seconds to wait before trying again after ``exc``; raises when not to retry."""
        fault = classify(exc)
        if isinstance(fault, OutOfMemory):
            raise ServerFull(self.where, self.job_ids) from exc
        if isinstance(fault, KeyConflict) and fault is not exc:
            raise fault from exc
        if not isinstance(fault, ConnectionLost | ServerBusy):
            raise exc
        if isinstance(fault, ConnectionLost):
            self.lost = exc
        self.attempt += 1
        if self.attempt == ENQUEUE_ATTEMPTS:
            if self.lost is not None:
                raise EnqueueUncertain(self.job_ids, self.where, self.lost) from exc
            raise BackendUnavailable(
                f"Redis at {self.where} is busy ({fault}); nothing was enqueued"
            ) from exc
        pause, self.pause = self.pause, self.pause * 2
        return pause


class Client:
    """Enqueue jobs and read their status.

    With a ``registry`` the client routes each task to its queue, refuses unknown tasks and
    validates payloads against the task's model before anything reaches Redis.
    """

    _enqueue = Script("enqueue")
    _enqueue_now = Script("enqueue_now")
    _enqueue_fair = Script("enqueue_fair")

    def __init__(
        self,
        redis: Redis,
        registry: Registry | None = None,
        *,
        max_payload_bytes: int = 512 * 1024,
        status_ttl_s: int = 7 * 24 * 3600,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        """``wait_replicas=N`` makes :meth:`enqueue` durable against a failover: it returns only
        once N replicas hold the job (Redis ``WAIT``), else raises :class:`NotReplicated`."""
        self.redis = redis
        self.registry = registry
        self.max_payload_bytes = max_payload_bytes
        self.status_ttl_ms = status_ttl_s * 1000
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._known_queues: set[str] = set()
        self._node_clients: dict[str, Redis] = {}
        #: (task, queue as given) -> what its plain enqueues look like (see _plan).
        self._plans: dict[tuple[str, str | None], _Plan] = {}

    async def enqueue(
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
        """Enqueue one job and return its id (the first job's id when ``key`` deduplicated it).

        ``on_success`` / ``on_failure`` name a follow-up job, enqueued once when this job
        succeeds / is dead-lettered; it reads this job's outcome from ``ctx.upstream``.
        """
        plain = (
            delay_s is None
            and at is None
            and key is None
            and key_ttl_s is None
            and job_id is None
            and on_success is None
            and on_failure is None
        )
        if plain and (payload is None or type(payload) is dict):
            plan = self._plans.get((task, queue))
            if plan is not None and self.wait_replicas == 0:
                return await self._enqueue_planned(plan, task, payload)
        queue_name, job_keys, args = self._prepare_parts(
            task, payload, queue, delay_s, at, key, key_ttl_s, job_id, on_success, on_failure, None
        )
        res = await self._send_one(queue_name, job_keys, args)
        if plain:
            self._plan(task, queue, queue_name)
        return _text(res[0]) or ""

    async def _send_one(
        self,
        queue_name: str,
        job_keys: list[str],
        args: list[Any],
        failed: Exception | None = None,
    ) -> Any:
        """Send one prepared job (:meth:`_prepare_parts`), with the enqueue's retries;
        ``failed``: how a first send of it already failed."""

        async def send() -> Any:
            script, script_keys, argv = self._call_for(queue_name, [(job_keys, args)])
            if queue_name not in self._known_queues:
                await self._register_queues([queue_name])
            async with translated(queue_name):
                if self.wait_replicas > 0:
                    return await self._durable(script_keys, argv, script)
                return await script(self.redis, script_keys, argv)

        return await self._send([args[0]], send, failed)

    def _plan(self, task_name: str, given_queue: str | None, queue_name: str) -> None:
        """After an enqueue of ``task_name`` due now with no key, id or follow-up has gone
        through: remember what every such enqueue of it will be, so the next ones skip the
        checks and look-ups that came out the same (:meth:`_enqueue_planned`).

        Not for a task with a fairness key (its jobs take another script). Tasks are frozen
        and registered once, so what is remembered stays true."""
        if len(self._plans) >= _MAX_PLANS:
            return
        validate = None
        if self.registry is not None:
            spec = self.registry.get(task_name)
            if spec.fair_key is not None:
                return
            if spec.payload_model is not None:
                validate = spec.validate
        self._plans[(task_name, given_queue)] = _Plan(
            queue_name, [keys.stream(queue_name)], validate
        )

    async def _enqueue_planned(
        self, plan: _Plan, task_name: str, payload: dict[str, Any] | None
    ) -> str:
        """:meth:`enqueue` of a job due now with no key, id or follow-up, for a task and queue
        enqueued to before (:meth:`_plan`): the task name, the queue and its registration were
        checked then, so this validates the payload, draws the id, builds the envelope and
        calls the script. That runs between round trips, where each call costs several times
        what it costs in a loop (benchmarks/results/2026-12-04-enqueue-steps.md).

        A failure of the call (a lost connection, a busy or full server, a key of the wrong
        type) goes to the general path as its first failed attempt: that path sends the same
        job again with the same id (written at most once) and handles it as every enqueue
        does."""
        data = payload if payload is not None else {}
        if plan.validate is not None:
            plan.validate(data)
        job_id = new_job_id()
        envelope = encode_envelope(job_id, task_name, data, None, 0)
        if len(envelope) > self.max_payload_bytes:
            raise PayloadTooLarge(len(envelope), self.max_payload_bytes)
        try:
            res = await self._enqueue_now(self.redis, plan.stream_keys, ["1", job_id, envelope])
        except Exception as exc:
            queue = plan.queue
            fault = classify(exc)  # Script raises Redis failures as faults already
            if fault is None:
                raise  # not a Redis fault: as the general path, raised as it is
            failed = name_queue(fault, queue)
            id_key = (
                keys.job(queue, job_id) if self.status_ttl_ms > 0 else keys.id_marker(queue, job_id)
            )
            args = [job_id, envelope, "", "", "", task_name, True]
            res = await self._send_one(queue, [id_key, id_key], args, failed)
        return _text(res[0]) or ""

    def _call_for(
        self, queue: str, jobs: Sequence[tuple[list[str], list[Any]]]
    ) -> tuple[Script, list[str], list[Any]]:
        """Script, KEYS and ARGV enqueuing ``jobs`` (all of one queue, all fair or none:
        a fair job's keys end with its fairness key's list).

        Every script writes each id at most once, so sending the same call twice (a retry
        after a lost reply, by qrunner or by redis-py) writes each job once."""
        if jobs and len(jobs[0][0]) == 3:
            ks = [keys.stream(queue), keys.fair_ring(queue), keys.fair_backlog(queue)]
            argv: list[Any] = [*self._script_head(), FAIR_BACKLOG_DEFAULT, keys.GROUP]
            for job_keys, args in jobs:
                ks.extend(job_keys)
                argv.extend((args[0], args[1], args[4], args[5]))
            return self._enqueue_fair, ks, argv
        # Due now, no dedup key: the two values each job needs, and whether every id was
        # drawn here (then the script looks up only the first: see enqueue_now.lua).
        argv = [""]
        drawn = True
        for _, args in jobs:
            if args[2] or args[3] or args[4]:  # a delay, a time or a dedup key
                break
            drawn = drawn and args[6]
            argv.append(args[0])
            argv.append(args[1])
        else:
            argv[0] = "1" if drawn else ""
            return self._enqueue_now, [keys.stream(queue)], argv
        ks = [keys.stream(queue), keys.delayed(queue)]
        argv = self._script_head()
        for job_keys, args in jobs:
            ks.extend(job_keys)
            argv.extend(args[:6])
        return self._enqueue, ks, argv

    async def _durable(
        self, script_keys: list[str], argv: list[Any], script: Script | None = None
    ) -> Any:
        """Enqueue, then WAIT for replicas on the same connection (WAIT counts the writes of the
        connection it is sent on, so both go in one pipeline to the node owning the queue)."""
        script = script or self._enqueue
        node = await self._owner(script_keys[0])
        try:
            await script.ensure_loaded(node)
            pipe = node.pipeline(transaction=False)
            script.queue_in(pipe, script_keys, argv)
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            res, acked = await pipe.execute()
        except Exception as exc:
            if isinstance(classify(exc), ConnectionLost | ServerBusy):
                await self._refresh_topology()  # the owner may have failed over
            raise
        if int(acked) < self.wait_replicas:
            raise NotReplicated(_text(res[0]) or "", int(acked), self.wait_replicas)
        return res

    async def _owner(self, key: str) -> Redis:
        """The client to send ``key``'s writes on: the node owning its slot on a cluster."""
        manager = getattr(self.redis, "nodes_manager", None)
        if manager is None:
            return self.redis
        cluster: Any = self.redis
        await cluster.initialize()
        node = cluster.get_node_from_key(key)
        client = self._node_clients.get(node.name)
        if client is None:
            kw = manager.connection_kwargs
            client = self._node_clients[node.name] = Redis(
                host=node.host,
                port=node.port,
                username=kw.get("username"),
                password=kw.get("password"),
                ssl=kw.get("connection_class") is not None
                and "SSL" in kw["connection_class"].__name__,
                socket_timeout=kw.get("socket_timeout"),
                socket_connect_timeout=kw.get("socket_connect_timeout"),
            )
        return client

    async def _refresh_topology(self) -> None:
        manager = getattr(self.redis, "nodes_manager", None)
        if manager is None:
            return
        await self.aclose_node_clients()
        try:
            await manager.initialize()
        except Exception as exc:  # no node answers yet: the next attempt tries again
            log.debug("refreshing the cluster's slot map failed: %s", exc)

    async def aclose_node_clients(self) -> None:
        for client in self._node_clients.values():
            await client.aclose()
        self._node_clients.clear()

    def _script_head(self) -> list[Any]:
        return ["", self.status_ttl_ms, ID_MARKER_TTL_MS]

    async def _send(
        self,
        job_ids: list[str],
        send: Callable[[], Awaitable[Any]],
        failed: Exception | None = None,
    ) -> Any:
        """Run an enqueue, retrying lost connections and busy servers (safe: every job id is
        written at most once), and turn what remains into qrunner errors. ``failed``: the
        failure of a first send made before this call, counted as the first attempt."""
        policy = None  # made on the first failure: most enqueues never need one
        if failed is not None:
            policy = EnqueueRetries(job_ids, _where(self.redis))
            await asyncio.sleep(policy.after(failed))
        while True:
            try:
                return await send()
            except Exception as exc:
                if policy is None:
                    policy = EnqueueRetries(job_ids, _where(self.redis))
                await asyncio.sleep(policy.after(exc))

    async def enqueue_many(
        self,
        jobs: Iterable[JobSpec | tuple[str, Mapping[str, Any] | None]],
        *,
        parent: str | None = None,
    ) -> list[str]:
        """Enqueue many jobs, pipelined in chunks; returns ids in input order.

        Validation happens for every job before the first write, so a bad job in the middle of a
        batch refuses the whole batch instead of enqueuing half of it.

        With ``parent=ctx.job_id`` (a handler fanning out) the jobs are counted as that job's
        children: its status shows how many finished, failed and remain.
        """
        specs = [j if isinstance(j, JobSpec) else JobSpec(j[0], j[1]) for j in jobs]
        group_id = None
        if parent is not None:
            check_key(parent, "parent")
            group_id = workflow.fanout_group_id(parent)
            specs = [replace(s, flow={**(s.flow or {}), "group": group_id}) for s in specs]
        prepared = [self._prepare(s) for s in specs]
        if not prepared:
            return []
        if group_id is not None:
            await workflow.add_members(
                self.redis,
                group_id,
                [args[0] for _, _, args in prepared],
                self.status_ttl_ms,
                parent=parent,
            )
        by_queue: dict[str, list[tuple[int, list[str], list[Any]]]] = {}
        for index, (queue, job_keys, args) in enumerate(prepared):
            by_queue.setdefault(queue, []).append((index, job_keys, args))
        out: list[str] = [""] * len(prepared)
        job_ids = [args[0] for _, _, args in prepared]
        order: list[list[int]] = []
        call_queues: list[str] = []

        async def send() -> list[Any]:
            await self._register_queues(by_queue)
            calls: list[tuple[Script, list[str], list[Any]]] = []
            order.clear()
            call_queues.clear()
            for queue, all_items in by_queue.items():
                fair = [it for it in all_items if len(it[1]) == 3]
                plain = [it for it in all_items if len(it[1]) != 3]
                for items in (plain, fair):
                    for start in range(0, len(items), BULK_CHUNK):
                        chunk = items[start : start + BULK_CHUNK]
                        calls.append(self._call_for(queue, [(k, a) for _, k, a in chunk]))
                        order.append([i for i, _, _ in chunk])
                        call_queues.append(queue)
            results: list[Any]
            if hasattr(self.redis, "nodes_manager"):
                # A cluster pipeline refuses scripts: each chunk (one queue, so one slot) goes
                # to its node on its own, all at once.
                results = list(
                    await asyncio.gather(
                        *(script(self.redis, ks, argv) for script, ks, argv in calls),
                        return_exceptions=True,
                    )
                )
            else:
                results = await self._pipelined(calls)
            for res, queue in zip(results, call_queues, strict=True):
                if isinstance(res, Exception):
                    written = sum(
                        len(ix)
                        for ix, r in zip(order, results, strict=True)
                        if not isinstance(r, Exception)
                    )
                    fault = classify(res)
                    if isinstance(fault, OutOfMemory):
                        raise ServerFull(_where(self.redis), job_ids, written) from res
                    if isinstance(fault, KeyConflict):
                        if fault is res:  # a cluster's call, already typed
                            raise name_queue(fault, queue)
                        raise name_queue(fault, queue) from res
                    raise res
            return results

        results = await self._send(job_ids, send)
        for indexes, res in zip(order, results, strict=True):
            for pos, index in enumerate(indexes):
                out[index] = _text(res[2 * pos]) or ""
        return out

    async def _pipelined(self, calls: list[tuple[Script, list[str], list[Any]]]) -> list[Any]:
        """Send ``calls`` in one pipeline by SHA; results (or errors) in order. A call answered
        NOSCRIPT did not run: its script is loaded and the call sent again, alone with the other
        such calls. Loading first on every bulk call cost a round trip of its own."""
        pipe = self.redis.pipeline(transaction=False)
        for script, ks, argv in calls:
            script.queue_in(pipe, ks, argv)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        redo = [i for i, res in enumerate(results) if isinstance(res, NoScriptError)]
        if redo:
            for script in {calls[i][0] for i in redo}:
                await script.ensure_loaded(self.redis)
            pipe = self.redis.pipeline(transaction=False)
            for i in redo:
                script, ks, argv = calls[i]
                script.queue_in(pipe, ks, argv)
            for i, res in zip(redo, await pipe.execute(raise_on_error=False), strict=True):
                results[i] = res
        return results

    def _prepare(self, spec: JobSpec) -> tuple[str, list[str], list[Any]]:
        """Validate one job and build its script arguments; raises an :class:`EnqueueError`
        (see :mod:`qrunner.names` for the grammar of queue names, keys and delays)."""
        return self._prepare_parts(
            spec.task,
            spec.payload,
            spec.queue,
            spec.delay_s,
            spec.at,
            spec.key,
            spec.key_ttl_s,
            spec.job_id,
            spec.on_success,
            spec.on_failure,
            spec.flow,
        )

    def _prepare_parts(
        self,
        task_name: str,
        given_payload: Mapping[str, Any] | None,
        given_queue: str | None,
        delay_s: float | None,
        at_time: datetime | None,
        key: str | None,
        key_ttl_s: float | None,
        given_id: str | None,
        on_success: JobSpec | None,
        on_failure: JobSpec | None,
        given_flow: Mapping[str, Any] | None,
    ) -> tuple[str, list[str], list[Any]]:
        """:meth:`_prepare` from the fields themselves: a single enqueue calls this directly
        rather than build a frozen :class:`JobSpec` first (this runs once per job, between
        round trips, where every microsecond of client work shows in the enqueue rate)."""
        check_key(task_name, "task")
        if given_payload is not None and not isinstance(given_payload, Mapping):
            raise InvalidPayload(
                f"payload: must be a mapping (a JSON object), got {type(given_payload).__name__}"
            )
        if given_queue is not None:
            check_queue_name(given_queue)
        if key is not None:
            check_key(key)
        if given_id is not None:
            check_key(given_id, "job_id")
        if delay_s is not None:
            if at_time is not None:
                raise EnqueueError("give either delay_s or at, not both")
            check_delay(delay_s)
        elif at_time is not None:
            _check_at(at_time)
        payload = dict(given_payload) if given_payload else {}
        flow: dict[str, Any] | None = None
        if given_flow or on_success is not None or on_failure is not None:
            flow = dict(given_flow or {})
            for name, follow in (("on_success", on_success), ("on_failure", on_failure)):
                if follow is not None:
                    # Refused now rather than when it is due; stored with its queue resolved,
                    # so the worker that enqueues it needs no registry that knows its task.
                    follow_queue = self._prepare(follow)[0]
                    flow[name] = replace(follow, queue=follow_queue).to_flow()
        queue = given_queue
        fair: str | None = None
        if self.registry is not None:
            task = self.registry.get(task_name)
            queue = queue or task.queue
            # Without a model validation is a copy of the payload, already made above.
            arg = payload if task.payload_model is None else task.validate(payload)
            if task.fair_key is not None and delay_s is None and at_time is None:
                # Jobs due now are parked per key and served round-robin (see
                # qrunner.fairness); delayed ones enter the stream when due, as any job.
                fair = check_key(task.fair_key(arg), "fair_key")
        queue = check_queue_name(queue or "default")
        job_id = given_id or new_job_id()
        # A job added to its queue's stream at once is timed by its entry id, and the stream
        # names its queue (see encode_envelope).
        added_now = delay_s is None and at_time is None and fair is None
        enqueued_ms = 0 if added_now else int(time.time() * 1000)
        envelope = encode_envelope(
            job_id,
            task_name,
            payload,
            None if added_now else queue,
            enqueued_ms,
            key=key,
            flow=flow,
        )
        if len(envelope) > self.max_payload_bytes:
            raise PayloadTooLarge(len(envelope), self.max_payload_bytes)
        id_key = (
            keys.job(queue, job_id) if self.status_ttl_ms > 0 else keys.id_marker(queue, job_id)
        )
        dedup_ttl = ""
        if key:
            uniq_key = keys.uniq(queue, key)
            ttl = key_ttl_s if key_ttl_s is not None else DEFAULT_DEDUP_TTL_S
            if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < 1e15:
                raise InvalidPayload("key_ttl_s: must be a positive number of seconds")
            dedup_ttl = str(int(ttl * 1000))
        else:
            uniq_key = id_key
        delay = "" if delay_s is None else str(int(delay_s * 1000))
        at = "" if at_time is None else str(int(at_time.timestamp() * 1000))
        job_keys = [id_key, uniq_key]
        if fair is not None:
            job_keys.append(keys.fair_jobs(queue, fair))
        # The last value (not sent) says the id was drawn here rather than given.
        return queue, job_keys, [job_id, envelope, delay, at, dedup_ttl, task_name, not given_id]

    async def _register_queues(self, queues: Iterable[str]) -> None:
        new = [q for q in queues if q not in self._known_queues]
        if new:
            await self.redis.sadd(keys.queues_set(), *new)
            self._known_queues.update(new)

    async def known_queues(self) -> list[str]:
        """Every queue ever enqueued to, in priority order."""
        try:
            raw = await self.redis.smembers(keys.queues_set())
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise _redis_down(self.redis, exc) from exc
        names = {_text(q) or "" for q in raw}
        if self.registry is not None:
            names.update(self.registry.queues())
        order = self.registry.queue_order if self.registry is not None else ()
        ordered = [q for q in order if q in names]
        return ordered + sorted(names - set(ordered))

    async def status(self, job_id: str, queue: str | None = None) -> JobStatus:
        """The job's status; raises :class:`JobNotFound` when no queue has a trace of it.

        A queued or running job's state is read from where its stream entry is (see
        :mod:`qrunner.jobstatus`); anything else from its status record."""
        queues = [queue] if queue else await self.known_queues()
        try:
            hit = await jobstatus.find(self.redis, queues, job_id)
            if hit is None:
                raise JobNotFound(job_id)
            found = self._status_from(job_id, hit[0], hit[1])
            counts = await workflow.read_counts(self.redis, workflow.fanout_group_id(job_id))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise _redis_down(self.redis, exc) from exc
        if counts is None:
            return found
        return replace(found, children=counts.to_dict())

    async def enqueue_group(
        self,
        jobs: Sequence[JobSpec],
        *,
        callback: JobSpec | None = None,
        group_id: str | None = None,
    ) -> Group:
        """Enqueue jobs as a group whose ``callback`` runs once when every member has finished
        (succeeded or dead-lettered), with the members' outcomes in ``ctx.group_results``.

        The group record is written before any member is enqueued; members without a job id
        get ``<group id>.<index>``, so repeating a call with the same ``group_id`` (after an
        uncertain enqueue) writes nothing twice. An empty group enqueues its callback at once.
        """
        gid = group_id or new_job_id()
        check_key(gid, "group_id")
        members = [
            replace(
                s,
                job_id=s.job_id or f"{gid}.{i}",
                flow={**(s.flow or {}), "group": gid},
            )
            for i, s in enumerate(jobs)
        ]
        for m in members:
            self._prepare(m)
        cb_id = None
        if callback is not None:
            callback = replace(callback, queue=self._prepare(callback)[0])
            cb_id = callback.job_id or workflow.callback_job_id(gid)
        ids = [m.job_id or "" for m in members]
        if callback is not None and not members:
            await self.enqueue_follow_up(
                callback.to_flow(), cb_id or "", {"group_id": gid, "group_results": []}
            )
            return Group(gid, [], cb_id)
        await workflow.add_members(
            self.redis,
            gid,
            ids,
            self.status_ttl_ms,
            callback=callback.to_flow() if callback is not None else None,
        )
        await self.enqueue_many(members)
        return Group(gid, ids, cb_id)

    async def group_status(self, group_id: str) -> workflow.GroupCounts:
        """Total, succeeded, failed and remaining members of a group; raises
        :class:`JobNotFound` when the group has no record."""
        try:
            counts = await workflow.read_counts(self.redis, group_id)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise _redis_down(self.redis, exc) from exc
        if counts is None:
            raise JobNotFound(group_id)
        return counts

    async def enqueue_follow_up(
        self, spec: Mapping[str, Any], job_id: str, flow: Mapping[str, Any]
    ) -> str:
        """Enqueue a follow-up or group callback stored as ``spec`` (see
        :meth:`JobSpec.to_flow`) under a deterministic ``job_id`` (unless the spec names its
        own), with ``flow`` (the upstream outcome) added to its envelope. A known id is
        skipped, so calling this again after a crash enqueues nothing twice."""
        follow = JobSpec.from_flow(spec)
        follow = replace(
            follow, job_id=follow.job_id or job_id, flow={**(follow.flow or {}), **flow}
        )
        ids = await self.enqueue_many([follow])
        return ids[0]

    @staticmethod
    def _status_from(job_id: str, queue: str, rec: dict[str, Any]) -> JobStatus:
        import orjson

        result_raw = rec.get("result")
        result = orjson.loads(result_raw) if result_raw else None
        progress, progress_meta = progress_fields(rec)
        return JobStatus(
            id=job_id,
            queue=queue,
            state=_text(rec.get("state")) or "unknown",
            task=_text(rec.get("task")) or "",
            attempt=int(rec.get("attempt") or 1),
            enqueued_ms=_ms(rec.get("enqueued_ms")),
            not_before_ms=_ms(rec.get("not_before_ms")),
            finished_ms=_ms(rec.get("finished_ms")),
            result=result,
            last_error=_text(rec.get("last_error")),
            dlq_id=_text(rec.get("dlq_id")),
            progress=progress,
            progress_meta=progress_meta,
        )

    async def stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        """Per queue: depth (waiting), pending (delivered, not acked), delayed and dead.

        A queue with a key of another type under its name (something else writes under
        ``qr:``) gets a row with zero counts and its ``problem``: one such queue must not hide
        every other queue from ``qrunner stats``, the dashboard and the metrics."""
        names = list(queues) if queues else await self.known_queues()
        try:
            pipe = self.redis.pipeline(transaction=False)
            for q in names:
                pipe.xlen(keys.stream(q))
                pipe.zcard(keys.delayed(q))
                pipe.xlen(keys.dlq(q))
                pipe.hlen(keys.consumers(q))
                pipe.xpending(keys.stream(q), keys.GROUP)
            replies = await pipe.execute(raise_on_error=False)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise _redis_down(self.redis, exc) from exc
        out = []
        for i, q in enumerate(names):
            length, delayed, dead, consumers, info = replies[5 * i : 5 * i + 5]
            problem = None
            for reply in (length, delayed, dead, consumers, info):
                if not isinstance(reply, Exception):
                    continue
                fault = classify(reply)
                if isinstance(fault, KeyConflict):
                    problem = str(name_queue(fault, q))
                elif not isinstance(fault, StreamMissing):  # NOGROUP: no worker yet, 0 pending
                    raise fault or reply
            if problem is not None:
                out.append(QueueStats(q, 0, 0, 0, 0, 0, problem=problem))
                continue
            pending = 0 if isinstance(info, Exception) else int(info["pending"])
            out.append(
                QueueStats(
                    queue=q,
                    depth=max(0, int(length) - pending),
                    pending=pending,
                    delayed=int(delayed),
                    dead=int(dead),
                    consumers=int(consumers),
                )
            )
        return out
