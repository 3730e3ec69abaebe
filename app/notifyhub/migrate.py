"""Apply ``migrations/NNNN_name.sql`` files to PostgreSQL, once each, in order.

Two deploys, or ``qrunner migrate`` next to a starting worker, may call :func:`migrate`
at the same moment, and operators run it again out of habit, so it must be safe to run
concurrently and repeatedly:

* A session-level advisory lock serialises migrators across processes and hosts; the
  loser waits, then finds nothing left to do.
* Each file runs in its own transaction together with its ``schema_migrations`` row, so a
  file is either fully applied and recorded or not applied at all. Files therefore must
  not contain ``BEGIN``/``COMMIT`` or statements that refuse a transaction
  (``CREATE INDEX CONCURRENTLY``, ``VACUUM``).
* An applied file is never re-run. If its content changed since it was applied, we stop:
  the database no longer matches what the file says, and guessing which one is right is
  the operator's call (write a new migration instead of editing an old one).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from notifyhub import db
from qrunner import BackendUnavailable, ConfigError, QrunnerError

__all__ = [
    "DEFAULT_MIGRATIONS_DIR",
    "MIGRATION_LOCK_KEY",
    "AppliedMigration",
    "Migration",
    "discover",
    "migrate",
    "pending",
    "plan",
]

log = logging.getLogger(__name__)

# "qrunner" in ASCII: a fixed, recognisable key in pg_locks, unlikely to collide with an
# application's own advisory locks.
MIGRATION_LOCK_KEY = 0x7172756E6E6572

# The repository's migrations/, found from the package rather than the working directory
# so commands work from any folder of a source checkout or editable install.
DEFAULT_MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<label>[a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    """One migration file as found on disk."""

    version: int
    name: str  # the file name without ".sql", e.g. "0001_users_consent"
    checksum: str  # sha256 hex of the content with line endings normalised
    sql: str


@dataclass(frozen=True)
class AppliedMigration:
    """One row of ``schema_migrations``."""

    version: int
    name: str
    checksum: str


def checksum(sql: str) -> str:
    """Hash the file's text so a checkout with CRLF line endings matches one with LF."""
    return hashlib.sha256(sql.replace("\r\n", "\n").encode()).hexdigest()


def discover(migrations_dir: Path) -> list[Migration]:
    """Read every ``NNNN_name.sql`` in ``migrations_dir``, ordered by version.

    A ``.sql`` file with another name is an error rather than skipped: a typo in a file
    name would otherwise leave a migration silently unapplied.
    """
    if not migrations_dir.is_dir():
        raise ConfigError(f"migrations directory {migrations_dir} does not exist")
    found: dict[int, Migration] = {}
    for path in sorted(migrations_dir.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise ConfigError(
                f"migration file {path.name!r} is not named NNNN_name.sql "
                "(four digits, underscore, lower-case letters, digits and underscores)"
            )
        version = int(match["version"])
        if version in found:
            raise ConfigError(
                f"migrations {found[version].name!r} and {path.stem!r} share version {version}"
            )
        sql = path.read_text(encoding="utf-8")
        found[version] = Migration(version, path.stem, checksum(sql), sql)
    return [found[v] for v in sorted(found)]


def plan(found: Sequence[Migration], applied: Mapping[int, AppliedMigration]) -> list[Migration]:
    """Return the migrations still to apply, refusing if an applied one was edited.

    Pure: the decision is separate from the I/O so it can be tested without a database.
    """
    for migration in found:
        done = applied.get(migration.version)
        if done is not None and done.checksum != migration.checksum:
            raise ConfigError(
                f"migration {migration.name} was changed after it was applied "
                f"(applied checksum {done.checksum[:12]}, file now {migration.checksum[:12]}); "
                "restore the original file and put the change in a new migration"
            )
    on_disk = {m.version for m in found}
    for version in sorted(set(applied) - on_disk):
        # A rolled-back deploy leaves newer rows than files; that is survivable.
        log.warning("applied migration %s has no file on disk", applied[version].name)
    return [m for m in found if m.version not in applied]


async def _read_applied(conn: asyncpg.Connection) -> dict[int, AppliedMigration]:
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    return {r["version"]: AppliedMigration(r["version"], r["name"], r["checksum"]) for r in rows}


async def _take_lock(conn: asyncpg.Connection, lock_timeout_s: float) -> None:
    """Wait for the migration lock, at most ``lock_timeout_s``.

    lock_timeout bounds the wait so a migrator stuck elsewhere cannot hang every process
    that starts; it is reset at once so it never applies to the migrations themselves.
    0 waits forever (PostgreSQL's meaning of ``lock_timeout = 0``).
    """
    await conn.execute(f"SET lock_timeout = {int(lock_timeout_s * 1000)}")
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    except asyncpg.LockNotAvailableError:
        raise QrunnerError(
            f"gave up after {lock_timeout_s:g}s waiting for the migration lock; another "
            "migration is still running (see pg_stat_activity)"
        ) from None
    finally:
        await conn.execute("RESET lock_timeout")


async def _apply(conn: asyncpg.Connection, migration: Migration) -> None:
    """Run one file and record it in the same transaction."""
    try:
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
    except asyncpg.PostgresError as exc:
        raise QrunnerError(
            f"migration {migration.name} failed and was rolled back: {type(exc).__name__}: {exc}"
        ) from exc


async def migrate(
    database_url: str, migrations_dir: Path, *, lock_timeout_s: float = 60.0
) -> list[str]:
    """Apply pending migrations and return their names, in the order applied.

    Returns an empty list when the database is already up to date, including when another
    process applied everything while this one waited for the lock.
    """
    found = discover(migrations_dir)
    conn = await db.connect(database_url)
    try:
        await _take_lock(conn, lock_timeout_s)
        await conn.execute(_CREATE_TABLE)
        applied = await _read_applied(conn)
        names: list[str] = []
        for migration in plan(found, applied):
            if applied and migration.version < max(applied):
                log.warning("applying %s after newer migrations already applied", migration.name)
            await _apply(conn, migration)
            log.info("applied migration %s", migration.name)
            names.append(migration.name)
        return names
    except asyncpg.PostgresError as exc:
        # Outside any file's SQL (those are wrapped by _apply): bookkeeping refused, e.g.
        # no permission to create schema_migrations.
        raise QrunnerError(
            f"migrating {db.endpoint(database_url)} failed: {type(exc).__name__}: {exc}"
        ) from exc
    except (OSError, asyncpg.InterfaceError) as exc:
        # The connection dropped mid-run; whatever committed stays recorded.
        raise BackendUnavailable(
            f"PostgreSQL connection to {db.endpoint(database_url)} lost while migrating: "
            f"{type(exc).__name__}"
        ) from None
    finally:
        # Closing the session releases the advisory lock, also on every error path.
        await conn.close()


async def pending(database_url: str, migrations_dir: Path) -> list[str]:
    """Return the names of migrations not yet applied, without applying anything.

    Checks checksums too, so ``qrunner migrate --check`` catches an edited migration
    before a deploy does. Takes no lock: the answer may be stale the moment it returns.
    """
    found = discover(migrations_dir)
    conn = await db.connect(database_url)
    try:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        applied = await _read_applied(conn) if exists else {}
    except (OSError, asyncpg.InterfaceError) as exc:
        raise BackendUnavailable(
            f"PostgreSQL connection to {db.endpoint(database_url)} lost: {type(exc).__name__}"
        ) from None
    finally:
        await conn.close()
    return [m.name for m in plan(found, applied)]
