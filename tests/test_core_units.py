"""Pure parts of the runtime: backoff, envelope, outcome classification, settings."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import FrozenInstanceError, dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from qrunner import Context, Registry
from qrunner.backoff import backoff_ceiling_s, backoff_delay_s
from qrunner.errors import ConfigError, InvalidPayload, Permanent, RateLimited, Retry
from qrunner.job import ErrorRecord, Job, MalformedJob, encode_envelope, new_job_id
from qrunner.outcome import DeadLettered, Deferred, RetryLater, classify
from qrunner.settings import load_settings
from qrunner.task import Task

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "ceiling"),
    [
        (1, 1.0, 60, 1.0),
        (2, 1.0, 60, 2.0),
        (3, 1.0, 60, 4.0),
        (7, 1.0, 60, 60.0),
        (1, 60, 3600, 60),
        (4, 60, 3600, 480),
        (200, 1.0, 30, 30.0),
    ],
)
def test_backoff_ceiling(attempt: int, base: float, cap: float, ceiling: float) -> None:
    assert backoff_ceiling_s(attempt, base, cap) == ceiling


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 0.0), (0.5, 2.0), (0.999, 3.996)])
def test_full_jitter_scales_ceiling(draw: float, expected: float) -> None:
    assert backoff_delay_s(3, 1.0, 60, draw=draw) == pytest.approx(expected)


def test_no_jitter_is_the_ceiling() -> None:
    assert backoff_delay_s(3, 1.0, 60, jitter=False) == 4.0


def test_backoff_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError, match="1-based"):
        backoff_ceiling_s(0, 1, 2)


def test_envelope_round_trip_and_history() -> None:
    job = Job(id="a", task="t", payload={"x": [1, "é"]}, queue="q", key="k")
    nxt = job.failed(ErrorRecord("ValueError", "bad", 1, 123, "tb"))
    back = Job.decode(nxt.encode())
    assert back == nxt and back.attempt == 2 and back.errors[0].message == "bad"


def test_an_envelope_leaves_out_a_first_attempt_and_an_unknown_time() -> None:
    """attempt 1 and enqueued_ms 0 are implied, not written; a retry's and a dated job's are."""
    plain = Job(id="a", task="t", payload={}, queue="q")
    assert orjson.loads(plain.encode()) == {"id": "a", "task": "t", "payload": {}, "queue": "q"}
    dated = replace(plain, attempt=3, enqueued_ms=1_764_000_000_123)
    assert orjson.loads(dated.encode())["attempt"] == 3
    assert Job.decode(dated.encode()) == dated


@pytest.mark.parametrize(
    ("entry_id", "enqueued_ms"),
    [(b"1764000000123-7", 1_764_000_000_123), ("1764000000123-0", 1_764_000_000_123), (None, 0)],
)
def test_a_job_without_a_time_is_timed_by_its_stream_entry(
    entry_id: bytes | str | None, enqueued_ms: int
) -> None:
    job = Job.decode(b'{"id":"a","task":"t","payload":{},"queue":"q"}', entry_id)
    assert (job.attempt, job.enqueued_ms) == (1, enqueued_ms)
    # A time the envelope carries (a delayed job, a retry) wins over the entry's.
    dated = Job.decode(b'{"id":"a","task":"t","queue":"q","enqueued_ms":5}', entry_id)
    assert dated.enqueued_ms == 5


def test_an_envelope_without_a_queue_belongs_to_the_stream_it_was_read_from() -> None:
    """A job added at once to its queue's stream leaves the queue out of its envelope: the
    reader names it. One that names its queue keeps it; one with neither is malformed."""
    raw = encode_envelope("a", "t", {"x": 1}, None, 0)
    assert b"queue" not in raw
    assert Job.decode(raw, queue="emails").queue == "emails"
    named = encode_envelope("a", "t", {}, "sms", 0)
    assert Job.decode(named, queue="emails").queue == "sms"
    with pytest.raises(MalformedJob, match="'queue' must be a non-empty string"):
        Job.decode(raw)
    with pytest.raises(MalformedJob, match="'queue' must be a non-empty string"):
        Job.decode(b'{"id":"a","task":"t","queue":7}', queue="emails")


def test_a_job_added_at_once_with_nothing_else_to_say_is_a_compact_array() -> None:
    """[id, task, payload]: a first attempt, timed by its entry, on the queue it was read from.
    A key, a workflow, a queue, a time or a later attempt keep the object form."""
    raw = encode_envelope("2T4SaN2Yr94Urq", "noop", {"i": 0}, None, 0)
    assert raw == b'["2T4SaN2Yr94Urq","noop",{"i":0}]'
    job = Job.decode(raw, b"1764000000123-7", "emails")
    assert job == Job(
        id="2T4SaN2Yr94Urq",
        task="noop",
        payload={"i": 0},
        queue="emails",
        enqueued_ms=1_764_000_000_123,
    )
    for fuller in (
        encode_envelope("a", "t", {}, "sms", 0),
        encode_envelope("a", "t", {}, None, 5),
        encode_envelope("a", "t", {}, None, 0, attempt=2),
        encode_envelope("a", "t", {}, None, 0, not_before_ms=5),
        encode_envelope("a", "t", {}, None, 0, key="k"),
        encode_envelope("a", "t", {}, None, 0, flow={"next": []}),
    ):
        assert fuller.startswith(b'{"id":"a",')
    with pytest.raises(MalformedJob, match="'queue' must be a non-empty string"):
        Job.decode(raw)
    with pytest.raises(InvalidPayload, match="not JSON-serialisable"):
        encode_envelope("a", "t", {"x": object()}, None, 0)


def test_a_decoded_job_is_a_whole_frozen_job_whatever_its_entry_id() -> None:
    """Job.decode fills a twin class and makes it a Job: the result is a Job like any other
    (frozen, equal to one built by hand, copied by ``replace``); a subclass of Job decodes to
    itself. The entry id's time is read from a str or bytes id, and an id without one gives 0."""
    raw = encode_envelope("2T4SaN2Yr94Urq", "noop", {}, None, 0)
    job = Job.decode(raw, "1764000000123-7", "emails")
    assert type(job) is Job
    assert job == Job("2T4SaN2Yr94Urq", "noop", {}, "emails", enqueued_ms=1_764_000_000_123)
    with pytest.raises(FrozenInstanceError):
        job.attempt = 2  # type: ignore[misc]
    assert replace(job, attempt=3).attempt == 3
    assert Job.decode(raw, b"1764000000123-7", "emails") == job
    assert Job.decode(raw, "not-an-id", "emails").enqueued_ms == 0
    assert Job.decode(raw, None, "emails").enqueued_ms == 0

    @dataclass(frozen=True)
    class TaggedJob(Job):
        pass

    tagged = TaggedJob.decode(raw, "1764000000123-7", "emails")
    assert type(tagged) is TaggedJob
    assert (tagged.id, tagged.queue, tagged.enqueued_ms) == (job.id, "emails", job.enqueued_ms)


