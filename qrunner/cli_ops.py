"""The operator commands of the CLI (workers, jobs, job, cancel, pause / resume, purge,
dlq delete, schedules fire / pause / resume, limits) over :mod:`qrunner.control`, and the
human tables every read command prints (``rich``: colour only on a terminal); ``--json`` prints
the same data as JSON for scripts."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from .errors import ConfigError, JobNotFound
from .settings import Settings

Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a table to stdout; plain (no colour, no width games) when it is not a terminal."""
    console = Console(file=sys.stdout, highlight=False)
    if not console.is_terminal:  # a pipe or a file: one line per row, never folded
        console = Console(file=sys.stdout, highlight=False, width=10_000, no_color=True)
    t = Table(title=title, show_edge=False, pad_edge=False, box=None, header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*["-" if v is None else str(v) for v in r])
    console.print(t)


def print_json(value: Any) -> None:
    print(orjson.dumps(value).decode())


def when(ms: int | None) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


def ago(ms: int | None, now_ms: int) -> str:
    if not ms:
        return "-"
    seconds = max(0, now_ms - ms) / 1000
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


def add_parsers(
    sub: Any,
    app_option: Callable[[argparse.ArgumentParser], None],
    queue_type: Callable[[str], str],
    id_type: Callable[[str], str],
    int_in: Callable[[int, int | None], Callable[[str], int]],
) -> None:
    w = sub.add_parser("workers", help="live workers: host, pid, queues, the jobs each runs")
    w.add_argument("--json", action="store_true")

    j = sub.add_parser("jobs", help="a queue's jobs by state, a page at a time")
    j.add_argument("--queue", type=queue_type, required=True)
    j.add_argument(
        "--state", choices=["queued", "running", "delayed", "scheduled"], default="queued"
    )
    j.add_argument("--offset", type=int_in(0, None), default=0)
    j.add_argument("--limit", type=int_in(1, 1000), default=50, help="1-1000 (default 50)")
    j.add_argument("--json", action="store_true")

    one = sub.add_parser("job", help="a job's status and every attempt of it")
    one.add_argument("job_id", type=id_type)
    one.add_argument("--json", action="store_true")

    c = sub.add_parser("cancel", help="cancel a job (queued, delayed or running)")
    c.add_argument("job_id", type=id_type)

    p = sub.add_parser("pause", help="stop workers reading a queue (in-flight jobs finish)")
    p.add_argument("queue", type=queue_type)
    r = sub.add_parser("resume", help="let workers read a paused queue again")
    r.add_argument("queue", type=queue_type)

    pg = sub.add_parser("purge", help="remove every job of a queue no worker has taken")
    pg.add_argument("queue", type=queue_type)
    pg.add_argument("--yes", action="store_true", help="required: purging cannot be undone")

    tk = sub.add_parser(
        "tasks", help="registered tasks: queue, retries, limits, payload schema; --example"
    )
    tk.add_argument("name", nargs="?", help="one task (with --example: a valid payload)")
    tk.add_argument("--example", action="store_true", help="print a valid example payload")
    tk.add_argument("--json", action="store_true")
    app_option(tk)

    lm = sub.add_parser("limits", help="rate limits: list, or set / reset one at run time")
    lm.add_argument("action", nargs="?", choices=["list", "set", "reset"], default="list")
    lm.add_argument("task", nargs="?")
    lm.add_argument("rate", nargs="?", help='e.g. "10/s" or "10/s,200/day"')
    lm.add_argument("--json", action="store_true")
    app_option(lm)


async def _redis(settings: Settings) -> Any:
    from .runtime import connect_redis, redis_url

    return await connect_redis(redis_url(settings))


def control_for(redis: Any, settings: Settings) -> Any:
    return _control(redis, settings)


def _control(redis: Any, settings: Settings) -> Any:
    from .control import Control

    return Control(redis, actor="cli", status_ttl_s=settings.status_ttl_s)


