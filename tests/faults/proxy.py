"""A TCP proxy on 127.0.0.1 between worker processes and Redis that a test can break on purpose.

It runs its own asyncio loop in a thread, so it keeps forwarding (or misbehaving) whatever the
test's own loop is doing. Every control method is synchronous, thread-safe and takes effect
before it returns:

- ``set_reply_delay(s)``: hold every server->client chunk ``s`` seconds (latency, order kept)
- ``set_dropping(True)``: swallow every server->client byte until ``set_dropping(False)``; a
  client whose reply was swallowed waits for it until it gives up on the connection itself
- ``drop_replies_after(marker)``: forward as usual until a client->server chunk containing
  ``marker`` passes, then drop as ``set_dropping(True)`` does (the command that carried the
  marker runs; its reply, and every later one, is swallowed until ``set_dropping(False)``)
- ``dropped``: a ``threading.Event`` set once a server->client byte has been swallowed (a test
  waits on it before it stops dropping: the command having run on the server does not mean its
  reply has reached the proxy yet)
- ``reset_all()``: RST every open connection (SO_LINGER 0, then close), both sides
- ``set_refusing(True)``: close the listening socket, so new connections are refused
  (ECONNREFUSED) until ``set_refusing(False)`` listens on the same port again
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
CHUNK = 65536


@dataclass
class ProxyStats:
    accepted: int = 0
    active: int = 0
    upstream_failures: int = 0
    resets: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    bytes_dropped: int = 0


@dataclass(eq=False)
class _Link:
    """One proxied client connection and its upstream twin."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    replies: deque[tuple[float, bytes]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``."""

    def __init__(self, upstream_port: int, upstream_host: str = HOST) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.stats = ProxyStats()
        self.reply_delay_s = 0.0
        self.dropping = False
        self.drop_marker: bytes | None = None
        self.dropped = threading.Event()
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
                loop.run_until_complete(self._shutdown())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def close(self) -> None:
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults -----------------------------------------------------------------------------

    def set_reply_delay(self, seconds: float) -> None:
        self._call(lambda: self._set("reply_delay_s", max(0.0, seconds)))

    def set_dropping(self, on: bool) -> None:
        self._call(lambda: self._set("dropping", on))

    def drop_replies_after(self, marker: bytes) -> None:
        self._call(lambda: self._set("drop_marker", marker))

    def reset_all(self) -> int:
        """RST every open connection; returns how many there were."""
        return int(self._call(self._reset_all))

    def set_refusing(self, on: bool) -> None:
        self._call(self._stop_listening if on else self._listen)

    def pass_through(self) -> None:
        """Back to plain forwarding (listening, no delay, nothing dropped)."""
        self.set_reply_delay(0)
        self.set_dropping(False)
        self._call(lambda: self._set("drop_marker", None))
        self.set_refusing(False)

    # -- inside the proxy's loop ------------------------------------------------------------

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the proxy's loop (awaiting it when it is a coroutine function) and
        wait for its result."""
        if self._loop is None:
            raise RuntimeError("proxy is not running")

        async def call() -> Any:
            out = fn()
            return await out if asyncio.iscoroutine(out) else out

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    def _set(self, name: str, value: Any) -> None:
        setattr(self, name, value)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, HOST, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()  # existing connections carry on
            self._server = None

    async def _shutdown(self) -> None:
        await self._stop_listening()
        self._reset_all()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def _reset_all(self) -> int:
        links = list(self._links)
        for link in links:
            _rst(link.client)
            _rst(link.upstream)
        self.stats.resets += len(links)
        return len(links)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        me = asyncio.current_task()
        if me is not None:
            self._handlers.add(me)
            me.add_done_callback(self._handlers.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self.stats.upstream_failures += 1
            _rst(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        self.stats.active += 1
        pumps = [
            asyncio.ensure_future(self._requests(reader, link)),
            asyncio.ensure_future(self._replies_in(up_reader, link)),
            asyncio.ensure_future(self._replies_out(link)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for p in pumps:
                p.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._links.discard(link)
            self.stats.active -= 1
            writer.transport.abort()
            up_writer.transport.abort()

    async def _requests(self, reader: asyncio.StreamReader, link: _Link) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(CHUNK):
                self.stats.bytes_up += len(data)
                if self.drop_marker is not None and self.drop_marker in data:
                    # Set before the bytes go on, so their reply is swallowed.
                    self.drop_marker, self.dropping = None, True
                link.upstream.write(data)
                await link.upstream.drain()

    async def _replies_in(self, reader: asyncio.StreamReader, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while data := await reader.read(CHUNK):
                if self.dropping:
                    self.stats.bytes_dropped += len(data)
                    self.dropped.set()
                    continue
                link.replies.append((loop.time() + self.reply_delay_s, data))
                link.wake.set()

    async def _replies_out(self, link: _Link) -> None:
        """Forward replies in order, each no earlier than its due time."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while True:
                while not link.replies:
                    link.wake.clear()
                    await link.wake.wait()
                due, data = link.replies[0]
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                link.replies.popleft()
                self.stats.bytes_down += len(data)
                link.client.write(data)
                await link.client.drain()
