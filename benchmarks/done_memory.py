"""Redis memory held per finished job: what the status records of jobs that succeeded at their
first try cost while they last (the result TTL, a day by default).

For each size, a fresh private redis-server (persistence off) gets ``N`` no-op jobs enqueued
and drained by one burst worker in this process; the row is ``used_memory`` after the drain
minus before the enqueue, over ``N``, with the server's key count and the memory of the
queue's done hash and log. With ``--base DIR`` each size runs a second time in a child process
that imports qrunner from DIR (``git worktree add DIR REV``), for a before/after comparison.

    benchmarks/.venvs/qrunner/bin/python benchmarks/done_memory.py --base ../before --out FILE.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import redis  # noqa: E402
import uvloop  # noqa: E402
from backlog import drain, fill  # noqa: E402
from suite.report import emit  # noqa: E402
from suite.server import RedisServer  # noqa: E402

SIZES = (10_000, 100_000, 1_000_000)


def _commit(checkout: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or str(checkout)


def measure(n: int) -> dict[str, Any]:
    """One size on a fresh server, with qrunner as this process imports it."""
    import qrunner

    with tempfile.TemporaryDirectory() as folder, RedisServer(Path(folder)) as srv:
        r = redis.Redis.from_url(srv.url)
        before = int(r.info("memory")["used_memory"])
        uvloop.run(fill(srv.url, n))
        uvloop.run(drain(srv.url))
        after = int(r.info("memory")["used_memory"])
        done = r.memory_usage("qr:{default}:done", samples=0) or 0
        log = r.memory_usage("qr:{default}:done:log", samples=0) or 0
        row = {
            "code": _commit(Path(qrunner.__file__).resolve().parent.parent),
            "n": n,
            "bytes_per_job": (after - before) / n,
            "keys": int(r.dbsize()),
            "done_hash_bytes_per_job": done / n,
            "done_log_bytes_per_job": log / n,
        }
        r.close()
    return row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default=",".join(str(n) for n in SIZES))
    parser.add_argument("--base", type=Path, help="a checkout to compare with (run first)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child's single size
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return 0
    rows: list[dict[str, Any]] = []
    for n in (int(x) for x in args.sizes.split(",")):
        if args.base:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BENCH), str(args.base)]))
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(n)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            rows.append({**json.loads(out.strip().splitlines()[-1]), "side": "base"})
        rows.append({**measure(n), "side": "this"})
        print(json.dumps(rows[-1]), flush=True)
    lines = [
        "# Redis memory per finished job (status records of first-try successes)",
        "",
        f"`benchmarks/done_memory.py{' --base DIR' if args.base else ''}` on "
        f"{os.cpu_count()} cores, Python {platform.python_version()}. Per size: a fresh "
        "private redis-server, N no-op jobs enqueued and drained by one burst worker; "
        "`used_memory` after the drain minus before the enqueue, over N.",
        "",
        "| side | code | finished jobs | bytes per finished job | keys left | "
        "done hash bytes/job | done log bytes/job |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['side']} | `{row['code']}` | {row['n']:,} | {row['bytes_per_job']:.1f} | "
            f"{row['keys']:,} | {row['done_hash_bytes_per_job']:.1f} | "
            f"{row['done_log_bytes_per_job']:.1f} |"
        )
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
