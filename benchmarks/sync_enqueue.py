"""Single-job enqueue from synchronous code, side by side in one run: qrunner's SyncClient,
huey (the fastest synchronous peer, ``RedisHuey`` as its docs configure it; calling a task
enqueues it), a raw synchronous ``XADD`` (redis-py, the ceiling for one round trip per job),
qrunner's async ``Client`` and a raw awaited ``XADD``, and a floor for each kind: one script
call that adds the entry and records the id, with no client work.

Each side enqueues ``--n`` jobs one at a time, awaiting each reply, against a fresh private
``redis-server`` (no persistence); medians of ``--repeats`` runs, order rotated between repeats.

    .venv/bin/pip install -r benchmarks/requirements/huey.txt   # huey, once
    .venv/bin/python benchmarks/sync_enqueue.py --n 10000 --repeats 5 --out FILE.md

``--loop uvloop`` runs the async sides on uvloop. Each row also gives, per job, this process's
CPU, Redis's CPU, and the time this process spent off the CPU (waiting for a reply and being
woken for it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as sync_redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qrunner import Client, Context, Registry, SyncClient, connect_redis  # noqa: E402

registry = Registry()


@registry.task(queue="bench", max_retries=0)
async def noop(ctx: Context[None], payload: dict[str, Any]) -> None:
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis() -> tuple[subprocess.Popen[bytes], str, Path]:
    binary = os.environ.get("QRUNNER_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        sys.exit("no redis-server on PATH (set QRUNNER_TEST_REDIS_SERVER)")
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="qrunner-bench-"))
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = sync_redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except sync_redis.ConnectionError:
            time.sleep(0.02)
    return proc, f"redis://127.0.0.1:{port}/0", folder


#: How the async sides run their event loop: asyncio's own, or uvloop's with ``--loop uvloop``
#: (as the worker and the suite run theirs).
run_loop: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run


@dataclass(frozen=True)
class Timed:
    """One side's run: its rate, and the CPU the client (this process) and Redis spent per job."""

    rate: float
    client_us: float
    redis_us: float

    @property
    def idle_us(self) -> float:
        """Per job, the time this process was off the CPU: waiting for Redis's reply, and
        being woken when it came."""
        return max(0.0, 1e6 / self.rate - self.client_us)


def redis_cpu_s(server: sync_redis.Redis) -> float:
    info = server.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def timed(run: Callable[[int], None], n: int, server: sync_redis.Redis) -> Timed:
    run(50)  # warm the connection and load scripts
    redis0 = redis_cpu_s(server)
    c0 = time.process_time()
    t0 = time.perf_counter()
    run(n)
    wall = time.perf_counter() - t0
    client = time.process_time() - c0
    redis = redis_cpu_s(server) - redis0
    return Timed(n / wall, client / n * 1e6, redis / n * 1e6)


def qrunner_sync(url: str) -> Callable[[int], None]:
    client = SyncClient.from_url(url, registry)

    def run(n: int) -> None:
        for i in range(n):
            client.enqueue("noop", {"i": i})

    return run


def raw_sync(url: str) -> Callable[[int], None]:
    client = sync_redis.Redis.from_url(url)

    def run(n: int) -> None:
        for i in range(n):
            client.xadd("raw:stream", {"j": b'{"i":%d}' % i})

    return run


#: The least any enqueue that keeps an id record can cost: one script call that adds the entry
#: and records the id (what qrunner's enqueue script does for a job due now), with no client
#: work: a fixed envelope, no validation, no id drawn. Its ratio to a bare XADD is the ceiling
#: for a design that must find a job by id and write a retried enqueue once.
FLOOR_SCRIPT = (
    "local e = redis.call('XADD', KEYS[1], '*', 'j', ARGV[2]) "
    "redis.call('HSET', KEYS[2], ARGV[1], e) return {ARGV[1], 1}"
)
FLOOR_ENVELOPE = (
    b'{"id":"abcdefghijklmnop","task":"noop","payload":{"i":1},"queue":"bench",'
    b'"attempt":1,"enqueued_ms":1764547200000}'
)


def floor_sync(url: str) -> Callable[[int], None]:
    client = sync_redis.Redis.from_url(url)

    def run(n: int) -> None:
        sha = client.script_load(FLOOR_SCRIPT)
        for i in range(n):
            client.evalsha(sha, 2, "floor:stream", "floor:live", str(i), FLOOR_ENVELOPE)

    return run


