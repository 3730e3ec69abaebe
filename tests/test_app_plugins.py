"""An application plugs into the runtime through its registry only: commands, routes (public
or behind the token), readiness checks, queue order and weights, its own cron file; the plain
``qrunner`` command never starts a server of its own, and ``bin/qrunner``'s development mode
does not either under ``QRUNNER_ENV=production``. The app's settings are validated like the
runtime's, and the deploy files' commands parse."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from notifyhub.settings import load_app_settings

from qrunner import ConfigError, Registry
from qrunner.cli import build_parser
from tests.helpers import plugin_app

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.helpers.plugin_app"
TOKEN = "t" * 40


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("QRUNNER_", "NOTIFYHUB_", "TWILIO_", "RESEND_"))
    }
    env["PYTHONPATH"] = str(ROOT)
    env["QRUNNER_LOG_LEVEL"] = "WARNING"
    return env | extra


def run(*argv: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_app_command_runs_with_its_arguments(tmp_path: Path) -> None:
    out = run("-m", "qrunner.cli", "--app", APP, "hello", "a", "b", cwd=tmp_path)
    assert (out.returncode, out.stdout) == (0, "hello a b\n"), out.stderr
    # QRUNNER_APP names the app when --app is not given.
    out = run("-m", "qrunner.cli", "hello", "x", cwd=tmp_path, QRUNNER_APP=APP)
    assert (out.returncode, out.stdout) == (0, "hello x\n"), out.stderr


def test_app_command_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    out = run("-m", "qrunner.cli", "--app", APP, "hello", "--fail", cwd=tmp_path)
    assert (out.returncode, out.stderr) == (2, "qrunner: hello: --fail given\n")
    out = run("-m", "qrunner.cli", "--app", APP, "helo", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("qrunner: usage: no command 'helo' (commands: worker, ")
    assert out.stderr.rstrip().endswith(", hello)")
    out = run("-m", "qrunner.cli", "hello", cwd=tmp_path)
    assert (out.returncode, out.stderr) == (
        2,
        "qrunner: --app: no application given; pass --app MODULE or set QRUNNER_APP\n",
    )


def test_the_registry_carries_queue_order_weights_and_schedules() -> None:
    reg = plugin_app.registry
    assert reg.queues() == ["urgent", "bulk"]
    assert reg.weights == {"urgent": 5} and reg.schedules == plugin_app.SCHEDULES
    merged = Registry(queue_order=["bulk"]).merge(reg)
    assert merged.queues() == ["bulk", "urgent"]
    assert merged.public_prefixes == ("/hooks/",) and list(merged.commands) == ["hello"]
    assert [name for name, _ in merged.readiness_checks] == ["plugin-backend"]
    other = Registry()
    other.command("hello")(lambda args, settings: 0)
    with pytest.raises(ConfigError, match="command 'hello' is registered twice"):
        reg.merge(other)


def test_the_apps_own_cron_file_is_used_from_any_directory(redis_url: str, tmp_path: Path) -> None:
    out = run(
        "-m", "qrunner.cli", "schedules", "--app", APP, cwd=tmp_path, QRUNNER_REDIS_URL=redis_url
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"^tidy-hourly\s+tidy\s+0 \* \* \* \*", out.stdout, re.MULTILINE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def endpoint(redis_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    port = _free_port()
    ready = getattr(request, "param", "1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qrunner.cli", "http", "--port", str(port), "--app", APP],
        cwd=ROOT,
        env=clean_env(
            QRUNNER_REDIS_URL=redis_url, QRUNNER_HTTP_TOKEN=TOKEN, PLUGIN_APP_READY=ready
        ),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None, "qrunner http exited"
            time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


async def test_http_command_serves_the_apps_routes_without_a_worker(endpoint: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{endpoint}/hooks/ping") as r:
            assert (r.status, await r.json()) == (200, {"hook": "plugin-app"})
        async with http.get(f"{endpoint}/plugin/private") as r:
            assert r.status == 401
        async with http.get(f"{endpoint}/plugin/private", headers=auth) as r:
            assert (r.status, await r.json()) == (200, {"private": "plugin-app"})
        async with http.get(f"{endpoint}/readyz", headers=auth) as r:
            body = await r.json()
            assert r.status == 200 and body["checked"] == ["redis", "plugin-backend"]


@pytest.mark.parametrize("endpoint", ["0"], indirect=True)
async def test_a_failing_app_readiness_check_makes_readyz_503(endpoint: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{endpoint}/readyz", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as r:
            body = await r.json()
    assert r.status == 503
    assert body["failed"] == [{"dependency": "plugin-backend", "error": "ConnectionError"}]


def test_plain_qrunner_never_starts_a_server(tmp_path: Path) -> None:
    out = run("-m", "qrunner.cli", "stats", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("qrunner: QRUNNER_REDIS_URL: not set")
    assert list(tmp_path.iterdir()) == []


def test_production_mode_forbids_the_development_servers(tmp_path: Path) -> None:
    out = run("-m", "qrunner_devservers", "stats", cwd=tmp_path, QRUNNER_ENV="production")
    assert (out.returncode, out.stderr) == (
        2,
        "qrunner: QRUNNER_REDIS_URL: not set; give the Redis to use\n",
    )
    assert list(tmp_path.iterdir()) == []  # no ./.qrunner, no server started
    out = run("-m", "qrunner.cli", "stats", cwd=tmp_path, QRUNNER_ENV="prod")
    assert out.returncode == 2 and out.stderr.startswith("qrunner: QRUNNER_ENV='prod': ")


def test_app_settings_are_validated_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="unknown setting NOTIFYHUB_PUBLIC_ULR"):
        load_app_settings({"NOTIFYHUB_PUBLIC_ULR": "https://x"})
    with pytest.raises(ConfigError, match="NOTIFYHUB_PUBLIC_URL='ftp://x': must be an http"):
        load_app_settings({"NOTIFYHUB_PUBLIC_URL": "ftp://x"})
    with pytest.raises(ConfigError, match="NOTIFYHUB_QUIET_HOURS='9pm-8am': must be HH:MM-HH:MM"):
        load_app_settings({"NOTIFYHUB_QUIET_HOURS": "9pm-8am"})
    with pytest.raises(ConfigError) as short:
        load_app_settings({"NOTIFYHUB_SIGNING_SECRET": "s3cret-but-short"})
    assert str(short.value).startswith("NOTIFYHUB_SIGNING_SECRET: ")
    assert "s3cret" not in str(short.value)
    s = load_app_settings(
        {"TWILIO_AUTH_TOKEN": "tok-123", "NOTIFYHUB_DATABASE_URL": "postgresql://u:pw@h/db"}
    )
    assert s.twilio_auth_token is not None and s.twilio_auth_token.get_secret_value() == "tok-123"
    assert "tok-123" not in repr(s) and "pw@" not in repr(s)


def _deploy_commands() -> list[list[str]]:
    commands = []
    for unit in sorted((ROOT / "deploy" / "systemd").glob("*.service")):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                commands.append(shlex.split(line.removeprefix("ExecStart="))[1:])
    for line in (ROOT / "Procfile").read_text().splitlines():
        commands.append(shlex.split(line.split(":", 1)[1].replace("$PORT", "8080"))[1:])
    return commands


def test_deploy_files_run_commands_the_cli_accepts() -> None:
    commands = _deploy_commands()
    assert len(commands) == 6
    for argv in commands:
        argv = [a.replace("%i", "1") for a in argv]
        if argv[0] == "migrate":  # an app command: checked by the app's registry
            from notifyhub.app import registry

            assert "migrate" in registry.commands
            continue
        build_parser().parse_args(argv)
