"""``qrunner`` command line. Exit codes: 0 success, 2 bad usage or input, 1 runtime failure."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

import orjson
from redis.exceptions import RedisError

from . import cli_ops
from .errors import (
    BackendUnavailable,
    ConfigError,
    EnqueueError,
    InvalidPayload,
    JobNotFound,
    PayloadTooLarge,
    QrunnerError,
    ServerFull,
    UnknownTask,
)
from .faults import classify
from .logs import setup_logging
from .names import (
    InvalidJobOption,
    check_delay,
    check_key,
    check_queue_name,
    parse_delay,
    shown,
)
from .settings import Settings, load_settings

log = logging.getLogger("qrunner")

#: Longest error line printed; longer messages are cut (a value echoed back cannot flood).
MAX_ERROR_CHARS = 2000


class UsageError(Exception):
    """Bad command-line input (exit 2). The message reads ``<field>: <reason>``."""


def _one_line(message: str) -> str:
    """``message`` on one line: control characters escaped, cut at :data:`MAX_ERROR_CHARS`."""
    if not message.isprintable():
        message = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)
    if len(message) > MAX_ERROR_CHARS:
        message = f"{message[:MAX_ERROR_CHARS]}... ({len(message)} characters)"
    return message


def _fail(message: str) -> None:
    print(f"qrunner: {_one_line(message)}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, "<field>: <reason>", like every other input error.
        if message.startswith("argument "):
            message = message[len("argument ") :]
        else:
            command = self.prog.removeprefix("qrunner").strip()
            hint = f"qrunner {command} --help" if command else "qrunner --help"
            message = f"{command or 'usage'}: {message} (see {hint})"
        _fail(message)
        self.exit(2)


# -- argument types: each refuses bad input with "<reason>" (argparse adds the option name) --


def _arg_error(exc: Exception) -> argparse.ArgumentTypeError:
    reason = exc.reason if isinstance(exc, InvalidJobOption) else str(exc)
    return argparse.ArgumentTypeError(reason)


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {shown(text)}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {shown(text)}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {shown(text)}")
    return value


def _delay(text: str) -> float:
    try:
        return parse_delay(text)
    except InvalidJobOption as exc:
        raise _arg_error(exc) from None


def _key(text: str) -> str:
    try:
        return check_key(text)
    except InvalidJobOption as exc:
        raise _arg_error(exc) from None


def _id(text: str) -> str:
    try:
        return check_key(text, "id")
    except InvalidJobOption as exc:
        raise _arg_error(exc) from None


def _task(text: str) -> str:
    try:
        return check_key(text, "TASK")
    except InvalidJobOption as exc:
        raise _arg_error(exc) from None


def _queue(text: str) -> str:
    try:
        return check_queue_name(text)
    except InvalidJobOption as exc:
        raise _arg_error(exc) from None


def _queue_list(text: str) -> list[str]:
    names = text.split(",")
    if "" in names:
        raise argparse.ArgumentTypeError(f"an empty name in {shown(text)}")
    for name in names:
        _queue(name)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"{', '.join(map(repr, twice))} listed twice")
    return names


def _weights(text: str) -> dict[str, int]:
    weights: dict[str, int] = {}
    for part in text.split(","):
        queue, sep, raw = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(
                f"must look like q1=8,q2=1; got {shown(part)} without '='"
            )
        _queue(queue)
        if queue in weights:
            raise argparse.ArgumentTypeError(f"{queue!r} given twice")
        try:
            weights[queue] = _int_in(1)(raw)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"weight of {queue!r} {exc}") from None
    return weights


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="qrunner",
        description="Job runtime on Redis Streams.",
        epilog="An application adds commands of its own: qrunner --app MODULE COMMAND ARGS "
        "(with QRUNNER_APP set, just qrunner COMMAND ARGS).",
    )
    p.add_argument("--version", action="version", version=f"qrunner {_version()}")
    p.add_argument("--app", default="", help=APP_HELP)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    w = sub.add_parser("worker", help="run a worker")
    _app_option(w)
    w.add_argument(
        "--queues",
        type=_queue_list,
        help="queues to read, comma-separated, highest priority first",
    )
    w.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 2) --queues that no registered task uses, instead of warning",
    )
    w.add_argument("--concurrency", type=_int_in(1), help="jobs run at once (default 100)")
    w.add_argument("--burst", action="store_true", help="exit 0 once the queues are empty")
    w.add_argument(
        "--processes",
        type=_int_in(1, 256),
        default=1,
        help="run N worker processes under one supervisor (default 1); --metrics-port P "
        "gives process i the port P+i",
    )
    w.add_argument(
        "--metrics-port",
        type=_int_in(1, 65535),
        help="serve /metrics, /healthz, /api on this port (1-65535)",
    )
    w.add_argument("--no-cron", action="store_true", help="do not run the cron loop")
    w.add_argument("--schedules", help="cron file (default: the application's own, if any)")
    w.add_argument(
        "--weights",
        type=_weights,
        help="anti-starvation read weights, e.g. critical=8,default=1",
    )

    e = sub.add_parser("enqueue", help="enqueue jobs; prints one job id per line")
    e.add_argument("task", nargs="?", type=_task, help="task name (omit with --file)")
    e.add_argument("--payload", help="JSON object")
    e.add_argument(
        "--file",
        help='JSONL file, UTF-8: one {"task":..,"payload":..,"queue":..,"delay":..,"key":..} '
        "per line",
    )
    e.add_argument(
        "--delay", type=_delay, help="seconds to wait before the job may run (0 to 366 days)"
    )
    e.add_argument(
        "--key",
        type=_key,
        help="idempotency key (printable, at most 200 bytes): a second enqueue with it returns "
        "the first id",
    )
    e.add_argument("--queue", type=_queue, help="override the task's queue")
    _app_option(e)

    s = sub.add_parser("status", help="a job's status as JSON")
    s.add_argument("job_id", type=_id)

    st = sub.add_parser("stats", help="depth, pending, delayed and dead per queue")
    st.add_argument("--json", action="store_true")

    d = sub.add_parser("dlq", help="dead-letter streams")
    dsub = d.add_subparsers(dest="dlq_command", required=True, parser_class=_Parser)
    dl = dsub.add_parser("list")
    dl.add_argument("--queue")
    dl.add_argument("--task")
    dl.add_argument("--limit", type=_int_in(1), default=50, help="at most this many (from 1)")
    dl.add_argument("--json", action="store_true")
    ds = dsub.add_parser("show")
    ds.add_argument("id", type=_id, help="dead-letter entry id or job id")
    dr = dsub.add_parser("replay")
    dr.add_argument("id", nargs="?", type=_id, help="one entry (dead-letter id or job id)")
    dr.add_argument("--all", action="store_true")
    dr.add_argument("--task")
    dr.add_argument("--queue")
    dr.add_argument("--rate", type=_positive_float, help="jobs per second at most (above 0)")
    dp = dsub.add_parser("purge")
    dp.add_argument("--task")
    dp.add_argument("--queue")
    dp.add_argument("--yes", action="store_true", help="required: purging cannot be undone")
    dd = dsub.add_parser("delete", help="delete one dead-lettered job for good")
    dd.add_argument("id", type=_id, help="dead-letter entry id or job id")

    h = sub.add_parser(
        "http", help="serve the HTTP endpoint (API, metrics, the app's routes) without a worker"
    )
    h.add_argument("--port", type=_int_in(1, 65535), required=True, help="1-65535")
    _app_option(h)

    db = sub.add_parser("dashboard", help="serve the web dashboard alone, at /dashboard/")
    db.add_argument("--port", type=_int_in(1, 65535), required=True, help="1-65535")
    _app_option(db)

    sc = sub.add_parser(
        "schedules", help="cron entries with their last and next fire; fire, pause or resume one"
    )
    sc.add_argument(
        "action", nargs="?", choices=["list", "fire", "pause", "resume"], default="list"
    )
    sc.add_argument("name", nargs="?", help="the schedule (for fire, pause, resume)")
    sc.add_argument("--file", help="cron file (default: the application's own)")
    sc.add_argument("--json", action="store_true")
    _app_option(sc)
    cli_ops.add_parsers(sub, _app_option, _queue, _id, _int_in)
    return p


APP_HELP = "modules with a `registry`, comma-separated (default: QRUNNER_APP)"


def _app_option(parser: argparse.ArgumentParser) -> None:
    # --handlers is the older name, kept working.
    parser.add_argument("--app", "--handlers", dest="sub_app", default="", help=APP_HELP)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qrunner")
    except PackageNotFoundError:
        return "unknown"


#: Commands of the runtime itself; any other word names a command of the application.
BUILTIN_COMMANDS = (
    "worker",
    "enqueue",
    "status",
    "stats",
    "dlq",
    "schedules",
    "http",
    "dashboard",
    *cli_ops.COMMANDS,
)


def _app_command(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """``(app, command, args)`` when ``argv`` names an application command, else ``None``.
    Only a leading ``--app M`` may come before the command's name."""
    app = ""
    rest = list(argv)
    if rest[:1] == ["--app"] and len(rest) >= 2:
        app, rest = rest[1], rest[2:]
    elif rest and rest[0].startswith("--app="):
        app, rest = rest[0].split("=", 1)[1], rest[1:]
    if not rest or rest[0].startswith("-") or rest[0] in BUILTIN_COMMANDS:
        return None
    return app, rest[0], rest[1:]


