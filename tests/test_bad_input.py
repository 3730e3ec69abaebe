"""Bad input gets a clear refusal: the command line exits 2 with one line
``qrunner: <field>: <reason>`` and writes nothing; the client raises an ``EnqueueError``
subclass naming the field; the worker dead-letters entries that are oversized or malformed
however they reached Redis; metric labels and logged error text cannot carry what a producer
or a provider put in them.

Each case here is one row of the "Bad input" table in docs/security.md.

This module also declares a small ``registry`` so that worker processes can run its tasks
(``--handlers tests.test_bad_input``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from qrunner import Client, Context, EnqueueError, Registry, keys
from qrunner.cli import main
from qrunner.consumer import Consumer
from qrunner.deadletter import DeadLetters
from qrunner.errors import ConfigError, InvalidPayload
from qrunner.job import Job
from qrunner.logs import JsonFormatter
from qrunner.metrics import MAX_TASK_LABELS, Metrics
from qrunner.names import InvalidDelay, InvalidKey, InvalidQueueName
from qrunner.queue import JobSpec
from qrunner.redact import mask
from qrunner.settings import load_settings
from qrunner.worker import Worker
from tests.helpers import core_tasks
from tests.worker_fixtures import FAST

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = "tests.helpers.core_tasks"
PHONE = "+14155550123"
EMAIL = "jane.doe@example.com"
TOKEN = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
#: What a provider's error might echo back: quotes, a newline, a phone, an email, a key.
LEAK = f'carrier said "no":\nnumber {PHONE} ({EMAIL}) refused for key {TOKEN}'

registry = Registry()


@registry.task(queue="default", max_retries=1, backoff_base_s=0.01, backoff_cap_s=0.02)
async def leaky(ctx: Context[Any], payload: dict[str, Any]) -> None:
    raise ValueError(LEAK)


# -- the command line ----------------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str) -> Any:
    """Runs ``qrunner.cli.main`` in this process against the test's Redis."""

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        for var in list(os.environ):
            if var.startswith("QRUNNER_"):
                monkeypatch.delenv(var)
        monkeypatch.setenv("QRUNNER_REDIS_URL", redis_url)
        monkeypatch.setenv("QRUNNER_LOG_LEVEL", "WARNING")
        for var, value in (env or {}).items():
            monkeypatch.setenv(var, value)
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def refused(result: Result, expected: str) -> str:
    """The one error line, checked: exit 2, nothing on stdout, no traceback."""
    assert result.code == 2, result
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("qrunner: "), result.err
    assert expected in lines[0], lines[0]
    assert len(lines[0]) < 600  # a 10 KB value is not echoed back
    return lines[0]


def nothing_written(redis_url: str) -> None:
    client = SyncRedis.from_url(redis_url)
    try:
        assert client.dbsize() == 0, client.keys("*")
    finally:
        client.close()


TEN_KB = "a" * 10_000
ENQUEUE_GREET = ("enqueue", "greet", "--payload", '{"name": "ada"}', "--handlers", HANDLERS)
GOOD_LINE = b'{"task": "greet", "payload": {"name": "ada"}}\n'

