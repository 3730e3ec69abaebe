"""Real worker processes, a real Redis and a breakable proxy between them, plus the books that
tell what a fault cost: which enqueues were acknowledged, which ran, which ran twice, how long
work took to resume and whether every worker is still alive and consuming.

A scenario reads::

    await h.start_workers(2)
    producer = asyncio.create_task(h.produce(2000, rate=1000))
    await h.wait_completed(300)
    t0 = time.time(); h.proxy.reset_all(); t1 = time.time()
    await producer
    result = await h.finish("connection reset", fault_start=t0, fault_end=t1)
    assert result.lost == 0

Job ids are made here (``JobSpec.job_id``), so an enqueue that failed or timed out still names
the job it may have written. Executions are counted from the ledger file the tasks of
:mod:`tests.faults.ledger_tasks` append to, outside Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qrunner_devservers.embedded import RedisProcess
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from qrunner import Client, JobSpec, keys
from qrunner.job import Job, new_job_id
from tests.faults import ledger_tasks
from tests.faults.proxy import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
HANDLERS = "tests.faults.ledger_tasks"
QUEUE = ledger_tasks.QUEUE
REPORT_ENV = "QRUNNER_FAULT_REPORT"


# -- the ledger --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # "start" or "done"
    job_id: str
    pid: int
    at: float  # unix time


class Ledger:
    """Reads the executions the workers appended to ``path``; cheap to poll (reads only what is
    new, and only whole lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.touch()
        self.events: list[Event] = []
        self.starts: Counter[str] = Counter()
        self.dones: Counter[str] = Counter()
        self._offset = 0

    def refresh(self) -> Ledger:
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].decode().splitlines():
            kind, job_id, pid, at = line.split()
            event = Event(kind, job_id, int(pid), float(at))
            self.events.append(event)
            (self.starts if kind == "start" else self.dones)[job_id] += 1
        return self

    def pids_of(self, job_id: str, kind: str = "start") -> list[int]:
        return [e.pid for e in self.events if e.job_id == job_id and e.kind == kind]


# -- worker processes --------------------------------------------------------------------------


@dataclass(eq=False)
class WorkerProc:
    index: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    name: str = ""  # consumer name, from the "started" log line
    #: "kill", "term" or "" : the way the test itself ended it, if it did
    ended_by_test: str = ""
    paused: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def probe_queue(self) -> str:
        return f"probe-{self.index}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


# -- results -----------------------------------------------------------------------------------


@dataclass
class FaultResult:
    scenario: str
    server: str
    workers: int
    concurrency: int
    attempted: int = 0
    acknowledged: int = 0
    failed_enqueues: int = 0
    completed: int = 0  # acknowledged jobs that ran to the end at least once
    lost: int = 0  # expected jobs that never completed
    lost_sample: list[str] = field(default_factory=list)
    #: acknowledged jobs outside ``expected`` that never completed (e.g. deleted by FLUSHALL)
    lost_allowed: int = 0
    duplicate_runs: int = 0  # starts beyond the first, over acknowledged jobs
    duplicate_completions: int = 0  # completions beyond the first
    max_runs: int = 0
    fault_s: float = 0.0
    recovery_s: float | None = None  # fault end -> first job start after it
    drain_s: float | None = None  # fault end -> every expected job completed
    workers_alive: bool = True
    workers_consuming: bool = True
    probe_latency_s: float | None = None
    exits: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        rec = "never" if self.recovery_s is None else f"{self.recovery_s:.2f}s"
        return (
            f"{self.scenario} [{self.server}]: acked {self.acknowledged}/{self.attempted}, "
            f"lost {self.lost}, duplicate runs {self.duplicate_runs}, recovery {rec}, "
            f"alive {self.workers_alive}, consuming {self.workers_consuming}, exits {self.exits}"
        )


