"""The notification app's two hot domain paths, measured end to end through real workers.

(a) **Daily outlooks**: N users are seeded (untimed: zones, bills, goals, orders, learned send
    hours, the content A/B test running), then ``generate_daily_outlooks`` is enqueued for the
    05:00 UTC slot and timed until every outlook it fanned out is stored in PostgreSQL.
(b) **Welcome emails**: M ``send_welcome_email`` jobs are queued, then a worker (the app's own
    lifespan: pool, Resend client, migrations) is started against the fake Resend server, run
    in a process of its own; the rate is taken between the first and the last ``sent`` row of
    the delivery log. The task's ``60/m`` rate limit is lifted for the run (the benchmark's
    registry, :data:`registry`, is the app's with that one limit removed).

PostgreSQL statements per send come from ``pg_stat_statements`` (preloaded on the private server
this script starts): every statement the worker ran while the queue drained (its start-up
included), over the number of sends. A multi-statement simple query (asyncpg's connection reset,
``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``) is one round trip but
four entries there, so round trips are reported besides statements.

Servers: a private PostgreSQL and Redis from ``qrunner_devservers`` (fsync off unless
``--durable``) in a scratch folder removed at the end, or the servers of ``BENCH_DATABASE_URL``
/ ``BENCH_REDIS_URL`` (a scratch database is created there and dropped; the Redis database is
flushed). Everything binds to 127.0.0.1.

    .venv/bin/python benchmarks/domain.py                      # both, 3 repeats
    .venv/bin/python benchmarks/domain.py --only emails --emails 20000 --repeats 3
    .venv/bin/python benchmarks/domain.py --out benchmarks/results/FILE.md --profile 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "app"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

WELCOME = "send_welcome_email"
#: The generation slot every outlook run uses: a Tuesday, 05:00 UTC (the cron entry's time).
SLOT = datetime(2026, 12, 1, 5, 0, tzinfo=UTC)
ZONES = (
    "America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles",
    "America/Sao_Paulo", "Europe/London", "Europe/Berlin", "Europe/Madrid", "Africa/Lagos",
    "Asia/Kolkata", "Asia/Singapore", "Asia/Tokyo", "Australia/Sydney", "UTC",
)  # fmt: skip
#: Tags the benchmark's own statements, so pg_stat_statements counts only the worker's.
TAG = "/* domain-bench */"
SECRET = "domain-bench-signing-secret-0123456789abcdef"


def __getattr__(name: str) -> Any:
    """``registry`` (what ``qrunner worker --app benchmarks.domain`` loads), built on first use
    so ``--help`` stays quick: the app's registry with the welcome email's rate limit lifted."""
    if name != "registry":
        raise AttributeError(name)
    from notifyhub.app import registry as app_registry
    from notifyhub.state import lifespan

    from qrunner import Registry

    tasks = [replace(t, rate_limit=None) if t.name == WELCOME else t for t in app_registry]
    lifted = Registry(tasks, queue_order=app_registry.queue_order, weights=app_registry.weights)
    lifted.lifespan(lifespan)
    globals()["registry"] = lifted
    return lifted


# -- servers -----------------------------------------------------------------------------------


@dataclass
class Servers:
    database_url: str
    redis_url: str
    #: Whether pg_stat_statements is loaded (statement counts are available).
    statements: bool
    postgres_version: str
    redis_version: str
    #: Whether PostgreSQL fsyncs (``SHOW fsync``).
    fsync: bool
    #: Whether the servers are this run's own.
    private: bool


def _has_pg_stat_statements(bin_dir: Path) -> bool:
    """Whether the PostgreSQL installation of ``bin_dir`` ships the pg_stat_statements module."""
    folders = [bin_dir.parent / "lib", bin_dir.parent / "lib" / "postgresql"]
    pg_config = bin_dir / "pg_config"
    if pg_config.exists():
        out = subprocess.run([str(pg_config), "--pkglibdir"], capture_output=True, text=True)
        if out.returncode == 0:
            folders.insert(0, Path(out.stdout.strip()))
    return any((folder / "pg_stat_statements.so").exists() for folder in folders)


@contextlib.contextmanager
def servers(durable: bool) -> Iterator[Servers]:
    from qrunner_devservers.embedded import PostgresProcess, RedisProcess

    db_url, redis_url = os.environ.get("BENCH_DATABASE_URL"), os.environ.get("BENCH_REDIS_URL")
    folder = Path(tempfile.mkdtemp(prefix="domain-bench-"))
    folder.chmod(0o755)  # the PostgreSQL account (when run as root) must reach its data folder
    pg = redis = None
    scratch_db: str | None = None
    try:
        statements = True
        if db_url is None:
            pg = PostgresProcess(folder / "pg", durable=durable)
            pg.start()
            assert pg.bin_dir is not None
            statements = _has_pg_stat_statements(pg.bin_dir)
            if statements:
                asyncio.run(
                    _admin(
                        pg.url,
                        # pg_stat_statements.track stays 'top': statements a client sent,
                        # not those run inside functions.
                        "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
                    )
                )
                pg.stop()
                pg.start()
            db_url = pg.url
        else:
            scratch_db = f"domain_bench_{uuid.uuid4().hex[:10]}"
            asyncio.run(_admin(db_url, f'CREATE DATABASE "{scratch_db}"'))
            admin_url, db_url = db_url, _with_database(db_url, scratch_db)
        if redis_url is None:
            redis = RedisProcess(folder / "redis", appendonly=False)
            redis.start()
            redis_url = redis.url
        statements = asyncio.run(_enable_pgss(db_url)) and statements
        pg_version, fsync, redis_version = asyncio.run(_versions(db_url, redis_url))
        yield Servers(
            db_url, redis_url, statements, pg_version, redis_version, fsync, pg is not None
        )
    finally:
        if scratch_db is not None:
            asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{scratch_db}" WITH (FORCE)'))
        if redis is not None:
            redis.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin(url: str, *sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(url)
    try:
        for statement in sql:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _enable_pgss(url: str) -> bool:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.fetchval("SELECT count(*) FROM pg_stat_statements")
        return True
    except asyncpg.PostgresError as exc:
        print(f"pg_stat_statements unavailable ({exc}); statement counts are skipped")
        return False
    finally:
        await conn.close()


async def _versions(db_url: str, redis_url: str) -> tuple[str, bool, str]:
    """PostgreSQL's version and whether it fsyncs; Redis's (or Valkey's) name and version."""
    import asyncpg
    from redis.asyncio import Redis

    conn = await asyncpg.connect(db_url)
    try:
        pg_version = str(await conn.fetchval("SHOW server_version")).split()[0]
        fsync = await conn.fetchval("SHOW fsync") == "on"
    finally:
        await conn.close()
    redis = Redis.from_url(redis_url)
    try:
        info = await redis.info("server")
    finally:
        await redis.aclose()
    kind = "valkey" if "valkey_version" in info else "redis"
    return pg_version, fsync, f"{kind} {info[f'{kind}_version']}"


# -- data --------------------------------------------------------------------------------------

_SEED_USERS = f"""
INSERT INTO users (name, email, time_zone, country_code, locale, last_active_at,
                   outlook_weekday_at)
SELECT 'Bench User ' || g, 'bench' || g || '@example.com',
       (ARRAY['{"','".join(ZONES)}'])[1 + g % {len(ZONES)}],
       'US', 'en-US', $2::timestamptz - (g % 29) * interval '1 day' - interval '1 hour',
       CASE WHEN g % 10 = 0 THEN time '07:30' END
FROM generate_series(1, $1::int) AS g
"""
#: A third of the users have two bills, a quarter a goal, a fifth orders in the last week, a
#: seventh a learned best hour; everyone agreed to email. ``$1`` is the slot.
_SEED_REST = """
INSERT INTO bills (user_id, payee, amount, currency, due_date)
SELECT u.id, p.payee, 20 + u.id % 300, 'USD',
       ($1::timestamptz AT TIME ZONE 'UTC')::date + ((u.id + p.n) % 9)::int
FROM users u CROSS JOIN (VALUES (1, 'Rent'), (2, 'Phone')) AS p(n, payee)
WHERE u.id % 3 = 0;

INSERT INTO goals (user_id, title, target_amount, current_amount, currency)
SELECT id, 'Holiday fund', 1000, id % 1000, 'USD' FROM users WHERE id % 4 = 0;

INSERT INTO businesses (slug, name, currency) VALUES ('bench-shop', 'Bench Shop', 'USD');

INSERT INTO orders (business_id, number, user_id, customer_email, status, total, currency,
                    placed_at)
SELECT (SELECT id FROM businesses WHERE slug = 'bench-shop'), 'B-' || u.id || '-' || n,
       u.id, u.email, 'paid', 15 + n * 7, 'USD', $1::timestamptz - n * interval '1 day'
FROM users u CROSS JOIN generate_series(1, 2) AS n
WHERE u.id % 5 = 0;

INSERT INTO user_send_hours (user_id, best_hour, events, time_zone)
SELECT id, 7 + id % 4, 12, time_zone FROM users WHERE id % 7 = 0;

INSERT INTO consents (user_id, channel, opted_in_at, opt_in_source)
SELECT id, 'email', $1::timestamptz - interval '60 days', 'signup' FROM users;
"""


async def seed(database_url: str, users: int) -> None:
    import asyncpg
    from notifyhub.experiments import create_experiment
    from notifyhub.migrate import DEFAULT_MIGRATIONS_DIR, migrate
    from notifyhub.outlook.content import CONTENT_EXPERIMENT, CONTENT_VARIANTS

    await migrate(database_url, DEFAULT_MIGRATIONS_DIR)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(_SEED_USERS, users, SLOT)
        for sql in _SEED_REST.split(";\n\n"):
            await conn.execute(sql, *([SLOT] if "$1" in sql else []))
        await create_experiment(conn, CONTENT_EXPERIMENT, CONTENT_VARIANTS)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


# -- processes and CPU -------------------------------------------------------------------------


def _ticks() -> int:
    return int(os.sysconf("SC_CLK_TCK"))


def _proc_table() -> dict[int, tuple[int, float, str]]:
    """pid -> (parent pid, CPU seconds used, command name) of every process."""
    table: dict[int, tuple[int, float, str]] = {}
    tick = _ticks()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, name)
    return table


