"""The HTTP server's limits over real sockets: oversized requests get a JSON 4xx and no ERROR
traceback, idle and half-open connections are closed after the keep-alive timeout, and
connections beyond the cap are turned away with 503."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import web
from redis.asyncio import Redis

from qrunner.errors import ConfigError
from qrunner.http import HttpLimits, build_app, serve_http
from qrunner.metrics import Metrics
from qrunner.queue import Client

pytestmark = pytest.mark.timeout(60)

KB_100 = 100 * 1024


def _app(redis: Redis) -> web.Application:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a bug in a route")

    def setup(app: web.Application) -> None:
        app.router.add_get("/boom", boom)

    return build_app(
        client=Client(redis), metrics=Metrics(), redis=redis, token=None, setups=[setup]
    )


@asynccontextmanager
async def serving(redis: Redis, limits: HttpLimits | None = None) -> AsyncIterator[int]:
    """The endpoint on a free port (yielded); stopped on exit."""
    stop = asyncio.Event()
    bound: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve_http(_app(redis), "127.0.0.1", 0, stop, on_bound=bound.set_result, limits=limits)
    )
    try:
        (_, port), *_ = await asyncio.wait_for(bound, 10)
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def exchange(port: int, request: bytes, *, wait_s: float = 5.0) -> bytes:
    """Send ``request`` on a new connection; everything the server sent until it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), wait_s)
    finally:
        writer.close()


def parse(response: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, orjson.loads(body) if body else None


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_100kb_url_is_414_json_without_an_error_log(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(redis) as port:
        raw = await exchange(port, b"GET /" + b"a" * KB_100 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = parse(raw)
    assert status == 414
    assert headers["content-type"].startswith("application/json")
    assert body == {"error": "request URL longer than 8192 bytes"}
    assert errors(caplog) == []
    assert not [r for r in caplog.records if r.exc_info]  # no traceback at any level


async def test_a_100kb_header_is_431_json_without_an_error_log(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(redis) as port:
        big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * KB_100 + b"\r\n\r\n"
        too_many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-%d: 1\r\n" % i for i in range(150)
        )
        first = parse(await exchange(port, big))
        second = parse(await exchange(port, too_many + b"\r\n"))
    assert first[0] == 431 and "header field longer" in first[2]["error"]
    assert second[0] == 431 and "more than 100" in second[2]["error"]
    assert errors(caplog) == []
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_malformed_request_is_400_json_without_an_error_log(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(redis) as port:
        for garbage in (
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS to a plain port
        ):
            status, _, body = parse(await exchange(port, garbage))
            assert status == 400 and "error" in body, garbage
    assert errors(caplog) == []


async def test_limits_below_the_defaults_apply_and_real_bugs_still_log_errors(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    limits = HttpLimits(max_url_bytes=64, max_header_bytes=128)
    async with serving(redis, limits) as port:
        assert parse(await exchange(port, b"GET /" + b"a" * 100 + b" HTTP/1.0\r\n\r\n"))[0] == 414
        header = b"GET / HTTP/1.0\r\nX-A: " + b"a" * 200 + b"\r\n\r\n"
        assert parse(await exchange(port, header))[0] == 431
        ok = await exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert parse(ok)[:1] == (200,)
        # A bug in a route is still a 500 with its traceback in the log
        boom = await exchange(port, b"GET /boom HTTP/1.0\r\n\r\n")
        assert boom.startswith(b"HTTP/1.1 500") or boom.startswith(b"HTTP/1.0 500")
    assert any(r.exc_info and "a bug in a route" in str(r.exc_info[1]) for r in errors(caplog))


async def test_idle_and_half_open_connections_are_closed_after_the_keepalive_timeout(
    redis: Redis,
) -> None:
    limits = HttpLimits(keepalive_timeout_s=0.5)
    async with serving(redis, limits) as port:

        async def closed_after(sent: bytes) -> tuple[float, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            writer.write(sent)
            received = await asyncio.wait_for(reader.read(), 10)  # b"" at EOF
            writer.close()
            return time.monotonic() - started, received

        # A connection that never sends anything
        silent = await closed_after(b"")
        # One that sends half a request and stops (a slow-headers client)
        partial = await closed_after(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
        # One that completes a keep-alive request and then idles
        idle = await closed_after(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")

    for elapsed, _ in (silent, partial, idle):
        assert 0.4 <= elapsed < 5, elapsed
    assert silent[1] == b"" and partial[1] == b""
    assert idle[1].startswith(b"HTTP/1.1 200")


async def test_connections_beyond_the_cap_get_503_and_the_cap_frees_up(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    limits = HttpLimits(max_connections=3)
    async with serving(redis, limits) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await asyncio.sleep(0.05)
        status, headers, body = parse(
            await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        )
        assert (status, body) == (503, {"error": "too many connections"})
        assert headers["retry-after"] == "1"
        # The held connections still work
        reader, writer = held[0]
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        # When they close, new connections are served again
        for _, w in held:
            w.close()
        await asyncio.sleep(0.1)
        again = await exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert parse(again)[0] == 200
    assert "cap of 3 connections" in caplog.text


def test_default_limits() -> None:
    limits = HttpLimits()
    assert (limits.keepalive_timeout_s, limits.max_connections) == (75.0, 1000)
    assert (limits.max_url_bytes, limits.max_header_bytes) == (8192, 16384)
    with pytest.raises(ConfigError):
        HttpLimits(max_connections=0)
    with pytest.raises(ConfigError):
        HttpLimits(keepalive_timeout_s=0)
