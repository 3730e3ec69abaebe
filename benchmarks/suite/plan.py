"""What a run measures: sizes for quick and full mode, and the ordered list of steps.

A step is one adapter command run once, in its own process, against a freshly emptied Redis.
Repeats are the outer loop, so slow drift on a shared machine spreads over every peer instead
of landing on whichever peer happened to run last.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

#: Every peer the suite knows, in report order. ``raw`` is the redis-py ceiling, not a runtime.
PEERS = ("qrunner", "raw", "celery", "arq", "saq", "dramatiq", "taskiq", "rq", "huey")

#: Venv each peer's adapter runs in (``raw`` shares the harness venv's redis-py).
VENV = {peer: peer for peer in PEERS} | {"raw": "harness"}


@dataclass(frozen=True)
class Sizes:
    repeats: int
    enqueue_single_n: int
    enqueue_bulk_n: int
    process_n: int
    memory_n: int
    latency_s: float
    rate: float
    process_cap_s: float
    latency_cap_s: float
    #: Backlogs, delayed-set size and concurrencies of the scaling section.
    backlogs: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    delayed_n: int = 1_000_000
    concurrencies: tuple[int, ...] = (1, 10, 100, 1000)
    #: How the main table's processing rows are timed: ``--window`` arguments, or () for
    #: first finished job to last. The full run times every peer between 30 % and 90 % of the
    #: backlog done: timed from the first job, the raw loop's 20,000 no-op jobs took under a
    #: fifth of a second, much of it the worker warming up, and the rate moved with it.
    main_window: tuple[str, ...] = ()


#: The part of the backlog the worker-process rows are timed over (fractions done).
WORKERS_WINDOW = "0.3,0.9"

QUICK = Sizes(
    repeats=1,
    enqueue_single_n=2000,
    enqueue_bulk_n=10_000,
    process_n=2000,
    memory_n=5000,
    latency_s=1.0,
    rate=500,
    process_cap_s=5,
    latency_cap_s=4,
    backlogs=(10_000, 30_000, 100_000),
    delayed_n=100_000,
    concurrencies=(1, 10, 100, 1000),
)
FULL = Sizes(
    repeats=3,
    enqueue_single_n=10_000,
    enqueue_bulk_n=20_000,
    process_n=20_000,
    memory_n=10_000,
    latency_s=5,
    rate=500,
    process_cap_s=60,
    latency_cap_s=30,
    main_window=("--window", WORKERS_WINDOW),
)


@dataclass(frozen=True)
class Step:
    peer: str
    #: Worker variant, or None for measurements that do not start a worker.
    variant: str | None
    #: Result key, e.g. ``enqueue_single`` or ``scaling.backlog.100000``.
    metric: str
    args: tuple[str, ...]
    #: Seconds before the orchestrator kills the adapter (its own cap is shorter).
    timeout_s: float
    rep: int = 0
    section: str = "main"
    label: str = field(default="", compare=False)


def _prefill_s(n: int) -> float:
    """Generous time to enqueue a backlog of n with the slowest peer (about 1,500 jobs/s)."""
    return 30 + n / 1000


def main_steps(sizes: Sizes, peers: dict[str, list[str]]) -> list[Step]:
    """peers: name -> worker variants, as the adapters' ``info`` reported them.

    Within a repeat, qrunner and the raw loop take turns step by step (qrunner's no-op
    processing, then the raw loop's, and so on), so that each ratio to the raw loop compares
    two measurements taken seconds apart, not minutes: on a host whose speed moves by a
    quarter within minutes, the report's paired ratio is then the median of those pairs."""
    steps: list[Step] = []
    for rep in range(sizes.repeats):
        lists = {peer: _peer_steps(sizes, peer, variants, rep) for peer, variants in peers.items()}
        q, r = lists.get("qrunner"), lists.get("raw")
        if q is not None and r is not None and len(q) == len(r):
            lists["qrunner"] = [s for pair in zip(q, r, strict=True) for s in pair]
            del lists["raw"]
        for mine in lists.values():
            steps += mine
    return [replace(s, label=_label(s, sizes.repeats)) for s in steps]


def _peer_steps(sizes: Sizes, peer: str, variants: list[str], rep: int) -> list[Step]:
    steps = [
        Step(peer, None, metric, args, timeout_s, rep)
        for metric, args, timeout_s in (
            (
                "enqueue_single",
                ("enqueue-single", str(sizes.enqueue_single_n)),
                120 + sizes.enqueue_single_n / 200,
            ),
            (
                "enqueue_bulk",
                ("enqueue-bulk", str(sizes.enqueue_bulk_n)),
                120 + sizes.enqueue_bulk_n / 500,
            ),
            ("memory", ("memory", str(sizes.memory_n)), _prefill_s(sizes.memory_n)),
        )
    ]
    for variant in variants:
        for body in ("noop", "redis"):
            steps.append(
                _process(
                    peer,
                    variant,
                    f"process_{body}",
                    sizes.process_n,
                    body,
                    sizes.process_cap_s,
                    rep,
                    sizes.main_window,
                )
            )
        steps.append(
            Step(
                peer,
                variant,
                "latency",
                (
                    "latency",
                    "--rate",
                    str(sizes.rate),
                    "--seconds",
                    str(sizes.latency_s),
                    "--variant",
                    variant,
                    "--cap",
                    str(sizes.latency_cap_s),
                ),
                sizes.latency_s + 2 * sizes.latency_cap_s + 60,
                rep,
            )
        )
    return steps


def _process(
    peer: str,
    variant: str,
    metric: str,
    n: int,
    body: str,
    cap_s: float,
    rep: int,
    extra: tuple[str, ...] = (),
    section: str = "main",
) -> Step:
    args = ("process", str(n), "--body", body, "--variant", variant, "--cap", str(cap_s), *extra)
    return Step(peer, variant, metric, args, cap_s + _prefill_s(n), rep, section)


def scaling_steps(sizes: Sizes, peers: dict[str, list[str]]) -> list[Step]:
    """qrunner across backlog, delayed-set size, concurrency and processes; peers at 2 processes.

    The rows a target is read from (backlog throughput and bytes, one process against two) are
    repeated like the main section, repeats the outer loop, so the report can give medians and
    spreads; the rest run once.
    """
    steps: list[Step] = []
    for rep in range(sizes.repeats):
        steps += _repeated_scaling_steps(sizes, peers, rep)
    if "qrunner" in peers:
        q = peers["qrunner"][0]
        cap = max(sizes.process_cap_s, sizes.delayed_n / 1000)
        steps.append(
            Step(
                "qrunner",
                q,
                f"scaling.delayed.{sizes.delayed_n}",
                ("delayed", str(sizes.delayed_n), "--cap", str(cap)),
                cap + _prefill_s(sizes.delayed_n),
                0,
                "scaling",
            )
        )
        for c in sizes.concurrencies:
            for body in ("noop", "redis"):
                steps.append(
                    _process(
                        "qrunner",
                        q,
                        f"scaling.concurrency.{c}.{body}",
                        sizes.process_n,
                        body,
                        sizes.process_cap_s * 4,
                        0,
                        ("--concurrency", str(c)),
                        "scaling",
                    )
                )
    # The peers' own 2-process rows, once each (rq's alone run into the cap).
    for peer, variants in peers.items():
        if peer not in ("qrunner", "raw"):
            steps += _workers_steps(sizes, peer, variants[0], 2, 0)
    return [replace(s, label=_label(s, sizes.repeats)) for s in steps]


def _repeated_scaling_steps(sizes: Sizes, peers: dict[str, list[str]], rep: int) -> list[Step]:
    steps: list[Step] = []
    if "qrunner" in peers:
        q = peers["qrunner"][0]
        for n in sizes.backlogs:
            # Timed between 30 % and 90 % done, like the worker-process rows: a 10k backlog
            # drains in a fifth of a second, and timed from the first finished job its rate
            # was mostly the worker warming up (run13: 10k at 45.9k jobs/s, 100k at 54.8k).
            cap = max(sizes.process_cap_s, n / 1000)
            steps.append(
                _process(
                    "qrunner",
                    q,
                    f"scaling.backlog.{n}",
                    n,
                    "noop",
                    cap,
                    rep,
                    ("--window", WORKERS_WINDOW),
                    "scaling",
                )
            )
            steps.append(
                Step(
                    "qrunner",
                    None,
                    f"scaling.memory.{n}",
                    ("memory", str(n)),
                    _prefill_s(n),
                    rep,
                    "scaling",
                )
            )
    # Worker processes: twice the main backlog, timed between 30 % and 90 % of it done, so
    # that a second process still importing while the first drains does not count against it.
    # One process is measured the same way for qrunner and the raw loop, so that the report
    # can give the ratio; the peers' one-process rates are in the main section.
    for peer in ("qrunner", "raw"):
        if peer in peers:
            for count in (1, 2):
                steps += _workers_steps(sizes, peer, peers[peer][0], count, rep)
    return steps


def _workers_steps(sizes: Sizes, peer: str, variant: str, count: int, rep: int) -> list[Step]:
    return [
        _process(
            peer,
            variant,
            f"scaling.workers{count}.{body}",
            sizes.process_n * 2,
            body,
            sizes.process_cap_s * 2,
            rep,
            ("--workers", str(count), "--window", WORKERS_WINDOW),
            "scaling",
        )
        for body in ("noop", "redis")
    ]


def _label(s: Step, repeats: int) -> str:
    who = s.peer if s.variant is None else f"{s.peer}/{s.variant}"
    rep = f" ({s.rep + 1}/{repeats})" if repeats > 1 else ""
    return f"{who} {s.metric}{rep}"