def floor_async(url: str) -> Callable[[int], None]:
    def run(n: int) -> None:
        async def go() -> None:
            redis = await connect_redis(url)
            sha = await redis.script_load(FLOOR_SCRIPT)
            for i in range(n):
                await redis.evalsha(sha, 2, "floor:astream", "floor:alive", str(i), FLOOR_ENVELOPE)
            await redis.aclose()

        run_loop(go())

    return run


def huey_sync(url: str) -> Callable[[int], None] | None:
    try:
        from huey import RedisHuey
    except ImportError:
        return None
    huey = RedisHuey("bench", url=url)
    task = huey.task(name="noop")(lambda i: None)

    def run(n: int) -> None:
        for i in range(n):
            task(i)

    return run


def qrunner_async(url: str) -> Callable[[int], None]:
    def run(n: int) -> None:
        async def go() -> None:
            redis = await connect_redis(url)
            client = Client(redis, registry)
            for i in range(n):
                await client.enqueue("noop", {"i": i})
            await redis.aclose()

        run_loop(go())

    return run


def raw_async(url: str) -> Callable[[int], None]:
    def run(n: int) -> None:
        async def go() -> None:
            redis = await connect_redis(url)
            for i in range(n):
                await redis.xadd("raw:astream", {"j": b'{"i":%d}' % i})
            await redis.aclose()

        run_loop(go())

    return run


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    global run_loop
    if args.loop == "uvloop":
        import uvloop

        run_loop = uvloop.run
    proc, url, folder = start_redis()
    load_before = os.getloadavg()
    sides: dict[str, Callable[[int], None] | None] = {
        "qrunner SyncClient": qrunner_sync(url),
        "huey (RedisHuey, task call)": huey_sync(url),
        "raw redis-py XADD (sync)": raw_sync(url),
        "qrunner Client (async)": qrunner_async(url),
        "raw redis-py XADD (awaited)": raw_async(url),
        "floor: XADD + id record in one script (sync)": floor_sync(url),
        "floor: XADD + id record in one script (awaited)": floor_async(url),
    }
    timings: dict[str, list[Timed]] = {name: [] for name, fn in sides.items() if fn is not None}
    server = sync_redis.Redis.from_url(url)
    try:
        names = list(timings)
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                fn = sides[name]
                assert fn is not None
                server.flushall()
                timings[name].append(timed(fn, args.n, server))
                print(f"repeat {r + 1}: {name}: {timings[name][-1].rate:,.0f} jobs/s", flush=True)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)
    load_after = os.getloadavg()
    runs = {name: [t.rate for t in v] for name, v in timings.items()}
    med = {name: statistics.median(v) for name, v in runs.items()}
    lines = [
        "# Single-job enqueue from synchronous code",
        "",
        f"One run of `benchmarks/sync_enqueue.py --n {args.n} --repeats {args.repeats}` on this "
        f"machine ({os.cpu_count()} cores), Python {sys.version.split()[0]}, async sides on "
        f"the {args.loop} event loop, one private "
        "redis-server without persistence. Each row enqueues jobs one at a time and waits for "
        "each reply. Load average before / after: "
        f"{load_before[0]:.2f} / {load_after[0]:.2f}.",
        "",
        "The two floor rows are one script call adding the entry and recording the id, with "
        "no client work: the ceiling, on this machine, for any enqueue that keeps an id record "
        "(status by id, a retried enqueue written once).",
        "",
        "The last three columns are medians per job: this process's CPU (the client's work,"
        " system calls included), Redis's CPU (INFO cpu), and the time this process was off"
        " the CPU (1 / rate less its CPU: waiting for the reply, and being woken for it).",
        "",
        "| side | median jobs/s | min | max | vs huey | vs raw XADD of its kind | vs floor "
        "| client CPU µs | Redis CPU µs | off CPU µs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    huey = med.get("huey (RedisHuey, task call)")
    for name, value in med.items():
        kind = "awaited" if "async" in name or "awaited" in name else "sync"
        raw = med[f"raw redis-py XADD ({kind})"]
        floor = med[f"floor: XADD + id record in one script ({kind})"]
        vs_huey = f"{value / huey:.2f}x" if huey else "-"
        per_job = timings[name]
        client_us = statistics.median(t.client_us for t in per_job)
        redis_us = statistics.median(t.redis_us for t in per_job)
        idle_us = statistics.median(t.idle_us for t in per_job)
        lines.append(
            f"| {name} | {value:,.0f} | {min(runs[name]):,.0f} | {max(runs[name]):,.0f} | "
            f"{vs_huey} | {value / raw:.2f}x | {value / floor:.2f}x | {client_us:.1f} | "
            f"{redis_us:.1f} | {idle_us:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