#: (case, argv, environment, JSONL file contents or None, expected text of the error line)
CLI_CASES: list[tuple[str, tuple[str, ...], dict[str, str], bytes | None, str]] = [
    (
        "file-not-utf8",
        (),
        {},
        GOOD_LINE + b'{"task": "greet", "payload": {"name": "ad\xff"}}\n',
        "jobs.jsonl:2: not valid UTF-8 (byte 0xff at column 42)",
    ),
    (
        "file-delay-soon",
        (),
        {},
        b'{"task": "greet", "payload": {"name": "ada"}, "delay": "soon"}\n',
        "jobs.jsonl:1: delay: must be a number of seconds, got string 'soon'",
    ),
    (
        "file-key-object",
        (),
        {},
        b'{"task": "greet", "payload": {"name": "ada"}, "key": {"k": 1}}\n',
        "jobs.jsonl:1: key: must be a string, got object",
    ),
    (
        "file-queue-number",
        (),
        {},
        b'{"task": "greet", "payload": {"name": "ada"}, "queue": 7}\n',
        "jobs.jsonl:1: queue: must be a string, got number",
    ),
    (
        "file-queue-braces",
        (),
        {},
        GOOD_LINE + b'{"task": "greet", "payload": {"name": "ada"}, "queue": "{evil}"}\n',
        "jobs.jsonl:2: queue: '{evil}' is not a valid queue name",
    ),
    (
        "file-unknown-field",
        (),
        {},
        b'{"task": "greet", "paylod": {"name": "ada"}}\n',
        "jobs.jsonl:1: unknown field 'paylod'; known: task, payload, queue, delay, key",
    ),
    ("file-empty", (), {}, b"", "jobs.jsonl: no jobs in it"),
    ("file-blank", (), {}, b"\n  \n", "jobs.jsonl: no jobs in it"),
    (
        "file-payload-option",
        ("--payload", "{}"),
        {},
        GOOD_LINE,
        "--payload: applies to a single TASK; with --file give it per line",
    ),
    (
        "file-unknown-task",
        (),
        {},
        GOOD_LINE + b'{"task": "gret"}\n',
        "jobs.jsonl:2: task: unknown task 'gret'; known tasks:",
    ),
    (
        "delay-nan",
        (*ENQUEUE_GREET, "--delay", "nan"),
        {},
        None,
        "qrunner: --delay: must be a finite number of seconds, got nan",
    ),
    (
        "delay-inf",
        (*ENQUEUE_GREET, "--delay", "inf"),
        {},
        None,
        "qrunner: --delay: must be a finite number of seconds, got inf",
    ),
    (
        "delay-1e20",
        (*ENQUEUE_GREET, "--delay", "1e20"),
        {},
        None,
        "qrunner: --delay: must be at most 31622400 seconds (366 days), got 1e+20",
    ),
    (
        "delay-negative",
        (*ENQUEUE_GREET, "--delay", "-5"),
        {},
        None,
        "qrunner: --delay: must not be negative, got -5",
    ),
    (
        "redis-url-no-scheme",
        ("stats",),
        {"QRUNNER_REDIS_URL": "redis//x"},
        None,
        "qrunner: QRUNNER_REDIS_URL: unknown scheme '://'; use one of redis://, rediss://",
    ),
    (
        "redis-url-http",
        ("stats",),
        {"QRUNNER_REDIS_URL": "http://x"},
        None,
        "qrunner: QRUNNER_REDIS_URL: unknown scheme 'http://'; use one of redis://, rediss://",
    ),
    (
        "redis-url-port",
        ("stats",),
        {"QRUNNER_REDIS_URL": "redis://:99999999"},
        None,
        "qrunner: QRUNNER_REDIS_URL: a single URL needs a host",
    ),
    (
        "queue-braces",
        (*ENQUEUE_GREET, "--queue", "{evil}"),
        {},
        None,
        "qrunner: --queue: '{evil}' is not a valid queue name (lowercase letters, digits",
    ),
    (
        "queue-space",
        (*ENQUEUE_GREET, "--queue", "my queue"),
        {},
        None,
        "qrunner: --queue: 'my queue' is not a valid queue name",
    ),
    (
        "queue-10kb",
        (*ENQUEUE_GREET, "--queue", TEN_KB),
        {},
        None,
        "(10000 characters) is over the 64-character limit of a queue name",
    ),
    (
        "worker-queue-typo-strict",
        (
            "worker",
            "--queues",
            "defualt",
            "--strict",
            "--burst",
            "--no-cron",
            "--handlers",
            HANDLERS,
        ),
        {},
        None,
        "qrunner: --queues: no registered task uses 'defualt' (tasks of "
        "'tests.helpers.core_tasks' use: crash, default, sms_critical)",
    ),
    (
        "worker-queues-empty-name",
        ("worker", "--queues", "default,,crash", "--handlers", HANDLERS),
        {},
        None,
        "qrunner: --queues: an empty name in 'default,,crash'",
    ),
    (
        "key-newline",
        (*ENQUEUE_GREET, "--key", "order-7\nX-Injected: 1"),
        {},
        None,
        "qrunner: --key: must be printable text; found '\\n' at position 7",
    ),
    (
        "key-10kb",
        (*ENQUEUE_GREET, "--key", TEN_KB),
        {},
        None,
        "qrunner: --key: is 10000 bytes long, over the 200-byte limit",
    ),
    (
        "rate-negative",
        ("dlq", "replay", "--all", "--rate", "-1"),
        {},
        None,
        "qrunner: --rate: must be a finite number above 0, got '-1'",
    ),
    (
        "limit-negative",
        ("dlq", "list", "--limit", "-1"),
        {},
        None,
        "qrunner: --limit: must be at least 1, got -1",
    ),
    (
        "limit-zero",
        ("dlq", "list", "--limit", "0"),
        {},
        None,
        "qrunner: --limit: must be at least 1, got 0",
    ),
    (
        "dlq-unknown-queue",
        ("dlq", "list", "--queue", "defualt"),
        {},
        None,
        "qrunner: --queue: no queue 'defualt'; known queues:",
    ),
    (
        "metrics-port-70000",
        ("worker", "--metrics-port", "70000", "--handlers", HANDLERS),
        {},
        None,
        "qrunner: --metrics-port: must be from 1 to 65535, got 70000",
    ),
    (
        "log-format-jsn",
        ("stats",),
        {"QRUNNER_LOG_FORMAT": "jsn"},
        None,
        "qrunner: QRUNNER_LOG_FORMAT='jsn': must be one of text, json",
    ),
    (
        "log-level-junk",
        ("stats",),
        {"QRUNNER_LOG_LEVEL": "verbose"},
        None,
        "qrunner: QRUNNER_LOG_LEVEL='verbose': must be one of DEBUG, INFO, WARNING",
    ),
    (
        "http-token-short",
        ("stats",),
        {"QRUNNER_HTTP_TOKEN": "x"},
        None,
        "qrunner: QRUNNER_HTTP_TOKEN: must be at least 32 characters (got 1)",
    ),
    (
        "status-id-10kb",
        ("status", TEN_KB),
        {},
        None,
        "qrunner: job_id: is 10000 bytes long, over the 200-byte limit",
    ),
    (
        "missing-argument",
        ("status",),
        {},
        None,
        "qrunner: status: the following arguments are required: job_id",
    ),
]