def cpu_by_group(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process and its live descendants."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, float] = {}
    for label, root in roots.items():
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            if pid in table:
                total += table[pid][1]
            todo += children.get(pid, [])
        out[label] = total
    return out


def postmaster_pid(database_url: str) -> int | None:
    """The PostgreSQL server's pid, when it runs on this machine (found by its port)."""
    port = str(urlsplit(database_url).port or 5432)
    for pid, (_, _, name) in _proc_table().items():
        if name != "postgres":
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-p" in argv and argv[argv.index(b"-p") + 1].decode() == port:
            return pid
    return None


def redis_pid(redis_url: str) -> int | None:
    port = str(urlsplit(redis_url).port or 6379)
    for pid, (_, _, name) in _proc_table().items():
        if not name.startswith(("redis-server", "valkey-server")):
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f":{port}" in argv or f"--port {port}" in argv:
            return pid
    return None


def _clean_env(s: Servers, extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("QRUNNER_", "NOTIFYHUB_", "RESEND_", "TWILIO_"))
    }
    env |= {
        "QRUNNER_REDIS_URL": s.redis_url,
        "NOTIFYHUB_DATABASE_URL": s.database_url,
        "NOTIFYHUB_SIGNING_SECRET": SECRET,
        "QRUNNER_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "app")]),
    }
    return env | extra


