"""The command line as a user runs it: exit codes, messages, and the dlq/status/stats commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from qrunner import Client, keys
from qrunner.worker import Worker
from tests.helpers import core_tasks
from tests.worker_fixtures import FAST

pytestmark = pytest.mark.both_topologies

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = "tests.helpers.core_tasks"


def qrunner(
    *args: str,
    redis_url: str | None = None,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")}
    if redis_url:
        base["QRUNNER_REDIS_URL"] = redis_url
    base["QRUNNER_LOG_LEVEL"] = "WARNING"
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "qrunner.cli", *args],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_enqueue_prints_id_and_status_shows_it(redis_url: str) -> None:
    out = qrunner(
        "enqueue",
        "greet",
        "--payload",
        '{"name": "ada"}',
        "--handlers",
        HANDLERS,
        redis_url=redis_url,
    )
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    st = qrunner("status", job_id, redis_url=redis_url)
    assert st.returncode == 0
    assert orjson.loads(st.stdout)["state"] == "queued"


def test_unknown_task_exits_2_naming_known_tasks(redis_url: str) -> None:
    out = qrunner("enqueue", "gret", "--handlers", HANDLERS, redis_url=redis_url)
    assert out.returncode == 2
    assert "unknown task 'gret'" in out.stderr and "greet" in out.stderr


def test_invalid_json_exits_2_with_position(redis_url: str) -> None:
    out = qrunner(
        "enqueue",
        "greet",
        "--payload",
        '{"name": ada}',
        "--handlers",
        HANDLERS,
        redis_url=redis_url,
    )
    assert out.returncode == 2
    assert "not valid JSON" in out.stderr and "column" in out.stderr


def test_invalid_payload_exits_2_naming_field(redis_url: str) -> None:
    out = qrunner(
        "enqueue", "greet", "--payload", '{"times": 2}', "--handlers", HANDLERS, redis_url=redis_url
    )
    assert out.returncode == 2 and "name: Field required" in out.stderr


def test_payload_over_limit_refused(redis_url: str) -> None:
    big = orjson.dumps({"name": "x" * 2000}).decode()
    out = qrunner(
        "enqueue",
        "greet",
        "--payload",
        big,
        "--handlers",
        HANDLERS,
        redis_url=redis_url,
        env={"QRUNNER_MAX_PAYLOAD_BYTES": "1024"},
    )
    assert out.returncode == 2 and "over the 1024-byte limit" in out.stderr


def test_redis_unreachable_exits_1_with_host_port_no_password() -> None:
    out = qrunner("stats", redis_url="redis://:s3cret-pass@127.0.0.1:1/0")
    assert out.returncode == 1
    assert "127.0.0.1:1" in out.stderr and "s3cret" not in out.stderr


def test_unknown_setting_exits_2() -> None:
    out = qrunner("stats", env={"QRUNNER_CONCURENCY": "3"})
    assert out.returncode == 2 and "unknown setting QRUNNER_CONCURENCY" in out.stderr


def test_file_enqueue_validates_every_line_first(redis_url: str, tmp_path: Path) -> None:
    f = tmp_path / "jobs.jsonl"
    f.write_text('{"task": "greet", "payload": {"name": "a"}}\n{"task": "greet", "payload": {}}\n')
    out = qrunner("enqueue", "--file", str(f), "--handlers", HANDLERS, redis_url=redis_url)
    assert out.returncode == 2 and "name: Field required" in out.stderr
    assert qrunner("stats", "--json", redis_url=redis_url).stdout.strip() in ("[]", "")


def test_file_enqueue_with_progress(redis_url: str, tmp_path: Path) -> None:
    f = tmp_path / "jobs.jsonl"
    f.write_text("".join(f'{{"task": "record", "payload": {{"i": {i}}}}}\n' for i in range(5000)))
    out = qrunner("enqueue", "--file", str(f), "--handlers", HANDLERS, redis_url=redis_url)
    assert out.returncode == 0, out.stderr
    assert len(set(out.stdout.split())) == 5000
    assert "5000/5000 enqueued" in out.stderr
    stats = orjson.loads(qrunner("stats", "--json", redis_url=redis_url).stdout)
    assert {"queue": "default", "depth": 5000}.items() <= {
        k: v for k, v in stats[0].items() if k in ("queue", "depth")
    }.items()


def test_status_of_unknown_job_exits_1(redis_url: str) -> None:
    out = qrunner("status", "nosuchjob", redis_url=redis_url)
    assert out.returncode == 1 and "no record of job 'nosuchjob'" in out.stderr


def test_worker_burst_exits_0_when_drained(redis_url: str) -> None:
    qrunner("enqueue", "record", "--handlers", HANDLERS, redis_url=redis_url)
    out = qrunner("worker", "--handlers", HANDLERS, "--burst", "--no-cron", redis_url=redis_url)
    assert out.returncode == 0, out.stderr
    stats = orjson.loads(qrunner("stats", "--json", redis_url=redis_url).stdout)
    assert all(r["depth"] == 0 and r["pending"] == 0 for r in stats)


def test_worker_with_unknown_handler_module_exits_2(redis_url: str) -> None:
    out = qrunner("worker", "--handlers", "no.such.module", "--burst", redis_url=redis_url)
    assert out.returncode == 2 and "no.such.module" in out.stderr


@pytest.mark.parametrize("sub", [["dlq", "replay"], ["dlq", "purge"]])
def test_dlq_dangerous_commands_need_explicit_target(redis_url: str, sub: list[str]) -> None:
    out = qrunner(*sub, redis_url=redis_url)
    assert out.returncode == 2


@pytest.mark.needs_admin
async def test_dlq_list_show_replay_purge(redis: Redis, redis_url: str) -> None:
    client = Client(redis, core_tasks.registry)
    perm = await client.enqueue("permanent", {})
    fails = await client.enqueue("always_fails", {})
    await Worker(redis, core_tasks.registry, burst=True, settings=FAST).run()

    listed = orjson.loads(qrunner("dlq", "list", "--json", redis_url=redis_url).stdout)
    assert {r["job_id"] for r in listed} == {perm, fails}

    shown = qrunner("dlq", "show", fails, redis_url=redis_url)
    assert shown.returncode == 0
    detail = orjson.loads(shown.stdout)
    assert len(detail["errors"]) == 3 and detail["task"] == "always_fails"

    replay = qrunner("dlq", "replay", "--task", "permanent", redis_url=redis_url)
    assert replay.returncode == 0 and "replayed 1 job" in replay.stdout
    assert await redis.xlen(keys.stream("default")) == 1

    purge = qrunner("dlq", "purge", "--yes", redis_url=redis_url)
    assert purge.returncode == 0 and "purged 1" in purge.stdout
    assert await redis.xlen(keys.dlq("default")) == 0