async def run_app_command(app: str, name: str, args: list[str], settings: Settings) -> int:
    """Run the command ``name`` that the application's registry declares."""
    import inspect

    from .runtime import load_registry
    from .service import app_modules

    modules = app_modules(app, settings)
    registry = load_registry(modules)
    spec = registry.commands.get(name)
    if spec is None:
        known = ", ".join([*BUILTIN_COMMANDS, *sorted(registry.commands)])
        raise UsageError(f"usage: no command {shown(name)} (commands: {known})")
    result = spec.fn(args, settings)
    if inspect.isawaitable(result):
        result = await result
    return int(result)


def _setup_logging(settings: Settings) -> None:
    setup_logging(settings.log_level, settings.log_format)


def _run(coro: Coroutine[Any, Any, int], settings: Settings) -> int:
    if settings.uvloop:
        try:
            import uvloop

            return uvloop.run(coro)
        except ImportError:
            pass
    return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad usage or input exits 2 with one line ``qrunner: <field>: <reason>``
    on stderr and nothing written; a runtime failure (Redis down, job not found) exits 1."""
    argv = sys.argv[1:] if argv is None else argv
    app_command = _app_command(argv)
    args = None if app_command is not None else build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc))
        return 2
    _setup_logging(settings)
    try:
        if app_command is not None:
            return _run(run_app_command(*app_command, settings), settings)
        assert args is not None
        args.app = getattr(args, "sub_app", "") or args.app
        args.raw_argv = argv
        handler = _COMMANDS[args.command]
        return _run(handler(args, settings), settings)
    except ServerFull as exc:  # not the input's fault: Redis is out of memory
        _fail(str(exc))
        return 1
    except (UsageError, ConfigError, EnqueueError) as exc:
        _fail(str(exc))
        return 2
    except (JobNotFound, BackendUnavailable, QrunnerError) as exc:
        _fail(str(exc))
        return 1
    except RedisError as exc:  # a reply no command above turned into a qrunner error
        fault = classify(exc)
        _fail(str(fault) if fault is not None else f"Redis refused a command: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


# -- commands -------------------------------------------------------------------------------


async def _redis(settings: Settings) -> Any:
    from .runtime import connect_redis, redis_url

    return await connect_redis(redis_url(settings))


def _parse_json_object(text: str | bytes, where: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise UsageError(f"{where}: must be a JSON object, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


#: The fields of one line of an ``enqueue --file`` JSONL file.
JOB_LINE_FIELDS = ("task", "payload", "queue", "delay", "key")


def parse_job_line(line: bytes, where: str) -> dict[str, Any]:
    """One JSONL line as the JobSpec fields it gives (``task``, ``payload`` and those of
    ``queue``, ``delay``, ``key`` present and not null); raises :class:`UsageError` naming
    ``where`` and the field."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{where}: not valid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
        ) from None
    obj = _parse_json_object(text, where)
    unknown = sorted(set(obj) - set(JOB_LINE_FIELDS))
    if unknown:
        raise UsageError(
            f"{where}: unknown field {shown(unknown[0])}; known: {', '.join(JOB_LINE_FIELDS)}"
        )
    task = obj.get("task")
    if not isinstance(task, str):
        got = "missing" if "task" not in obj else f"got {_json_type(task)}"
        raise UsageError(f'{where}: task: needs a "task" string ({got})')
    out: dict[str, Any] = {"task": task, "payload": {}}
    payload = obj.get("payload")
    if payload is not None:
        if not isinstance(payload, dict):
            raise UsageError(f"{where}: payload: must be a JSON object, got {_json_type(payload)}")
        out["payload"] = payload
    for name in ("queue", "key"):
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            raise UsageError(f"{where}: {name}: must be a string, got {_json_type(value)}")
    delay = obj.get("delay")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)):
        got = f"{_json_type(delay)} {shown(delay)}" if isinstance(delay, str) else _json_type(delay)
        raise UsageError(f"{where}: delay: must be a number of seconds, got {got}")
    try:
        check_key(task, "task")
        if obj.get("queue") is not None:
            out["queue"] = check_queue_name(obj["queue"])
        if delay is not None:
            out["delay"] = check_delay(delay, "delay")
        if obj.get("key") is not None:
            out["key"] = check_key(obj["key"])
    except InvalidJobOption as exc:
        raise UsageError(f"{where}: {exc}") from None
    return out


