"""Auto-pipelining for the handlers' Redis client (on by default; ``QRUNNER_AUTOPIPELINE=0``).

A worker runs up to ``concurrency`` jobs at once, and a job whose body awaits a Redis command
sends that command on a connection of its own: one write, one read and one reply per command,
and on a loaded Redis the per-request cost (the read, the write, the event-loop wake-up) is
most of what a short command costs it. With auto-pipelining (ioredis's
``enableAutoPipelining``), the commands the handlers issue in one turn of the event loop go out
as one pipelined write on one connection and their replies come back in one read, each to the
command that asked for it. Nothing changes for the handler: ``await ctx.redis.incr(key)``
returns what it returned before, a command's error is raised to that command's caller only.

What is never batched, and runs as a plain command on a connection of its own:

- commands that block (``BLPOP``, ``XREAD`` and the rest of :data:`PASS_THROUGH`): in a batch
  they would hold every reply after theirs until they return;
- commands that change a connection's state (``SELECT``, ``CLIENT``, ``MULTI``, ``WATCH``,
  ``SUBSCRIBE``...), which would change the connection the next batch shares.

``ctx.redis.pipeline()`` and ``pubsub()`` are the client's own, unchanged. A batch whose write
or read fails (a reset connection, a time-out) fails every command in it with that error,
after the pool's retry policy, as each command would have failed alone; a command is sent at
most as often as without auto-pipelining, and not at all when its caller was cancelled before
the batch was written. A command issued alone goes out one turn of the event loop later than
it would have, in a batch of one.

On a cluster client (:class:`AutoPipelinedCluster`) a batch is a cluster pipeline: each command
goes to the master of its key's slot, each master's share in one write, the masters written
concurrently; MOVED, ASK and a failover are followed as redis-py's ``ClusterPipeline`` follows
them, a command that was answered is not sent again. Commands without a key of their own
(``PING``, ``INFO``, ``SCRIPT LOAD``...) and commands sent to named nodes go to the cluster
client as they are.

``benchmarks/processes.py --plain`` measures it: with jobs that each await one INCR, one
worker process ran 1.54x as many jobs per second with it, Redis spent about half the CPU per
job, and two processes ran 1.85x of one (see benchmarks/PROFILES.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from .faults import CONNECTION_ERRORS

#: Commands sent on their own: blocking ones, and ones that change the connection's state.
PASS_THROUGH = frozenset(
    {
        "BLPOP",
        "BRPOP",
        "BRPOPLPUSH",
        "BLMOVE",
        "BLMPOP",
        "BZPOPMIN",
        "BZPOPMAX",
        "BZMPOP",
        "XREAD",
        "XREADGROUP",
        "WAIT",
        "WAITAOF",
        "AUTH",
        "HELLO",
        "SELECT",
        "CLIENT",
        "RESET",
        "QUIT",
        "MULTI",
        "EXEC",
        "DISCARD",
        "WATCH",
        "UNWATCH",
        "SUBSCRIBE",
        "PSUBSCRIBE",
        "SSUBSCRIBE",
        "UNSUBSCRIBE",
        "PUNSUBSCRIBE",
        "SUNSUBSCRIBE",
        "MONITOR",
        "SHUTDOWN",
        "READONLY",
        "READWRITE",
    }
)

#: After a cluster batch failed on a node fault, how long its commands go out one by one.
ALONE_AFTER_FAULT_S = 5.0

_Pending = tuple[tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]


def _command_name(args: tuple[Any, ...]) -> str:
    name = args[0]
    return (name.decode() if isinstance(name, bytes) else str(name)).upper()


class _Batches:
    """The batching both clients share: the commands queued in one turn of the event loop, sent
    as one non-transactional pipeline (:meth:`_batch_pipeline`) when the turn ends."""

    def _init_batches(self) -> None:
        self._pending: list[_Pending] = []
        self._sending: set[asyncio.Task[None]] = set()
        #: Batches written so far (each one pipeline: one write and one read per connection).
        self.batches = 0

    def _batch_pipeline(self) -> Any:
        raise NotImplementedError

    def _batch_failed(self, exc: Exception) -> None:
        """A batch failed as a whole (``exc`` raised by its pipeline)."""

    async def _again_alone(self, batch: list[_Pending], replies: list[Any]) -> list[Any]:
        """The batch's replies, after any command to be sent again on its own."""
        return replies

    def _queue(self, args: tuple[Any, ...], options: dict[str, Any]) -> asyncio.Future[Any]:
        """The command's reply to come: queued for the batch written when this turn ends. (A
        future, not a coroutine: the caller awaits it directly, one frame less per command.)"""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((args, options, future))
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        # A caller that stopped waiting before the write (cancelled, timed out) has its command
        # left out, as a plain client would never have sent it.
        batch = [pending for pending in batch if not pending[2].done()]
        if not batch:
            return
        self.batches += 1
        pipe = self._batch_pipeline()
        for args, options, _ in batch:
            pipe.execute_command(*args, **options)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for _, _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # the batch's write or read failed: each caller gets it
            self._batch_failed(exc)
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        replies = await self._again_alone(batch, replies)
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller stopped waiting (cancelled, timed out)
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


