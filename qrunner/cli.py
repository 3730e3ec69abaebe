"""``qrunner`` command line. Exit codes: 0 success, 2 bad usage or input, 1 runtime failure."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

import orjson

from .errors import (
    BackendUnavailable,
    ConfigError,
    EnqueueError,
    JobNotFound,
    QrunnerError,
    ServerFull,
)
from .settings import Settings, load_settings

log = logging.getLogger("qrunner")


class UsageError(Exception):
    """Bad command-line input (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"qrunner: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="qrunner", description="Job runtime on Redis Streams.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    w = sub.add_parser("worker", help="run a worker")
    w.add_argument(
        "--handlers", default="handlers", help="modules with a `registry`, comma-separated"
    )
    w.add_argument("--queues", help="queues to read, comma-separated, highest priority first")
    w.add_argument("--concurrency", type=int, help="jobs run at once (default 100)")
    w.add_argument("--burst", action="store_true", help="exit 0 once the queues are empty")
    w.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz, /api on this port")
    w.add_argument("--no-cron", action="store_true", help="do not run the schedules.yaml loop")
    w.add_argument(
        "--schedules", default="schedules.yaml", help="cron file (default schedules.yaml)"
    )
    w.add_argument("--weights", help="anti-starvation read weights, e.g. sms_critical=8,default=1")

    e = sub.add_parser("enqueue", help="enqueue jobs; prints one job id per line")
    e.add_argument("task", nargs="?", help="task name (omit with --file)")
    e.add_argument("--payload", help="JSON object")
    e.add_argument("--file", help='JSONL file: one {"task":..,"payload":..} per line')
    e.add_argument("--delay", type=float, help="seconds to wait before the job may run")
    e.add_argument("--key", help="idempotency key: a second enqueue with it returns the first id")
    e.add_argument("--queue", help="override the task's queue")
    e.add_argument("--handlers", default="handlers")

    s = sub.add_parser("status", help="a job's status as JSON")
    s.add_argument("job_id")

    st = sub.add_parser("stats", help="depth, pending, delayed and dead per queue")
    st.add_argument("--json", action="store_true")

    d = sub.add_parser("dlq", help="dead-letter streams")
    dsub = d.add_subparsers(dest="dlq_command", required=True, parser_class=_Parser)
    dl = dsub.add_parser("list")
    dl.add_argument("--queue")
    dl.add_argument("--task")
    dl.add_argument("--limit", type=int, default=50)
    dl.add_argument("--json", action="store_true")
    ds = dsub.add_parser("show")
    ds.add_argument("id", help="dead-letter entry id or job id")
    dr = dsub.add_parser("replay")
    dr.add_argument("id", nargs="?", help="one entry (dead-letter id or job id)")
    dr.add_argument("--all", action="store_true")
    dr.add_argument("--task")
    dr.add_argument("--queue")
    dr.add_argument("--rate", type=float, help="jobs per second at most")
    dp = dsub.add_parser("purge")
    dp.add_argument("--task")
    dp.add_argument("--queue")
    dp.add_argument("--yes", action="store_true", help="required: purging cannot be undone")

    sc = sub.add_parser("schedules", help="cron entries with their last and next fire")
    sc.add_argument("--file", default="schedules.yaml")
    sc.add_argument("--handlers", default="handlers")

    sub.add_parser("migrate", help="apply PostgreSQL migrations")
    dm = sub.add_parser("demo", help="worker + fake providers + a demo that enqueues work")
    dm.add_argument("--seconds", type=float, default=0, help="stop after this long (0: when done)")
    sv = sub.add_parser("servers", help="embedded Redis/PostgreSQL under ./.qrunner")
    sv.add_argument("action", choices=["start", "stop", "urls"])
    return p


def _setup_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    if settings.log_format == "json":
        fmt = '{"t":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}'
    else:
        fmt = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    # The twilio SDK logs every request at INFO, headers and account path included.
    logging.getLogger("twilio").setLevel(max(level, logging.WARNING))


def _run(coro: Coroutine[Any, Any, int], settings: Settings) -> int:
    if settings.uvloop:
        try:
            import uvloop

            return uvloop.run(coro)
        except ImportError:
            pass
    return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"qrunner: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings)
    handler = _COMMANDS[args.command]
    try:
        return _run(handler(args, settings), settings)
    except ServerFull as exc:  # not the input's fault: Redis is out of memory
        print(f"qrunner: {exc}", file=sys.stderr)
        return 1
    except (UsageError, ConfigError, EnqueueError) as exc:
        print(f"qrunner: {exc}", file=sys.stderr)
        return 2
    except JobNotFound as exc:
        print(f"qrunner: {exc}", file=sys.stderr)
        return 1
    except BackendUnavailable as exc:
        print(f"qrunner: {exc}", file=sys.stderr)
        return 1
    except QrunnerError as exc:
        print(f"qrunner: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# -- commands -------------------------------------------------------------------------------


async def _redis(settings: Settings) -> Any:
    from .runtime import connect_redis, redis_url

    return await connect_redis(redis_url(settings))


def _parse_json_object(text: str, where: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


async def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    from .queue import Client, JobSpec
    from .runtime import load_registry

    if bool(args.task) == bool(args.file):
        raise UsageError("give a TASK or --file, not both and not neither")
    registry = load_registry(args.handlers)
    specs: list[JobSpec] = []
    if args.file:
        specs = _read_jobs_file(Path(args.file), args)
    else:
        payload = _parse_json_object(args.payload, "--payload") if args.payload else {}
        specs = [JobSpec(args.task, payload, args.queue, args.delay, None, args.key)]
    redis = await _redis(settings)
    try:
        client = Client(
            redis,
            registry,
            max_payload_bytes=settings.max_payload_bytes,
            status_ttl_s=settings.status_ttl_s,
        )
        for s in specs:  # validate everything before writing anything
            client._prepare(s)
        chunk = 2000
        show = len(specs) > chunk
        out = sys.stdout
        for start in range(0, len(specs), chunk):
            ids = await client.enqueue_many(specs[start : start + chunk])
            out.write("".join(f"{i}\n" for i in ids))
            if show:
                done = min(start + chunk, len(specs))
                bar = "#" * (30 * done // len(specs))
                print(
                    f"\r[{bar:<30}] {done}/{len(specs)} enqueued",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        if show:
            print(file=sys.stderr)
    finally:
        await redis.aclose()
    return 0


def _read_jobs_file(path: Path, args: argparse.Namespace) -> list[Any]:
    from .queue import JobSpec

    if not path.exists():
        raise UsageError(f"{path}: no such file")
    specs = []
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            obj = _parse_json_object(line.decode("utf-8", "replace"), f"{path}:{n}")
            task = obj.get("task")
            if not isinstance(task, str):
                raise UsageError(f'{path}:{n}: needs a "task" string')
            payload = obj.get("payload") or {}
            if not isinstance(payload, dict):
                raise UsageError(f'{path}:{n}: "payload" must be a JSON object')
            specs.append(
                JobSpec(
                    task,
                    payload,
                    obj.get("queue") or args.queue,
                    obj.get("delay", args.delay),
                    None,
                    obj.get("key"),
                )
            )
    return specs


async def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from .queue import Client

    redis = await _redis(settings)
    try:
        st = await Client(redis).status(args.job_id)
    finally:
        await redis.aclose()
    print(orjson.dumps(st.to_dict(), option=orjson.OPT_INDENT_2).decode())
    return 0


async def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    from .queue import Client

    redis = await _redis(settings)
    try:
        rows = await Client(redis).stats()
    finally:
        await redis.aclose()
    if args.json:
        print(orjson.dumps([r.to_dict() for r in rows]).decode())
        return 0
    print(f"{'queue':<18}{'depth':>9}{'pending':>9}{'delayed':>9}{'dead':>7}{'consumers':>11}")
    for r in rows:
        print(f"{r.queue:<18}{r.depth:>9}{r.pending:>9}{r.delayed:>9}{r.dead:>7}{r.consumers:>11}")
    return 0


async def cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    from .deadletter import DeadLetters
    from .queue import Client

    redis = await _redis(settings)
    try:
        queues = (
            [args.queue] if getattr(args, "queue", None) else await Client(redis).known_queues()
        )
        dl = DeadLetters(redis, settings.status_ttl_s)
        action = args.dlq_command
        if action == "list":
            rows = await dl.list(queues, task=args.task, limit=args.limit)
            if args.json:
                print(orjson.dumps([r.to_dict() for r in rows]).decode())
            else:
                for r in rows:
                    jid = r.job.id if r.job else "-"
                    print(f"{r.dlq_id}  {r.queue:<16} {r.task:<32} {jid}  {r.reason}")
                sys.stdout.flush()
                print(f"{len(rows)} dead-lettered job(s) shown", file=sys.stderr)
            return 0
        if action == "show":
            found = await dl.find(queues, args.id)
            if found is None:
                print(f"qrunner: no dead-lettered job {args.id!r}", file=sys.stderr)
                return 1
            print(orjson.dumps(found.to_dict(full=True), option=orjson.OPT_INDENT_2).decode())
            return 0
        if action == "replay":
            if not (args.id or args.all or args.task):
                raise UsageError("dlq replay needs an ID, --task TASK or --all")
            replayed, skipped = await dl.replay(
                queues, task=args.task, ident=args.id, per_second=args.rate
            )
            print(
                f"replayed {replayed} job(s)"
                + (f"; {skipped} malformed entr(y/ies) left" if skipped else "")
            )
            return 0 if replayed or not args.id else 1
        if not args.yes:
            raise UsageError("dlq purge deletes dead-lettered jobs for good; add --yes")
        n = await dl.purge(queues, task=args.task)
        print(f"purged {n} dead-lettered job(s)")
        return 0
    finally:
        await redis.aclose()


async def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from .service import WorkerOptions, serve

    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    weights = None
    if args.weights:
        try:
            weights = {k: int(v) for k, v in (p.split("=") for p in args.weights.split(","))}
        except ValueError as exc:
            raise UsageError(f"--weights must look like q1=8,q2=1: {exc}") from exc
    opts = WorkerOptions(
        handlers=args.handlers,
        queues=args.queues.split(",") if args.queues else None,
        concurrency=args.concurrency,
        burst=args.burst,
        metrics_port=args.metrics_port,
        cron=not args.no_cron,
        schedules=Path(args.schedules),
        weights=weights,
    )
    return await serve(opts, settings)


async def cmd_schedules(args: argparse.Namespace, settings: Settings) -> int:
    from .service import print_schedules

    return await print_schedules(Path(args.file), args.handlers, settings)


async def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from .migrate import DEFAULT_MIGRATIONS_DIR, migrate
    from .runtime import database_url

    applied = await migrate(database_url(settings), DEFAULT_MIGRATIONS_DIR)
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


async def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    import importlib

    showcase = importlib.import_module("handlers.showcase")
    result: int = await showcase.run_demo(settings, seconds=args.seconds)
    return result


async def cmd_servers(args: argparse.Namespace, settings: Settings) -> int:
    from . import embedded
    from .runtime import redact_url

    if args.action == "stop":
        embedded.stop_all(settings.state_dir)
        print("stopped embedded servers")
        return 0
    r = embedded.ensure_redis(settings.state_dir)
    p = embedded.ensure_postgres(settings.state_dir)
    print(f"redis      {r}\npostgresql {redact_url(p)}")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]] = {
    "enqueue": cmd_enqueue,
    "status": cmd_status,
    "stats": cmd_stats,
    "dlq": cmd_dlq,
    "worker": cmd_worker,
    "schedules": cmd_schedules,
    "migrate": cmd_migrate,
    "demo": cmd_demo,
    "servers": cmd_servers,
}

if __name__ == "__main__":
    sys.exit(main())
