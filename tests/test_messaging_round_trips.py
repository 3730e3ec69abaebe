"""An email to a user costs two PostgreSQL statements and keeps every guarantee of the generic
pipeline: consent read after the lock, the lock held while the provider is called, one send per
ledger key, and no session lock left behind when a send fails half-way.

Statements are counted on the handlers' own connections with asyncpg's query logger (every
statement a connection runs, the pool's reset query included), on a pool of one connection so
the second send runs on a connection whose statements are already prepared.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from messaging_fixtures import Env, messaging_env, wait_for
from notifyhub.db import create_pool, keep_session
from notifyhub.messaging import user_email
from notifyhub.messaging.ledger import idempotency_key, recipient_hash
from notifyhub.messaging.recipients import load_user, record_opt_out
from notifyhub.providers.redact import mask_email

from qrunner import keys
from qrunner.job import Job

pytestmark = pytest.mark.timeout(60)

EMAIL = "Grace.Hopper+News@Example.COM"


@pytest.fixture
async def env(redis_url: str, database_url: str) -> AsyncIterator[Env]:
    async with messaging_env(redis_url, database_url) as e:
        yield e


async def _advisory_locks(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT pid, mode, granted FROM pg_locks WHERE locktype = 'advisory'"
            " AND pid <> pg_backend_pid()"
        )
    )


async def test_a_welcome_email_costs_two_statements_and_no_reset_query(
    redis_url: str, database_url: str
) -> None:
    statements: list[str] = []

    async def log_statements(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda q: statements.append(q.query))

    async with messaging_env(
        redis_url, database_url, pool_size=1, on_connect=log_statements
    ) as env:
        first, second = [
            await env.user(f"User {n}", email=f"user{n}@example.com", phone=None) for n in (1, 2)
        ]
        # Given a welcome email already sent on the pool's only connection
        warm = await env.enqueue("send_welcome_email", {"user_id": first})
        assert (await env.finished(warm)).result["status"] == "sent"
        statements.clear()

        # When the next welcome email is sent
        job = await env.enqueue("send_welcome_email", {"user_id": second})
        assert (await env.finished(job)).result["status"] == "sent"
        sent = list(statements)

        # Then it took two statements (at most three is the budget): the locked read with the
        # ledger claim, and the settle with the log row; no transaction, no reset query
        assert len(sent) <= 3, sent
        assert len(sent) == 2, sent
        assert "LATERAL email_send_start(" in sent[0]
        assert "UPDATE effect_ledger" in sent[1] and "INSERT INTO delivery_log" in sent[1]
        assert not any(q.split()[0] in ("BEGIN", "COMMIT", "RESET") for q in sent)
        assert not any("pg_advisory_unlock_all" in q for q in sent)
        # And both emails went out once each, logged and settled
        assert len(env.resend.messages) == 2
        (row,) = await env.log_rows(job_id=job)
        assert (row["status"], row["recipient_masked"]) == ("sent", "u***@example.com")
        state = await env.pool.fetchval("SELECT state FROM effect_ledger WHERE job_id = $1", job)
        assert state == "sent"
        assert await _advisory_locks(env.pool) == []


async def test_the_ledger_key_is_the_one_the_application_derives(env: Env) -> None:
    # Given an address with capitals and a plus tag
    user = await env.user("Grace Hopper", email=EMAIL, phone=None)
    # When the welcome email is sent
    job = await env.enqueue("send_welcome_email", {"user_id": user})
    assert (await env.finished(job)).result["status"] == "sent"
    # Then the ledger row and the provider's Idempotency-Key are what ledger.py derives, so a
    # job retried across a deploy finds the same key whichever path it takes
    key = idempotency_key(job, "email", "welcome", EMAIL)
    row = await env.pool.fetchrow("SELECT * FROM effect_ledger WHERE job_id = $1", job)
    assert (row["idempotency_key"], row["recipient_hash"]) == (key, recipient_hash(EMAIL))
    assert [r.headers["Idempotency-Key"] for r in env.resend.requests] == [key]


async def test_an_address_outside_ascii_goes_through_the_generic_pipeline(env: Env) -> None:
    # Given an address whose lower-casing only Python is trusted with
    address = "ZOË.Ñandú@example.com"
    user = await env.user("Zoë", email=address, phone=None)
    # When the welcome email is sent
    job = await env.enqueue("send_welcome_email", {"user_id": user})
    assert (await env.finished(job)).result["status"] == "sent"
    # Then it went out once under the key Python derives, and no lock is left
    key = idempotency_key(job, "email", "welcome", address)
    assert (
        await env.pool.fetchval("SELECT idempotency_key FROM effect_ledger WHERE job_id = $1", job)
        == key
    )
    assert [m.to for m in env.resend.messages] == [(address,)]
    assert await _advisory_locks(env.pool) == []


async def test_an_opt_out_committed_while_the_send_waits_for_the_lock_wins(
    env: Env, database_url: str
) -> None:
    # Given an opt-out being written: its transaction holds the exclusive consent lock
    user = await env.user("Grace", email=EMAIL, phone=None)
    writer = await asyncpg.connect(database_url)
    try:
        opt_out = writer.transaction()
        await opt_out.start()
        await record_opt_out(writer, user, "email", "test")

        # When the welcome email starts and has to wait for that lock
        job = await env.enqueue("send_welcome_email", {"user_id": user})

        async def waiting() -> bool:
            return any(not r["granted"] for r in await _advisory_locks(env.pool))

        await wait_for(waiting, what="the send to wait for the consent lock")
        await opt_out.commit()
    finally:
        await writer.close()

    # Then the send reads consent after the lock was granted: it sees the opt-out and sends
    # nothing (its statement began before the opt-out was committed)
    status = await env.finished(job)
    assert status.result == {"status": "suppressed", "reason": "opted out of email"}
    assert env.resend.requests == []
    assert [r["status"] for r in await env.log_rows(job_id=job)] == ["suppressed"]
    assert await _advisory_locks(env.pool) == []


async def test_an_opt_out_waits_for_an_email_in_flight(env: Env, database_url: str) -> None:
    # Given a welcome email whose provider holds its answer for a second
    user = await env.user("Grace", email=EMAIL, phone=None)
    env.resend.fail_next("timeout_after_accept", hold_s=1.0)
    job = await env.enqueue("send_welcome_email", {"user_id": user})
    (request,) = await _requests(env, 1)

    # When an opt-out is recorded while the provider has not answered
    writer = await asyncpg.connect(database_url)
    try:
        async with writer.transaction():
            await record_opt_out(writer, user, "email", "test")
        opted_out_at = await writer.fetchval(
            "SELECT opted_out_at FROM consents WHERE user_id = $1 AND channel = 'email'", user
        )
    finally:
        await writer.close()

    # Then the opt-out waited for the send to finish (the send's check was not stale when the
    # email left), and the email went out once
    assert (await env.finished(job)).result["status"] == "sent"
    assert opted_out_at.timestamp() >= request.received_at + 0.9
    assert len(env.resend.messages) == 1


async def _requests(env: Env, n: int) -> list[Any]:
    async def arrived() -> list[Any] | None:
        return list(env.resend.requests) if len(env.resend.requests) >= n else None

    found: list[Any] = await wait_for(arrived, what=f"{n} request(s) at the fake Resend")
    return found


async def test_a_send_that_fails_half_way_leaves_no_lock_and_sends_once(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a Resend client that crashes once, after the lock was taken and the key claimed
    user = await env.user("Grace", email=EMAIL, phone=None)
    assert env.state.email is not None
    real_send = env.state.email.send
    crashes: list[str] = []

    async def crash_once(message: Any, *, idempotency_key: str) -> Any:
        if not crashes:
            crashes.append(idempotency_key)
            raise RuntimeError("client bug")
        return await real_send(message, idempotency_key=idempotency_key)

    monkeypatch.setattr(env.state.email, "send", crash_once)
    # When the welcome email is sent (the runtime retries the crashed attempt)
    job = await env.enqueue("send_welcome_email", {"user_id": user})
    status = await env.finished(job)
    # Then the retry sent it, with the key the crashed attempt had claimed
    assert status.result["status"] == "sent" and status.attempt == 2
    assert [r.headers["Idempotency-Key"] for r in env.resend.requests] == crashes
    assert len(env.resend.messages) == 1
    # And the crashed attempt's session lock went with the pool's reset query: nothing holds
    # a consent lock, and an opt-out is not kept waiting
    assert await _advisory_locks(env.pool) == []
    async with env.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL lock_timeout = '1s'")
        await record_opt_out(conn, user, "email", "test")


async def test_a_redelivered_welcome_email_is_a_duplicate(env: Env) -> None:
    # Given a welcome email that was sent
    user = await env.user("Grace", email=EMAIL, phone=None)
    payload = {"user_id": user}
    job = await env.enqueue("send_welcome_email", payload)
    assert (await env.finished(job)).result["status"] == "sent"
    # When the same job (same id) is delivered again, as a reclaim or a replay would
    # Its record says queued again (a success leaves a string record: replaced, not edited).
    await env.redis.delete(keys.job("default", job))
    await env.redis.hset(keys.job("default", job), mapping={"state": "queued", "result": ""})
    redelivered = Job(id=job, task="send_welcome_email", payload=payload, queue="default")
    await env.redis.xadd(keys.stream("default"), {"j": redelivered.encode()})

    async def duplicate() -> bool:
        status = await env.client.status(job)
        return status.state == "succeeded" and (status.result or {}).get("status") == "duplicate"

    await wait_for(duplicate, what="the redelivered job to finish as a duplicate")
    # Then the provider got one request, the log one row, and no lock is held
    assert len(env.resend.requests) == 1
    assert [r["status"] for r in await env.log_rows(job_id=job)] == ["sent"]
    assert await _advisory_locks(env.pool) == []


async def test_the_locked_read_sees_what_the_recipient_query_sees(env: Env) -> None:
    # Given users with every kind of consent, suppression, device and quiet-hours data
    plain = await env.user("Ann Plain", email="ann@example.com", phone=None, sms=False)
    rich = await env.user("Ben Rich", email="Ben@Example.com", phone="+15555550188")
    none = await env.user("Cy None", email=None, phone="+15555550199", email_opt_in=False)
    await env.pool.execute(
        "UPDATE users SET quiet_hours_start = '22:00', quiet_hours_end = '07:00' WHERE id = $1",
        rich,
    )
    await env.pool.execute(
        "INSERT INTO suppressions (channel, recipient, reason, source) VALUES"
        " ('email', 'ben@example.com', 'bounce', 'test'), ('sms', '+15555550188', 'stop', 'x')"
    )
    await env.pool.execute(
        "INSERT INTO push_devices (user_id, platform, token) VALUES"
        " ($1, 'fcm', 'token-one-0123456789'), ($1, 'apns', 'token-two-0123456789')",
        rich,
    )
    async with env.pool.acquire() as conn, conn.transaction():
        await record_opt_out(conn, plain, "push", "test")
    for uid in (plain, rich, none):
        async with env.pool.acquire() as conn:
            # When the send's first statement reads the recipient
            (started,) = await user_email.start_many(conn, [(uid, f"job-{uid}", "welcome")])
            assert started is not None and not started.settled
            await user_email.finish_many(conn, [user_email.Ending(uid)])  # unlocks only
            # Then it is the recipient the generic pipeline loads
            assert started.recipient == await load_user(conn, uid)
            assert started.claim == ("owned" if uid != none else None)
    async with env.pool.acquire() as conn:
        assert await user_email.start_many(conn, [(10**9, "job-gone", "welcome")]) == [None]
    assert await _advisory_locks(env.pool) == []


async def test_a_refused_email_is_logged_and_releases_the_lock(env: Env) -> None:
    # Given a user in an opt-in country who never agreed to email
    user = await env.user("Grace", email=EMAIL, phone=None, country="DE", email_opt_in=False)
    # When the welcome email runs
    job = await env.enqueue("send_welcome_email", {"user_id": user})
    status = await env.finished(job)
    # Then it is suppressed, logged with a masked address, and leaves no lock
    assert status.result == {
        "status": "suppressed",
        "reason": "no email opt-in (opt-in jurisdiction)",
    }
    (row,) = await env.log_rows(job_id=job)
    assert (row["status"], row["recipient_masked"]) == ("suppressed", mask_email(EMAIL))
    assert env.resend.requests == []
    assert await _advisory_locks(env.pool) == []


async def test_only_a_vouched_for_release_skips_the_reset_query(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=1)
    try:
        # A release nobody vouched for resets the session: settings and session locks go
        async with pool.acquire() as conn:
            await conn.execute("SET application_name = 'left-behind'")
            await conn.execute("SELECT pg_advisory_lock_shared(7, 7)")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") == ""
            assert (
                await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
                == 0
            )
            # A vouched-for release keeps the session as it is (here, wrongly, a setting)
            await conn.execute("SET application_name = 'kept'")
            keep_session(conn)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") == "kept"
        # The promise covers one release only
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") == ""
    finally:
        await pool.close()
