"""The app's own commands, run by qrunner's CLI: ``qrunner --app notifyhub.app migrate``,
``... demo`` and ``... maybe-sent [--json]`` (``bin/qrunner`` sets the app and starts
development servers)."""

from __future__ import annotations

import argparse
import json
import math
from datetime import UTC, datetime
from typing import Any

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

    @registry.command("maybe-sent", help="list messages still recorded maybe-sent [--json]")
    async def maybe_sent_command(args: list[str], settings: Settings) -> int:
        import asyncpg  # type: ignore[import-untyped]

        from qrunner import ConfigError

        from .upkeep.monitoring import maybe_sent_messages

        parser = _Parser(prog="qrunner maybe-sent", add_help=False)
        parser.add_argument("--json", action="store_true")
        parser.add_argument("--limit", type=int, default=1000)
        try:
            opts = parser.parse_args(args)
        except ValueError as exc:
            raise ConfigError(f"maybe-sent: {exc}") from None
        url = reveal(load_app_settings().database_url)
        if url is None:
            raise ConfigError("NOTIFYHUB_DATABASE_URL: not set; give the PostgreSQL to read")
        conn = await asyncpg.connect(url)
        try:
            rows = await maybe_sent_messages(conn, max(1, opts.limit))
        finally:
            await conn.close()
        print(format_maybe_sent(rows, as_json=opts.json))
        return 0


def format_maybe_sent(rows: list[dict[str, Any]], *, as_json: bool) -> str:
    """The operator's listing: a JSON array, or an aligned table. Recipients are
    the delivery log's masked ones; errors are cut short."""
    if as_json:
        return json.dumps(
            [
                {k: v.isoformat() if isinstance(v, datetime) else v for k, v in r.items()}
                for r in rows
            ],
            indent=2,
        )
    if not rows:
        return "no maybe-sent messages"
    lines = [f"{'ID':>8}  {'CREATED (UTC)':<19}  {'CHANNEL':<7}  {'RECIPIENT':<18}  TEMPLATE / JOB"]
    for r in rows:
        created = r["created_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(
            f"{r['id']:>8}  {created:<19}  {r['channel']:<7}  {r['recipient_masked']:<18}"
            f"  {r['template']} / {r['job_id']}"
        )
    lines.append(f"{len(rows)} maybe-sent message(s); resolve with the provider's records")
    return "\n".join(lines)
