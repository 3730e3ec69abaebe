"""Both distributions build as wheels and work from a fresh virtualenv outside the repo, run
from an empty folder: the runtime's CLI, the app's migrations (package data, not ../migrations),
a notification-app worker and a third-party task module that depends on the qrunner wheel only.

Installing the wheels' dependencies takes a while, so this runs once per ``bin/test`` (on its
first server), not on each."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("QRUNNER_TEST_ONCE") == "0", reason="runs on bin/test's first server only"
    ),
]

THIRD_PARTY = """
from pydantic import BaseModel
from qrunner import Context, Registry

registry = Registry()


class Greeting(BaseModel):
    name: str


@registry.task(queue="greetings", payload=Greeting)
async def greet(ctx: Context[None], payload: Greeting) -> str:
    return f"hello {payload.name}"
"""


def run(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{argv}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the two wheels installed; returns its bin folder."""
    base = tmp_path_factory.mktemp("wheels")
    dist = base / "dist"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QRUNNER_", "PYTHON"))}
    for project in (ROOT, ROOT / "app"):
        run(
            [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
            cwd=project,
            env=env,
        )
        shutil.rmtree(project / "build", ignore_errors=True)  # setuptools' staging folder
    wheels = sorted(dist.glob("*.whl"))
    assert [w.name.split("-")[0] for w in wheels] == ["notifyhub", "qrunner"]
    target = base / "venv"
    venv.create(target, with_pip=True)
    run(
        [str(target / "bin" / "python"), "-m", "pip", "install", "-q", *map(str, wheels)],
        cwd=base,
        env=env,
        timeout=900,
    )
    return target / "bin"


def test_wheel_contents_are_apart(installed: Path) -> None:
    site = next((installed.parent / "lib").glob("python3*/site-packages"))
    top = {p.name for p in site.iterdir() if (p / "__init__.py").exists()}
    assert {"qrunner", "notifyhub", "qrunner_devservers"} <= top
    assert not {"handlers", "fakeproviders", "migrations"} & top
    assert (site / "qrunner" / "lua").is_dir()
    assert sorted(p.name for p in (site / "notifyhub" / "migrations").glob("*.sql"))
    assert (site / "notifyhub" / "schedules.yaml").is_file()


def test_installed_commands_work_from_an_empty_folder(
    installed: Path, tmp_path: Path, redis_url: str, database_url: str
) -> None:
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QRUNNER_", "PYTHON"))}
    env |= {"QRUNNER_REDIS_URL": redis_url, "NOTIFYHUB_DATABASE_URL": database_url}
    qrunner = str(installed / "qrunner")

    version = run([qrunner, "--version"], work, env)
    assert version.stdout.strip() == "qrunner 0.1.0"

    migrated = run([qrunner, "--app", "notifyhub.app", "migrate"], work, env)
    assert migrated.stdout.startswith("applied ") and "0001_users_consent" in migrated.stdout

    # The app's cron file is package data, found without the working directory.
    listed = run([qrunner, "schedules", "--app", "notifyhub.app"], work, env)
    assert "deliver_due_outlooks" in listed.stdout

    # A third-party task module that needs nothing but the qrunner wheel.
    (work / "greetings.py").write_text(THIRD_PARTY)
    mine = env | {"PYTHONPATH": str(work)}
    job_id = run(
        [qrunner, "enqueue", "greet", "--payload", '{"name": "ada"}', "--app", "greetings"],
        work,
        mine,
    ).stdout.strip()
    run([qrunner, "worker", "--app", "greetings", "--burst", "--no-cron"], work, mine)
    status = json.loads(run([qrunner, "status", job_id], work, mine).stdout)
    assert status["state"] == "succeeded" and status["result"] == "hello ada"

    # The notification app's worker, from the installed wheel, runs one of its jobs.
    app_job = run(
        [qrunner, "--app", "notifyhub.app", "enqueue", "health_check"], work, env
    ).stdout.strip()
    run([qrunner, "worker", "--app", "notifyhub.app", "--burst", "--no-cron"], work, env)
    app_status = json.loads(run([qrunner, "status", app_job], work, env).stdout)
    assert app_status["state"] == "succeeded" and app_status["result"]["ok"] is True
    # Nothing was written to the working directory but the module and its bytecode.
    assert sorted(p.name for p in work.iterdir()) == ["__pycache__", "greetings.py"]