@pytest.mark.parametrize(
    ("argv", "env", "jsonl", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CLI_CASES],
)
def test_cli_refuses_bad_input(
    cli: Any,
    redis_url: str,
    tmp_path: Path,
    argv: tuple[str, ...],
    env: dict[str, str],
    jsonl: bytes | None,
    expected: str,
) -> None:
    if jsonl is not None:
        jobs = tmp_path / "jobs.jsonl"
        jobs.write_bytes(jsonl)
        argv = ("enqueue", "--file", str(jobs), "--handlers", HANDLERS, *argv)
    refused(cli(*argv, env=env), expected)
    nothing_written(redis_url)


def test_redis_url_errors_never_show_the_password(cli: Any) -> None:
    line = refused(
        cli("stats", env={"QRUNNER_REDIS_URL": "redis://:s3cret-pass@host:99999999/0"}),
        "QRUNNER_REDIS_URL: port 99999999 is out of range (1-65535)",
    )
    assert "s3cret" not in line


def test_a_file_directory_is_refused(cli: Any, tmp_path: Path) -> None:
    refused(
        cli("enqueue", "--file", str(tmp_path), "--handlers", HANDLERS),
        "--file: " + str(tmp_path) + ": cannot read it: Is a directory",
    )


def test_good_values_at_the_limits_are_accepted(cli: Any, redis_url: str, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        '{"task": "greet", "payload": {"name": "é"}, "delay": 31622400, "key": "k\u00e9-1",'
        ' "queue": "a.b-c_9"}\n{"task": "record", "payload": null, "delay": null}\n'
    )
    ran = cli("enqueue", "--file", str(jobs), "--handlers", HANDLERS)
    assert ran.code == 0 and len(ran.out.split()) == 2, ran
    one = cli(*ENQUEUE_GREET, "--delay", "0", "--key", "x" * 200, "--queue", "q" * 64)
    assert one.code == 0, one
    ok = cli("stats", env={"QRUNNER_LOG_FORMAT": "JSON", "QRUNNER_HTTP_TOKEN": "t" * 32})
    assert ok.code == 0, ok


