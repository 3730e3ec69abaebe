"""Property tests of every parser that reads outside input: any input either parses or is
refused with the documented error type, never with another exception.

- the envelope decoder (``Job.decode``, ``Runner.decode``): ``MalformedJob`` / a dead letter;
- a JSONL line of ``enqueue --file`` and a ``--payload``: ``UsageError``;
- the command-line options: exit 2 with one line on stderr;
- queue names, keys, delays: ``InvalidJobOption`` (an ``EnqueueError``);
- settings from the environment: ``ConfigError``;
- the masker and the JSON log formatter: never raise, and keep their promises.

Example counts are kept moderate so the file runs in seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qrunner.cli import UsageError, _parse_json_object, build_parser, parse_job_line
from qrunner.consumer import Entry
from qrunner.errors import ConfigError
from qrunner.job import ErrorRecord, Job, MalformedJob, encode_envelope
from qrunner.logs import JsonFormatter
from qrunner.names import (
    MAX_DELAY_S,
    MAX_KEY_BYTES,
    QUEUE_NAME_PATTERN,
    InvalidJobOption,
    check_delay,
    check_key,
    check_queue_name,
)
from qrunner.outcome import DeadLettered
from qrunner.redact import mask
from qrunner.runner import Runner
from qrunner.settings import load_settings
from qrunner.task import Registry

pytestmark = pytest.mark.once

#: 100 examples per property, no example database written into the working tree.
FAST = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

#: Any JSON value, nested a little.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

ENVELOPE_FIELDS = (
    "id",
    "task",
    "payload",
    "queue",
    "attempt",
    "enqueued_ms",
    "not_before_ms",
    "key",
    "errors",
)
#: Objects shaped like envelopes: the known fields with any JSON value, some left out.
envelope_like = st.dictionaries(
    st.sampled_from(ENVELOPE_FIELDS) | st.text(max_size=6), json_values, max_size=10
)
ERROR_FIELDS = ("type", "message", "attempt", "at_ms", "traceback")
errors_like = st.lists(
    st.dictionaries(st.sampled_from(ERROR_FIELDS), json_values, max_size=5) | json_values,
    max_size=3,
)


# -- the envelope decoder --------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=300) | st.text(max_size=200))
@example(b'{"id":"a","task":"t","queue":"q","attempt":1e400}')
@example(b'{"id":"a","task":"t","queue":"q","errors":[1]}')
@example('"\ud800"')
def test_decode_any_bytes_or_text(raw: bytes | str) -> None:
    try:
        job = Job.decode(raw)
    except MalformedJob:
        return
    assert isinstance(job, Job)


@FAST
@given(envelope_like, errors_like)
def test_decode_any_envelope_shaped_object(data: dict[str, Any], errors: Any) -> None:
    if "errors" in data:
        data["errors"] = errors
    try:
        job = Job.decode(orjson.dumps(data))
    except MalformedJob:
        return
    # What decodes is well-typed, and encodes back to an equal job.
    assert job.id and job.task and job.queue and job.attempt >= 1
    assert job.id.isprintable() and job.task.isprintable()
    assert isinstance(job.payload, dict) and (job.key is None or isinstance(job.key, str))
    assert all(isinstance(e, ErrorRecord) and isinstance(e.attempt, int) for e in job.errors)
    assert Job.decode(job.encode()) == job


#: Arrays shaped like compact envelopes [id, task, payload]: mostly right, often not.
compact_like = st.lists(json_values, max_size=4) | st.tuples(
    st.text(max_size=8) | json_values,
    st.text(max_size=8) | json_values,
    st.dictionaries(st.text(max_size=6), json_values, max_size=4) | json_values,
).map(list)


@FAST
@given(compact_like, st.sampled_from([None, "q"]))
@example(["a", "t", {}], "q")
def test_decode_any_compact_envelope_shaped_array(data: list[Any], queue: str | None) -> None:
    try:
        job = Job.decode(orjson.dumps(data), b"1764000000123-0", queue)
    except MalformedJob:
        return
    # Only [non-empty printable id, the same for task, object] read from a named queue
    # decodes: a first attempt on that queue, timed by its entry, which encodes back to the
    # same array.
    assert data == [job.id, job.task, job.payload] and job.id and job.task
    assert job.id.isprintable() and job.task.isprintable()
    assert (job.queue, job.attempt, job.enqueued_ms) == ("q", 1, 1_764_000_000_123)
    assert orjson.loads(encode_envelope(job.id, job.task, job.payload, None, 0)) == data


#: Job ids and task names as qrunner.names accepts them: printable text (no tab or newline,
#: which would break the ack's batch record).
printable_names = st.text(min_size=1, max_size=20).filter(str.isprintable)


@FAST
@given(
    printable_names,
    printable_names,
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    st.integers(min_value=1, max_value=1000),
    st.none() | st.text(max_size=20),
)
def test_valid_envelopes_round_trip(
    job_id: str, task: str, payload: dict[str, Any], attempt: int, key: str | None
) -> None:
    job = Job(id=job_id, task=task, payload=payload, queue="q", attempt=attempt, key=key)
    try:
        raw = job.encode()
    except Exception:  # lone surrogates cannot be encoded: not an envelope
        return
    assert Job.decode(raw) == job


RUNNER = Runner(Registry(), lambda job, deliveries: None, max_payload_bytes=1000)  # type: ignore[arg-type,return-value]


@FAST
@given(st.none() | st.binary(max_size=400) | envelope_like.map(orjson.dumps))
def test_runner_decode_returns_a_job_or_a_dead_letter(body: bytes | None) -> None:
    out = RUNNER.decode(Entry("q", "1-0", body))
    assert isinstance(out, Job | DeadLettered)
    if isinstance(out, DeadLettered):
        assert out.reason.startswith("malformed entry: ") and out.job is None
    else:
        assert out.queue == "q"


def test_runner_decode_refuses_oversized_entries_before_parsing() -> None:
    body = b"[" * (RUNNER.max_entry_bytes + 1)
    out = RUNNER.decode(Entry("q", "1-0", body))
    assert isinstance(out, DeadLettered) and "over the" in out.reason
    assert out.raw is not None and len(out.raw) == 4096


# -- the command line's parsers --------------------------------------------------------------------


jsonl_lines = st.binary(max_size=200) | st.dictionaries(
    st.sampled_from(("task", "payload", "queue", "delay", "key")) | st.text(max_size=5),
    json_values | st.sampled_from(["greet", "default", "{evil}", "a\nb", 1e300, -1, 5.5]),
    max_size=6,
).map(orjson.dumps)


@FAST
@given(jsonl_lines)
@example(b'{"task": "t", "delay": "soon"}')
@example(b'{"task": "t", "key": {"a": 1}}')
@example(b'{"task": "t", "queue": 7}')
@example(b'{"task": "t", "payload": []}')
@example(b'{"task": "t\\u0000"}')
@example(b"\xff\xfe")
def test_jsonl_line_parses_or_is_a_usage_error(line: bytes) -> None:
    try:
        fields = parse_job_line(line, "jobs.jsonl:1")
    except UsageError as exc:
        message = str(exc)
        assert message.startswith("jobs.jsonl:1: ")
        return
    assert set(fields) <= {"task", "payload", "queue", "delay", "key"}
    check_key(fields["task"], "task")
    assert isinstance(fields["payload"], dict)
    if "queue" in fields:
        assert re.fullmatch(QUEUE_NAME_PATTERN, fields["queue"])
    if "delay" in fields:
        assert 0 <= fields["delay"] <= MAX_DELAY_S
    if "key" in fields:
        assert len(fields["key"].encode()) <= MAX_KEY_BYTES and fields["key"].isprintable()


@FAST
@given(st.text(max_size=100) | json_values.map(lambda v: orjson.dumps(v).decode()))
def test_payload_option_parses_or_is_a_usage_error(text: str) -> None:
    try:
        value = _parse_json_object(text, "--payload")
    except UsageError as exc:
        assert str(exc).startswith("--payload: ")
        return
    assert isinstance(value, dict)


OPTIONS: list[tuple[list[str], str]] = [
    (["enqueue", "t", "--delay"], "delay"),
    (["enqueue", "t", "--key"], "key"),
    (["enqueue", "t", "--queue"], "queue"),
    (["worker", "--queues"], "queues"),
    (["worker", "--weights"], "weights"),
    (["worker", "--metrics-port"], "metrics_port"),
    (["worker", "--concurrency"], "concurrency"),
    (["dlq", "list", "--limit"], "limit"),
    (["dlq", "replay", "--all", "--rate"], "rate"),
    (["status"], "job_id"),
]
option_values = (
    st.text(max_size=30)
    | st.integers().map(str)
    | st.floats().map(str)
    | st.sampled_from(["nan", "-inf", "1e20", "70000", "0", "-1", "a,,b", "q=0", "{evil}"])
)


@FAST
@given(st.sampled_from(OPTIONS), option_values)
def test_options_parse_or_exit_2_with_one_line(option: tuple[list[str], str], value: str) -> None:
    argv, dest = option
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args([*argv, value])
    except SystemExit as exc:
        assert exc.code == 2
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith("qrunner: "), err.getvalue()
        return
    parsed = getattr(args, dest)
    if dest == "delay":
        assert math.isfinite(parsed) and 0 <= parsed <= MAX_DELAY_S
    elif dest == "queues":
        assert all(re.fullmatch(QUEUE_NAME_PATTERN, q) for q in parsed)
    elif dest == "metrics_port":
        assert 1 <= parsed <= 65535
    elif dest in ("limit", "concurrency"):
        assert parsed >= 1
    elif dest == "rate":
        assert math.isfinite(parsed) and parsed > 0
    elif dest == "weights":
        assert all(w >= 1 and re.fullmatch(QUEUE_NAME_PATTERN, q) for q, w in parsed.items())


# -- names, keys, delays ---------------------------------------------------------------------------


@FAST
@given(st.text(max_size=80) | json_values)
def test_queue_names_follow_the_grammar(name: Any) -> None:
    try:
        got = check_queue_name(name)
    except InvalidJobOption as exc:
        assert str(exc).startswith("queue: ")
        return
    assert re.fullmatch(QUEUE_NAME_PATTERN, got)


@FAST
@given(st.text(max_size=250) | json_values)
def test_keys_are_printable_and_bounded(key: Any) -> None:
    try:
        got = check_key(key)
    except InvalidJobOption as exc:
        assert str(exc).startswith("key: ")
        return
    assert got and got.isprintable() and len(got.encode()) <= MAX_KEY_BYTES


@FAST
@given(st.floats() | st.integers() | json_values)
@example(10**400)
def test_delays_are_finite_and_in_range(delay: Any) -> None:
    try:
        got = check_delay(delay)
    except InvalidJobOption as exc:
        assert str(exc).startswith("delay_s: ")
        return
    assert math.isfinite(got) and 0 <= got <= MAX_DELAY_S


# -- settings ------------------------------------------------------------------------------------

SETTING_VARS = (
    "QRUNNER_REDIS_URL",
    "QRUNNER_LOG_LEVEL",
    "QRUNNER_LOG_FORMAT",
    "QRUNNER_HTTP_TOKEN",
    "QRUNNER_GRACE_S",
    "QRUNNER_CONCURRENCY",
    "QRUNNER_MAX_PAYLOAD_BYTES",
    "QRUNNER_UVLOOP",
)
url_like = st.builds(
    "{}://{}{}{}".format,
    st.sampled_from(["redis", "rediss", "unix", "http", "", "redis+cluster", "redis+sentinel"]),
    st.sampled_from(["", ":pw@", "u:p@"]),
    st.sampled_from(["", "host", "127.0.0.1", "[::1]", "h:x", "a:1,b:2", "[::1"]),
    st.sampled_from(
        [
            "",
            ":6379",
            ":0",
            ":99999999",
            "/0",
            "/x",
            "/\u00b2",
            "/m/1",
            "?db=a",
            "?socket_timeout=x",
        ]
    ),
)


@FAST
@given(st.dictionaries(st.sampled_from(SETTING_VARS), st.text(max_size=40) | url_like, max_size=4))
def test_settings_load_or_raise_config_error(env: dict[str, str]) -> None:
    try:
        s = load_settings(env)
    except ConfigError as exc:
        assert str(exc).startswith("QRUNNER_")
        if str(exc).startswith("QRUNNER_REDIS_URL"):  # a URL's password is never echoed
            assert ":pw@" not in str(exc)
        return
    assert s.log_format in ("text", "json")
    assert s.http_token is None or len(s.http_token) >= 32


# -- masking and logging -------------------------------------------------------------------------


phones = st.builds(
    "+{}{}".format,
    st.integers(min_value=1, max_value=9),
    st.text(alphabet="0123456789", min_size=7, max_size=14),
)
emails = st.builds(
    "{}@{}.{}".format,
    st.from_regex(r"[a-z][a-z0-9._]{0,10}", fullmatch=True),
    st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True),
    st.sampled_from(["com", "org", "co.uk"]),
)


@FAST
@given(st.text(max_size=200), phones, emails)
def test_mask_hides_phones_and_emails_and_is_idempotent(text: str, phone: str, email: str) -> None:
    masked = mask(f"{text} {phone} / {email} {text}")
    assert f" {phone} " not in masked and f" {email} " not in masked
    assert mask(masked) == masked


@FAST
@given(st.text(max_size=300))
def test_mask_never_raises(text: str) -> None:
    assert isinstance(mask(text), str)


@FAST
@given(st.text(max_size=200), st.text(max_size=50))
def test_json_log_lines_always_parse(message: str, exc_text: str) -> None:
    record = logging.LogRecord("qrunner", logging.WARNING, __file__, 1, "%s", (message,), None)
    record.exc_text = exc_text or None
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["msg"] == message


@pytest.mark.parametrize("text", ["", "plain", "+1", "a@b", "x" * 30])
def test_mask_small_cases(text: str) -> None:
    assert mask(mask(text)) == mask(text)