async def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    from .queue import Client, JobSpec
    from .runtime import load_registry

    if bool(args.task) == bool(args.file):
        raise UsageError("TASK: give a TASK or --file, not both and not neither")
    if args.file and (args.payload is not None or args.key is not None):
        option = "--payload" if args.payload is not None else "--key"
        raise UsageError(f"{option}: applies to a single TASK; with --file give it per line")
    from .service import app_modules

    registry = load_registry(app_modules(args.app, settings))
    jobs: list[tuple[str, JobSpec]] = []
    if args.file:
        jobs = _read_jobs_file(Path(args.file), args)
    else:
        payload = _parse_json_object(args.payload, "--payload") if args.payload else {}
        jobs = [("", JobSpec(args.task, payload, args.queue, args.delay, None, args.key))]
    redis = await _redis(settings)
    try:
        client = Client(
            redis,
            registry,
            max_payload_bytes=settings.max_payload_bytes,
            status_ttl_s=settings.status_ttl_s,
        )
        for where, spec in jobs:  # validate everything before writing anything
            try:
                client._prepare(spec)
            except EnqueueError as exc:
                raise UsageError(_enqueue_refusal(exc, where)) from exc
        specs = [spec for _, spec in jobs]
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


def _enqueue_refusal(exc: EnqueueError, where: str) -> str:
    """``<field>: <reason>`` for a job refused by the client: ``where`` is ``path:line`` for a
    line of a file (fields as the file names them), empty for the command line (options)."""
    if isinstance(exc, InvalidJobOption):
        field, reason = exc.field, exc.reason
    elif isinstance(exc, UnknownTask):
        field, reason = "task", str(exc)
    elif isinstance(exc, InvalidPayload | PayloadTooLarge):
        field, reason = "payload", str(exc)
    else:
        field, reason = "job", str(exc)
    if where:
        return f"{where}: {field.replace('delay_s', 'delay')}: {reason}"
    options = {"task": "TASK", "payload": "--payload", "delay_s": "--delay", "at": "--delay"}
    return f"{options.get(field, '--' + field)}: {reason}"


