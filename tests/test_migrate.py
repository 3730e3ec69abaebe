"""Migrations, the migrator's guarantees, the pool's codecs and the demo seed.

The migrator runs at every start-up of every process, so the tests that matter most are
the concurrent ones: two migrators racing on one database must apply each file once.
They hold the migration lock first and release it only once both contenders are seen
waiting in pg_locks, so the race is forced rather than hoped for.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from notifyhub.db import create_pool, endpoint, redact_url
from notifyhub.demo_data import seed_demo_data
from notifyhub.migrate import (
    DEFAULT_MIGRATIONS_DIR,
    MIGRATION_LOCK_KEY,
    AppliedMigration,
    Migration,
    checksum,
    discover,
    migrate,
    pending,
    plan,
)

from qrunner.errors import BackendUnavailable, ConfigError, QrunnerError

REPO = Path(__file__).resolve().parent.parent
MIGRATIONS = REPO / "app" / "notifyhub" / "migrations"
ALL_NAMES = [p.stem for p in sorted(MIGRATIONS.glob("*.sql"))]

EXPECTED_TABLES = {
    "users", "consents", "consent_events", "suppressions", "delivery_log", "effect_ledger",
    "sandbox_outbox", "inbound_events", "daily_outlooks", "report_runs", "businesses",
    "customers", "products", "stock_movements", "orders", "order_items", "sales",
    "sale_items", "credit_purchases", "user_credits", "meetings", "meeting_participants",
    "messages", "goals", "goal_milestones", "bills", "onboarding_progress",
    "schema_migrations",
}  # fmt: skip


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test's fresh database."""
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def migrated(database_url: str, conn: asyncpg.Connection) -> asyncpg.Connection:
    """A connection to a database with every migration applied."""
    await migrate(database_url, MIGRATIONS)
    return conn


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


