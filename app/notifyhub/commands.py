"""The app's own commands, run by qrunner's CLI: ``qrunner --app notifyhub.app migrate`` and
``... demo`` (``bin/qrunner`` sets the app and starts development servers)."""

from __future__ import annotations

import argparse
import math

from qrunner import Registry, Settings

from .settings import load_app_settings, reveal


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text[:40]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number from 0, got {text[:40]!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # qrunner's CLI prints "qrunner: <message>" and exits 2 for this error type.
        raise ValueError(message.removeprefix("argument "))


def register_commands(registry: Registry) -> None:
    @registry.command("migrate", help="apply the app's PostgreSQL migrations")
    async def migrate_command(args: list[str], settings: Settings) -> int:
        from qrunner import ConfigError

        from .migrate import DEFAULT_MIGRATIONS_DIR, migrate

        if args:
            raise ConfigError(f"migrate: takes no arguments, got {args[0][:40]!r}")
        url = reveal(load_app_settings().database_url)
        if url is None:
            raise ConfigError("NOTIFYHUB_DATABASE_URL: not set; give the PostgreSQL to migrate")
        applied = await migrate(url, DEFAULT_MIGRATIONS_DIR)
        print(
            f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else "")
        )
        return 0

    @registry.command("demo", help="worker + fake providers + a demo that enqueues work")
    async def demo_command(args: list[str], settings: Settings) -> int:
        from qrunner import ConfigError

        parser = _Parser(prog="qrunner demo", add_help=False)
        parser.add_argument("--seconds", type=_seconds, default=0.0)
        try:
            opts = parser.parse_args(args)
        except ValueError as exc:
            raise ConfigError(f"demo: {exc}") from None
        from .showcase import run_demo

        return await run_demo(settings, seconds=opts.seconds)
