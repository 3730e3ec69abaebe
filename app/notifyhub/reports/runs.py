"""Writing one report file from a query, with its ``report_runs`` bookkeeping.

A run is keyed by the job that produces it: a retried job updates its own row instead of adding
one per attempt, so ``report_runs`` shows one line per requested report with its last outcome.
Rows come out of PostgreSQL through a server-side cursor in a read-only, repeatable-read
transaction (one consistent snapshot, however long the export takes) and are written off the
event loop, so a large export neither fills memory nor stalls other jobs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg  # type: ignore[import-untyped]

from .writers import Format, open_writer

log = logging.getLogger(__name__)

FETCH_ROWS = 1000

Convert = Callable[[asyncpg.Record], Sequence[Any]]
Observe = Callable[[asyncpg.Record], None]


def resolve_zone(name: str | None) -> tzinfo:
    """A business's zone, or UTC when unknown: a report in UTC beats no report."""
    try:
        return ZoneInfo(name) if name else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def local_times(zone: tzinfo) -> Convert:
    """Row converter that shows every timestamp in ``zone`` (what the shop's staff expect)."""

    def convert(row: asyncpg.Record) -> Sequence[Any]:
        return [v.astimezone(zone) if isinstance(v, datetime) else v for v in row.values()]

    return convert


@dataclass(slots=True)
class Export:
    kind: str
    params: dict[str, Any]
    fmt: Format
    columns: Sequence[str]
    sql: str
    args: Sequence[Any]
    stem: str
    convert: Convert
    observe: Observe | None = None
    summary: Callable[[], tuple[str, list[list[Any]]] | None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


async def start_run(pool: asyncpg.Pool, kind: str, params: dict[str, Any], job_id: str) -> int:
    async with pool.acquire() as conn:
        run_id: int | None = await conn.fetchval(
            "UPDATE report_runs SET status = 'running', started_at = now(), finished_at = NULL,"
            " error = NULL WHERE job_id = $1 AND kind = $2 RETURNING id",
            job_id,
            kind,
        )
        if run_id is None:
            run_id = await conn.fetchval(
                "INSERT INTO report_runs (kind, params, status, job_id, started_at)"
                " VALUES ($1, $2, 'running', $3, now()) RETURNING id",
                kind,
                params,
                job_id,
            )
    assert run_id is not None
    return run_id


async def run_export(
    pool: asyncpg.Pool, directory: Path, job_id: str, spec: Export
) -> dict[str, Any]:
    """Stream ``spec.sql`` into a file and record the run; returns the run's summary.

    A failure marks the run failed with its error and re-raises, so qrunner's retry policy
    applies and the next attempt reuses the run row.
    """
    run_id = await start_run(pool, spec.kind, spec.params, job_id)
    path = directory / f"{spec.stem}-{run_id}.{spec.fmt}"
    writer = await asyncio.to_thread(open_writer, path, spec.fmt, spec.columns)
    count = 0
    try:
        async with (
            pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            cursor = await conn.cursor(spec.sql, *spec.args)
            while rows := await cursor.fetch(FETCH_ROWS):
                if spec.observe is not None:
                    for r in rows:
                        spec.observe(r)
                await asyncio.to_thread(writer.write_rows, [spec.convert(r) for r in rows])
                count += len(rows)
        summary = spec.summary() if spec.summary else None
        if summary is not None:
            await asyncio.to_thread(writer.add_summary, *summary)
        await asyncio.to_thread(writer.finish)
    except BaseException as exc:
        await asyncio.shield(_fail(pool, run_id, writer.abort, exc))
        raise
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE report_runs SET status = 'succeeded', row_count = $2, file_path = $3,"
            " finished_at = now() WHERE id = $1",
            run_id,
            count,
            str(path),
        )
    log.info("%s run %d: %d row(s) written to %s", spec.kind, run_id, count, path)
    return {
        "run_id": run_id,
        "kind": spec.kind,
        "format": spec.fmt,
        "row_count": count,
        "file_path": str(path),
        **spec.extra,
    }


async def _fail(
    pool: asyncpg.Pool, run_id: int, abort: Callable[[], None], exc: BaseException
) -> None:
    try:
        await asyncio.to_thread(abort)
    except Exception:  # the run failed already; a leftover .part file is only clutter
        log.exception("could not remove the partial file of report run %d", run_id)
    reason = (
        "cancelled" if isinstance(exc, asyncio.CancelledError) else f"{type(exc).__name__}: {exc}"
    )
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE report_runs SET status = 'failed', error = $2, finished_at = now()"
            " WHERE id = $1",
            run_id,
            reason[:2000],
        )
