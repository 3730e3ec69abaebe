"""``bin/qrunner``: qrunner's command line in development mode.

When ``QRUNNER_REDIS_URL`` is unset, a private Redis under ``QRUNNER_DEV_STATE_DIR`` (default
``./.qrunner``) is started (or reused) and its URL put in the environment; for the commands that
need the app's database (``worker``, ``migrate``, ``demo``) so is a private PostgreSQL when
``NOTIFYHUB_DATABASE_URL`` is unset. ``QRUNNER_APP`` defaults to the notification app. With
``QRUNNER_ENV=production`` nothing is started: a missing URL is an error, as it is for the plain
``qrunner`` command.

``servers start|stop|urls`` manages the private servers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from qrunner import BackendUnavailable

DEFAULT_APP = "notifyhub.app"
NEEDS_DATABASE = {"worker", "migrate", "demo"}


def _fail(message: str) -> int:
    print(f"qrunner: {message}", file=sys.stderr)
    return 2


def _command(argv: list[str]) -> str | None:
    rest = argv[2:] if argv[:1] == ["--app"] else argv
    words = [a for a in rest if not a.startswith("-")]
    return words[0] if words else None


def servers(action: str, state_dir: Path) -> int:
    from qrunner.runtime import redact_url

    from . import embedded

    if action == "stop":
        embedded.stop_all(state_dir)
        print("stopped embedded servers")
        return 0
    if action not in {"start", "urls"}:
        return _fail(f"servers: action must be start, stop or urls, got {action[:40]!r}")
    r = embedded.ensure_redis(state_dir)
    p = embedded.ensure_postgres(state_dir)
    print(
        f"redis      {redact_url(r)} (password in {state_dir / 'redis.password'})\n"
        f"postgresql {redact_url(p)} (password in {state_dir / 'postgres.password'})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ
    state_dir = Path(env.get("QRUNNER_DEV_STATE_DIR") or ".qrunner")
    if argv[:1] == ["servers"]:
        if len(argv) != 2:
            return _fail("servers: give one action: start, stop or urls")
        return servers(argv[1], state_dir)
    env.setdefault("QRUNNER_APP", DEFAULT_APP)
    if env.get("QRUNNER_ENV", "development") != "production":
        from . import embedded

        try:
            if not env.get("QRUNNER_REDIS_URL"):
                env["QRUNNER_REDIS_URL"] = embedded.ensure_redis(state_dir)
            if _command(argv) in NEEDS_DATABASE and not env.get("NOTIFYHUB_DATABASE_URL"):
                env["NOTIFYHUB_DATABASE_URL"] = embedded.ensure_postgres(state_dir)
        except (BackendUnavailable, OSError) as exc:  # say which server failed
            print(f"qrunner: development server: {exc}", file=sys.stderr)
            return 1
        env.setdefault("NOTIFYHUB_EXPORTS_DIR", str(state_dir / "exports"))
    from qrunner.cli import main as qrunner_main

    return qrunner_main(argv)


if __name__ == "__main__":
    sys.exit(main())
