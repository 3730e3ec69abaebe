"""What a peer adapter provides, and the worker-process plumbing every adapter shares.

Each peer module subclasses :class:`Adapter` with the few things that differ between runtimes:
how to enqueue one job (and many, where it has a bulk API), how to start its worker, and how
to read from Redis how many jobs are still not done. Everything that is timed is timed in
``measure.py``, the same way for every peer; ``cli.py`` is the command line.

Adapters run inside their peer's own virtualenv, so this module needs only the standard
library and redis-py (every peer venv has it). Each command prints exactly one JSON line on
stdout; logs go to stderr and worker output to a file under ``benchmarks/.work/logs``.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

BENCH_DIR = Path(__file__).resolve().parent.parent
WORK_DIR = Path(os.environ.get("BENCH_WORK_DIR", BENCH_DIR / ".work"))

#: Keys the job bodies write; no runtime uses the ``bench:`` prefix.
COUNTER_KEY = "bench:counter"
LATENCY_KEY = "bench:latency"

#: Tasks every adapter declares: no-op, one awaited Redis INCR, and the latency probe.
TASK_FOR_BODY = {"noop": "noop", "redis": "incr"}

POLL_S = 0.005
BULK_CHUNK = 1000
GATHER_CHUNK = 100


def payload(i: int) -> dict[str, Any]:
    """The small job payload used by every measurement (about 10 bytes of JSON)."""
    return {"i": i}


def redis_url() -> str:
    return os.environ["BENCH_REDIS_URL"]


def run_async(coro: Any) -> Any:
    """Run a coroutine on uvloop when the venv has it (qrunner's CLI default), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


class Adapter:
    """One peer runtime. Subclasses fill in the enqueue side, the worker and ``remaining``."""

    #: Short name used on the command line and in the report.
    name = ""
    #: Distribution whose version is reported.
    dist = ""
    #: True when ``open``/``send``/``send_many``/``close`` are coroutines.
    asynchronous = False
    #: How ``enqueue-bulk`` enqueues; shown in the report's settings column.
    bulk_label = "loop (no bulk API)"
    #: Worker variants: name -> settings text for the report. The first is the default.
    variants: dict[str, str] = {"default": ""}
    #: What "verified" means for the no-op body when the runtime keeps no done-count.
    noop_check = "drained"

    def __init__(self) -> None:
        self.r = redis.Redis.from_url(redis_url())

    # -- enqueue side (sync, or async when ``asynchronous``) ---------------------------------

    def open(self) -> Any:
        """Connect the enqueuing client; not timed."""

    def send(self, task: str, data: dict[str, Any]) -> Any:
        raise NotImplementedError

    def send_many(self, task: str, items: list[dict[str, Any]]) -> Any:
        """Bulk enqueue. The default is the best a peer without a bulk API offers."""
        if self.asynchronous:
            return self._gather(task, items)
        for data in items:
            self.send(task, data)
        return None

    async def _gather(self, task: str, items: list[dict[str, Any]]) -> None:
        for start in range(0, len(items), GATHER_CHUNK):
            chunk = items[start : start + GATHER_CHUNK]
            await asyncio.gather(*(self.send(task, d) for d in chunk))

    def close(self) -> Any:
        """Release the enqueuing client."""

    # -- worker side -------------------------------------------------------------------------

    def worker_argv(self, variant: str, concurrency: int | None) -> list[str]:
        """The command that starts one worker process for ``variant`` (the peer's own CLI)."""
        return self.own_worker_argv(variant, concurrency)

    def own_worker_argv(self, variant: str, concurrency: int | None) -> list[str]:
        """Start the worker through this adapter's ``worker`` command (for peers without a CLI)."""
        argv = [sys.executable, "-m", "peers", self.name, "worker", "--variant", variant]
        if concurrency is not None:
            argv += ["--concurrency", str(concurrency)]
        return argv

    def run_worker(self, variant: str, concurrency: int | None) -> None:
        """Run one worker in this process until killed; peers with a CLI exec it instead."""
        argv = self.worker_argv(variant, concurrency)
        os.execvpe(argv[0], argv, os.environ)

    def remaining(self) -> Any:
        """Jobs enqueued but not yet finished, read from the runtime's own Redis keys.

        May be a coroutine.
        """
        raise NotImplementedError

    def completed(self) -> Any:
        """Jobs the runtime itself counts as done, when it keeps such a count (else None)."""
        return None

    def failed(self) -> Any:
        """Jobs the runtime failed or dead-lettered, when it keeps them (else None)."""
        return None

    def send_many_delayed(self, task: str, items: list[dict[str, Any]], delay_s: float) -> Any:
        """Bulk enqueue of jobs due ``delay_s`` from now (scaling section; qrunner only)."""
        raise NotImplementedError(f"{self.name} has no delayed-job adapter")

    def delayed_count(self) -> Any:
        """Jobs still waiting in the runtime's delayed set."""
        raise NotImplementedError

    def after_prefill(self, n: int) -> None:
        """Hook run once the backlog is in place (e.g. to snapshot stream ids)."""

    def settings(self, variant: str) -> str:
        return self.variants.get(variant, variant)

    def version(self) -> str:
        try:
            return metadata.version(self.dist)
        except metadata.PackageNotFoundError:
            return "?"

    # -- helpers the measurements share ------------------------------------------------

    async def call(self, value: Any) -> Any:
        return await value if asyncio.iscoroutine(value) else value

    async def enqueue_all(self, task: str, n: int, start: int = 0) -> None:
        for first in range(start, start + n, BULK_CHUNK):
            items = [payload(i) for i in range(first, min(start + n, first + BULK_CHUNK))]
            await self.call(self.send_many(task, items))

    def spawn_workers(
        self, variant: str, count: int, concurrency: int | None, tag: str
    ) -> list[subprocess.Popen[bytes]]:
        """Start ``count`` worker processes, each in its own session, output to a log file."""
        logs = WORK_DIR / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(BENCH_DIR) + os.pathsep + env.get("PYTHONPATH", "")
        procs = []
        for k in range(count):
            log = open(logs / f"{self.name}-{variant}-{tag}-{k}.log", "wb")
            proc = subprocess.Popen(
                self.worker_argv(variant, concurrency),
                cwd=BENCH_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
            _remember_pid(proc.pid)
            procs.append(proc)
        return procs


class StreamBacklog:
    """Entries of a consumer group not yet acknowledged, on Redis 6.2 (no ``lag`` in XINFO).

    Before :meth:`snapshot` nothing has been consumed, so the stream length is the backlog.
    After it, undelivered entries are counted by locating the group's last-delivered id in the
    snapshot of entry ids, and delivered-but-unacked ones come from XPENDING.
    """

    def __init__(self, r: redis.Redis, stream: str, group: str) -> None:
        self.r, self.stream, self.group = r, stream, group
        self.ids: list[tuple[int, int]] | None = None

    @staticmethod
    def _parse(entry_id: bytes | str) -> tuple[int, int]:
        text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        ms, _, seq = text.partition("-")
        return int(ms), int(seq or 0)

    def snapshot(self) -> None:
        ids: list[tuple[int, int]] = []
        start = "-"
        while True:
            batch = self.r.xrange(self.stream, start, "+", count=10000)
            ids.extend(self._parse(i) for i, _ in batch)
            if len(batch) < 10000:
                break
            ms, seq = ids[-1]
            start = f"{ms}-{seq + 1}"
        self.ids = ids

    def remaining(self) -> int:
        if self.ids is None:
            return int(self.r.xlen(self.stream))
        groups = self.r.xinfo_groups(self.stream)
        group = next((g for g in groups if g["name"] in (self.group, self.group.encode())), None)
        if group is None:
            return len(self.ids)
        delivered = bisect.bisect_right(self.ids, self._parse(group["last-delivered-id"]))
        return len(self.ids) - delivered + int(group["pending"])


def _pidfile() -> Path:
    return WORK_DIR / "pids" / str(os.getpid())


def _remember_pid(pid: int) -> None:
    """Record a worker's process group so the orchestrator can reap it if this process dies."""
    path = _pidfile()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(f"{pid}\n")


def forget_workers() -> None:
    """Drop this adapter's pid file once every worker it started has been stopped."""
    _pidfile().unlink(missing_ok=True)


def stop_workers(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """Kill each worker's whole process group (pool children included); results are in already."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def worker_problem(procs: list[subprocess.Popen[bytes]]) -> str | None:
    for proc in procs:
        code = proc.poll()
        if code is not None:
            return f"worker exited with code {code} (see benchmarks/.work/logs)"
    return None
