"""Throughput and bytes per job across backlog sizes, with status records on (the default), and
the Redis server's time per job from INFO commandstats.

Each row is the full suite's own step, run through the adapters' command line in this
interpreter (``python -m peers qrunner process N --body noop`` and ``memory N``): one worker
process, concurrency 100, uvloop, timed between 30 % and 90 % of the backlog done. Before each
processing step the server's command statistics are reset; after it, the time Redis spent per
job (``usec`` of every command, scripts counting their inner commands once) says whether the
worker or the server is the bound; a second table splits one more drain of each size into the
worker's CPU per job, the share of the drain it ran, and Redis' time per job in the read, in
the ack script's own Lua and in each command the ack calls. Sizes alternate order between
repeats; one private redis-server with persistence off, as in ``bin/bench``.

``--raw`` runs the suite's raw redis-py loop (``peers/raw.py``) on the same backlogs, right
after each qrunner step: its rate at each size says how much of a change across sizes is the
server's and the host's (it moves the raw loop too) and how much is qrunner's (it moves the
ratio). With ``--raw`` each repeat also gives a pair (qrunner's rate over the raw loop's, run
back to back), and the report adds the median of those pairs to the ratio of the medians.
``--sizes`` picks other backlog sizes: ``--sizes 100000 --repeats 9 --raw`` is nine long
no-op pairs at one size.

    benchmarks/.venvs/qrunner/bin/python benchmarks/backlog.py --repeats 3 --raw --out FILE.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import redis  # noqa: E402
import uvloop  # noqa: E402
from peers.qrunner import QUEUE, registry  # noqa: E402
from suite.server import RedisServer  # noqa: E402
from suite.steps import peers_step  # noqa: E402

from qrunner import Client, Worker, connect_redis  # noqa: E402

SIZES = (10_000, 100_000, 1_000_000)
#: Timed between 30 % and 90 % done, as in the suite (see benchmarks/README.md, Scaling).
WINDOW = "0.3,0.9"


async def fill(url: str, n: int) -> None:
    client = Client(await connect_redis(url), registry)
    for start in range(0, n, 5000):
        await client.enqueue_many([("noop", {"i": i}) for i in range(start, min(n, start + 5000))])
    await client.redis.aclose()


async def drain(url: str) -> None:
    redis_client = await connect_redis(url)
    await Worker(redis_client, registry, queues=[QUEUE], concurrency=100, burst=True).run()
    await redis_client.aclose()


#: Commands the ack script calls (qrunner/lua/ack.lua), each shown in the breakdown by command.
INNER = ("set", "hset", "exists", "rpush", "lrange", "hdel", "xack", "xpending", "xtrim", "xdel")


def server_us_per_job(r: redis.Redis, n: int) -> dict[str, float]:
    """Redis time per job by command. A script's ``usec`` already holds its inner commands', so
    those (called from a script only) are left out of the total; ``lua`` is what the scripts
    spent outside the commands they called (parsing, tables, strings, the calls themselves)."""
    stats: dict[str, Any] = r.info("commandstats")
    by = {k.removeprefix("cmdstat_"): v["usec"] / n for k, v in stats.items()}
    scripts = by.get("evalsha", 0.0) + by.get("eval", 0.0)
    outside = {k: v for k, v in by.items() if k in ("xreadgroup", "xinfo|groups", "xlen")}
    inner = {k: by.get(k, 0.0) for k in INNER}
    return {
        "total": scripts + sum(outside.values()),
        "scripts": scripts,
        "lua": scripts - sum(inner.values()),
        **inner,
        **outside,
    }


def process_rate(r: redis.Redis, url: str, peer: str, n: int) -> float:
    """One ``process`` step of the suite for ``peer`` on an ``n``-job no-op backlog."""
    r.flushall()
    proc = peers_step(
        url,
        peer,
        "process",
        str(n),
        "--body",
        "noop",
        "--cap",
        str(max(60, n / 1000)),
        "--window",
        WINDOW,
    )
    if "jobs_per_s" not in proc:
        raise SystemExit(f"{peer}, {n} jobs: {proc}")
    return float(proc["jobs_per_s"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--raw", action="store_true", help="also drain each backlog with the raw redis-py loop"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--sizes",
        default=",".join(str(n) for n in SIZES),
        help="backlog sizes, comma-separated (default: %(default)s)",
    )
    args = parser.parse_args()
    sizes = tuple(int(x) for x in args.sizes.split(","))
    load_before = os.getloadavg()[0]
    rates: dict[int, list[float]] = {n: [] for n in sizes}
    raw_rates: dict[int, list[float]] = {n: [] for n in sizes}
    server: dict[int, dict[str, float]] = {}
    memory: dict[int, list[float]] = {n: [] for n in sizes}
    with tempfile.TemporaryDirectory() as folder, RedisServer(Path(folder)) as srv:
        r = redis.Redis.from_url(srv.url)
        version = r.info("server")["redis_version"]
        for rep in range(args.repeats):
            for n in sizes if rep % 2 == 0 else tuple(reversed(sizes)):
                rates[n].append(process_rate(r, srv.url, "qrunner", n))
                raw_note = ""
                if args.raw:
                    raw_rates[n].append(process_rate(r, srv.url, "raw", n))
                    raw_note = f" (raw loop {raw_rates[n][-1]:,.0f})"
                r.flushall()
                mem = peers_step(srv.url, "qrunner", "memory", str(n))
                memory[n].append(mem["bytes_per_job"])
                print(
                    f"repeat {rep + 1}: {n:>9,} queued: {rates[n][-1]:,.0f} jobs/s{raw_note}, "
                    f"{mem['bytes_per_job']:.1f} bytes/job",
                    flush=True,
                )
        # Server time per job: one more drain per size, by a burst worker in this process,
        # statistics reset once the backlog is full.
        for n in sizes:
            r.flushall()
            uvloop.run(fill(srv.url, n))
            r.config_resetstat()
            wall, cpu = time.perf_counter(), time.process_time()
            uvloop.run(drain(srv.url))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            server[n] = server_us_per_job(r, n)
            server[n]["worker"] = cpu / n * 1e6
            server[n]["busy"] = cpu / wall
        r.close()
    load_after = os.getloadavg()[0]
    base_rate = statistics.median(rates[sizes[0]])
    base_mem = statistics.median(memory[sizes[0]])
    first = f"vs {sizes[0]:,}"
    lines = [
        "# Throughput and bytes per job across backlog sizes (status records on)",
        "",
        f"`benchmarks/backlog.py --repeats {args.repeats}{' --raw' if args.raw else ''}"
        f"{'' if sizes == SIZES else ' --sizes ' + args.sizes}` on "
        f"{os.cpu_count()} cores, "
        f"Python {platform.python_version()}, Redis {version} (private, persistence off). "
        "Job: no-op; one worker process, concurrency 100, uvloop, timed between 30 % and 90 % "
        "done (the suite's `scaling.backlog.N` step). Load average before / after: "
        f"{load_before:.2f} / {load_after:.2f}.",
        "",
        f"| queued | median jobs/s | min | max | {first} | bytes/job | {first} | "
        "Redis µs/job (scripts) |"
        + (
            f" raw loop jobs/s | {first} | qrunner / raw | each repeat's pair: median (range) |"
            if args.raw
            else ""
        ),
        "|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if args.raw else ""),
    ]
    raw_base = statistics.median(raw_rates[sizes[0]]) if args.raw else 0.0
    for n in sizes:
        rate, mem = statistics.median(rates[n]), statistics.median(memory[n])
        row = (
            f"| {n:,} | {rate:,.0f} | {min(rates[n]):,.0f} | {max(rates[n]):,.0f} | "
            f"{rate / base_rate:.2f}x | {mem:.1f} | {mem / base_mem:.2f}x | "
            f"{server[n]['total']:.1f} ({server[n]['scripts']:.1f}) |"
        )
        if args.raw:
            raw = statistics.median(raw_rates[n])
            pairs = [q / w for q, w in zip(rates[n], raw_rates[n], strict=True)]
            row += (
                f" {raw:,.0f} | {raw / raw_base:.2f}x | {rate / raw:.0%} | "
                f"{statistics.median(pairs):.0%} ({min(pairs):.0%} to {max(pairs):.0%}) |"
            )
        lines.append(row)
    lines += [
        "",
        "Where the time per job goes, from one more drain of each backlog (whole drain, start "
        "and end included) by a burst worker in this process, command statistics reset once "
        "the backlog is full: the worker's CPU per job and the share of the drain it was on a "
        "core; Redis' time per job in the read (`XREADGROUP`), in the ack script's own Lua "
        "(`lua`: the script minus the commands it called) and in each command the ack calls.",
        "",
        "| queued | worker µs/job | worker busy | XREADGROUP | lua | "
        + " | ".join(c.upper() for c in INNER)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(INNER),
    ]
    for n in sizes:
        s = server[n]
        lines.append(
            f"| {n:,} | {s['worker']:.2f} | {s['busy']:.0%} | {s.get('xreadgroup', 0.0):.2f} | "
            f"{s['lua']:.2f} | " + " | ".join(f"{s[c]:.2f}" for c in INNER) + " |"
        )
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
