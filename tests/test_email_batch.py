"""Emails to users started together share two statements and one connection, and each keeps
the guarantees of a send alone: its own consent read after its own lock, its lock held until
it ended, one send per ledger key, and no lock left behind when a send or the batch fails.

Real PostgreSQL throughout; locks are watched from a connection of their own, since the batch
holds the pool's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from messaging_fixtures import Env, messaging_env, wait_for
from notifyhub.messaging.delivery_log import LogEntry
from notifyhub.messaging.email_batch import EmailBatches, Member, batch_size
from notifyhub.messaging.recipients import consent_lock, record_opt_out
from notifyhub.messaging.user_email import Started

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def env(redis_url: str, database_url: str) -> AsyncIterator[Env]:
    statements: list[str] = []

    async def log_statements(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda q: statements.append(q.query))

    async with messaging_env(redis_url, database_url, pool_size=1, on_connect=log_statements) as e:
        e.statements = statements  # type: ignore[attr-defined]
        yield e


@pytest.fixture
async def watcher(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def _locks(watcher: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await watcher.fetch(
            "SELECT objid, granted FROM pg_locks WHERE locktype = 'advisory'"
            " AND pid <> pg_backend_pid() ORDER BY objid"
        )
    )


async def _users(env: Env, n: int) -> list[int]:
    return [await env.user(f"User {i}", email=f"user{i}@example.com", phone=None) for i in range(n)]


def _entry(user_id: int, status: str = "sent") -> LogEntry:
    return LogEntry(
        f"job-{user_id}",
        user_id,
        "email",
        "welcome",
        f"user{user_id}@example.com",
        "resend",
        status,
    )


async def _finish(member: Member, started: Started, status: str = "sent") -> None:
    await member.finish(
        _entry(member.user_id, status), key=started.key, ledger_state="sent", provider_id="re_1"
    )


async def _ledger(env: Env) -> dict[str, str]:
    rows = await env.pool.fetch("SELECT job_id, state FROM effect_ledger ORDER BY job_id")
    return {r["job_id"]: r["state"] for r in rows}


def _statements(env: Env) -> list[str]:
    found: list[str] = env.statements  # type: ignore[attr-defined]
    return found


async def test_sends_started_together_share_two_statements_and_hold_their_locks(
    env: Env, watcher: asyncpg.Connection
) -> None:
    warm, *users = await _users(env, 6)
    batches = EmailBatches(env.pool)
    # Given the pool's only connection has run a batch once (its types are looked up)
    started, member = await batches.start(warm, f"job-{warm}", "welcome")
    assert started is not None and member is not None
    await _finish(member, started)
    _statements(env).clear()
    release = asyncio.Event()

    async def send(user_id: int) -> str:
        started, member = await batches.start(user_id, f"job-{user_id}", "welcome")
        assert started is not None and member is not None
        # Each member gets its own recipient and ledger key
        assert started.recipient.user_id == user_id and started.claim == "owned"
        await release.wait()
        await _finish(member, started)
        return started.recipient.email or ""

    # When five sends start in the same loop turn
    tasks = [asyncio.create_task(send(u)) for u in users]

    async def all_locked() -> bool:
        return len(await _locks(watcher)) == len(users)

    # Then every user's consent lock is held until the sends end
    await wait_for(all_locked, what="the batch to hold five locks")
    assert all(lock["granted"] for lock in await _locks(watcher))
    release.set()
    assert await asyncio.gather(*tasks) == [f"user{i}@example.com" for i in range(1, 6)]
    # And the five sends took two statements: the batch's start and its finish
    sent = _statements(env)
    assert len(sent) == 2, sent
    assert "LATERAL email_send_start(" in sent[0] and "INSERT INTO delivery_log" in sent[1]
    # And each send is settled and logged once, and no lock is left
    assert set((await _ledger(env)).values()) == {"sent"}
    assert len(await env.log_rows(status="sent")) == 6
    assert await _locks(watcher) == []


async def test_a_send_that_fails_half_way_releases_its_lock_and_leaves_its_claim_pending(
    env: Env, watcher: asyncpg.Connection
) -> None:
    first, failing, last = await _users(env, 3)
    batches = EmailBatches(env.pool)

    async def send(user_id: int) -> None:
        started, member = await batches.start(user_id, f"job-{user_id}", "welcome")
        assert started is not None and member is not None
        try:
            if user_id == failing:
                raise RuntimeError("provider client bug")
            await _finish(member, started)
        finally:
            member.abandon()

    # When one send of three raises after its lock and claim
    results = await asyncio.gather(
        *(send(u) for u in (first, failing, last)), return_exceptions=True
    )
    assert [type(r).__name__ for r in results] == ["NoneType", "RuntimeError", "NoneType"]
    # Then the others are settled and logged; the failed one's claim stays pending, so its
    # retry takes it again, and nothing was logged for it
    ledger = await _ledger(env)
    assert ledger == {f"job-{first}": "sent", f"job-{failing}": "pending", f"job-{last}": "sent"}
    assert {r["user_id"] for r in await env.log_rows()} == {first, last}
    # And no lock is left: an opt-out for the failed user is not kept waiting
    assert await _locks(watcher) == []


async def test_an_opt_out_committed_while_the_batch_waits_is_seen_by_that_send_only(
    env: Env, database_url: str, watcher: asyncpg.Connection
) -> None:
    before, opting_out, after = await _users(env, 3)
    batches = EmailBatches(env.pool)
    # Given an opt-out being written for the second user: its transaction holds the lock
    writer = await asyncpg.connect(database_url)
    try:
        opt_out = writer.transaction()
        await opt_out.start()
        await record_opt_out(writer, opting_out, "email", "test")

        # When a batch of three starts and has to wait for that lock
        tasks = [
            asyncio.create_task(batches.start(u, f"job-{u}", "welcome"))
            for u in (before, opting_out, after)
        ]

        async def waiting() -> bool:
            return any(not lock["granted"] for lock in await _locks(watcher))

        await wait_for(waiting, what="the batch to wait for the consent lock")
        await opt_out.commit()
    finally:
        await writer.close()
    joined = await asyncio.gather(*tasks)
    # Then the second send read consent after its lock was granted and sees the opt-out,
    # though the batch's statement began before it was committed; the others see none
    consents = {s.recipient.user_id: s.recipient.email_consent for s, _ in joined if s}
    assert consents[opting_out].opted_out_at is not None
    assert consents[before].opted_out_at is None and consents[after].opted_out_at is None
    for _, member in joined:
        assert member is not None
        member.unlock()

    async def unlocked() -> bool:
        return await _locks(watcher) == []

    await wait_for(unlocked, what="the batch to release its locks")


async def test_a_send_cancelled_while_the_batch_starts_releases_what_it_took(
    env: Env, database_url: str, watcher: asyncpg.Connection
) -> None:
    cancelled, blocked = await _users(env, 2)
    batches = EmailBatches(env.pool)
    writer = await asyncpg.connect(database_url)
    try:
        # Given a batch held up by a lock on its second user
        opt_out = writer.transaction()
        await opt_out.start()
        await writer.execute(
            "SELECT pg_advisory_xact_lock($1::int, $2::int)", *consent_lock(blocked, "email")
        )

        async def send(user_id: int) -> str:
            started, member = await batches.start(user_id, f"job-{user_id}", "welcome")
            assert started is not None and member is not None
            await _finish(member, started)
            return "sent"

        first = asyncio.create_task(send(cancelled))
        second = asyncio.create_task(send(blocked))

        async def waiting() -> bool:
            return any(not lock["granted"] for lock in await _locks(watcher))

        await wait_for(waiting, what="the batch to wait for the lock")
        # When the first send's job is cancelled while it waits for the batch
        first.cancel()
        await opt_out.rollback()
    finally:
        await writer.close()
    # Then the other send goes on, and the cancelled one's lock is released with the batch;
    # its claim stays pending for its retry
    assert await second == "sent"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await _ledger(env) == {f"job-{cancelled}": "pending", f"job-{blocked}": "sent"}
    assert await _locks(watcher) == []


async def test_a_failed_batch_statement_fails_every_send_waiting_on_it(
    env: Env, watcher: asyncpg.Connection
) -> None:
    good, bad = await _users(env, 2)
    batches = EmailBatches(env.pool)

    async def send(user_id: int, status: str) -> None:
        started, member = await batches.start(user_id, f"job-{user_id}", "welcome")
        assert started is not None and member is not None
        await _finish(member, started, status)

    # When one send's log row breaks a constraint of the shared finish statement
    results = await asyncio.gather(send(good, "sent"), send(bad, "bogus"), return_exceptions=True)
    # Then both sends fail with the database's error (their jobs retry), nothing of the
    # statement is written, and the reset of the batch's connection released both locks
    assert all(isinstance(r, asyncpg.CheckViolationError) for r in results), results
    assert await env.log_rows() == []
    assert set((await _ledger(env)).values()) == {"pending"}
    assert await _locks(watcher) == []


async def test_a_batch_is_at_most_its_size_and_a_worker_gets_two_of_them() -> None:
    assert [batch_size(c) for c in (1, 2, 10, 100, 400)] == [1, 1, 5, 50, 100]


async def test_a_full_batch_starts_without_waiting_for_the_loop_turn(env: Env) -> None:
    users = await _users(env, 5)
    batches = EmailBatches(env.pool, max_size=2)
    _statements(env).clear()

    async def send(user_id: int) -> None:
        started, member = await batches.start(user_id, f"job-{user_id}", "welcome")
        assert started is not None and member is not None
        await _finish(member, started)

    await asyncio.gather(*(send(u) for u in users))
    # Five sends in batches of at most two: three starts and three finishes
    starts = [q for q in _statements(env) if "email_send_start" in q]
    finishes = [q for q in _statements(env) if "INSERT INTO delivery_log" in q]
    assert (len(starts), len(finishes)) == (3, 3)
    assert set((await _ledger(env)).values()) == {"sent"}


async def test_a_worker_sends_queued_welcome_emails_in_batches(env: Env) -> None:
    # Given twelve welcome emails queued at once for a worker running four jobs
    users = await _users(env, 12)
    _statements(env).clear()
    jobs = await env.client.enqueue_many([("send_welcome_email", {"user_id": u}) for u in users])
    statuses = [await env.finished(j) for j in jobs]
    # Then each went out once, and the sends shared their statements
    assert [s.result["status"] for s in statuses] == ["sent"] * 12
    assert sorted(m.to[0] for m in env.resend.messages) == sorted(
        f"user{i}@example.com" for i in range(12)
    )
    per_send = len(_statements(env)) / 12
    assert per_send < 2, _statements(env)
