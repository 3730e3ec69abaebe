"""What one enqueue and one finish cost Redis: a plain XADD against qrunner's enqueue script,
and the steps in between, from the server's own accounting (INFO commandstats, ``usec_per_call``).

Each variant is called N times, one call per round trip, on a private redis-server with
persistence off (as in ``bin/bench``), statistics reset before each variant and the data
flushed. Variants, each adding one thing to the one before:

- ``XADD``: the raw loop's awaited enqueue (one stream entry, no script);
- ``return 1``: the fixed cost of a script call;
- ``whole prelude``: the body under ``pcall`` (so a failed command keeps its error code) with
  the whole shared prelude in front, as every script was sent before each carried only the
  prelude functions it calls;
- ``prelude``: the same as qrunner sends it now: only ``qr_error``, which the ``pcall`` needs;
- ``+ XADD``: the stream entry written from the script;
- ``+ HSET``: and the job's field in the live index (unpacked);
- ``enqueue_now``: the real script for one job due now (the id look-up, the entry, the packed
  index field), as a single ``Client.enqueue`` sends it; ``enqueue_now, whole prelude``: the
  same with the whole prelude, as before;
- ``enqueue_now x100``: the same script with 100 jobs in one call, per job (a bulk enqueue).

And what finishing a job costs, per job, in batches of 100 read and acked by one consumer (the
worker's own calls, through ``Consumer``): the raw loop's ``XREADGROUP`` + ``XACK``; qrunner's
read (a plain ``XREADGROUP``; a script before ``Consumer._read_one``); its ack script with
status records off (ack, delete the entry, drop it from the live index, keep an id marker)
and on (the default: a status record written per job). Then where the ack's time goes, with
status records on: the script cut short after each of its
steps (parsing the packed batch; the ownership check; XACK and the live index; the trim), and
the whole script. With ``--deep N``, the fetch and the whole ack again when N jobs are
queued, then also with N status records of finished jobs kept (as after a drain of N): does a
deep queue make a job cost Redis more?

    benchmarks/.venvs/qrunner/bin/python benchmarks/script_cost.py --n 20000 --out FILE.md
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from suite.server import RedisServer  # noqa: E402

from qrunner import connect_redis, keys  # noqa: E402
from qrunner.consumer import Completion, Consumer  # noqa: E402
from qrunner.job import Job, encode_envelope, new_job_id  # noqa: E402
from qrunner.scripts import (  # noqa: E402
    _BODY_HEAD,
    _BODY_TAIL,
    Script,
    _expand,
    _read,
    read_source,
    source_for,
)
from qrunner.settings import Settings  # noqa: E402

STREAM = keys.stream("bench")
LIVE = STREAM[: -len("stream")] + "live"


def variants() -> dict[str, str | None]:
    """Scripts that do more and more of what enqueue_now does; each but ``return 1`` is sent
    as every qrunner script is (the prelude, the body under pcall: ``source_for``)."""
    xadd = "local e = redis.call('XADD', KEYS[1], '*', 'j', ARGV[3])\n"
    return {
        "XADD": None,
        "return 1": "return 1",
        "whole prelude": _with_whole_prelude("return 1"),
        "prelude": source_for("return 1"),
        "+ XADD": source_for(xadd + "return {ARGV[2], 1}"),
        "+ HSET": source_for(
            xadd + f"redis.call('HSET', '{LIVE}', ARGV[2], e)\nreturn {{ARGV[2], 1}}"
        ),
        "enqueue_now, whole prelude": _with_whole_prelude(_expand(_read("enqueue_now"))),
        "enqueue_now": read_source("enqueue_now"),
    }


def _with_whole_prelude(body: str) -> str:
    """``body`` as every script was sent before: the whole prelude in front, under pcall."""
    return _read("_prelude") + "\n" + _BODY_HEAD + body + _BODY_TAIL


#: The ack script cut short after each of its steps (a ``return`` inserted before the line
#: that starts the next), to see what each step costs: (label, the line cut before).
ACK_STEPS = (
    ("ack: parse the batch", "-- Which entries this consumer owns"),
    ("+ ownership check (XPENDING)", "for i = 1, #owned, 500 do"),
    ("+ XACK, live index HDEL", "-- The trim bound"),
    ("+ trim (XTRIM MINID / XDEL)", "local head = '1\\t'"),
)


def ack_cut_before(line: str) -> Script:
    """The ack script, returning before ``line`` (see :data:`ACK_STEPS`)."""
    source = read_source("ack")
    if line not in source:
        raise SystemExit(f"script_cost: ack.lua no longer has the line {line!r}: update ACK_STEPS")
    at = source.index(line)
    script = Script("ack")
    script.source = source[:at] + "do return {} end\n" + source[at:]
    script.sha = hashlib.sha1(script.source.encode("utf-8")).hexdigest()
    return script


def measure(r: redis.Redis, name: str, source: str | None, n: int) -> dict[str, float]:
    """Server µs per call of the variant (the script's own time, inner commands included),
    and of each command it ran."""
    r.flushall()
    sha = r.script_load(source) if source is not None else ""
    r.config_resetstat()
    for i in range(n):
        job_id = new_job_id()
        env = encode_envelope(job_id, "noop", {"i": i}, None, 0)
        if source is None:
            r.xadd(STREAM, {"j": env})
        else:
            r.evalsha(sha, 1, STREAM, "1", job_id, env)
    stats = r.info("commandstats")
    outer = stats["cmdstat_xadd" if source is None else "cmdstat_evalsha"]
    inner = {
        k.removeprefix("cmdstat_"): v["usec_per_call"]
        for k, v in stats.items()
        if source is not None and k not in ("cmdstat_evalsha", "cmdstat_config|resetstat")
    }
    return {"per_call": outer["usec_per_call"], **inner}


def measure_bulk(r: redis.Redis, n: int, per_call: int = 100) -> float:
    """Server µs per job of enqueue_now with ``per_call`` jobs per call."""
    r.flushall()
    sha = r.script_load(read_source("enqueue_now"))
    r.config_resetstat()
    for start in range(0, n, per_call):
        argv: list[str | bytes] = ["1"]
        for i in range(start, min(n, start + per_call)):
            job_id = new_job_id()
            argv += [job_id, encode_envelope(job_id, "noop", {"i": i}, None, 0)]
        r.evalsha(sha, 1, STREAM, *argv)
    stats = r.info("commandstats")
    return float(stats["cmdstat_evalsha"]["usec"]) / n


def fill_read(r: redis.Redis, n: int, kept: int = 0) -> None:
    """``n`` jobs due now in the stream and the live index, and the consumer group; with
    ``kept``, that many status records of finished jobs already kept (keys with a TTL)."""
    r.flushall()
    for start in range(0, n, 50_000):
        pipe = r.pipeline(transaction=False)
        ids = [new_job_id() for _ in range(start, min(n, start + 50_000))]
        for i, job_id in enumerate(ids, start):
            pipe.xadd(STREAM, {"j": encode_envelope(job_id, "noop", {"i": i}, None, 0)})
        entries = pipe.execute()
        r.hset(LIVE, mapping=dict(zip(ids, entries, strict=True)))
    record = {"state": "succeeded", "task": "noop", "attempt": 1, "worker": "c0"}
    for start in range(0, kept, 50_000):
        pipe = r.pipeline(transaction=False)
        for _ in range(start, min(kept, start + 50_000)):
            key = keys.job_prefix("bench") + new_job_id()
            pipe.hset(key, mapping=record)
            pipe.pexpire(key, 86_400_000)
        pipe.execute()
    r.xgroup_create(STREAM, keys.GROUP, id="0")


def measure_finish(url: str, n: int, per_call: int = 100, deep: int = 0) -> dict[str, float]:
    """Server µs per job of reading and acking ``n`` jobs ``per_call`` at a time; with
    ``deep``, also the fetch and the whole ack when ``deep`` jobs are queued (stream and live
    index that deep) and ``deep`` status records of finished jobs are kept."""
    r = redis.Redis.from_url(url)
    out: dict[str, float] = {}
    fill_read(r, n)
    r.config_resetstat()
    for _ in range(0, n, per_call):
        got = r.xreadgroup(keys.GROUP, "c1", {STREAM: ">"}, count=per_call)
        r.xack(STREAM, keys.GROUP, *[entry_id for entry_id, _ in got[0][1]])
    stats = r.info("commandstats")
    out["XREADGROUP + XACK"] = (
        sum(float(stats[f"cmdstat_{c}"]["usec"]) for c in ("xreadgroup", "xack")) / n
    )

    async def scripts(
        ttl_ms: int, ack: Script | None = None, queued: int = n, kept: int = 0
    ) -> tuple[float, float]:
        fill_read(r, queued, kept)
        aio = await connect_redis(url)
        consumer = Consumer(aio, "c1", ["bench"])
        if ack is not None:
            consumer._ack = ack
        fetch_us = ack_us = 0.0
        try:
            for _ in range(0, n, per_call):
                r.config_resetstat()
                entries = await consumer.read_available(["bench"], per_call)
                fetch_us += float(r.info("commandstats")["cmdstat_xreadgroup"]["usec"])
                done = [
                    Completion(
                        e.entry_id,
                        Job.decode(e.body or b"", e.entry_id, "bench").id,
                        1,
                        b"",
                        "noop",
                        0,
                        0,
                    )
                    for e in entries
                ]
                r.config_resetstat()
                await consumer.ack("bench", done, ttl_ms)
                ack_us += float(r.info("commandstats")["cmdstat_evalsha"]["usec"])
        finally:
            await aio.aclose()
        return fetch_us / n, ack_us / n

    fetch_off, ack_off = asyncio.run(scripts(0))
    ttl_ms = Settings().status_ttl_s * 1000
    fetch_on, ack_on = asyncio.run(scripts(ttl_ms))
    out["fetch"] = (fetch_off + fetch_on) / 2
    out["ack, status records off"] = ack_off
    for label, line in ACK_STEPS:
        out[label] = asyncio.run(scripts(ttl_ms, ack_cut_before(line)))[1]
    out["+ status records (the whole ack, as the worker runs it)"] = ack_on
    if deep:
        fetch_deep, ack_deep = asyncio.run(scripts(ttl_ms, queued=deep))
        out[f"fetch, {deep:,} queued"] = fetch_deep
        out[f"whole ack, {deep:,} queued"] = ack_deep
        fetch_kept, ack_kept = asyncio.run(scripts(ttl_ms, queued=deep, kept=deep))
        out[f"fetch, {deep:,} queued and {deep:,} records kept"] = fetch_kept
        out[f"whole ack, {deep:,} queued and {deep:,} records kept"] = ack_kept
    r.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--deep",
        type=int,
        default=0,
        help="also finish the first N jobs of a queue this deep (0: skip)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    results: dict[str, list[dict[str, float]]] = {}
    bulk: list[float] = []
    finish: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder, RedisServer(Path(folder)) as srv:
        r = redis.Redis.from_url(srv.url)
        version = r.info("server")["redis_version"]
        for _ in range(args.repeats):
            for name, source in variants().items():
                results.setdefault(name, []).append(measure(r, name, source, args.n))
            bulk.append(measure_bulk(r, args.n))
            for name, value in measure_finish(srv.url, args.n, deep=args.deep).items():
                finish.setdefault(name, []).append(value)
        r.close()
    load_after = os.getloadavg()[0]

    def cell(values: list[float]) -> str:
        values = sorted(values)
        return f"{values[len(values) // 2]:.2f} ({values[0]:.2f} to {values[-1]:.2f})"

    lines = [
        "# What one enqueue and one finish cost Redis, step by step",
        "",
        f"`benchmarks/script_cost.py --n {args.n} --repeats {args.repeats}"
        + (f" --deep {args.deep}" if args.deep else "")
        + "` on "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, Redis {version} "
        "(private, persistence off). Server time from INFO commandstats: the call's "
        "`usec_per_call` (a script's includes its inner commands), median (min to max) of the "
        f"repeats. Load average before / after: {load_before:.2f} / {load_after:.2f}.",
        "",
        "| variant | µs per call | inner commands, µs per call (median) |",
        "|---|---|---|",
    ]
    for name, runs in results.items():
        inner_names = sorted({k for run in runs for k in run if k != "per_call"})
        inner = ", ".join(
            f"{k} {sorted(run.get(k, 0.0) for run in runs)[len(runs) // 2]:.2f}"
            for k in inner_names
        )
        lines.append(f"| {name} | {cell([run['per_call'] for run in runs])} | {inner} |")
    lines.append(f"| enqueue_now x100, per job | {cell(bulk)} | |")
    lines += [
        "",
        "Finishing a job: server µs per job, jobs read and acked 100 per call.",
        "",
        "| step | µs per job |",
        "|---|---|",
    ]
    lines += [f"| {name} | {cell(values)} |" for name, values in finish.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