def test_worker_reading_a_queue_no_task_uses_warns_naming_it(redis_url: str) -> None:
    """Without --strict a typo in --queues is read anyway, with a warning naming it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")}
    env |= {"QRUNNER_REDIS_URL": redis_url, "QRUNNER_LOG_LEVEL": "WARNING"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "qrunner.cli",
            "worker",
            "--queues",
            "default,defualt",
            "--burst",
            "--no-cron",
            "--handlers",
            HANDLERS,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "--queues: no registered task uses 'defualt'" in out.stderr
    assert "'default'" not in out.stderr.split("uses", 1)[1].split("(")[0]


# -- the client ----------------------------------------------------------------------------------


LATER = datetime.now(UTC) + timedelta(days=400)
CLIENT_CASES: list[tuple[str, JobSpec, type[EnqueueError], str]] = [
    (
        "queue-braces",
        JobSpec("greet", {"name": "a"}, queue="{evil}"),
        InvalidQueueName,
        "queue: '{evil}' is not a valid queue name",
    ),
    (
        "queue-upper",
        JobSpec("greet", {"name": "a"}, queue="Default"),
        InvalidQueueName,
        "queue: 'Default' is not a valid queue name",
    ),
    (
        "queue-empty",
        JobSpec("greet", {"name": "a"}, queue=""),
        InvalidQueueName,
        "queue: must not be empty",
    ),
    (
        "key-newline",
        JobSpec("greet", {"name": "a"}, key="a\nb"),
        InvalidKey,
        "key: must be printable text",
    ),
    (
        "key-long",
        JobSpec("greet", {"name": "a"}, key="é" * 101),
        InvalidKey,
        "key: is 202 bytes long, over the 200-byte limit",
    ),
    ("key-empty", JobSpec("greet", {"name": "a"}, key=""), InvalidKey, "key: must not be empty"),
    (
        "job-id-tab",
        JobSpec("greet", {"name": "a"}, job_id="a\tb"),
        InvalidKey,
        "job_id: must be printable text",
    ),
    ("task-10kb", JobSpec(TEN_KB, {}), InvalidKey, "task: is 10000 bytes long"),
    (
        "delay-nan",
        JobSpec("greet", {"name": "a"}, delay_s=float("nan")),
        InvalidDelay,
        "delay_s: must be a finite number of seconds, got nan",
    ),
    (
        "delay-huge",
        JobSpec("greet", {"name": "a"}, delay_s=1e20),
        InvalidDelay,
        "delay_s: must be at most 31622400 seconds (366 days)",
    ),
    (
        "delay-text",
        JobSpec("greet", {"name": "a"}, delay_s="soon"),
        InvalidDelay,  # type: ignore[arg-type]
        "delay_s: must be a number of seconds, got str",
    ),
    (
        "at-far",
        JobSpec("greet", {"name": "a"}, at=LATER),
        InvalidDelay,
        "at: must be at most 366 days ahead",
    ),
    (
        "key-ttl-nan",
        JobSpec("greet", {"name": "a"}, key="k", key_ttl_s=float("nan")),
        InvalidPayload,
        "key_ttl_s: must be a positive number of seconds",
    ),
    (
        "payload-list",
        JobSpec("greet", [1, 2]),
        InvalidPayload,  # type: ignore[arg-type]
        "payload: must be a mapping",
    ),
]


@pytest.mark.parametrize(
    ("spec", "error", "message"), [pytest.param(*c[1:], id=c[0]) for c in CLIENT_CASES]
)
async def test_client_refuses_bad_names_keys_and_delays(
    redis: Redis, spec: JobSpec, error: type[EnqueueError], message: str
) -> None:
    client = Client(redis, core_tasks.registry)
    with pytest.raises(error) as raised:
        await client.enqueue_many([JobSpec("greet", {"name": "fine"}), spec])
    assert isinstance(raised.value, EnqueueError)
    assert message in str(raised.value)
    assert await redis.dbsize() == 0


# -- the worker: what reached Redis without the client -------------------------------------------


async def _raw_entries(redis: Redis, *bodies: bytes) -> None:
    await Consumer(redis, "setup", ["default"]).ensure_group("default")
    for body in bodies:
        await redis.xadd(keys.stream("default"), {"j": body})


def _envelope(**fields: Any) -> bytes:
    data = {"id": "raw1", "task": "record", "payload": {}, "queue": "default"} | fields
    return orjson.dumps({k: v for k, v in data.items() if v is not None})


async def test_oversized_entry_written_straight_to_redis_is_dead_lettered_not_run(
    redis: Redis,
) -> None:
    """Given a 5 MB job added to the stream by hand (no client limit applied), the worker
    dead-letters it with the reason and the first 4 KB, and never runs it."""
    big = Job(id="big", task="record", payload={"blob": "x" * 5_000_000}, queue="default")
    await _raw_entries(redis, big.encode())
    ok = await Client(redis, core_tasks.registry).enqueue("record", {})
    await Worker(redis, core_tasks.registry, burst=True, settings=FAST).run()
    assert await redis.lrange("log:default", 0, -1) == [ok.encode()]
    (dead,) = await DeadLetters(redis).list(["default"])
    assert dead.reason.startswith("malformed entry: 5000")
    assert "-byte limit for an envelope (QRUNNER_MAX_PAYLOAD_BYTES=524288" in dead.reason
    assert len(dead.raw) == 4096 and dead.job is None


MALFORMED = [
    (_envelope(attempt="2"), "'attempt' must be an integer of at least 1"),
    (_envelope(attempt=0), "'attempt' must be an integer of at least 1"),
    (_envelope(id={"x": 1}), "'id' must be a non-empty string"),
    (_envelope(task=""), "'task' must be a non-empty string"),
    (_envelope(key={"k": 1}), "'key' must be a string"),
    (_envelope(errors="boom"), "'errors' must be a list"),
    (_envelope(errors=[1]), "'errors' must hold objects"),
    (_envelope(errors=[{"attempt": 1.5}]), "'attempt' must be an integer"),
    (_envelope(enqueued_ms=-1), "'enqueued_ms' must be an integer of at least 0"),
    (_envelope(payload=[]), "payload is not a JSON object"),
    (_envelope(queue="sms_critical"), "its envelope names queue 'sms_critical' but it was read"),
]


async def test_malformed_envelopes_are_dead_lettered_with_the_reason(redis: Redis) -> None:
    await _raw_entries(redis, *(body for body, _ in MALFORMED))
    await Worker(redis, core_tasks.registry, burst=True, settings=FAST).run()
    assert await redis.llen("log:default") == 0
    rows = await DeadLetters(redis).list(["default"])
    reasons = sorted(r.reason for r in rows)
    assert len(rows) == len(MALFORMED)
    for _, why in MALFORMED:
        assert any(why in r for r in reasons), (why, reasons)
    assert all(r.startswith("malformed entry: ") for r in reasons)


# -- metrics -------------------------------------------------------------------------------------


def _task_labels(metrics: Metrics) -> set[str]:
    text = metrics.exposition().decode()
    return {
        s.labels["task"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "qrunner_jobs_total"
    }


async def test_unregistered_task_names_are_counted_as_unknown(redis: Redis) -> None:
    """Given jobs whose task names no registry declares (a producer's typo, or junk), their
    metrics carry task="unknown", never the raw name."""
    raw = Client(redis)  # no registry: only the grammar of names is checked at enqueue
    for name in ('x"} 1 qrunner_fake{a="b"} 9', "greeet", "a" * 200):
        await raw.enqueue(name, {})
    await raw.enqueue("record", {})
    await _raw_entries(redis, _envelope(id="nl", task="evil\nqrunner_fake 1"))
    metrics = Metrics(tasks=core_tasks.registry.names)
    await Worker(redis, core_tasks.registry, burst=True, settings=FAST, observer=metrics).run()
    assert _task_labels(metrics) == {"unknown", "record"}


def test_without_a_task_list_labels_stay_bounded() -> None:
    metrics = Metrics()
    for i in range(MAX_TASK_LABELS + 50):
        metrics.job_finished(f"task_{i}", "default", "dead", 0.0)
    metrics.job_finished("bad name\n", "default", "dead", 0.0)
    labels = _task_labels(metrics)
    assert len(labels) == MAX_TASK_LABELS + 1 and "unknown" in labels


# -- error text in logs and in the job's records ---------------------------------------------------


async def test_error_text_is_masked_in_logs_last_error_and_history(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a handler whose exception echoes a phone number, an email address and an API key,
    the retry log line, ``last_error``, the dead letter's reason and its error history (message
    and traceback) show them masked."""
    client = Client(redis, registry)
    job_id = await client.enqueue("leaky", {})
    caplog.set_level("INFO", logger="qrunner")
    await Worker(redis, registry, burst=True, settings=FAST).run()
    (dead,) = await DeadLetters(redis).list(["default"])
    status = await client.status(job_id)
    assert dead.job is not None and len(dead.job.errors) == 2
    texts = {
        "log": caplog.text,
        "last_error": status.last_error or "",
        "reason": dead.reason,
        **{f"message{i}": e.message for i, e in enumerate(dead.job.errors)},
        **{f"traceback{i}": e.traceback for i, e in enumerate(dead.job.errors)},
    }
    assert "retrying leaky" in caplog.text
    for where, text in texts.items():
        for secret in (PHONE, EMAIL, TOKEN, "jane.doe"):
            assert secret not in text, (where, text)
        assert "+1******0123" in text and "j***@example.com" in text, (where, text)
        assert "sk_l***" in text, (where, text)


def test_masking_keeps_ordinary_text() -> None:
    text = 'File "/srv/app/.venv/lib/python3.11/site-packages/x.py", line 12; amount +12.50'
    assert mask(text) == text
    assert mask(f"to {PHONE}, +44 20 7946 0958") == "to +1******0123, +4*******0958"


# -- logging -------------------------------------------------------------------------------------


def test_json_log_lines_are_valid_json_whatever_the_message() -> None:
    import logging

    formatter = JsonFormatter()
    try:
        raise ValueError('inner "quoted"\nline')
    except ValueError:
        record = logging.LogRecord(
            "qrunner.worker",
            logging.ERROR,
            __file__,
            1,
            'a "quote", a \\ and\na newline %s',
            ("\x00\u2028",),
            sys.exc_info(),
        )
    line = formatter.format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["msg"] == 'a "quote", a \\ and\na newline \x00\u2028'
    assert parsed["level"] == "ERROR" and parsed["logger"] == "qrunner.worker"
    assert 'ValueError: inner "quoted"\nline' in parsed["exc"]


async def test_worker_json_logs_parse_line_by_line(redis: Redis, redis_url: str) -> None:
    """A real worker process with QRUNNER_LOG_FORMAT=json logging a retry whose error text holds
    quotes and a newline: every stderr line is one JSON object, the secrets masked."""
    await Client(redis, registry).enqueue("leaky", {})
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")}
    env |= {
        "QRUNNER_REDIS_URL": redis_url,
        "QRUNNER_LOG_LEVEL": "INFO",
        "QRUNNER_LOG_FORMAT": "json",
    }
    out = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "qrunner.cli",
            "worker",
            "--burst",
            "--no-cron",
            "--handlers",
            "tests.test_bad_input",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stderr.splitlines()]
    retry = [r for r in records if r["msg"].startswith("retrying leaky")]
    assert len(retry) == 1, records
    assert 'carrier said "no":\nnumber +1******0123 (j***@example.com)' in retry[0]["msg"]
    assert PHONE not in out.stderr and EMAIL not in out.stderr


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QRUNNER_REDIS_URL": "redis://h:6379/zero"}, "database 'zero' is not a number"),
        ({"QRUNNER_REDIS_URL": "redis://h:6379/\u00b2"}, "is not a number"),
        ({"QRUNNER_REDIS_URL": "redis:///0"}, "empty host"),
        ({"QRUNNER_REDIS_URL": "unix://"}, "needs a socket path"),
        ({"QRUNNER_REDIS_URL": "redis://h:1/0?socket_timeout=x"}, "socket_timeout"),
        ({"QRUNNER_GRACE_S": "nan"}, "QRUNNER_GRACE_S='nan': Input should be a finite number"),
        (
            {"QRUNNER_MAX_PAYLOAD_BYTES": "0"},
            "QRUNNER_MAX_PAYLOAD_BYTES='0': Input should be greater than or equal to 1",
        ),
        (
            {"QRUNNER_STATUS_TTL_S": "-1"},
            "QRUNNER_STATUS_TTL_S='-1': Input should be greater than or equal to 0",
        ),
    ],
)
def test_settings_refuse_bad_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as raised:
        load_settings(env)
    assert message in str(raised.value)


def test_settings_accept_good_values() -> None:
    s = load_settings(
        {
            "QRUNNER_REDIS_URL": "rediss://user:pw@cache.internal:6380/2?socket_timeout=3",
            "QRUNNER_LOG_LEVEL": "warn",
            "QRUNNER_LOG_FORMAT": "json",
            "QRUNNER_HTTP_TOKEN": "",
        }
    )
    assert s.log_level == "WARNING" and s.log_format == "json" and s.http_token is None
    for url in ("unix:///run/redis.sock", "redis+cluster://a:7000,b:7001", "redis+sentinel://s/m"):
        assert load_settings({"QRUNNER_REDIS_URL": url}).redis_url_value == url


async def test_dead_letter_api_refuses_a_bad_limit_or_rate(redis: Redis) -> None:
    dead = DeadLetters(redis)
    for limit in (0, -1):
        with pytest.raises(ValueError, match="limit must be at least 1"):
            await dead.list(["default"], limit=limit)
    for rate in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="per_second must be a finite number above 0"):
            await dead.replay(["default"], per_second=rate)
