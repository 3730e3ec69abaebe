#!/usr/bin/env python3
"""Benchmark qrunner against Celery, arq, saq, dramatiq, taskiq, rq and huey on one Redis.

Normally started by ``bin/bench``, which builds the venvs first. Starts one redis-server for
the whole run, runs every step as a subprocess in the peer's venv (``python -m peers ...``),
and writes ``results/<date>.md``, ``.json`` and ``.png`` (``<date>-quick.*`` with --quick).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from suite import plan, report  # noqa: E402
from suite.progress import Progress  # noqa: E402
from suite.runner import Runner  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bin/bench",
        description=__doc__,
        epilog="bin/bench --setup-only builds the venvs and stops. See benchmarks/README.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="1 repeat, small N, short caps (< 3 min)")
    p.add_argument(
        "--scaling",
        action="store_true",
        help="add the scaling section (qrunner backlogs, delayed set, concurrency, "
        "2 worker processes for every peer)",
    )
    p.add_argument(
        "--peers",
        default=",".join(plan.PEERS),
        help="comma-separated subset of: " + ",".join(plan.PEERS),
    )
    p.add_argument("--repeats", type=int, help="override the number of repeats")
    p.add_argument("--n", type=int, help="override the processing backlog N")
    p.add_argument("--latency-seconds", type=float, help="override the latency run length")
    p.add_argument("--rate", type=float, help="override the latency enqueue rate (jobs/s)")
    p.add_argument("--cap", type=float, help="override the per-run processing cap (seconds)")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="results directory")
    p.add_argument("--venvs", type=Path, default=BENCH_DIR / ".venvs")
    return p.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> plan.Sizes:
    sizes = plan.QUICK if args.quick else plan.FULL
    overrides = {
        "repeats": args.repeats,
        "process_n": args.n,
        "latency_s": args.latency_seconds,
        "rate": args.rate,
        "process_cap_s": args.cap,
    }
    return replace(sizes, **{k: v for k, v in overrides.items() if v is not None})


def discover(runner: Runner, wanted: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Ask each adapter for its version and variants; a peer that cannot answer is left out."""
    info: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    for peer in wanted:
        if not runner.available(peer):
            unavailable[peer] = "venv missing (see benchmarks/.venvs/*.log)"
            continue
        res = runner.call(peer, ("info",), 120, f"info-{peer}")
        if "variants" in res:
            info[peer] = res
        else:
            why = str(res.get("unavailable") or res.get("error") or "no answer")
            unavailable[peer] = f"not yet available: {why}" if peer == "qrunner" else why
    return info, unavailable


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {system}"


def _note(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"{res['error']}"
    v = res.get("verified")
    if v not in (None, "exact", "drained"):
        return str(v)
    return ""


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Imported here so that --help works without the harness venv.
    from suite import chart
    from suite.server import RedisServer

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = sizes_from(args)
    wanted = [p for p in args.peers.split(",") if p]
    unknown = set(wanted) - set(plan.PEERS)
    if unknown:
        raise SystemExit(f"unknown peers: {', '.join(sorted(unknown))}")
    work = BENCH_DIR / ".work"
    started = time.monotonic()
    load_before = os.getloadavg()
    today = dt.date.today().isoformat()
    records: list[dict[str, Any]] = []
    with RedisServer(work / "redis") as server:
        runner = Runner(args.venvs, work, server.url)
        print(f"bench: redis-server {server.binary} on 127.0.0.1:{server.port}", file=sys.stderr)
        info, unavailable = discover(runner, wanted)
        for peer, why in unavailable.items():
            print(f"bench: leaving out {peer}: {why}", file=sys.stderr)
        variants = {p: list(m["variants"]) for p, m in info.items()}
        steps = plan.main_steps(sizes, variants)
        if args.scaling:
            steps += plan.scaling_steps(sizes, variants)
        progress = Progress(len(steps))
        try:
            for step in steps:
                progress.start(step.label)
                server.reset()
                res = runner.run(step)
                records.append(
                    {
                        "peer": step.peer,
                        "variant": step.variant,
                        "metric": step.metric,
                        "rep": step.rep,
                        "section": step.section,
                        "args": step.args,
                        "result": res,
                    }
                )
                note = _note(res)
                progress.finish(f"{step.label}: {note}" if note else "")
        finally:
            progress.close()
        redis_meta = server.info()
    duration = time.monotonic() - started
    stem = today + ("-quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    md = args.out / f"{stem}.md"
    meta = {
        "date": today,
        "quick": args.quick,
        "scaling": args.scaling,
        "command": "bin/bench " + shlex.join(argv) if argv else "bin/bench",
        "machine": machine(),
        "python": platform.python_version(),
        "redis": redis_meta,
        "duration": f"{duration / 60:.1f} min",
        "duration_s": duration,
        "load": {"before": list(load_before), "after": list(os.getloadavg())},
        "sizes": asdict(sizes),
    }
    png = md.with_suffix(".png")
    stats = report.aggregate(records)
    chart_ok = bool(info)
    if chart_ok:
        chart.draw(png, info, stats, f"qrunner vs peers, {today}{' (quick)' if args.quick else ''}")
    report.write(md, meta, info, unavailable, records, png.name if chart_ok else None)
    print(
        f"bench: wrote {os.path.relpath(md)} (+ .json, .png) in {duration / 60:.1f} min",
        file=sys.stderr,
    )
    print("\n".join(report.main_table(info, stats)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
