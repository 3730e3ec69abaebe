"""QRUNNER_REDIS_URL: one server, a cluster or Sentinel; bad URLs are refused with a clear
error that never shows the password. Sentinel is tested against a real master + sentinel."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qrunner_devservers.embedded import RedisProcess, _free_port, _redis_call

from qrunner.errors import ConfigError
from qrunner.redis_url import parse_redis_url
from tests.conftest import server_binary_under_test
from tests.helpers.round_trip import round_trip


def test_single_cluster_and_sentinel_urls_are_read() -> None:
    single = parse_redis_url("redis://:s3cret@db.internal:6380/2")
    assert (single.kind, single.nodes, single.db, single.password) == (
        "single",
        (("db.internal", 6380),),
        2,
        "s3cret",
    )
    cluster = parse_redis_url("rediss+cluster://user:pw@a:7000,b:7001,[::1]:7002")
    assert cluster.kind == "cluster" and cluster.tls and cluster.username == "user"
    assert cluster.nodes == (("a", 7000), ("b", 7001), ("::1", 7002))
    sentinel = parse_redis_url("redis+sentinel://s1,s2:26380/mymaster/3")
    assert sentinel.kind == "sentinel" and sentinel.service == "mymaster" and sentinel.db == 3
    assert sentinel.nodes == (("s1", 26379), ("s2", 26380))
    assert parse_redis_url("unix:///run/redis.sock").path == "/run/redis.sock"
    assert "s3cret" not in single.shown()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://x:6379", "unknown scheme"),
        ("redis//x", "unknown scheme"),
        ("redis://:pw@x:99999999", "out of range"),
        ("redis://:pw@x:port", "not a number"),
        ("redis://a:1,b:2", "several hosts"),
        ("redis+cluster://a:1/3", "only database 0"),
        ("redis+sentinel://s1:26379", "names the master"),
        ("unix://", "socket path"),
    ],
)
def test_malformed_urls_are_refused_naming_the_problem(url: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        parse_redis_url(url)
    assert "pw" not in str(info.value)


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[tuple[RedisProcess, int]]:
    """A master and one sentinel watching it as 'qmaster'."""
    binary = server_binary_under_test()
    master = RedisProcess(tmp_path / "master", binary=binary)
    master.start()
    port = _free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor qmaster 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds qmaster 1000\n"
    )
    proc = subprocess.Popen(
        [binary or "redis-server", str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while b"qmaster" not in _safe_call(port, "SENTINEL", "MASTERS"):
            assert time.monotonic() < deadline, "sentinel did not start"
            time.sleep(0.05)
        yield master, port
    finally:
        proc.kill()
        proc.wait()
        master.stop()


def _safe_call(port: int, *args: str) -> bytes:
    try:
        return _redis_call(port, *args, timeout_s=0.5)
    except OSError:
        return b""


async def test_a_worker_runs_jobs_through_sentinel(
    sentinel_setup: tuple[RedisProcess, int],
) -> None:
    """Given only a sentinel's address, the client and a worker find the master and run jobs."""
    _, sentinel_port = sentinel_setup
    await round_trip(f"redis+sentinel://127.0.0.1:{sentinel_port}/qmaster")
