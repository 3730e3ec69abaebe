"""The adapters' command line: ``python -m peers <peer> <command> ...`` prints one JSON line."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

from peers.adapter import TASK_FOR_BODY, Adapter, forget_workers, loop_name, run_async
from peers.measure import (
    measure_delayed,
    measure_enqueue,
    measure_latency,
    measure_memory,
    measure_process,
)


def _window(text: str) -> tuple[float, float]:
    lo, hi = (float(x) for x in text.split(","))
    if not 0 <= lo < hi <= 1:
        raise argparse.ArgumentTypeError("want two fractions 0 <= LO < HI <= 1, e.g. 0.3,0.9")
    return lo, hi


def main(factory: Callable[[], Adapter], argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"python -m peers {argv[0] if argv else ''}")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info")
    for name in ("enqueue-single", "enqueue-bulk", "memory"):
        sub.add_parser(name).add_argument("n", type=int)
    pr = sub.add_parser("process")
    pr.add_argument("n", type=int)
    pr.add_argument("--body", choices=sorted(TASK_FOR_BODY), default="noop")
    pr.add_argument("--workers", type=int, default=1)
    pr.add_argument(
        "--window",
        type=_window,
        default=None,
        help="time only between these fractions of the backlog done, e.g. 0.3,0.9",
    )
    lat = sub.add_parser("latency")
    lat.add_argument("--rate", type=float, default=500)
    lat.add_argument("--seconds", type=float, default=10)
    dl = sub.add_parser("delayed", help="promotion of n due jobs from the delayed set")
    dl.add_argument("n", type=int)
    wk = sub.add_parser("worker", help="run one worker in the foreground (used by process/latency)")
    for sp in (pr, lat, wk, dl):
        sp.add_argument("--variant", default=None)
        sp.add_argument("--cap", type=float, default=300.0, help="seconds before giving up")
        sp.add_argument("--concurrency", type=int, default=None)
    args = p.parse_args(argv[1:])

    a = factory()
    variant = getattr(args, "variant", None) or next(iter(a.variants))
    if args.cmd == "worker":
        a.run_worker(variant, args.concurrency)
        return 0
    # The orchestrator sends SIGTERM on a time-out: unwind so every worker gets stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = _measure(a, args, variant)
    finally:
        forget_workers()
    print(json.dumps(result), flush=True)
    return 0


def _measure(a: Adapter, args: argparse.Namespace, variant: str) -> dict[str, Any]:
    if args.cmd == "info":
        return {
            "name": a.name,
            "version": a.version(),
            "bulk": a.bulk_label,
            "loop": loop_name() if a.asynchronous else "sync",
            "variants": {v: a.settings(v) for v in a.variants},
        }
    if args.cmd in ("enqueue-single", "enqueue-bulk"):
        return run_async(measure_enqueue(a, args.n, bulk=args.cmd == "enqueue-bulk"))
    if args.cmd == "memory":
        return run_async(measure_memory(a, args.n))
    if args.cmd == "process":
        return run_async(
            measure_process(
                a, args.n, args.body, variant, args.workers, args.concurrency, args.cap, args.window
            )
        )
    if args.cmd == "delayed":
        return run_async(measure_delayed(a, args.n, variant, args.cap))
    return run_async(measure_latency(a, args.rate, args.seconds, variant, args.cap))