def test_the_workers_context_is_the_context_a_constructor_makes() -> None:
    """worker_context fills a Context's slots directly: the result equals the one Context()
    builds from the same values and its own defaults for the rest, with a fresh ``extra`` of
    its own each time."""
    from qrunner.context import worker_context

    job = Job("2T4SaN2Yr94Urq", "noop", {}, "emails")
    opener = print
    args: tuple[Any, ...] = (job, "redis", "client", {"pool": 1}, "settings", 3)
    fast = worker_context(*args, opener)  # type: ignore[arg-type]
    assert type(fast) is Context
    assert fast == Context(*args, open_reporter=opener)  # type: ignore[arg-type]
    assert (fast.job_id, fast.attempt, fast.reporter, fast.turn_ms) == (job.id, 1, None, None)
    assert worker_context(*args, opener).extra is not fast.extra  # type: ignore[arg-type]


def test_an_envelope_of_the_earlier_format_reads_as_before() -> None:
    raw = b'{"id":"a","task":"t","payload":{"x":1},"queue":"q","attempt":1,"enqueued_ms":99}'
    job = Job.decode(raw, b"1764000000123-0")
    assert (job.attempt, job.enqueued_ms, job.payload) == (1, 99, {"x": 1})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{nope", "not JSON"),
        (b"7", "not a JSON object"),
        (b"[1]", r"not \[id, task, payload\]"),
        (b'["a","t",{},1]', r"not \[id, task, payload\]"),
        (b'["","t",{}]', "'id' and 'task' must be non-empty printable strings"),
        (b'["a",7,{}]', "'id' and 'task' must be non-empty printable strings"),
        (b'["a\\tb","t",{}]', "'id' and 'task' must be non-empty printable strings"),
        (b'["a","t\\n",{}]', "'id' and 'task' must be non-empty printable strings"),
        (b'{"id":"a\\nb","task":"t","queue":"q"}', "'id' must be printable"),
        (b'{"id":"a","task":"t\\u0000","queue":"q"}', "'task' must be printable"),
        (b'["a","t",[1]]', "payload is not"),
        (b'{"id": "x"}', "lacks"),
        (b'{"id":"x","task":"t","queue":"q","payload":[1]}', "payload is not"),
    ],
)
def test_malformed_envelopes(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedJob, match=reason):
        Job.decode(raw, queue="q")


def test_unserialisable_payload_is_invalid() -> None:
    with pytest.raises(InvalidPayload, match="not JSON-serialisable"):
        Job(id="a", task="t", payload={"x": object()}, queue="q").encode()


def test_job_ids_are_safe_cli_arguments() -> None:
    ids = {new_job_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 14 and i[0] != "-" and i.isascii() and i.isalnum() for i in ids)