@dataclass
class Enqueues:
    """Every enqueue attempt: acknowledged (the call returned the id) or failed (it raised, so
    the job may or may not have been written)."""

    acked: dict[str, float] = field(default_factory=dict)  # job id -> when the call returned
    sent: dict[str, float] = field(default_factory=dict)  # job id -> when the call began
    failed: dict[str, str] = field(default_factory=dict)  # job id -> the error
    errors: list[BaseException] = field(default_factory=list)

    def acked_since(self, t: float) -> set[str]:
        """Acknowledged jobs whose enqueue call began at or after ``t``."""
        return {i for i in self.acked if self.sent[i] >= t}

    def acked_before(self, t: float) -> set[str]:
        """Acknowledged jobs whose enqueue call returned before ``t``."""
        return {i for i, at in self.acked.items() if at < t}


def direct_client(url: str) -> Redis:
    """A test-side connection to Redis itself (not through the proxy) that never retries on its
    own and never waits for a reply longer than 2 s, so the books stay exact and bounded."""
    return Redis.from_url(
        url,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )


class Harness:
    """One Redis (``server``), one proxy in front of it, worker processes, a ledger."""

    def __init__(
        self,
        tmp_path: Path,
        server: RedisProcess,
        *,
        concurrency: int = 50,
        lease_ms: int = 2000,
        through_proxy: bool = True,
        status_ttl_s: int | None = None,
    ) -> None:
        self.tmp = tmp_path
        self.server = server
        self.concurrency = concurrency
        self.lease_ms = lease_ms
        self.through_proxy = through_proxy
        self.status_ttl_s = status_ttl_s
        self.ledger = Ledger(tmp_path / "ledger.txt")
        self.enqueues = Enqueues()
        self.workers: list[WorkerProc] = []
        self.proxy = FaultProxy(server.port)
        self.redis: Redis = direct_client(server.url)
        self.client = self._client()
        self.server_label = "?"
        self.server_kind = "redis"
        self.server_version: tuple[int, ...] = ()
        self.restarts = 0
        self._restarter: asyncio.Task[None] | None = None
        self._t0 = time.time()
        self._probe_ids: set[str] = set()

    # -- set-up and tear-down ---------------------------------------------------------------

    def _client(self) -> Client:
        if self.status_ttl_s is None:
            return Client(self.redis, ledger_tasks.registry)
        return Client(self.redis, ledger_tasks.registry, status_ttl_s=self.status_ttl_s)

    def use_status_ttl(self, seconds: int) -> None:
        """Status records' TTL for the workers started from now on and for the test's client
        (0: no status records at all)."""
        self.status_ttl_s = seconds
        self.client = self._client()

    async def open(self) -> Harness:
        self.proxy.start()
        await self.describe_server()
        return self

    async def describe_server(self) -> str:
        info = await self.redis.info("server")
        kind = "valkey" if "valkey_version" in info else "redis"
        version = str(info[f"{kind}_version"])
        self.server_kind = kind
        self.server_version = tuple(int(p) for p in version.split("."))
        self.server_label = f"{kind} {version}"
        return self.server_label

    async def close(self) -> None:
        await self.stop_restarter()
        await self.stop_all()
        self.proxy.close()
        await self.redis.aclose()
        for w in self.workers:
            print(f"---- worker {w.index} pid {w.pid} rc {w.proc.returncode} ({w.log_path})")
            print(w.log()[-4000:])

    async def restart_server(
        self,
        *,
        down_s: float = 0.0,
        appendonly: bool | None = None,
        extra_args: Iterable[str] = (),
    ) -> None:
        """Stop Redis gracefully (SHUTDOWN), leave it down ``down_s`` seconds and start it again
        on the same port, optionally with other settings. The test-side client reconnects by
        itself on its next command."""
        port = self.server.port
        await asyncio.to_thread(self.server.stop)
        await asyncio.sleep(down_s)
        if appendonly is not None:
            self.server.appendonly = appendonly
        flags = list(extra_args)
        if flags:
            # RedisProcess takes no extra server flags, so its argv is extended here.
            base = type(self.server)._argv
            server = self.server
            server._argv = lambda: [*base(server), *flags]  # type: ignore[method-assign]
        await asyncio.to_thread(self.server.start)
        assert self.server.port == port, "Redis came back on another port (its own was taken)"

    # -- workers ----------------------------------------------------------------------------

    def worker_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")}
        env.update(
            {
                "QRUNNER_REDIS_URL": self.proxy.url if self.through_proxy else self.server.url,
                "QRUNNER_LEASE_MS": str(self.lease_ms),
                "QRUNNER_RECLAIM_INTERVAL_MS": "200",
                "QRUNNER_PROMOTE_INTERVAL_MS": "20",
                "QRUNNER_BLOCK_MS": "100",
                "QRUNNER_GRACE_S": "2",
                "QRUNNER_LOG_LEVEL": "INFO",
                ledger_tasks.LEDGER_ENV: str(self.ledger.path),
            }
        )
        if self.status_ttl_s is not None:
            env["QRUNNER_STATUS_TTL_S"] = str(self.status_ttl_s)
        env.update(extra or {})
        return env

    def spawn(self, env: Mapping[str, str] | None = None) -> WorkerProc:
        """Start one ``qrunner worker`` process reading the fault queue and its probe queue."""
        index = len(self.workers) + 1
        log_path = self.tmp / f"worker-{index}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "qrunner.cli", "worker",
                    "--handlers", HANDLERS,
                    "--no-cron",
                    "--queues", f"{QUEUE},probe-{index}",
                    "--concurrency", str(self.concurrency),
                ],
                cwd=ROOT,
                env=self.worker_env(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )  # fmt: skip
        worker = WorkerProc(index, proc, log_path, time.time())
        self.workers.append(worker)
        return worker

    async def start_workers(
        self, n: int, env: Mapping[str, str] | None = None, timeout_s: float = 20.0
    ) -> list[WorkerProc]:
        started = [self.spawn(env) for _ in range(n)]
        for w in started:
            await self.wait_ready(w, timeout_s)
        return started

    async def wait_ready(self, w: WorkerProc, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(r"worker (\S+) started: ", w.log())
            if found:
                w.name = found.group(1)
                return
            if not w.alive():
                raise AssertionError(f"worker {w.index} exited at start:\n{w.log()[-3000:]}")
            await asyncio.sleep(0.05)
        raise AssertionError(f"worker {w.index} not ready after {timeout_s}s:\n{w.log()[-3000:]}")

    def kill(self, w: WorkerProc) -> None:
        w.ended_by_test = "kill"
        w.proc.send_signal(signal.SIGKILL)

    def pause(self, w: WorkerProc) -> None:
        w.paused = True
        w.proc.send_signal(signal.SIGSTOP)

    def resume(self, w: WorkerProc) -> None:
        w.proc.send_signal(signal.SIGCONT)
        w.paused = False

    async def stop_all(self, timeout_s: float = 4.0) -> None:
        """SIGTERM every live worker (SIGCONT first), SIGKILL what is left after ``timeout_s``."""
        live = [w for w in self.workers if w.alive()]
        for w in live:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGCONT)
                w.proc.send_signal(signal.SIGTERM)
            w.ended_by_test = w.ended_by_test or "term"

        def end(w: WorkerProc) -> None:
            try:
                w.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(5)

        await asyncio.gather(*(asyncio.to_thread(end, w) for w in live))

    def start_restarter(self, max_restarts: int, env: Mapping[str, str] | None = None) -> None:
        """Start a new worker whenever one exits by itself, ``max_restarts`` times at most."""

        async def watch() -> None:
            handled: set[int] = set()
            while True:
                for w in list(self.workers):
                    if w.index in handled or w.alive() or w.ended_by_test:
                        continue
                    handled.add(w.index)
                    if self.restarts < max_restarts:
                        self.restarts += 1
                        self.spawn(env)
                await asyncio.sleep(0.05)

        self._restarter = asyncio.create_task(watch())

    async def stop_restarter(self) -> None:
        if self._restarter is not None:
            self._restarter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restarter
            self._restarter = None

    def exits(self) -> list[dict[str, Any]]:
        return [
            {"worker": w.index, "pid": w.pid, "rc": w.proc.returncode, "by_test": w.ended_by_test}
            for w in self.workers
            if w.proc.poll() is not None
        ]

    async def held_by(self, w: WorkerProc) -> set[str]:
        """Entry ids of the fault queue pending for ``w``'s consumer right now."""
        rows = await self.redis.xpending_range(
            keys.stream(QUEUE), keys.GROUP, min="-", max="+", count=100_000, consumername=w.name
        )
        return {text(r["message_id"]) for r in rows}

    # -- enqueueing -------------------------------------------------------------------------

    async def produce(
        self,
        n: int,
        *,
        rate: float | None = None,
        batch: int = 10,
        task: str = "quick",
        payload: Mapping[str, Any] | None = None,
        queue: str | None = None,
        stop: asyncio.Event | None = None,
        stop_after_failures: int | None = None,
    ) -> list[str]:
        """Enqueue ``n`` jobs, ``batch`` per call (``enqueue`` when 1, else ``enqueue_many``),
        at about ``rate`` jobs/s; every call is booked as acknowledged or failed. Returns the
        ids of this call's acknowledged jobs. Stops early when ``stop`` is set, or once
        ``stop_after_failures`` of this call's enqueues have failed."""
        acked: list[str] = []
        failures = 0
        interval = batch / rate if rate else 0.0
        next_at = time.monotonic()
        done = 0
        while done < n and not (stop is not None and stop.is_set()):
            if stop_after_failures is not None and failures >= stop_after_failures:
                break
            size = min(batch, n - done)
            ids = [new_job_id() for _ in range(size)]
            sent = time.time()
            for i in ids:
                self.enqueues.sent[i] = sent
            try:
                if size == 1:
                    got = [await self.client.enqueue(task, payload, queue=queue, job_id=ids[0])]
                else:
                    got = await self.client.enqueue_many(
                        JobSpec(task, payload, queue=queue, job_id=i) for i in ids
                    )
            except Exception as exc:
                for i in ids:
                    self.enqueues.failed[i] = f"{type(exc).__module__}.{type(exc).__name__}"
                self.enqueues.errors.append(exc)
                failures += 1
            else:
                assert got == ids, f"enqueue returned other ids than asked: {got[:3]}..."
                now = time.time()
                for i in ids:
                    self.enqueues.acked[i] = now
                acked.extend(ids)
            done += size
            if interval:
                next_at = max(next_at + interval, time.monotonic() - 0.1)
                pause = next_at - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
            else:
                await asyncio.sleep(0)
        return acked

    # -- waiting ----------------------------------------------------------------------------

    async def wait_completed(
        self, count: int | None = None, ids: Iterable[str] | None = None, timeout_s: float = 20.0
    ) -> bool:
        """Until ``count`` jobs have completed, or every job of ``ids``; False at the deadline."""
        wanted = set(ids) if ids is not None else None
        deadline = time.monotonic() + timeout_s
        while True:
            self.ledger.refresh()
            if wanted is not None:
                wanted = {i for i in wanted if not self.ledger.dones[i]}
                if not wanted:
                    return True
            elif count is not None and len(self.ledger.dones) >= count:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)

    async def wait_until(
        self, check: Callable[[], Awaitable[Any]], timeout_s: float, interval_s: float = 0.05
    ) -> Any:
        """Poll ``check`` until it returns something truthy; its last value at the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = await check()
            if value or time.monotonic() > deadline:
                return value
            await asyncio.sleep(interval_s)

    async def wait_started(self, job_id: str, runs: int = 1, timeout_s: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.ledger.refresh().starts[job_id] < runs:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def probe(self, timeout_s: float = 8.0) -> tuple[bool, float | None]:
        """Send 3 quick jobs to the private queue of each live worker not stopped by the test;
        True when every one ran within ``timeout_s``, with the slowest latency."""
        targets = [w for w in self.workers if w.alive() and not w.paused]
        if not targets:
            return False, None
        ids: list[str] = []
        t0 = time.time()
        try:
            for w in targets:
                for _ in range(3):
                    ids.append(await self.client.enqueue("quick", queue=w.probe_queue))
        except Exception as exc:
            print(f"probe enqueue failed: {exc!r}")
            return False, None
        self._probe_ids.update(ids)
        ok = await self.wait_completed(ids=ids, timeout_s=timeout_s)
        if not ok:
            return False, None
        last = max(e.at for e in self.ledger.events if e.kind == "done" and e.job_id in ids)
        return True, last - t0

    # -- the books --------------------------------------------------------------------------

    async def finish(
        self,
        scenario: str,
        *,
        fault_start: float,
        fault_end: float,
        expected: Iterable[str] | None = None,
        wait_s: float = 20.0,
        probe_s: float = 8.0,
        extra: Mapping[str, Any] | None = None,
    ) -> FaultResult:
        """Wait for the expected jobs (default: every acknowledged one), probe the workers, and
        book the result (appended to $QRUNNER_FAULT_REPORT when set)."""
        must = set(self.enqueues.acked) if expected is None else set(expected)
        await self.wait_completed(ids=must, timeout_s=wait_s)
        drained_at = time.time()
        consuming, latency = await self.probe(probe_s)
        led = self.ledger.refresh()
        acked = set(self.enqueues.acked)
        lost = sorted(i for i in must if not led.dones[i])
        resumed = [
            e.at
            for e in led.events
            if e.kind == "start" and e.at >= fault_end and e.job_id not in self._probe_ids
        ]
        result = FaultResult(
            scenario=scenario,
            server=self.server_label,
            workers=len(self.workers) - self.restarts,
            concurrency=self.concurrency,
            attempted=len(self.enqueues.sent),
            acknowledged=len(acked),
            failed_enqueues=len(self.enqueues.failed),
            completed=sum(1 for i in acked if led.dones[i]),
            lost=len(lost),
            lost_sample=lost[:5],
            lost_allowed=sum(1 for i in acked - must if not led.dones[i]),
            duplicate_runs=sum(max(0, led.starts[i] - 1) for i in acked),
            duplicate_completions=sum(max(0, led.dones[i] - 1) for i in acked),
            max_runs=max((led.starts[i] for i in acked), default=0),
            fault_s=round(fault_end - fault_start, 3),
            recovery_s=round(min(resumed) - fault_end, 3) if resumed else None,
            drain_s=round(drained_at - fault_end, 3) if not lost else None,
            workers_alive=all(w.alive() for w in self.workers if not w.ended_by_test),
            workers_consuming=consuming,
            probe_latency_s=None if latency is None else round(latency, 3),
            exits=self.exits(),
            restarts=self.restarts,
            elapsed_s=round(time.time() - self._t0, 2),
            extra=dict(extra or {}),
        )
        print(result.summary())
        if self.enqueues.errors:
            kinds = Counter(self.enqueues.failed.values())
            print(f"failed enqueues by error: {dict(kinds)}; first: {self.enqueues.errors[0]!r}")
        report(result)
        return result

    # -- Redis-side helpers -----------------------------------------------------------------

    async def flushall_counting(self) -> set[str]:
        """FLUSHALL, atomically with a read of the fault queue's stream: returns the ids of the
        jobs the flush deleted (waiting or delivered-but-unacknowledged)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xrange(keys.stream(QUEUE))
        pipe.zrange(keys.delayed(QUEUE), 0, -1)
        pipe.flushall()
        entries, delayed, _ = await pipe.execute()
        bodies = [fields.get(b"j") for _, fields in entries] + list(delayed)
        return {Job.decode(b, queue=QUEUE).id for b in bodies if b}

    async def dead_letters(self, queue: str = QUEUE) -> list[dict[str, str]]:
        rows = await self.redis.xrange(keys.dlq(queue))
        return [{text(k): text(v) for k, v in (f or {}).items()} for _, f in rows or []]


def text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def report(result: FaultResult) -> None:
    path = os.environ.get(REPORT_ENV)
    if path:
        row = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **asdict(result)}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