def _read_jobs_file(path: Path, args: argparse.Namespace) -> list[tuple[str, Any]]:
    """Every job of a JSONL file as (``path:line``, JobSpec), each line checked; the file's
    ``--queue`` and ``--delay`` apply to lines that give none."""
    from .queue import JobSpec

    jobs: list[tuple[str, Any]] = []
    try:
        with path.open("rb") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}:{n}"
                f = parse_job_line(line, where)
                spec = JobSpec(
                    f["task"],
                    f["payload"],
                    f.get("queue", args.queue),
                    f.get("delay", args.delay),
                    None,
                    f.get("key"),
                )
                jobs.append((where, spec))
    except FileNotFoundError:
        raise UsageError(f"--file: {path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"--file: {path}: cannot read it: {exc.strerror or exc}") from None
    if not jobs:
        raise UsageError(f"--file: {path}: no jobs in it (empty, or blank lines only)")
    return jobs


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
        if r.problem is not None:
            print(f"{r.queue:<18}  cannot be read: {r.problem}")
            continue
        print(f"{r.queue:<18}{r.depth:>9}{r.pending:>9}{r.delayed:>9}{r.dead:>7}{r.consumers:>11}")
    return 1 if any(r.problem for r in rows) else 0


async def cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    from .deadletter import DeadLetters
    from .queue import Client

    redis = await _redis(settings)
    try:
        queues = await Client(redis).known_queues()
        if getattr(args, "queue", None) is not None:
            if args.queue not in queues:
                raise UsageError(
                    f"--queue: no queue {shown(args.queue)}; known queues: "
                    + (", ".join(queues) or "(none)")
                )
            queues = [args.queue]
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
        if action == "delete":
            return await cli_ops.dlq_delete(redis, settings, queues, args.id)
        if action == "show":
            found = await dl.find(queues, args.id)
            if found is None:
                print(f"qrunner: no dead-lettered job {args.id!r}", file=sys.stderr)
                return 1
            print(orjson.dumps(found.to_dict(full=True), option=orjson.OPT_INDENT_2).decode())
            return 0
        if action == "replay":
            if not (args.id or args.all or args.task):
                raise UsageError("dlq replay: needs an ID, --task TASK or --all")
            replayed, skipped = await dl.replay(
                queues, task=args.task, ident=args.id, per_second=args.rate
            )
            target = args.id or (f"task {args.task}" if args.task else "all")
            await cli_ops.control_for(redis, settings).record(
                "dlq-replay", target, f"{replayed} job(s)"
            )
            print(
                f"replayed {replayed} job(s)"
                + (f"; {skipped} malformed entr(y/ies) left" if skipped else "")
            )
            return 0 if replayed or not args.id else 1
        if not args.yes:
            raise UsageError("dlq purge: deletes dead-lettered jobs for good; add --yes")
        n = await dl.purge(queues, task=args.task)
        await cli_ops.control_for(redis, settings).record(
            "dlq-purge", f"task {args.task}" if args.task else "all", f"{n} job(s)"
        )
        print(f"purged {n} dead-lettered job(s)")
        return 0
    finally:
        await redis.aclose()


async def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from .service import WorkerOptions, serve

    if args.processes > 1:
        from .processes import supervise

        return await supervise(args.raw_argv, args.processes, args.metrics_port)
    opts = WorkerOptions(
        app=args.app,
        queues=args.queues,
        concurrency=args.concurrency,
        burst=args.burst,
        metrics_port=args.metrics_port,
        cron=not args.no_cron,
        schedules=None if args.schedules is None else Path(args.schedules),
        weights=args.weights,
        strict=args.strict,
    )
    return await serve(opts, settings)


async def cmd_http(args: argparse.Namespace, settings: Settings) -> int:
    from .service import serve_endpoint

    return await serve_endpoint(args.app, args.port, settings)


async def cmd_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from .dashboard.standalone import serve_dashboard

    return await serve_dashboard(args.app, args.port, settings)


async def cmd_schedules(args: argparse.Namespace, settings: Settings) -> int:
    from .service import print_schedules

    path = None if args.file is None else Path(args.file)
    if args.action != "list":
        if not args.name:
            raise UsageError(f"schedules {args.action}: give the schedule's NAME")
        return await cli_ops.schedule_action(args.action, args.name, args.app, path, settings)
    return await print_schedules(path, args.app, settings, as_json=args.json)


_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]] = {
    "enqueue": cmd_enqueue,
    "status": cmd_status,
    "stats": cmd_stats,
    "dlq": cmd_dlq,
    "worker": cmd_worker,
    "schedules": cmd_schedules,
    "http": cmd_http,
    "dashboard": cmd_dashboard,
    **cli_ops.COMMANDS,
}

if __name__ == "__main__":
    sys.exit(main())
