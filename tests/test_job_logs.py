"""Log lines written while a job runs, by the worker or by the handler's own logger, carry the
job's id, task, queue and attempt, as JSON fields or in the text line; lines outside a job do
not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qrunner import Client, connect_redis
from tests.helpers import logging_tasks

ROOT = Path(__file__).resolve().parent.parent


def worker(redis_url: str, fmt: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")}
    env |= {
        "QRUNNER_REDIS_URL": redis_url,
        "QRUNNER_LOG_FORMAT": fmt,
        "QRUNNER_LOG_LEVEL": "INFO",
        "QRUNNER_BLOCK_MS": "100",
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "qrunner.cli",
            "worker",
            "--app",
            "tests.helpers.logging_tasks",
            "--burst",
            "--no-cron",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("task", ["chatty", "chatty_thread"])
async def test_json_log_lines_of_a_handler_carry_the_job(redis_url: str, task: str) -> None:
    redis = await connect_redis(redis_url)
    try:
        job_id = await Client(redis, logging_tasks.registry).enqueue(task, {"word": 'a "b"'})
    finally:
        await redis.aclose()
    out = worker(redis_url, "json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stderr.splitlines()]  # every line parses
    mine = [r for r in lines if r["logger"] == "myapp.greetings"]
    assert len(mine) == 1
    assert {k: mine[0][k] for k in ("job_id", "task", "queue", "attempt")} == {
        "job_id": job_id,
        "task": task,
        "queue": "logs",
        "attempt": 1,
    }
    if task == "chatty":
        assert mine[0]["msg"] == 'sending "a "b""\nto someone'
    # The worker's own lines outside any job carry no job fields.
    outside = [r for r in lines if r["logger"] == "qrunner.worker" and "stopped" in r["msg"]]
    assert outside and all("job_id" not in r for r in outside)


async def test_text_log_lines_show_the_job(redis_url: str) -> None:
    redis = await connect_redis(redis_url)
    try:
        job_id = await Client(redis, logging_tasks.registry).enqueue("chatty", {"word": "hi"})
    finally:
        await redis.aclose()
    out = worker(redis_url, "text")
    assert out.returncode == 0, out.stderr
    [line] = [x for x in out.stderr.splitlines() if "myapp.greetings" in x]
    assert f"myapp.greetings [job_id={job_id} task=chatty queue=logs attempt=1]: sending" in line
