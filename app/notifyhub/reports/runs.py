"""Writing one report file from its queries, storing it, and the ``report_runs`` bookkeeping.

A run is keyed by the job that produces it: a retried job updates its own row instead of adding
one per attempt, so ``report_runs`` shows one line per requested report with its last outcome.
Rows come out of PostgreSQL through a server-side cursor in a read-only, repeatable-read
transaction (one consistent snapshot across every table of the report, however long it takes)
and are written off the event loop, so a large export neither fills memory nor stalls other
jobs. The finished file is stored in PostgreSQL (:mod:`.files`) in the transaction that marks
the run succeeded, and the local copy is removed: no worker keeps reports on its own disk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg  # type: ignore[import-untyped]

from notifyhub.settings import AppSettings

from .catalog import download_url, keep_files_for
from .files import store_file
from .writers import Format, Heading, RowWriter, open_writer

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


def plain(row: asyncpg.Record) -> Sequence[Any]:
    return list(row.values())


@dataclass(slots=True)
class Table:
    """One query of a report: a sheet of an XLSX, a section of a PDF, the whole of a CSV.
    ``totals`` is called after the last row (``observe`` has seen them all) for the bold
    closing row."""

    title: str
    columns: Sequence[str]
    sql: str
    args: Sequence[Any]
    convert: Convert = plain
    observe: Observe | None = None
    totals: Callable[[], Sequence[Any]] | None = None


@dataclass(slots=True)
class Export:
    kind: str
    params: dict[str, Any]
    fmt: Format
    heading: Heading
    tables: Sequence[Table]
    #: File name without the run id and extension, e.g. ``sales-deli-2024-03-01-2024-03-07``.
    stem: str
    business_id: int | None = None
    summary: Callable[[], list[tuple[str, list[list[Any]]]]] | None = None
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
    pool: asyncpg.Pool, settings: AppSettings, job_id: str, spec: Export
) -> dict[str, Any]:
    """Write ``spec``'s tables into a file, store it and record the run; returns the run's
    summary with the file's signed ``download_url`` (``None`` without a master secret).

    A failure marks the run failed with its error and re-raises, so qrunner's retry policy
    applies and the next attempt reuses the run row.
    """
    run_id = await start_run(pool, spec.kind, spec.params, job_id)
    filename = f"{spec.stem}-{run_id}.{spec.fmt}"
    path = settings.exports_dir / f"{filename}.{job_id}"
    writer = await asyncio.to_thread(open_writer, path, spec.fmt, spec.heading)
    try:
        counts = await _write_tables(pool, writer, spec)
        if spec.summary is not None:
            for title, rows in spec.summary():
                await asyncio.to_thread(writer.add_summary, title, rows)
        await asyncio.to_thread(writer.finish)
        async with pool.acquire() as conn, conn.transaction():
            stored = await store_file(
                conn,
                path,
                filename=filename,
                fmt=spec.fmt,
                business_id=spec.business_id,
                keep_for=keep_files_for(settings),
            )
            # A retried job replaces the file an earlier attempt stored.
            await conn.execute(
                "DELETE FROM report_files WHERE id = (SELECT file_id FROM report_runs"
                " WHERE id = $1)",
                run_id,
            )
            await conn.execute(
                "UPDATE report_runs SET status = 'succeeded', row_count = $2, file_id = $3,"
                " file_path = NULL, finished_at = now() WHERE id = $1",
                run_id,
                sum(counts.values()),
                stored.id,
            )
    except BaseException as exc:
        await asyncio.shield(_fail(pool, run_id, writer.abort, exc))
        raise
    finally:
        path.unlink(missing_ok=True)
    log.info(
        "%s run %d: %d row(s), %d bytes stored as report file %d",
        spec.kind,
        run_id,
        sum(counts.values()),
        stored.byte_size,
        stored.id,
    )
    return {
        "run_id": run_id,
        "kind": spec.kind,
        "format": spec.fmt,
        "row_count": sum(counts.values()),
        **({"table_rows": counts} if len(counts) > 1 else {}),
        "file_id": stored.id,
        "filename": filename,
        "byte_size": stored.byte_size,
        "expires_at": stored.expires_at.isoformat(),
        "download_url": download_url(settings, stored),
        **spec.extra,
    }


async def _write_tables(pool: asyncpg.Pool, writer: RowWriter, spec: Export) -> dict[str, int]:
    counts: dict[str, int] = {}
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        for table in spec.tables:
            await asyncio.to_thread(writer.start_table, table.title, table.columns)
            count = 0
            cursor = await conn.cursor(table.sql, *table.args)
            while rows := await cursor.fetch(FETCH_ROWS):
                if table.observe is not None:
                    for r in rows:
                        table.observe(r)
                await asyncio.to_thread(writer.write_rows, [table.convert(r) for r in rows])
                count += len(rows)
            if table.totals is not None:
                await asyncio.to_thread(writer.write_totals, table.totals())
            counts[table.title] = count
    return counts


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
