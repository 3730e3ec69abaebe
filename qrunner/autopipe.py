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
it would have, in a batch of one. Cluster clients are not wrapped: their commands go to the
node that holds each key, which a single pipeline cannot follow.

``benchmarks/processes.py --plain`` measures it: with jobs that each await one INCR, one
worker process ran 1.54x as many jobs per second with it, Redis spent about half the CPU per
job, and two processes ran 1.85x of one (see benchmarks/PROFILES.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

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

_Pending = tuple[tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]


class AutoPipelinedRedis(Redis):
    """A client over ``redis``'s connection pool whose commands issued in one turn of the event
    loop go out as one pipelined write. Closing it leaves the pool (and ``redis``) open."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(connection_pool=redis.connection_pool)
        self.response_callbacks = redis.response_callbacks
        self._pending: list[_Pending] = []
        self._sending: set[asyncio.Task[None]] = set()
        #: Batches written so far (each one write and one read on one connection).
        self.batches = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        name = args[0]
        name = name.decode() if isinstance(name, bytes) else str(name)
        if name.upper() in PASS_THROUGH:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((args, options, future))
        return await future

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
        pipe = self.pipeline(transaction=False)
        for args, options, _ in batch:
            pipe.execute_command(*args, **options)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for _, _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # the batch's write or read failed: each caller gets it
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller stopped waiting (cancelled, timed out)
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


def for_handlers(redis: Any, enabled: bool) -> Any:
    """The client the handlers get as ``ctx.redis``: ``redis`` itself, or (``enabled``, and a
    plain single-node client) an auto-pipelined one over the same pool."""
    if enabled and isinstance(redis, Redis) and not isinstance(redis, AutoPipelinedRedis):
        return AutoPipelinedRedis(redis)
    return redis
