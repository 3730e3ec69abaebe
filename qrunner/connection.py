"""Redis connection classes that report a dead transport as a connection error.

Under uvloop (qrunner's default loop), writing to a transport that the peer already reset
raises ``RuntimeError: unable to perform operation on <TCPTransport closed=True>`` instead of
an ``OSError``. redis-py does not treat that as a connection failure: it escapes its retry
logic and every caller above it. These classes catch it where it is raised, on the socket path
of one connection, drop the connection and raise redis-py's ``ConnectionError`` instead, so the
retry policy, the pool and qrunner's fault handling see a lost connection for what it is.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import ConnectionError as RedisConnectionError


class _TransportGuard(AbstractConnection):
    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as exc:  # uvloop: the transport is closed (see module doc)
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"connection lost while writing: {exc}") from exc

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except RuntimeError as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"connection lost while reading: {exc}") from exc


class GuardedConnection(_TransportGuard, Connection):
    """TCP."""


class GuardedSSLConnection(_TransportGuard, SSLConnection):
    """TLS (``rediss://``)."""


class GuardedUnixConnection(_TransportGuard, UnixDomainSocketConnection):
    """Unix socket (``unix://``)."""


def connection_class_for(url: str) -> type[AbstractConnection]:
    scheme = urlsplit(url).scheme
    if scheme == "unix":
        return GuardedUnixConnection
    if scheme == "rediss":
        return GuardedSSLConnection
    return GuardedConnection