# mypy checks the bases of a class with more than one against each other, and redis-py's own
# command mixins disagree on command_info's signature: the ignores below are for that.
class AutoPipelinedRedis(_Batches, Redis):  # type: ignore[misc]
    """A client over ``redis``'s connection pool whose commands issued in one turn of the event
    loop go out as one pipelined write. Closing it leaves the pool (and ``redis``) open."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(connection_pool=redis.connection_pool)
        self.response_callbacks = redis.response_callbacks
        self._init_batches()

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if _command_name(args) in PASS_THROUGH:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        return await self._queue(args, options)

    def _batch_pipeline(self) -> Any:
        return self.pipeline(transaction=False)


class AutoPipelinedCluster(_Batches, RedisCluster):  # type: ignore[misc]
    """A view of a cluster client whose keyed commands issued in one turn of the event loop go
    out as one cluster pipeline: redis-py's ``ClusterPipeline`` routes each command to the
    node that holds its key's slot, writes each node's share as one write (the nodes
    concurrently), follows MOVED and ASK, and retries after a failover without sending again a
    command that was answered. Commands without a key of their own (``PING``, ``INFO``,
    ``SCRIPT LOAD``: redis-py's ``COMMAND_FLAGS``), commands sent to named nodes
    (``target_nodes=``) and the blocking and connection-state commands of
    :data:`PASS_THROUGH` go to the wrapped client as they are.

    It shares everything with the wrapped client (nodes, connections, topology): attributes
    it does not have are the wrapped client's, and closing it closes nothing."""

    def __init__(self, cluster: RedisCluster) -> None:
        # Not RedisCluster.__init__: this view opens nothing of its own.
        self._cluster = cluster
        self._init_batches()
        #: Until when (event-loop time) commands go out one by one after a batch failed.
        self._alone_until = 0.0
        #: Commands sent to the cluster client as they are, and the first words of the
        #: two-word ones among them (``SCRIPT LOAD``), worked out once rather than per command.
        self._direct = PASS_THROUGH | frozenset(cluster.command_flags)
        self._two_word = frozenset(name.split(" ", 1)[0] for name in self._direct if " " in name)

    def __getattr__(self, name: str) -> Any:
        cluster = self.__dict__.get("_cluster")
        if cluster is None:
            raise AttributeError(name)
        return getattr(cluster, name)

    def __del__(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to warn about: the wrapped client owns the connections."""

    def __repr__(self) -> str:
        return f"AutoPipelinedCluster({self._cluster!r})"

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        name = _command_name(args)
        if (
            name in self._direct
            or "target_nodes" in kwargs
            or (
                name in self._two_word
                and len(args) > 1
                and f"{name} {_command_name(args[1:])}" in self._direct
            )
            or (self._alone_until and self._sent_alone())
        ):
            return await self._cluster.execute_command(*args, **kwargs)
        return await self._queue(args, kwargs)

    def _batch_pipeline(self) -> Any:
        return self._cluster.pipeline(transaction=False)

    def _batch_failed(self, exc: Exception) -> None:
        # redis-py's ClusterPipeline raises for the whole batch when a node cannot be reached
        # at all (its connection refused) after its retries, the commands the other masters
        # answered included: their callers get the error too. While a master is down (and
        # the cluster serves the other slots, as with cluster-require-full-coverage no),
        # commands then go out one by one for a while, so that only those for the missing
        # master fail, as with the plain client: one batch's worth of callers per
        # ALONE_AFTER_FAULT_S get the error for a command that ran.
        if isinstance(exc, CONNECTION_ERRORS):
            self._alone_until = asyncio.get_running_loop().time() + ALONE_AFTER_FAULT_S

    async def _again_alone(self, batch: list[_Pending], replies: list[Any]) -> list[Any]:
        # With raise_on_error=False, a command whose node's connection failed while its reply
        # was read (a master killed after the write) comes back as its connection error,
        # without the topology refresh and retry the cluster client gives a command sent
        # alone. Such a command goes again through the cluster client, as it would have
        # without auto-pipelining: after a failover, to the new master.
        again = [
            i
            for i, reply in enumerate(replies)
            if isinstance(reply, CONNECTION_ERRORS) and not batch[i][2].done()
        ]
        if not again:
            return replies
        retried = await asyncio.gather(
            *(self._cluster.execute_command(*batch[i][0], **batch[i][1]) for i in again),
            return_exceptions=True,
        )
        replies = list(replies)
        for i, reply in zip(again, retried, strict=True):
            replies[i] = reply
        return replies

    def _sent_alone(self) -> bool:
        if asyncio.get_running_loop().time() < self._alone_until:
            return True
        self._alone_until = 0.0
        return False

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        return self._cluster.pipeline(transaction, shard_hint)

    async def aclose(self) -> None:
        """Closes nothing: the wrapped client's connections are its own."""

    async def close(self) -> None:
        """Closes nothing (see :meth:`aclose`)."""


def for_handlers(redis: Any, enabled: bool) -> Any:
    """The client the handlers get as ``ctx.redis``: ``redis`` itself, or (``enabled``) an
    auto-pipelined one over the same connections, single node or cluster."""
    if not enabled or isinstance(redis, _Batches):
        return redis
    if isinstance(redis, Redis):
        return AutoPipelinedRedis(redis)
    if isinstance(redis, RedisCluster):
        return AutoPipelinedCluster(redis)
    return redis
