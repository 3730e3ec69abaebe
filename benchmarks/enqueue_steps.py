"""Where the client's time goes in one awaited ``Client.enqueue``: the same loop of single
enqueues, built up a step at a time, each step's client CPU and wall time per job.

Steps, each awaited one job at a time on uvloop against a private ``redis-server``:

- ``XADD``: a raw awaited ``XADD`` (no script, no client work);
- ``script, fixed``: qrunner's enqueue script called with ``redis.evalsha`` on an envelope made
  once (the call alone: no id drawn, no envelope built);
- ``prepare + script``: ``Client._prepare_parts`` (checks, id, envelope) then the same call;
- ``prepare + Script``: the same through ``Script.__call__`` and ``Client._call_for``;
- ``Client.enqueue``: the public call, with its retry and error translation;
- ``prepare alone``: ``_prepare_parts`` in a tight loop with no I/O between calls.

Steps rotate between rounds; medians of ``--rounds``. The gap between ``prepare alone`` and
what ``prepare`` adds between round trips is the cost of running that code cold, after the
system calls of each round trip.

    benchmarks/.venvs/qrunner/bin/python benchmarks/enqueue_steps.py --n 5000 --rounds 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from suite.report import emit  # noqa: E402
from sync_enqueue import registry, start_redis  # noqa: E402

from qrunner import Client, connect_redis  # noqa: E402

Step = Callable[[Any, Client, int], Awaitable[None]]


def _prepare(client: Client, i: int) -> tuple[str, list[str], list[Any]]:
    return client._prepare_parts(
        "noop", {"i": i}, None, None, None, None, None, None, None, None, None
    )


async def xadd(redis: Any, client: Client, n: int) -> None:
    for i in range(n):
        await redis.xadd("raw:stream", {"j": b'{"i":%d}' % i})


async def script_fixed(redis: Any, client: Client, n: int) -> None:
    sha = client._enqueue_now.sha
    envelope = _prepare(client, 0)[2][1]
    for i in range(n):
        await redis.evalsha(sha, 1, "qr:{bench}:stream", "1", f"x{i}", envelope)


async def prepare_script(redis: Any, client: Client, n: int) -> None:
    sha = client._enqueue_now.sha
    for i in range(n):
        _, _, args = _prepare(client, i)
        await redis.evalsha(sha, 1, "qr:{bench}:stream", "1", args[0], args[1])


async def prepare_script_object(redis: Any, client: Client, n: int) -> None:
    for i in range(n):
        queue, job_keys, args = _prepare(client, i)
        script, script_keys, argv = client._call_for(queue, [(job_keys, args)])
        await script(redis, script_keys, argv)


async def enqueue(redis: Any, client: Client, n: int) -> None:
    for i in range(n):
        await client.enqueue("noop", {"i": i})


async def prepare_alone(redis: Any, client: Client, n: int) -> None:
    for i in range(n):
        _prepare(client, i)


STEPS: dict[str, Step] = {
    "XADD": xadd,
    "script, fixed": script_fixed,
    "prepare + script": prepare_script,
    "prepare + Script": prepare_script_object,
    "Client.enqueue": enqueue,
    "prepare alone": prepare_alone,
}


async def _one(url: str, step: Step, n: int) -> tuple[float, float]:
    redis = await connect_redis(url)
    try:
        client = Client(redis, registry)
        await client.enqueue("noop", {"i": 0})  # queue registered, script loaded
        await step(redis, client, 50)
        await redis.flushall()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await step(redis, client, n)
        return (time.process_time() - cpu0) / n * 1e6, (time.perf_counter() - wall0) / n * 1e6
    finally:
        await redis.aclose()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    proc, url, _ = start_redis()
    load_before = os.getloadavg()
    cpu: dict[str, list[float]] = {name: [] for name in STEPS}
    wall: dict[str, list[float]] = {name: [] for name in STEPS}
    names = list(STEPS)
    try:
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                c, w = uvloop.run(_one(url, STEPS[name], args.n))
                cpu[name].append(c)
                wall[name].append(w)
    finally:
        proc.terminate()
        proc.wait()
    load_after = os.getloadavg()
    lines = [
        "# One awaited enqueue, step by step",
        "",
        f"`benchmarks/enqueue_steps.py --n {args.n} --rounds {args.rounds}` on "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, uvloop, one private "
        "redis-server. Per job: this process's CPU and the wall time, medians of the rounds "
        f"(min to max). Load average before / after: {load_before[0]:.2f} / "
        f"{load_after[0]:.2f}.",
        "",
        "| step | client CPU µs per job | wall µs per job |",
        "|---|---|---|",
    ]
    for name in names:
        lines.append(
            f"| {name} | {statistics.median(cpu[name]):.1f} ({min(cpu[name]):.1f} to "
            f"{max(cpu[name]):.1f}) | {statistics.median(wall[name]):.1f} "
            f"({min(wall[name]):.1f} to {max(wall[name]):.1f}) |"
        )
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