def _unused_port() -> int:
    """A port nothing listens on: bound once by us to pick it, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _wait_for_lock_waiters(conn: asyncpg.Connection, count: int) -> None:
    """Return once ``count`` sessions are queued on the migration lock in this database."""
    # A bigint advisory key shows in pg_locks split into classid (high) and objid (low).
    query = """
        SELECT count(*) FROM pg_locks
        WHERE locktype = 'advisory' AND NOT granted
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND classid = $1 AND objid = $2 AND objsubid = 1
    """
    high, low = MIGRATION_LOCK_KEY >> 32, MIGRATION_LOCK_KEY & 0xFFFFFFFF
    try:
        async with asyncio.timeout(30):
            # The condition lives in the server, where nothing can notify us: poll it.
            while await conn.fetchval(query, high, low) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{count} migrators never queued on the migration lock") from None


async def _applied_rows(conn: asyncpg.Connection) -> list[str]:
    return [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY 1")]


# -- the pure core -----------------------------------------------------------------------------


def _migration(version: int, sql: str = "SELECT 1") -> Migration:
    return Migration(version, f"{version:04d}_m", checksum(sql), sql)


def test_plan_returns_unapplied_migrations_in_version_order() -> None:
    # Given three files of which the second is applied
    found = [_migration(1), _migration(2), _migration(3)]
    applied = {2: AppliedMigration(2, "0002_m", found[1].checksum)}
    # When planning, then the first and third remain, in order
    assert [m.version for m in plan(found, applied)] == [1, 3]


def test_plan_refuses_a_migration_edited_after_it_was_applied() -> None:
    # Given an applied file whose content has since changed
    found = [_migration(1, "CREATE TABLE a (id int)")]
    applied = {1: AppliedMigration(1, "0001_m", checksum("CREATE TABLE a ()"))}
    # When planning, then the migrator refuses and names the file
    with pytest.raises(ConfigError, match="0001_m was changed after it was applied"):
        plan(found, applied)


def test_default_migrations_dir_is_found_from_the_package_not_the_cwd() -> None:
    assert DEFAULT_MIGRATIONS_DIR == MIGRATIONS
    assert discover(DEFAULT_MIGRATIONS_DIR)  # and it holds migrations


def test_checksum_ignores_windows_line_endings() -> None:
    assert checksum("SELECT 1;\r\nSELECT 2;\r\n") == checksum("SELECT 1;\nSELECT 2;\n")


def test_discover_rejects_a_misnamed_sql_file(tmp_path: Path) -> None:
    _write(tmp_path, {"0001_ok.sql": "SELECT 1", "2_Oops.sql": "SELECT 1"})
    with pytest.raises(ConfigError, match=re.escape("'2_Oops.sql' is not named NNNN_name.sql")):
        discover(tmp_path)


def test_discover_rejects_two_files_with_one_version(tmp_path: Path) -> None:
    _write(tmp_path, {"0001_a.sql": "SELECT 1", "0001_b.sql": "SELECT 1"})
    with pytest.raises(ConfigError, match="share version 1"):
        discover(tmp_path)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://app:s3cret@db.example.com:6543/q", "postgresql://app@db.example.com:6543/q"),
        ("postgresql://:s3cret@db/q", "postgresql://db/q"),
        ("postgresql://app@db/q?password=s3cret&sslmode=require", "postgresql://app@db/q?sslmode=require"),
        ("postgresql:///q?host=/run/pg", "postgresql:///q?host=/run/pg"),
    ],
)  # fmt: skip
def test_redact_url_drops_the_password(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert "s3cret" not in redact_url(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://app:pw@db.example.com:6543/q", "db.example.com:6543"),
        ("postgresql://app:pw@db.example.com/q", "db.example.com:5432"),
        ("postgresql:///q", "localhost:5432"),
        ("postgresql:///q?host=/run/pg&port=5433", "/run/pg:5433"),
        ("postgresql://u:pw@[::1]:5444/q", "[::1]:5444"),
        ("postgresql://u:pw@h1:5432,h2:5433/q", "h1:5432,h2:5433"),
    ],
)
def test_endpoint_names_host_and_port_only(url: str, expected: str) -> None:
    assert endpoint(url) == expected


# -- applying the real migrations ------------------------------------------------------------


async def test_fresh_database_gets_every_migration_and_table(
    database_url: str, conn: asyncpg.Connection
) -> None:
    # Given an empty database, when migrating
    applied = await migrate(database_url, MIGRATIONS)
    # Then every file is applied in order and recorded, and every table exists
    assert applied == ALL_NAMES
    assert await _applied_rows(conn) == ALL_NAMES
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    tables = {r["tablename"] for r in rows}
    assert EXPECTED_TABLES <= tables


async def test_second_run_applies_nothing(database_url: str, migrated: asyncpg.Connection) -> None:
    # Given a fully migrated database, when migrating again, then nothing is applied
    assert await migrate(database_url, MIGRATIONS) == []
    assert await pending(database_url, MIGRATIONS) == []
    assert await _applied_rows(migrated) == ALL_NAMES


async def test_pending_lists_what_migrate_would_apply(database_url: str, tmp_path: Path) -> None:
    # Given two files of which one is applied
    directory = _write(tmp_path / "m", {"0001_one.sql": "CREATE TABLE one (id int)"})
    assert await pending(database_url, directory) == ["0001_one"]  # no schema_migrations yet
    await migrate(database_url, directory)
    _write(directory, {"0002_two.sql": "CREATE TABLE two (id int)"})
    # When asking what is pending, then only the new file is named
    assert await pending(database_url, directory) == ["0002_two"]


async def test_concurrent_migrate_tasks_apply_each_file_once(
    database_url: str, conn: asyncpg.Connection
) -> None:
    # Given the migration lock held, and two migrators on their own connections queued on it
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    first = asyncio.create_task(migrate(database_url, MIGRATIONS))
    second = asyncio.create_task(migrate(database_url, MIGRATIONS))
    try:
        await _wait_for_lock_waiters(conn, 2)
    finally:
        # When the lock is released (also if the wait failed, so the tasks can finish)
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    results = await asyncio.gather(first, second)
    # Then one of them applied everything and the other nothing
    assert sorted(results, key=len) == [[], ALL_NAMES]
    assert await _applied_rows(conn) == ALL_NAMES


async def test_concurrent_migrate_processes_apply_each_file_once(
    database_url: str, conn: asyncpg.Connection
) -> None:
    # Given the lock held, and two OS processes each running migrate() queued on it
    script = (
        "import asyncio, json, sys\n"
        "from pathlib import Path\n"
        "from notifyhub.migrate import migrate\n"
        "print(json.dumps(asyncio.run(migrate(sys.argv[1], Path(sys.argv[2])))))\n"
    )
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, database_url, str(MIGRATIONS),
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]  # fmt: skip
    try:
        await _wait_for_lock_waiters(conn, 2)
    finally:
        # When the lock is released (also if the wait failed, so the children can exit)
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    outputs = [await proc.communicate() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err.decode() for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]
    # Then each file was applied by exactly one process
    assert sorted(results, key=len) == [[], ALL_NAMES]
    assert await _applied_rows(conn) == ALL_NAMES


async def test_migrate_gives_up_when_the_lock_is_held_too_long(
    database_url: str, conn: asyncpg.Connection
) -> None:
    # Given another session holding the migration lock
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    # When migrating with a short lock timeout, then it gives up with a clear reason
    with pytest.raises(QrunnerError, match="waiting for the migration lock"):
        await migrate(database_url, MIGRATIONS, lock_timeout_s=0.2)
    # And applied nothing
    assert await conn.fetchval("SELECT to_regclass('schema_migrations') IS NULL")


async def test_changed_checksum_is_refused(database_url: str, tmp_path: Path) -> None:
    # Given a copy of the migrations, applied
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, directory)
    await migrate(database_url, directory)
    # When an applied file is edited
    edited = directory / f"{ALL_NAMES[0]}.sql"
    edited.write_text(edited.read_text() + "\nCREATE TABLE sneaky (id int);\n")
    # Then both migrate and pending refuse, naming the file
    with pytest.raises(ConfigError, match=f"{ALL_NAMES[0]} was changed after it was applied"):
        await migrate(database_url, directory)
    with pytest.raises(ConfigError, match=ALL_NAMES[0]):
        await pending(database_url, directory)


async def test_failing_migration_rolls_back_only_itself(
    database_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    # Given a good file followed by one that fails half-way
    directory = _write(
        tmp_path / "m",
        {
            "0001_good.sql": "CREATE TABLE good (id int);",
            "0002_bad.sql": "CREATE TABLE half (id int);\nSELECT * FROM no_such_table;",
        },
    )
    # When migrating, then the error names the failing file
    with pytest.raises(QrunnerError, match="0002_bad failed and was rolled back"):
        await migrate(database_url, directory)
    # And the good file stays applied while nothing of the bad one remains
    assert await _applied_rows(conn) == ["0001_good"]
    assert await conn.fetchval("SELECT to_regclass('good') IS NOT NULL")
    assert await conn.fetchval("SELECT to_regclass('half') IS NULL")


async def test_unreachable_database_names_host_and_port_but_not_password() -> None:
    # Given a URL whose port has no server behind it
    port = _unused_port()
    url = f"postgresql://qrunner:hunter2@127.0.0.1:{port}/qrunner"
    # When connecting through any entry point, then BackendUnavailable names only host:port
    for attempt in (migrate(url, MIGRATIONS), pending(url, MIGRATIONS), create_pool(url)):
        with pytest.raises(BackendUnavailable) as caught:
            await attempt
        message = str(caught.value)
        assert f"127.0.0.1:{port}" in message
        assert "hunter2" not in message
        assert caught.value.__cause__ is None  # no chained error that could print the DSN


async def test_refused_login_is_reported_without_the_password(database_url: str) -> None:
    # Given the test server's URL with a role that does not exist (refused under any auth
    # method) and a password
    parts = urlsplit(database_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    bad = urlunsplit(parts._replace(netloc=f"nobody_here:hunter2@{host}"))
    # When connecting, then the refusal names host:port and hides the password
    with pytest.raises(BackendUnavailable, match="server refused the connection") as caught:
        await pending(bad, MIGRATIONS)
    assert endpoint(bad) in str(caught.value)
    assert "hunter2" not in str(caught.value)


# -- schema constraints ----------------------------------------------------------------------


async def test_phone_must_be_e164(migrated: asyncpg.Connection) -> None:
    insert = "INSERT INTO users (name, phone) VALUES ('Pat', $1)"
    with pytest.raises(asyncpg.CheckViolationError, match="e164_phone"):
        await migrated.execute(insert, "555-1234")
    with pytest.raises(asyncpg.CheckViolationError):
        await migrated.execute(insert, "+1 555 555 0100")
    await migrated.execute(insert, "+15555550100")  # accepted


async def test_inbound_event_is_unique_per_provider_event_id(migrated: asyncpg.Connection) -> None:
    insert = """
        INSERT INTO inbound_events (provider, provider_event_id, type, payload)
        VALUES ($1, $2, 'charge.success', '{}') ON CONFLICT DO NOTHING RETURNING id
    """
    # Given an event stored once, when the provider redelivers it, then nothing is inserted
    assert await migrated.fetchval(insert, "paystack", "evt_1") is not None
    assert await migrated.fetchval(insert, "paystack", "evt_1") is None
    # And the same id from another provider is a different event
    assert await migrated.fetchval(insert, "twilio", "evt_1") is not None
    with pytest.raises(asyncpg.UniqueViolationError):
        await migrated.execute(
            "INSERT INTO inbound_events (provider, provider_event_id, type, payload)"
            " VALUES ('paystack', 'evt_1', 'x', '{}')"
        )


async def test_delivery_costs_roll_up_per_user_per_day(migrated: asyncpg.Connection) -> None:
    # Given two SMS today, one yesterday and a sandboxed email for one user
    user_id = await migrated.fetchval("INSERT INTO users (name) VALUES ('Pat') RETURNING id")
    now = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
    rows = [
        ("sms", "sent", 2, Decimal("0.01580"), now),
        ("sms", "maybe_sent", 1, Decimal("0.00790"), now - timedelta(hours=1)),
        ("sms", "sent", 1, Decimal("0.00790"), now - timedelta(days=1)),
        ("email", "sandbox", None, None, now),
    ]
    for channel, status, segments, cost, at in rows:
        await migrated.execute(
            """
            INSERT INTO delivery_log (job_id, user_id, channel, template, recipient_masked,
                provider, status, segments, cost, currency, created_at)
            VALUES ('job-1', $1, $2, 'payment_reminder', '+1555***0100', 'twilio', $3, $4, $5,
                CASE WHEN $5::numeric IS NULL THEN NULL ELSE 'USD' END, $6)
            """,
            user_id, channel, status, segments, cost, at,
        )  # fmt: skip
    # When reading today's rollup
    today = await migrated.fetch(
        "SELECT channel, messages, segments, cost FROM daily_user_costs"
        " WHERE user_id = $1 AND day = $2 ORDER BY channel",
        user_id, now.date(),
    )  # fmt: skip
    # Then today's SMS cost is summed and yesterday's is not included
    assert [tuple(r) for r in today] == [
        ("email", 1, 0, Decimal("0")),
        ("sms", 2, 3, Decimal("0.02370")),
    ]


async def test_current_consent_follows_the_latest_opt_in_or_out(
    migrated: asyncpg.Connection,
) -> None:
    user_id = await migrated.fetchval("INSERT INTO users (name) VALUES ('Pat') RETURNING id")
    consented = "SELECT consented FROM current_consents WHERE user_id = $1 AND channel = 'sms'"
    # Given an opt-in
    await migrated.execute(
        "INSERT INTO consents (user_id, channel, opted_in_at, opt_in_source)"
        " VALUES ($1, 'sms', '2025-01-01T00:00:00Z', 'signup_form')",
        user_id,
    )
    assert await migrated.fetchval(consented, user_id) is True
    # When STOP arrives, then the user is no longer consented
    await migrated.execute(
        "UPDATE consents SET opted_out_at = '2025-02-01T00:00:00Z', opt_out_source = 'sms_stop'"
        " WHERE user_id = $1",
        user_id,
    )
    assert await migrated.fetchval(consented, user_id) is False
    # When they opt in again later, then they are consented, and every change was audited
    await migrated.execute(
        "UPDATE consents SET opted_in_at = '2025-03-01T00:00:00Z', opt_in_source = 'sms_start'"
        " WHERE user_id = $1",
        user_id,
    )
    assert await migrated.fetchval(consented, user_id) is True
    actions = await migrated.fetch(
        "SELECT action, source FROM consent_events WHERE user_id = $1 ORDER BY occurred_at",
        user_id,
    )
    assert [tuple(a) for a in actions] == [
        ("opt_in", "signup_form"),
        ("opt_out", "sms_stop"),
        ("opt_in", "sms_start"),
    ]


# -- pool and demo data ----------------------------------------------------------------------


async def test_pool_decodes_json_and_jsonb_with_orjson(database_url: str) -> None:
    await migrate(database_url, MIGRATIONS)
    pool = await create_pool(database_url, max_size=2)
    try:
        payload = {"Body": "STOP", "n": [1, 2.5, None], "nested": {"ok": True}}
        # When writing a dict to a jsonb column and reading it back
        await pool.execute(
            "INSERT INTO inbound_events (provider, provider_event_id, type, payload)"
            " VALUES ('twilio', 'SM1', 'sms.inbound', $1)",
            payload,
        )
        # Then it comes back as the same Python object, for jsonb and json alike
        assert await pool.fetchval("SELECT payload FROM inbound_events") == payload
        assert await pool.fetchval("SELECT payload::json FROM inbound_events") == payload
    finally:
        await pool.close()


async def test_demo_seed_is_idempotent_and_covers_the_demo_cases(database_url: str) -> None:
    await migrate(database_url, MIGRATIONS)
    pool = await create_pool(database_url, max_size=2)
    tables = ("users", "consents", "consent_events", "products", "orders", "order_items",
              "sales", "stock_movements", "meetings", "meeting_participants", "messages",
              "bills", "credit_purchases", "user_credits", "goals", "goal_milestones",
              "onboarding_progress")  # fmt: skip
    count_all = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in tables)
    try:
        # Given the demo data seeded twice (once concurrently with itself)
        await seed_demo_data(pool)
        counts = dict(await pool.fetch(count_all))
        await asyncio.gather(seed_demo_data(pool), seed_demo_data(pool))
        # Then the second seeding added nothing
        assert dict(await pool.fetch(count_all)) == counts
        assert all(counts[t] > 0 for t in tables)
        # And each demo case is present
        zones = {r[0] for r in await pool.fetch("SELECT time_zone FROM users")}
        assert {"America/New_York", "Europe/London", "Asia/Tokyo", "Mars/Olympus"} <= zones
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM current_consents WHERE channel = 'sms' AND NOT consented"
            )
            == 1
        )
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM products WHERE active AND stock <= reorder_level"
            )
            == 1
        )
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM products WHERE expiry_date <= current_date + 7"
            )
            == 1
        )
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM meetings WHERE status = 'scheduled'"
                " AND starts_at BETWEEN now() AND now() + interval '1 hour'"
            )
            == 1
        )
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM bills WHERE status = 'due' AND due_date <= current_date + 7"
            )
            == 3
        )
        emails = [r[0] for r in await pool.fetch("SELECT email FROM users")]
        assert all(e.endswith("@example.com") for e in emails)
    finally:
        await pool.close()
