"""Shared fixtures: one real Redis and one real PostgreSQL for the whole run, clean per test.

Starting servers once per session keeps the suite fast; each test still starts from a known
state: ``redis_url`` flushes Redis, ``database_url`` hands out a new empty database that is
dropped afterwards. Tests that kill or restart Redis take ``fresh_redis``, a private server, so
they never disturb the shared one.

Set ``QRUNNER_TEST_REDIS_URL`` / ``QRUNNER_TEST_DATABASE_URL`` to run against servers you
manage instead (CI services, say); the database URL must allow CREATE DATABASE.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis import Redis as SyncRedis

from qrunner.embedded import PostgresProcess, RedisProcess


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


# -- Redis -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess | None]:
    """The session's redis-server, or None when QRUNNER_TEST_REDIS_URL names an external one."""
    if os.environ.get("QRUNNER_TEST_REDIS_URL"):
        yield None
        return
    server = RedisProcess(tmp_path_factory.mktemp("session-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess | None) -> Iterator[str]:
    """URL of the shared Redis, emptied (FLUSHALL) before the test."""
    if redis_server is None:
        url = os.environ["QRUNNER_TEST_REDIS_URL"]
    else:
        if not redis_server.running():  # an earlier test shut it down; bring it back
            redis_server.start()
        url = redis_server.url
    client = SyncRedis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()
    yield url


@pytest.fixture(name="redis")
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client of the shared, freshly flushed Redis; replies are bytes."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A private redis-server (AOF on) for tests that kill or restart it; stopped afterwards."""
    server = RedisProcess(tmp_path / "fresh-redis")
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