def test_job_ids_spell_their_80_bits_in_base62(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each id is its 80 random bits written in base 62 (digits, then upper, then lower case
    letters), 14 digits with leading zeros: distinct bits give distinct ids."""
    import qrunner.job as job_module

    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

    def base62(n: int) -> str:
        out = ""
        for _ in range(14):
            n, r = divmod(n, 62)
            out = alphabet[r] + out
        return out

    for n in (0, 1, 61, 62, 2**80 - 1, 62**7, 62**7 - 1, 0x0123456789ABCDEF0123):
        monkeypatch.setattr(job_module, "_random80", lambda n=n: n)
        assert new_job_id() == base62(n)


def test_job_id_bits_come_from_the_os_a_block_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """One OS call serves a block of ids, each its own 10 bytes of the block, in some order."""
    import qrunner.job as job_module

    calls: list[int] = []
    block = bytes(range(256)) * 5

    def urandom(n: int) -> bytes:
        calls.append(n)
        return block[:n]

    monkeypatch.setattr(job_module.os, "urandom", urandom)
    monkeypatch.setattr(job_module, "_random_pool", [])
    drawn = [job_module._random80() for _ in range(job_module._RANDOM_BLOCK)]
    assert calls == [10 * job_module._RANDOM_BLOCK]
    expected = [int.from_bytes(block[i : i + 10]) for i in range(0, 10 * len(drawn), 10)]
    assert sorted(drawn) == sorted(expected)
    job_module._random80()
    assert len(calls) == 2  # the block ran out: the next id asks the OS again


@pytest.mark.once
def test_a_forked_child_never_draws_its_parents_next_id() -> None:
    """The block of random numbers is dropped in a forked child (a web server's workers fork
    after importing the app): otherwise parent and child would hand out the same ids."""
    script = (
        "import os\n"
        "from qrunner.job import new_job_id\n"
        "new_job_id()\n"  # the parent now holds a block of numbers
        "r, w = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.write(w, new_job_id().encode())\n"
        "    os._exit(0)\n"
        "os.close(w)\n"
        "child = os.read(r, 64).decode()\n"
        "os.waitpid(pid, 0)\n"
        "print('same' if child == new_job_id() else 'different')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "different"


async def _noop(ctx: Context[Any], payload: Any) -> None:
    return None


TASK = Task(name="t", fn=_noop, max_retries=2, backoff_base_s=1, backoff_cap_s=10, jitter=False)
JOB = Job(id="j", task="t", payload={}, queue="q")


@pytest.mark.parametrize(
    ("exc", "attempt", "kind", "delay_ms"),
    [
        (ValueError("x"), 1, RetryLater, 1000),
        (ValueError("x"), 2, RetryLater, 2000),
        (ValueError("x"), 3, DeadLettered, None),
        (TimeoutError(), 1, RetryLater, 1000),
        (Retry(7), 1, RetryLater, 7000),
        (Retry(7), 3, DeadLettered, None),
        (Permanent("no"), 1, DeadLettered, None),
        (RateLimited(5), 3, Deferred, 5000),
    ],
)
def test_classify_table(exc: BaseException, attempt: int, kind: type, delay_ms: int | None) -> None:
    job = Job(id="j", task="t", payload={}, queue="q", attempt=attempt)
    out = classify(exc, job, TASK, 1000)
    assert isinstance(out, kind)
    if delay_ms is not None:
        assert out.delay_ms == delay_ms


def test_deferral_does_not_spend_an_attempt() -> None:
    out = classify(RateLimited(2), JOB, TASK, 0)
    assert isinstance(out, Deferred) and out.job.attempt == 1


def test_retry_appends_history_and_bumps_attempt() -> None:
    out = classify(ValueError("boom"), JOB, TASK, 5)
    assert isinstance(out, RetryLater)
    assert out.job.attempt == 2 and out.job.errors[-1].message == "boom"


def test_unknown_qrunner_variable_is_an_error() -> None:
    with pytest.raises(ConfigError, match="QRUNNER_REDIS_ULR"):
        load_settings({"QRUNNER_REDIS_ULR": "redis://x"})


def test_settings_parse_types_and_reject_bad_values() -> None:
    s = load_settings({"QRUNNER_CONCURRENCY": "7", "QRUNNER_UVLOOP": "no"})
    assert s.concurrency == 7 and s.uvloop is False
    with pytest.raises(ConfigError, match="QRUNNER_CONCURRENCY='many'"):
        load_settings({"QRUNNER_CONCURRENCY": "many"})


def test_registry_refuses_duplicates_and_sync_handlers() -> None:
    reg = Registry()
    reg.task(name="a")(_noop)
    with pytest.raises(ConfigError, match="twice"):
        reg.task(name="a")(_noop)

    def sync(ctx: Any, p: Any) -> None:
        return None

    with pytest.raises(ConfigError, match="async"):
        reg.task(name="b")(sync)  # type: ignore[arg-type]


def test_client_import_pulls_in_no_worker_code() -> None:
    """Importing the enqueue side must not load the worker, scheduler or HTTP server."""
    code = (
        "import sys, qrunner; from qrunner import Client, JobSpec;"
        "heavy = [m for m in sys.modules if m.startswith(('qrunner.worker', 'qrunner.scheduler',"
        " 'qrunner.http', 'qrunner.metrics', 'qrunner.runner', 'aiohttp', 'prometheus_client'))];"
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
