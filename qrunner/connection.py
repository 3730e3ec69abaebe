"""Redis connection classes that report a dead transport as a connection error.

Under uvloop (qrunner's default loop), writing to a transport that the peer already reset
raises ``RuntimeError: unable to perform operation on <TCPTransport closed=True>`` instead of
an ``OSError``. redis-py does not treat that as a connection failure: it escapes its retry
logic and every caller above it. These classes catch it where it is raised, on the socket path
of one connection, drop the connection and raise redis-py's ``ConnectionError`` instead, so the
retry policy, the pool and qrunner's fault handling see a lost connection for what it is.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from hiredis import pack_command as _hiredis_pack
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class _TransportGuard(AbstractConnection):
    def _packs_with_hiredis(self) -> bool:
        """Whether hiredis packs like redis-py's encoder would: UTF-8, strict. Worked out once
        per encoder (a connection keeps its encoder), not once per command."""
        encoder = self.encoder
        cached: tuple[Any, bool] | None = getattr(self, "_hiredis_for", None)
        if cached is not None and cached[0] is encoder:
            return cached[1]
        encoding = str(encoder.encoding).lower().replace("-", "").replace("_", "")
        packs = encoding == "utf8" and encoder.encoding_errors == "strict"
        self._hiredis_for = (encoder, packs)
        return packs

    def pack_command(self, *args: Any) -> list[bytes]:
        """One command in RESP, packed by hiredis's C packer where redis-py's asyncio client
        would pack it in Python (its synchronous client already uses hiredis): a script call
        with a few dozen arguments cost more to pack than to send. Same bytes as redis-py's
        packer (UTF-8 text, ``repr`` of numbers); anything hiredis does not take (a bool, a
        bytearray, another encoding) goes to redis-py's packer, which packs it or raises its
        ``DataError``."""
        if not self._packs_with_hiredis():
            return super().pack_command(*args)
        return [self._pack_one(args)]

    def pack_commands(self, commands: Any) -> list[bytes]:
        """A pipeline's commands, each packed as :meth:`pack_command` does, in one buffer."""
        if not self._packs_with_hiredis():
            return super().pack_commands(commands)
        return [b"".join([self._pack_one(tuple(cmd)) for cmd in commands])]

    def _pack_one(self, args: tuple[Any, ...]) -> bytes:
        head = args[0]
        if isinstance(head, str) and " " in head:  # "CONFIG GET" is two arguments
            args = tuple(head.split()) + args[1:]
        elif isinstance(head, bytes) and b" " in head:
            args = tuple(head.split()) + args[1:]
        try:
            packed: bytes = _hiredis_pack(args)
        except TypeError:
            return b"".join(super().pack_command(*args))
        return packed

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """redis-py's write path, with two changes: a closed transport is a lost connection,
        and the write timeout is ``asyncio.timeout`` rather than ``asyncio.wait_for``, which on
        Python 3.11 can swallow a cancellation that lands as the write completes (a worker
        told to stop would go on reading)."""
        if not self.is_connected:
            await self.connect_check_health(check_health=False)
        if check_health:
            await self.check_health()  # type: ignore[no-untyped-call]
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        try:
            writer: Any = self._writer
            writer.writelines(command)
            transport = writer.transport
            # The usual case: the socket took every byte at once, so there is nothing to
            # drain and no timer to arm (a loop timer per command showed in every profile).
            # A closing transport or bytes still buffered take the full path below.
            if transport.is_closing() or transport.get_write_buffer_size():
                async with asyncio.timeout(self.socket_timeout):
                    await writer.drain()
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"error while writing to socket: {exc}") from exc
        except RuntimeError as exc:  # uvloop: the transport is closed (see module doc)
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"connection lost while writing: {exc}") from exc
        except BaseException:
            # Half a command may be on the wire: the connection cannot be reused.
            await self.disconnect(nowait=True)
            raise

    # -- the read timeout, on one timer per connection -------------------------------------
    #
    # redis-py arms an ``asyncio.timeout`` (a loop timer made and cancelled) around every reply
    # it reads when the client has a socket timeout, as qrunner's clients do. Under uvloop that
    # timer was the most expensive part of reading a reply. Here a connection keeps the read in
    # flight and its deadline, and one timer per connection looks at it: when the timer fires
    # before the deadline (an earlier read ended and a later one began), it is set again for
    # the current deadline, so a busy connection re-arms about once per timeout period instead
    # of once per command. An overdue read ends as redis-py's would: the connection is dropped
    # and ``TimeoutError`` raised (which the client's retry policy sees).

    #: (task, loop deadline) of the read in flight; None between reads.
    _reading: tuple[asyncio.Task[Any], float] | None = None
    #: The connection's timer and the loop it runs on.
    _read_timer: tuple[asyncio.TimerHandle, asyncio.AbstractEventLoop] | None = None
    #: The task whose read the timer found overdue (and cancelled).
    _read_expired: asyncio.Task[Any] | None = None

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        limit = self.socket_timeout
        given = kwargs.get("timeout", args[1] if len(args) > 1 else None)
        task = asyncio.current_task() if given is None else None
        if not limit or task is None:  # a timeout of the caller's own, or none: redis-py's way
            return await self._read(args, kwargs)
        self._watch_read(task, limit)
        self.socket_timeout = None  # so redis-py arms no timer of its own for this read
        try:
            return await self._read(args, kwargs)
        except asyncio.CancelledError:
            if self._read_expired is not task:
                raise
            self._read_expired = None
            if task.uncancel() > 0:  # cancelled by someone else as well: that one wins
                raise
            await self.disconnect(nowait=True)  # a late reply must not answer the next command
            raise RedisTimeoutError(f"Timeout reading from {self._host_error()}") from None
        finally:
            self.socket_timeout = limit
            self._reading = None

    def _watch_read(self, task: asyncio.Task[Any], limit: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        self._reading = (task, deadline)
        timer = self._read_timer
        if timer is None or timer[1] is not loop:
            self._read_timer = (loop.call_at(deadline, self._read_overdue, loop), loop)

    def _read_overdue(self, loop: asyncio.AbstractEventLoop) -> None:
        self._read_timer = None
        reading = self._reading
        if reading is None:
            return
        task, deadline = reading
        if loop.time() < deadline:  # a later read than the one this timer was set for
            self._read_timer = (loop.call_at(deadline, self._read_overdue, loop), loop)
            return
        self._read_expired = task
        task.cancel()

    async def _read(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
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


class GuardedSentinelConnection(_TransportGuard, SentinelManagedConnection):
    """A connection to the master Sentinel names (``redis+sentinel://``)."""


class GuardedSentinelSSLConnection(_TransportGuard, SentinelManagedSSLConnection):
    """The same over TLS (``rediss+sentinel://``)."""


def connection_class_for(url: str) -> type[AbstractConnection]:
    scheme = urlsplit(url).scheme
    if scheme == "unix":
        return GuardedUnixConnection
    if scheme == "rediss":
        return GuardedSSLConnection
    return GuardedConnection


def describe(client: Any) -> str:
    """Where a client points, for messages: host:port (or the cluster's seed nodes, or the
    socket path), never credentials."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        kw = pool.connection_kwargs
        return str(kw.get("path") or f"{kw.get('host', '?')}:{kw.get('port', '?')}")
    manager = getattr(client, "nodes_manager", None)
    if manager is not None:
        seeds = ",".join(n.name for n in manager.startup_nodes.values())
        return f"cluster {seeds}"
    return "?"
