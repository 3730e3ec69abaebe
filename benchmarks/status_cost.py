"""What status records cost: the same jobs with status records on (the default) and off, side by
side in one run, against a private redis-server.

For each repeat and each mode: N jobs enqueued in bulk, then one in-process worker (uvloop,
concurrency 100, burst mode) runs them; jobs/s is N over the worker's run. Bodies: a no-op job and
one awaited INCR. Bytes per queued job: ``used_memory`` after N more small jobs minus before,
over N (100 jobs enqueued first so the queue's structures exist). Modes alternate within each
repeat so drift on a shared machine falls on both.

    .venv/bin/python benchmarks/status_cost.py --n 20000 --repeats 5 --out FILE.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from redis.asyncio import Redis  # noqa: E402
from suite.server import RedisServer  # noqa: E402

from qrunner import Client, Context, Registry, Worker  # noqa: E402
from qrunner.settings import Settings  # noqa: E402

registry = Registry()
MODES = {"on": 7 * 24 * 3600, "off": 0}


@registry.task(queue="bench", max_retries=0)
async def noop(ctx: Context[None], payload: dict[str, Any]) -> None:
    return None


@registry.task(queue="bench", max_retries=0)
async def incr(ctx: Context[None], payload: dict[str, Any]) -> None:
    await ctx.redis.incr("bench:counter")


async def _one_run(url: str, task: str, n: int, ttl_s: int) -> float:
    redis = Redis.from_url(url)
    await redis.flushall()
    client = Client(redis, registry, status_ttl_s=ttl_s)
    for start in range(0, n, 1000):
        await client.enqueue_many([(task, {"i": i}) for i in range(start, min(n, start + 1000))])
    worker_redis = Redis.from_url(url, max_connections=200)
    worker = Worker(
        worker_redis,
        registry,
        queues=["bench"],
        concurrency=100,
        burst=True,
        settings=Settings(status_ttl_s=ttl_s, block_ms=50),
    )
    t0 = time.perf_counter()
    await worker.run()
    elapsed = time.perf_counter() - t0
    if task == "incr":
        assert int(await redis.get("bench:counter") or 0) == n, "the counter is off"
    await worker_redis.aclose()
    await redis.aclose()
    return n / elapsed


async def _bytes_per_job(url: str, n: int, ttl_s: int) -> float:
    redis = Redis.from_url(url)
    await redis.flushall()
    client = Client(redis, registry, status_ttl_s=ttl_s)
    await client.enqueue_many([("noop", {"i": i}) for i in range(100)])
    before = int((await redis.info("memory"))["used_memory"])
    for start in range(0, n, 1000):
        await client.enqueue_many([("noop", {"i": i}) for i in range(start, start + 1000)])
    after = int((await redis.info("memory"))["used_memory"])
    await redis.aclose()
    return (after - before) / n


def _row(name: str, values: dict[str, list[float]], better_high: bool = True) -> str:
    on, off = statistics.median(values["on"]), statistics.median(values["off"])
    cost = (1 - on / off) * 100 if better_high else (on / off - 1) * 100
    spread = "; ".join(f"{mode} {min(v):,.0f} to {max(v):,.0f}" for mode, v in values.items())
    return f"| {name} | {on:,.0f} | {off:,.0f} | {cost:+.1f} % | {spread} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--memory-n", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    load_before = os.getloadavg()
    with (
        tempfile.TemporaryDirectory(prefix="status-cost-") as work,
        RedisServer(Path(work)) as server,
    ):
        url = server.url
        rates: dict[str, dict[str, list[float]]] = {
            t: {m: [] for m in MODES} for t in ("noop", "incr")
        }
        memory: dict[str, list[float]] = {m: [] for m in MODES}
        for r in range(args.repeats):
            order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
            for mode in order:
                for task in ("noop", "incr"):
                    rate = asyncio.run(_one_run(url, task, args.n, MODES[mode]))
                    rates[task][mode].append(rate)
                    print(f"repeat {r + 1} {mode:3} {task:4} {rate:,.0f} jobs/s", flush=True)
                memory[mode].append(asyncio.run(_bytes_per_job(url, args.memory_n, MODES[mode])))
        version = asyncio.run(_server_version(url))
    load_after = os.getloadavg()
    lines = [
        "# What status records cost",
        "",
        f"`benchmarks/status_cost.py --n {args.n} --repeats {args.repeats}` on this 2-core "
        f"machine, Python {platform.python_version()}, {version} (private, no persistence); one "
        "in-process worker (uvloop, concurrency 100), N jobs queued first, modes alternated "
        "within each repeat. Load average before / after: "
        f"{load_before[0]:.2f} / {load_after[0]:.2f}.",
        "",
        "| measurement | status on (default) | status off | cost of status records | spread |",
        "|---|---|---|---|---|",
        _row("no-op jobs/s", rates["noop"]),
        _row("one-INCR jobs/s", rates["incr"]),
        _row("Redis bytes per queued job", memory, better_high=False),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


async def _server_version(url: str) -> str:
    redis = Redis.from_url(url)
    info = await redis.info("server")
    await redis.aclose()
    name = "Valkey" if "valkey_version" in info else "Redis"
    return f"{name} {info.get('valkey_version') or info['redis_version']}"


if __name__ == "__main__":
    main()
