"""Report files stored in PostgreSQL (``report_files`` plus ``report_file_chunks``).

Why PostgreSQL and not a directory: every worker reaches PostgreSQL already, while workers
share no disk, so a file written by one worker could not be served by the worker that answers
its download link. Why bytea chunks and not large objects: chunk rows belong to their file
row (``ON DELETE CASCADE``), so deleting an expired file deletes its bytes in the same
statement and a rolled-back store leaves nothing behind; large objects live outside any table
and need ``lo_unlink`` (or ``vacuumlo``) to be reclaimed. Chunks of :data:`CHUNK_BYTES` keep
memory flat on both sides: a worker copies a finished file in chunk by chunk and the download
route sends it out the same way, one short query per chunk.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

CHUNK_BYTES = 1024 * 1024

MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pdf": "application/pdf",
}


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: int
    filename: str
    media_type: str
    byte_size: int
    chunk_count: int
    created_at: datetime
    expires_at: datetime


async def _chunks(path: Path, digest: hashlib._Hash) -> AsyncIterator[bytes]:
    """``path`` in :data:`CHUNK_BYTES` pieces, read off the event loop a few MiB at a time."""
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, CHUNK_BYTES):
            digest.update(chunk)
            yield chunk


async def store_file(
    conn: asyncpg.Connection,
    path: Path,
    *,
    filename: str,
    fmt: str,
    business_id: int | None,
    keep_for: timedelta,
) -> StoredFile:
    """Copy ``path`` into PostgreSQL as one file; call inside the transaction that records the
    run, so a file is either stored and referenced or not stored at all."""
    row = await conn.fetchrow(
        "INSERT INTO report_files (business_id, filename, media_type, byte_size, chunk_count,"
        " sha256, expires_at) VALUES ($1, $2, $3, 0, 0, $4, now() + $5) RETURNING id, created_at,"
        " expires_at",
        business_id,
        filename,
        MEDIA_TYPES[fmt],
        bytes(32),
        keep_for,
    )
    digest = hashlib.sha256()
    size = count = 0

    async def records() -> AsyncIterator[tuple[int, int, bytes]]:
        nonlocal size, count
        async for chunk in _chunks(path, digest):
            yield (row["id"], count, chunk)
            size += len(chunk)
            count += 1

    await conn.copy_records_to_table(
        "report_file_chunks", records=records(), columns=("file_id", "seq", "data")
    )
    await conn.execute(
        "UPDATE report_files SET byte_size = $2, chunk_count = $3, sha256 = $4 WHERE id = $1",
        row["id"],
        size,
        count,
        digest.digest(),
    )
    return StoredFile(
        row["id"], filename, MEDIA_TYPES[fmt], size, count, row["created_at"], row["expires_at"]
    )


async def find_file(pool: asyncpg.Pool, file_id: int) -> StoredFile | None:
    row = await pool.fetchrow(
        "SELECT id, filename, media_type, byte_size, chunk_count, created_at, expires_at"
        " FROM report_files WHERE id = $1",
        file_id,
    )
    return None if row is None else StoredFile(**dict(row))


async def iter_file(pool: asyncpg.Pool, file: StoredFile) -> AsyncIterator[bytes]:
    """The file's bytes chunk by chunk, each from its own short query (a slow reader never
    holds a pooled connection). A chunk gone missing (the file was deleted mid-download)
    raises ``LookupError``."""
    for seq in range(file.chunk_count):
        data: bytes | None = await pool.fetchval(
            "SELECT data FROM report_file_chunks WHERE file_id = $1 AND seq = $2", file.id, seq
        )
        if data is None:
            raise LookupError(f"report file {file.id} lost chunk {seq}")
        yield data


async def read_file(pool: asyncpg.Pool, file_id: int) -> bytes:
    """A whole stored file (tests and small files only: it is all in memory)."""
    file = await find_file(pool, file_id)
    if file is None:
        raise LookupError(f"report file {file_id} does not exist")
    return b"".join([c async for c in iter_file(pool, file)])


async def delete_expired(pool: asyncpg.Pool, now: datetime, limit: int) -> int:
    """Delete up to ``limit`` files past their expiry (their chunks go with them)."""
    status: str = await pool.execute(
        "DELETE FROM report_files WHERE id IN ("
        " SELECT id FROM report_files WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2"
        " FOR UPDATE SKIP LOCKED)",
        now,
        limit,
    )
    return int(status.split()[-1])