@contextlib.contextmanager
def worker(
    s: Servers, queues: str, *, processes: int, concurrency: int, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """``qrunner worker --app benchmarks.domain`` in its own process group; stopped on exit."""
    command = [
        sys.executable, "-m", "qrunner.cli", "worker", "--app", "benchmarks.domain",
        "--queues", queues, "--no-cron", "--concurrency", str(concurrency),
        "--processes", str(processes),
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, env=_clean_env(s, env), start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class PySpy:
    """py-spy sampling a process (and its subprocesses) for a while, started on demand."""

    def __init__(self, pid: int, seconds: float, out: Path | None) -> None:
        self.pid, self.seconds, self.out = pid, seconds, out
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        spy = Path(sys.executable).with_name("py-spy")
        if self.proc is not None or not self.seconds or self.out is None or not spy.exists():
            return
        self.proc = subprocess.Popen(
            [str(spy), "record", "--pid", str(self.pid), "--subprocesses", "--format", "raw",
             "--duration", str(int(self.seconds)), "--rate", "200", "--output", str(self.out),
             "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def wait(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def summarize_profile(path: Path, top: int = 14) -> list[tuple[str, float, float]]:
    """(function, self %, total %) of the hottest frames in a py-spy raw (collapsed) file."""
    if not path.exists():
        return []
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  if " (" in f else f for f in stack.split(";")]  # fmt: skip
        frames = [f.rstrip(")") + ")" if "(" in f else f for f in frames]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return []
    ranked = sorted(own, key=lambda f: -own[f])[:top]
    return [(f, 100 * own[f] / total, 100 * inclusive[f] / total) for f in ranked]


#: Where a sampled stack is spending its time, by the frames it contains (first match wins).
PROFILE_AREAS = {
    "outlooks": (
        ("fan-out (generate_daily_outlooks)", "generate_daily_outlooks"),
        ("generation jobs: PostgreSQL (asyncpg, pool)", "asyncpg/"),
        ("generation jobs: outlook content (Python)", "outlook/content.py"),
        ("generation jobs: A/B variants", "experiments.py"),
        ("generation jobs: the rest", "generate_"),
    ),
    "emails": (
        ("PostgreSQL (asyncpg, pool)", "asyncpg/"),
        ("HTTP to Resend (aiohttp)", "ResendEmail.send"),
        ("rendering (Jinja2, unsubscribe link)", ".render ("),
        ("ledger in Redis (old path)", "Ledger."),
        ("rest of the send", "Sender."),
    ),
}


def profile_shares(path: Path, areas: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Share of the samples in each area (first matching needle wins), the rest as
    ``runtime and other``: qrunner's own work, the event loop, start-up."""
    if not path.exists():
        return {}
    hits = dict.fromkeys([label for label, _ in areas] + ["runtime and other"], 0)
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        label = next((lb for lb, needle in areas if needle in stack), "runtime and other")
        hits[label] += count
    return {k: 100 * v / total for k, v in hits.items()} if total else {}


# -- measurements ------------------------------------------------------------------------------


@dataclass
class Run:
    kind: str
    seconds: float
    items: int
    rate: float
    cpu: dict[str, float]
    statements: int | None = None
    round_trips: int | None = None
    #: (calls, milliseconds executing, normalised text) of the most frequent statements.
    breakdown: list[tuple[int, float, str]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def connections(s: Servers) -> AsyncIterator[tuple[Any, Any]]:
    import asyncpg
    from redis.asyncio import Redis

    conn = await asyncpg.connect(s.database_url)
    redis = Redis.from_url(s.redis_url)
    try:
        yield conn, redis
    finally:
        await redis.aclose()
        await conn.close()


async def _wait(probe: Any, what: str, timeout_s: float, every_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(every_s)


async def _statements(conn: Any) -> tuple[int, int, list[tuple[int, float, str]]]:
    """(statements, round trips, top statements) the worker ran since the last reset."""
    rows = await conn.fetch(
        f"{TAG} SELECT calls, total_exec_time, query FROM pg_stat_statements"
        " WHERE query NOT LIKE '%domain-bench%' ORDER BY calls DESC, total_exec_time DESC"
    )
    total = sum(r["calls"] for r in rows)
    # asyncpg's reset query is sent as one message of four statements; count it once.
    extra = sum(r["calls"] for r in rows if r["query"].strip() in ("CLOSE ALL", "UNLISTEN *",
                                                                  "RESET ALL"))  # fmt: skip
    top = [
        (r["calls"], float(r["total_exec_time"]), " ".join(r["query"].split())[:100])
        for r in rows[:12]
    ]
    return total, total - extra, top


async def _reset_statements(conn: Any, enabled: bool) -> None:
    if enabled:
        await conn.execute(f"{TAG} SELECT pg_stat_statements_reset()")


async def _client(redis: Any) -> Any:
    from qrunner import Client

    return Client(redis, __getattr__("registry"))


async def outlook_run(
    s: Servers, args: argparse.Namespace, roots: dict[str, int], profile: Path | None
) -> Run:
    async with connections(s) as (conn, redis):
        await conn.execute(f"{TAG} TRUNCATE daily_outlooks, experiment_assignments")
        await redis.flushdb()
        client = await _client(redis)
        with worker(
            s,
            "daily_outlook",
            processes=args.processes,
            concurrency=args.concurrency,
            env={},
        ) as proc:
            # Warm-up: a run for a slot far ahead finds no active user and stores nothing.
            probe = await client.enqueue(
                "generate_daily_outlooks", {"now": "2100-01-01T05:00:00+00:00"}
            )
            await _wait(lambda: _done(client, probe), "the worker to start", 120)
            await _reset_statements(conn, s.statements)
            before = cpu_by_group(roots | {"worker": proc.pid})
            started = time.perf_counter()
            job = await client.enqueue(
                "generate_daily_outlooks", {"scheduled_for": SLOT.isoformat()}
            )
            spy = PySpy(proc.pid, args.profile, profile)
            spy.start()
            fanned = await _wait(lambda: _done(client, job), "the fan-out", 600)
            expected = int(fanned["enqueued"])

            async def stored() -> bool:
                n = await conn.fetchval(f"{TAG} SELECT count(*) FROM daily_outlooks")
                return bool(n >= expected)

            await _wait(stored, f"{expected} outlooks", 900, every_s=0.1)
            took = time.perf_counter() - started
            spy.wait()
            after = cpu_by_group(roots | {"worker": proc.pid})
            total = await conn.fetchval(f"{TAG} SELECT count(*) FROM daily_outlooks")
            pairs = await conn.fetchval(
                f"{TAG} SELECT count(DISTINCT (user_id, outlook_date)) FROM daily_outlooks"
            )
            statements = await _statements(conn) if s.statements else None
    return Run(
        "outlooks",
        took,
        int(fanned["total_users"]),
        int(fanned["total_users"]) / took,
        {k: after[k] - before.get(k, 0.0) for k in after},
        statements[0] if statements else None,
        statements[1] if statements else None,
        statements[2] if statements else [],
        {"outlooks": total, "distinct": pairs, "fan_out": fanned},
    )


async def _done(client: Any, job_id: str) -> dict[str, Any] | None:
    status = await client.status(job_id)
    if status.state == "dead":
        raise RuntimeError(f"job {job_id} died: {status.last_error}")
    return status.result or {"ok": True} if status.state == "succeeded" else None


@contextlib.contextmanager
def fake_resend(api_key: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "notifyhub.fakeproviders", "--api-key", api_key],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "app")])},
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        base_url = ""
        for line in proc.stdout:
            if line.startswith("NOTIFYHUB_EMAIL_BASE_URL="):
                base_url = line.split("=", 1)[1].strip()
            if line.startswith("RESEND_API_KEY="):
                break
        if not base_url:
            raise RuntimeError("the fake Resend server did not start")
        yield proc, base_url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


async def email_run(
    s: Servers,
    args: argparse.Namespace,
    roots: dict[str, int],
    resend: tuple[subprocess.Popen[str], str],
    api_key: str,
    profile: Path | None,
) -> Run:
    import aiohttp

    fake_proc, base_url = resend
    async with connections(s) as (conn, redis):
        await conn.execute(f"{TAG} TRUNCATE delivery_log, effect_ledger, sandbox_outbox CASCADE")
        await redis.flushdb()
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base_url}/_fake/reset") as response:
                response.raise_for_status()
        client = await _client(redis)
        batch = 1000
        for start in range(1, args.emails + 1, batch):
            stop = min(start + batch, args.emails + 1)
            await client.enqueue_many([(WELCOME, {"user_id": uid}) for uid in range(start, stop)])
        await _reset_statements(conn, s.statements)
        before = cpu_by_group(roots | {"resend": fake_proc.pid})
        launched = time.perf_counter()
        env = {"RESEND_API_KEY": api_key, "NOTIFYHUB_EMAIL_BASE_URL": base_url}
        with worker(
            s,
            "default",
            processes=args.email_processes,
            concurrency=args.concurrency,
            env=env,
        ) as proc:
            roots_now = roots | {"resend": fake_proc.pid, "worker": proc.pid}
            before["worker"] = 0.0  # started just now: all its CPU counts (start-up included)
            # Sampled from the first hundred sends on: start-up (imports) is not the send path.
            spy = PySpy(proc.pid, args.profile, profile)

            async def sent() -> bool:
                n = await conn.fetchval(
                    f"{TAG} SELECT count(*) FROM delivery_log WHERE status = 'sent'"
                )
                if n >= min(100, args.emails // 10):
                    spy.start()
                return bool(n >= args.emails)

            await _wait(sent, f"{args.emails} sends", 900, every_s=0.2)
            wall = time.perf_counter() - launched
            spy.wait()
            after = cpu_by_group(roots_now)
            row = await conn.fetchrow(
                f"{TAG} SELECT count(*) AS n, count(DISTINCT user_id) AS users,"
                " extract(epoch FROM max(created_at) - min(created_at))::float8 AS span"
                " FROM delivery_log WHERE status = 'sent'"
            )
            other = await conn.fetchval(
                f"{TAG} SELECT count(*) FROM delivery_log WHERE status <> 'sent'"
            )
            statements = await _statements(conn) if s.statements else None
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base_url}/_fake/messages") as response:
                accepted = len((await response.json())["messages"])
    n = int(row["n"])
    span = float(row["span"]) or 1e-9
    return Run(
        "emails",
        span,
        n,
        (n - 1) / span,
        {k: after[k] - before.get(k, 0.0) for k in after},
        statements[0] if statements else None,
        statements[1] if statements else None,
        statements[2] if statements else [],
        {"wall_s": wall, "accepted": accepted, "users": row["users"], "not_sent_rows": other},
    )


# -- report ------------------------------------------------------------------------------------


def _median_spread(values: Sequence[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def render(
    runs: dict[str, list[Run]],
    args: argparse.Namespace,
    s: Servers,
    loads: tuple[tuple[float, ...], tuple[float, ...]],
    profiles: dict[str, list[tuple[str, float, float]]],
    shares: dict[str, dict[str, float]],
) -> str:
    lines = [
        "| measurement | median | min | max | runs |",
        "|---|---|---|---|---|",
    ]
    if runs.get("outlooks"):
        o = runs["outlooks"]
        sec = _median_spread([r.seconds for r in o])
        rate = _median_spread([r.rate for r in o])
        lines.append(
            f"| outlooks: {o[0].items:,} users, seconds to generate and store | {sec[0]:.1f} | "
            f"{sec[1]:.1f} | {sec[2]:.1f} | {len(o)} |"
        )
        lines.append(
            f"| outlooks: users/s | {rate[0]:,.0f} | {rate[1]:,.0f} | {rate[2]:,.0f} | {len(o)} |"
        )
        for label in sorted(o[0].cpu):
            cpu = _median_spread([r.cpu.get(label, 0.0) / r.seconds for r in o])
            lines.append(
                f"| outlooks: {label} CPU (cores) | {cpu[0]:.2f} | {cpu[1]:.2f} | {cpu[2]:.2f} "
                f"| {len(o)} |"
            )
        if o[0].statements is not None:
            st = _median_spread([r.statements or 0 for r in o])
            lines.append(
                f"| outlooks: PostgreSQL statements per user | {st[0] / o[0].items:.3f} | "
                f"{st[1] / o[0].items:.3f} | {st[2] / o[0].items:.3f} | {len(o)} |"
            )
    if runs.get("emails"):
        e = runs["emails"]
        rate = _median_spread([r.rate for r in e])
        lines.append(
            f"| welcome emails: sends/s ({e[0].items:,} sends) | {rate[0]:,.0f} | "
            f"{rate[1]:,.0f} | {rate[2]:,.0f} | {len(e)} |"
        )
        if e[0].statements is not None:
            st = _median_spread([(r.statements or 0) / r.items for r in e])
            rt = _median_spread([(r.round_trips or 0) / r.items for r in e])
            lines.append(
                f"| welcome emails: PostgreSQL statements per send | {st[0]:.2f} | {st[1]:.2f} "
                f"| {st[2]:.2f} | {len(e)} |"
            )
            lines.append(
                f"| welcome emails: PostgreSQL round trips per send | {rt[0]:.2f} | "
                f"{rt[1]:.2f} | {rt[2]:.2f} | {len(e)} |"
            )
        for label in sorted(e[0].cpu):
            cpu = _median_spread([r.cpu.get(label, 0.0) / r.extra["wall_s"] for r in e])
            lines.append(
                f"| welcome emails: {label} CPU (cores, over the worker's wall time) | "
                f"{cpu[0]:.2f} | {cpu[1]:.2f} | {cpu[2]:.2f} | {len(e)} |"
            )
    settings = (
        f"Python {platform.python_version()}, {os.cpu_count()} cores, PostgreSQL "
        f"{s.postgres_version} ({'fsync on' if s.fsync else 'fsync off'}"
        f"{', private' if s.private else ''}), {s.redis_version}; "
        f"worker: `--concurrency {args.concurrency}`, outlooks `--processes {args.processes}`, "
        f"emails `--processes {args.email_processes}`; load average before "
        f"{' / '.join(f'{x:.2f}' for x in loads[0])}, after "
        f"{' / '.join(f'{x:.2f}' for x in loads[1])}."
    )
    out = [settings, "", *lines, ""]
    for kind, rs in runs.items():
        if rs and rs[0].breakdown:
            out += [
                f"Top statements of the last {kind} run (calls, mean server time per call,"
                " normalised text):",
                "",
            ]
            out += [
                f"    {calls:>8,} {1000 * ms / max(calls, 1):7.0f} us  {query}"
                for calls, ms, query in rs[-1].breakdown
            ]
            out.append("")
        for n, r in enumerate(rs, 1):
            out.append(f"{kind} run {n}: {json.dumps(_brief(r))}")
        out.append("")
    for kind, split in shares.items():
        if split:
            out += [f"py-spy, {kind}, share of the worker's samples:", ""]
            out += [f"    {pct:5.1f}%  {label}" for label, pct in split.items()]
            out.append("")
    for kind, frames in profiles.items():
        if frames:
            out += [f"py-spy, {kind}, hottest frames (self %, total %):", ""]
            out += [f"    {own:5.1f} {tot:5.1f}  {name}" for name, own, tot in frames]
            out.append("")
    return "\n".join(out)


def _brief(r: Run) -> dict[str, Any]:
    return {
        "seconds": round(r.seconds, 2),
        "items": r.items,
        "rate": round(r.rate, 1),
        "cpu_s": {k: round(v, 1) for k, v in r.cpu.items()},
        "statements": r.statements,
        "round_trips": r.round_trips,
        **{k: v for k, v in r.extra.items() if k != "fan_out"},
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/domain.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Servers: private ones in a scratch folder unless BENCH_DATABASE_URL / "
        "BENCH_REDIS_URL are set (a scratch database is made there and dropped; the Redis "
        "database is flushed).",
    )
    parser.add_argument("--only", choices=("outlooks", "emails"), help="run one side only")
    parser.add_argument("--users", type=int, default=100_000, help="users seeded (100000)")
    parser.add_argument("--emails", type=int, default=20_000, help="welcome emails per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side (3)")
    parser.add_argument("--concurrency", type=int, default=100, help="worker --concurrency")
    parser.add_argument("--processes", type=int, default=1, help="outlook worker --processes")
    parser.add_argument(
        "--email-processes", type=int, default=1, help="email worker --processes (1)"
    )
    parser.add_argument("--durable", action="store_true", help="private PostgreSQL with fsync")
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="sample the worker with py-spy for this long in the last run of each side",
    )
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.emails > args.users:
        parser.error("--emails cannot exceed --users (one welcome email per seeded user)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    load_before = os.getloadavg()
    runs: dict[str, list[Run]] = {"outlooks": [], "emails": []}
    profiles: dict[str, list[tuple[str, float, float]]] = {}
    shares: dict[str, dict[str, float]] = {}
    scratch = Path(tempfile.mkdtemp(prefix="domain-bench-profile-"))
    try:
        with servers(args.durable) as s:
            print(f"seeding {args.users:,} users...", flush=True)
            t0 = time.perf_counter()
            asyncio.run(seed(s.database_url, args.users))
            print(f"seeded in {time.perf_counter() - t0:.1f}s", flush=True)
            roots = {
                label: pid
                for label, pid in (
                    ("postgres", postmaster_pid(s.database_url)),
                    ("redis", redis_pid(s.redis_url)),
                )
                if pid is not None
            }
            sides = [args.only] if args.only else ["outlooks", "emails"]
            api_key = "re_bench_" + uuid.uuid4().hex
            with fake_resend(api_key) as resend:
                for n in range(args.repeats):
                    for side in sides:
                        last = n == args.repeats - 1
                        profile = scratch / f"{side}.txt" if last and args.profile else None
                        if side == "outlooks":
                            run = asyncio.run(outlook_run(s, args, roots, profile))
                        else:
                            run = asyncio.run(email_run(s, args, roots, resend, api_key, profile))
                        runs[side].append(run)
                        print(f"{side} run {n + 1}: {json.dumps(_brief(run))}", flush=True)
                        if profile is not None:
                            profiles[side] = summarize_profile(profile)
                            shares[side] = profile_shares(profile, PROFILE_AREAS[side])
                            if args.out:
                                shutil.copy(profile, args.out.with_suffix(f".{side}.pyspy.txt"))
            report = render(runs, args, s, (load_before, os.getloadavg()), profiles, shares)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
