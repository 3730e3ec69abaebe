"""The task catalogue: ``qrunner tasks`` lists every task with its queue, retries, limits and
payload schema, and ``--example`` prints a payload the task accepts, for every task of the
notification app."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from notifyhub.app import registry as app_registry
from pydantic import BaseModel, Field

from qrunner import Registry
from qrunner.catalog import catalogue, example, sample_pattern

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")}
    return subprocess.run(
        [sys.executable, "-m", "qrunner.cli", *args, "--app", "notifyhub.app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("name", app_registry.names)
def test_every_app_task_has_a_valid_example(name: str) -> None:
    task = app_registry.get(name)
    payload = example(task)
    task.validate(payload)  # what a worker does first with a payload
    assert set(payload) >= set(catalogue_row(name)["payload_schema"].get("required", []))


def catalogue_row(name: str) -> dict[str, object]:
    return next(r for r in catalogue(app_registry) if r["name"] == name)


def test_cli_lists_tasks_and_prints_schema_and_example() -> None:
    listed = orjson.loads(cli("tasks", "--json").stdout)
    assert [r["name"] for r in listed] == app_registry.names
    row = next(r for r in listed if r["name"] == "send_payment_reminder")
    assert row["queue"] == "sms_daily" and row["retries"]["max_retries"] >= 1
    assert "payee" in row["payload_schema"]["properties"]
    shown = cli("tasks", "send_payment_reminder", "--example")
    assert shown.returncode == 0, shown.stderr
    app_registry.get("send_payment_reminder").validate(orjson.loads(shown.stdout))
    human = cli("tasks")
    assert re.search(r"^send_payment_reminder\s+sms_daily\s", human.stdout, re.MULTILINE)
    unknown = cli("tasks", "nope", "--example")
    assert unknown.returncode == 2 and "nope" in unknown.stderr


class Constrained(BaseModel):
    code: str = Field(pattern=r"^[A-Z]{3}-\d{2}$")
    count: int = Field(gt=5, le=9)
    tags: list[str] = Field(min_length=2)
    note: str | None = None


def test_examples_meet_constraints() -> None:
    reg = Registry()

    @reg.task(payload=Constrained)
    async def constrained(ctx: object, payload: Constrained) -> None:
        return None

    payload = example(reg.get("constrained"))
    assert re.fullmatch(r"[A-Z]{3}-\d{2}", payload["code"]) and 5 < payload["count"] <= 9
    assert len(payload["tags"]) >= 2 and "note" not in payload


@pytest.mark.parametrize("pattern", [r"^\+[1-9]\d{7,14}$", r"^(sms|email)$", r"^[a-z0-9_.-]+$"])
def test_pattern_sampler(pattern: str) -> None:
    sampled = sample_pattern(pattern)
    assert sampled is not None and re.search(pattern, sampled)