async def cmd_workers(args: argparse.Namespace, settings: Settings) -> int:
    redis = await _redis(settings)
    try:
        workers = await _control(redis, settings).workers()
        now_s, now_us = await redis.time()
    finally:
        await redis.aclose()
    if args.json:
        print_json([w.to_dict() for w in workers])
        return 0
    now = int(now_s) * 1000 + int(now_us) // 1000
    rows = []
    for w in workers:
        jobs = ", ".join(f"{r.task} {r.job_id} ({ago(r.started_ms, now)})" for r in w.running)
        rows.append(
            [
                w.name,
                w.host,
                w.pid,
                when(w.started_ms),
                ago(w.heartbeat_ms, now) + " ago",
                ",".join(w.queues),
                f"{len(w.running)}/{w.concurrency}",
                jobs or "-",
            ]
        )
    table(
        None, ["worker", "host", "pid", "started", "heartbeat", "queues", "busy", "running"], rows
    )
    print(f"{len(workers)} worker(s)", file=sys.stderr)
    return 0


async def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    redis = await _redis(settings)
    try:
        page = await _control(redis, settings).jobs(
            args.queue, args.state, offset=args.offset, limit=args.limit
        )
    finally:
        await redis.aclose()
    if args.json:
        print_json(page.to_dict())
        return 0
    at = {"running": "started", "queued": "not before"}.get(args.state, "due")
    table(
        None,
        ["id", "task", "attempt", "enqueued", at, "worker"],
        [
            [r.id, r.task, r.attempt, when(r.enqueued_ms), when(r.at_ms), r.worker]
            for r in page.rows
        ],
    )
    shown_to = page.offset + len(page.rows)
    print(
        f"{args.state} jobs {page.offset + 1 if page.rows else 0}-{shown_to} of {page.total} "
        f"in {args.queue}",
        file=sys.stderr,
    )
    return 0


async def cmd_job(args: argparse.Namespace, settings: Settings) -> int:
    from .queue import Client

    redis = await _redis(settings)
    try:
        status = await Client(redis).status(args.job_id)
        history = await _control(redis, settings).history(status.queue, args.job_id)
    finally:
        await redis.aclose()
    if args.json:
        print_json({**status.to_dict(), "attempts": [a.to_dict() for a in history]})
        return 0
    fields = [
        ("id", status.id),
        ("queue", status.queue),
        ("task", status.task),
        ("state", status.state),
        ("attempt", status.attempt),
        ("enqueued", when(status.enqueued_ms)),
        ("finished", when(status.finished_ms)),
        ("progress", status.progress),
        ("last error", status.last_error),
    ]
    table(None, ["field", "value"], [[k, v] for k, v in fields if v is not None])
    table(
        "attempts",
        ["attempt", "worker", "started", "ended", "outcome", "error"],
        [
            [a.attempt, a.worker, when(a.started_ms), when(a.ended_ms), a.outcome, a.error]
            for a in history
        ],
    )
    return 0


async def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from .queue import Client

    redis = await _redis(settings)
    try:
        status = await Client(redis).status(args.job_id)
        state = await _control(redis, settings).cancel(status.queue, status.id, status.state)
    finally:
        await redis.aclose()
    if state == status.state:
        print(f"{args.job_id}: already {state}; nothing to cancel")
        return 1
    print(f"{args.job_id}: {state}")
    return 0


async def cmd_pause(args: argparse.Namespace, settings: Settings) -> int:
    redis = await _redis(settings)
    try:
        changed = await _control(redis, settings).pause(args.queue)
    finally:
        await redis.aclose()
    print(f"{args.queue}: paused" + ("" if changed else " (already)"))
    return 0


async def cmd_resume(args: argparse.Namespace, settings: Settings) -> int:
    redis = await _redis(settings)
    try:
        changed = await _control(redis, settings).resume(args.queue)
    finally:
        await redis.aclose()
    print(f"{args.queue}: resumed" + ("" if changed else " (was not paused)"))
    return 0


async def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    if not args.yes:
        raise ConfigError(f"purge: removes every waiting job of {args.queue} for good; add --yes")
    redis = await _redis(settings)
    try:
        removed = await _control(redis, settings).purge(args.queue)
    finally:
        await redis.aclose()
    print(f"purged {removed} job(s) from {args.queue}")
    return 0


