"""Awaited single enqueue against awaited XADD, in pairs run back to back: the suite's own
``enqueue-single`` step (``python -m peers raw|qrunner enqueue-single N``), alternated.

On a host whose speed moves by a quarter within minutes, a ratio of two medians taken minutes
apart says little; the ratio of each pair, raw and qrunner measured seconds apart, says more,
and the median of those ratios is the row. With ``--base DIR`` a third side runs between them:
qrunner as checked out in DIR (``git worktree add DIR REV``), for before/after comparisons of
a change to the client or the enqueue scripts. One private redis-server, persistence off,
flushed before every step.

``--step noop`` or ``--step redis`` pairs the suite's processing step instead (``process N
--body noop|redis``, one worker process at concurrency 100, timed from 30 % to 90 % of the
backlog done): the raw Streams loop against qrunner, and with ``--base`` a change to the
worker or the ack against the code before it.

    benchmarks/.venvs/qrunner/bin/python benchmarks/enqueue_pairs.py --pairs 15 --out FILE.md
    benchmarks/.venvs/qrunner/bin/python benchmarks/enqueue_pairs.py --step noop --n 40000 \
        --base ../before --out FILE.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import redis  # noqa: E402
from suite.report import median_range  # noqa: E402
from suite.server import RedisServer  # noqa: E402
from suite.steps import peers_step  # noqa: E402

#: --step: the suite's step and its arguments, and the report's title.
STEPS = {
    "enqueue": (("enqueue-single",), "Awaited single enqueue against awaited XADD"),
    "noop": (
        ("process", "--body", "noop", "--window", "0.3,0.9"),
        "No-op jobs processed, against the raw Streams loop",
    ),
    "redis": (
        ("process", "--body", "redis", "--window", "0.3,0.9"),
        "One-INCR jobs processed, against the raw Streams loop running the same body",
    ),
}


def step(url: str, peer: str, n: int, qrunner_root: Path, kind: str = "enqueue") -> float:
    """One step of the suite (see :data:`STEPS`); its jobs/s."""
    command, *options = STEPS[kind][0]
    result = peers_step(url, peer, command, str(n), *options, qrunner_root=qrunner_root)
    if "error" in result:
        raise SystemExit(f"{peer}: {result['error']}")
    return float(result["jobs_per_s"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--step", choices=sorted(STEPS), default="enqueue")
    parser.add_argument("--base", type=Path, help="another checkout of qrunner to run as well")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sides = [("raw", "raw", ROOT), ("qrunner", "qrunner", ROOT)]
    if args.base is not None:
        sides.insert(1, ("base", "qrunner", args.base.resolve()))
    load_before = os.getloadavg()[0]
    rates: dict[str, list[float]] = {label: [] for label, _, _ in sides}
    with tempfile.TemporaryDirectory() as folder, RedisServer(Path(folder)) as srv:
        r = redis.Redis.from_url(srv.url)
        version = r.info("server")["redis_version"]
        for pair in range(args.pairs):
            for label, peer, root in sides:
                r.flushall()
                rates[label].append(step(srv.url, peer, args.n, root, args.step))
            line = ", ".join(f"{label} {rates[label][-1]:,.0f}" for label, _, _ in sides)
            print(f"pair {pair + 1}: {line} jobs/s", flush=True)
        r.close()
    load_after = os.getloadavg()[0]
    lines = [
        f"# {STEPS[args.step][1]}, in pairs",
        "",
        f"`benchmarks/enqueue_pairs.py --step {args.step} --pairs {args.pairs} --n {args.n}"
        + (" --base DIR" if args.base else "")
        + f"` on {os.cpu_count()} cores, Python {platform.python_version()}, Redis {version} "
        f"(private, persistence off). Load average before / after: {load_before:.2f} / "
        f"{load_after:.2f}.",
        "",
        "| side | median jobs/s | min | max | each pair's ratio to raw: median (min to max) |",
        "|---|---|---|---|---|",
    ]
    for label, _, _ in sides:
        values = rates[label]
        ratios = [v / raw for v, raw in zip(values, rates["raw"], strict=True)]
        lines.append(
            f"| {label} | {statistics.median(values):,.0f} | {min(values):,.0f} | "
            f"{max(values):,.0f} | {median_range(ratios)} |"
        )
    if args.base is not None:
        ratios = [a / b for a, b in zip(rates["qrunner"], rates["base"], strict=True)]
        lines += ["", f"qrunner against base, each pair: {median_range(ratios)}."]
    lines += ["", "Each pair, jobs/s:", ""]
    lines += [
        f"- {i + 1}: " + ", ".join(f"{label} {rates[label][i]:,.0f}" for label, _, _ in sides)
        for i in range(args.pairs)
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
