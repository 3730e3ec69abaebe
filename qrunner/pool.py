"""A connection pool that hands out connections without redis-py's per-command bookkeeping.

Every command a client sends takes a connection from its pool and gives it back. redis-py 8's
``ConnectionPool`` does more than that each time: it takes an ``asyncio.Lock`` both ways,
makes three awaited calls that record connection counts for OpenTelemetry (each building the
pool's name, and each a no-op unless its observability is configured), and dispatches an
"after release" event for re-authentication with streaming credentials. For a job whose body
is one Redis command, that was a measurable share of the command (see
benchmarks/PROFILES.md).

In one event loop none of it is needed to hand a connection out safely: taking one from the
idle list and marking it in use are plain list and set operations with no ``await`` between
them, so no other task can interleave. What keeps a connection safe to use is kept as it is:

- the check on every hand-out: a dropped connection is reconnected, and one with unread data
  (a reply left behind by a command whose caller stopped waiting) is reconnected instead of
  answering the next command with the previous one's reply. redis-py 8 skips that second
  check whenever its maintenance notifications are enabled, and they are by default
  ("auto"): with its own pool, a reply left on an idle connection answers the next command.
  Over RESP2, which qrunner speaks, nothing but a stale reply can be waiting on an idle
  connection, so this pool always checks; over RESP3, where the server may push
  notifications, it leaves the check to redis-py;
- a connection marked for reconnect is disconnected when it comes back;
- a pool with no idle connection goes through redis-py's own path, which opens one and keeps
  the ``max_connections`` cap.

Given up, on purpose: redis-py's connection-count metrics for its OpenTelemetry integration
(qrunner's metrics come from its own Prometheus endpoint) and the re-authentication event for
streaming credential providers (qrunner authenticates with a URL's user and password). A user
who needs either builds the client themselves and hands it to ``Worker`` and ``Client``.

A redis-py without the hooks this relies on (``ensure_connection`` and
``get_available_connection``, in every release qrunner supports) gets the plain pool:
:data:`LEAN` says which.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

LEAN = hasattr(ConnectionPool, "ensure_connection") and hasattr(
    ConnectionPool, "get_available_connection"
)
_MARKS_RECONNECT = hasattr(AbstractConnection, "should_reconnect")
#: Whether a connection has data waiting (or was closed): ``can_read`` from redis-py 8 on.
_CAN_READ = "can_read" if hasattr(AbstractConnection, "can_read") else "can_read_destructive"


class LeanConnectionPool(ConnectionPool):
    """``ConnectionPool`` with the hand-out and the return reduced to what keeps them safe."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The protocol is the pool's for its life: read once, not at every hand-out.
        self._resp3 = str(self.connection_kwargs.get("protocol", 2)) == "3"

    async def get_connection(self, *args: Any, **options: Any) -> AbstractConnection:
        idle: list[AbstractConnection] = self._available_connections
        if not idle:
            # Opening a connection (and refusing one past max_connections) stays redis-py's.
            opened: AbstractConnection = await super().get_connection(  # type: ignore[no-untyped-call]
                *args, **options
            )
            return opened
        connection = idle.pop()
        self._in_use_connections.add(connection)
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        if self._resp3:
            await super().ensure_connection(connection)
            return
        await connection.connect()  # type: ignore[no-untyped-call]
        try:
            if await getattr(connection, _CAN_READ)():
                raise RedisConnectionError("Connection has data")
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await connection.disconnect()
            await connection.connect()  # type: ignore[no-untyped-call]
            if await getattr(connection, _CAN_READ)():
                raise RedisConnectionError("Connection not ready") from None

    async def release(self, connection: AbstractConnection) -> None:
        # A connection of another pool raises KeyError here, as in redis-py's own release.
        self._in_use_connections.remove(connection)
        if _MARKS_RECONNECT and connection.should_reconnect():  # type: ignore[no-untyped-call]
            await connection.disconnect()
        self._available_connections.append(connection)