async def cmd_limits(args: argparse.Namespace, settings: Settings) -> int:
    from .runtime import load_registry
    from .service import app_modules

    registry = load_registry(app_modules(args.app, settings))
    declared = {t.name: ",".join(t.rate_limit.rates) for t in registry if t.rate_limit}
    if args.action in ("set", "reset"):
        if args.task is None:
            raise ConfigError(f"limits {args.action}: give a TASK")
        if args.task not in declared:
            known = ", ".join(sorted(declared)) or "(none)"
            raise ConfigError(
                f"TASK: {args.task!r} has no rate limit in code (tasks with one: {known})"
            )
        if args.action == "set" and not args.rate:
            raise ConfigError('limits set: give a RATE, e.g. "10/s" or "10/s,200/day"')
    redis = await _redis(settings)
    try:
        control = _control(redis, settings)
        if args.action == "set":
            await control.set_limit(args.task, [r.strip() for r in args.rate.split(",")])
            print(f"{args.task}: rate limit {args.rate} on every worker until reset")
            return 0
        if args.action == "reset":
            await control.reset_limit(args.task)
            print(f"{args.task}: rate limit back to the code's {declared[args.task]}")
            return 0
        rows = await control.limits(sorted(declared.items()))
    finally:
        await redis.aclose()
    if args.json:
        print_json([r.to_dict() for r in rows])
        return 0
    table(
        None,
        ["task", "in code", "override", "in force"],
        [[r.task, r.code, r.override, r.effective] for r in rows],
    )
    return 0


async def schedule_action(action: str, name: str, app: str, file: Any, settings: Settings) -> int:
    """``schedules fire|pause|resume NAME``."""
    from .queue import Client
    from .runtime import load_registry
    from .schedules import load_schedules
    from .service import app_modules

    registry = load_registry(app_modules(app, settings))
    path = file if file is not None else registry.schedules
    if path is None:
        raise ConfigError("--file: the application declares no schedules file; give one")
    entries = {e.name: e for e in load_schedules(path, known_tasks=set(registry.names))}
    entry = entries.get(name)
    if entry is None:
        raise ConfigError(f"NAME: no schedule {name!r} (schedules: {', '.join(sorted(entries))})")
    redis = await _redis(settings)
    try:
        control = _control(redis, settings)
        if action == "pause":
            await control.pause_schedule(name)
            print(f"{name}: paused (its slots are skipped until resumed)")
        elif action == "resume":
            await control.resume_schedule(name)
            print(f"{name}: resumed")
        else:
            client = Client(redis, registry, status_ttl_s=settings.status_ttl_s)
            job_id = await client.enqueue(entry.task, dict(entry.payload or {}), queue=entry.queue)
            await control.schedule_fired(name, job_id)
            print(job_id)
    finally:
        await redis.aclose()
    return 0


async def dlq_delete(redis: Any, settings: Settings, queues: Sequence[str], ident: str) -> int:
    from .deadletter import DeadLetters

    found = await DeadLetters(redis, settings.status_ttl_s).find(queues, ident)
    if found is None:
        raise JobNotFound(ident)
    await _control(redis, settings).delete_dead(found.queue, found.dlq_id)
    print(f"deleted dead-lettered {found.task} {found.job.id if found.job else found.dlq_id}")
    return 0


async def cmd_tasks(args: argparse.Namespace, settings: Settings) -> int:
    from .catalog import catalogue, describe, example
    from .runtime import load_registry
    from .service import app_modules

    registry = load_registry(app_modules(args.app, settings))
    if args.example:
        if not args.name:
            raise ConfigError("tasks --example: give the task's NAME")
        print_json(example(registry.get(args.name)))
        return 0
    rows = [describe(registry.get(args.name))] if args.name else catalogue(registry)
    if args.json or args.name:
        print_json(rows if not args.name else rows[0])
        return 0
    table(
        None,
        ["task", "queue", "retries", "backoff", "timeout", "rate limit", "payload fields"],
        [
            [
                r["name"],
                r["queue"],
                r["retries"]["max_retries"],
                f"{r['retries']['backoff_base_s']:g}s..{r['retries']['backoff_cap_s']:g}s",
                "-" if r["timeout_s"] is None else f"{r['timeout_s']:g}s",
                ",".join(r["rate_limit"]["rates"]) if r["rate_limit"] else "-",
                ", ".join(
                    f"{f}*" if f in r["payload_schema"].get("required", []) else f
                    for f in r["payload_schema"].get("properties", {})
                ),
            ]
            for r in rows
        ],
    )
    print(
        f"{len(rows)} task(s); * marks a required field; qrunner tasks NAME for the schema",
        file=sys.stderr,
    )
    return 0


COMMANDS: dict[str, Command] = {
    "tasks": cmd_tasks,
    "workers": cmd_workers,
    "jobs": cmd_jobs,
    "job": cmd_job,
    "cancel": cmd_cancel,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "purge": cmd_purge,
    "limits": cmd_limits,
}
