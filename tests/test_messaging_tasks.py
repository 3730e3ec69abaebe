"""Every messaging task end to end: real Worker, Redis and PostgreSQL, fake Twilio and Resend.

One stack per test module function; each test seeds its own users.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from messaging_fixtures import Env, messaging_env, wait_for

ADA_PHONE = "+15555550111"
ADA_EMAIL = "ada@example.com"
EVA_EMAIL = "eva@example.de"


@pytest.fixture
async def env(redis_url: str, database_url: str) -> AsyncIterator[Env]:
    async with messaging_env(redis_url, database_url) as e:
        yield e


async def _seed_commerce(env: Env, user_id: int) -> dict[str, int]:
    pool = env.pool
    business = await pool.fetchval(
        "INSERT INTO businesses (slug, name, currency) VALUES ('shop', 'Corner Shop', 'USD') "
        "RETURNING id"
    )
    product = await pool.fetchval(
        "INSERT INTO products (business_id, sku, name, unit_price, currency, stock) "
        "VALUES ($1, 'TEA', 'Green tea', 4.50, 'USD', 10) RETURNING id",
        business,
    )
    order = await pool.fetchval(
        "INSERT INTO orders (business_id, number, user_id, customer_email, total, currency) "
        "VALUES ($1, 'A-1001', $2, $3, 9.00, 'USD') RETURNING id",
        business,
        user_id,
        ADA_EMAIL,
    )
    await pool.execute(
        "INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price) "
        "VALUES ($1, 1, $2, 2, 4.50)",
        order,
        product,
    )
    guest_order = await pool.fetchval(
        "INSERT INTO orders (business_id, number, customer_email, total, currency) "
        "VALUES ($1, 'A-1002', 'guest@example.org', 4.50, 'USD') RETURNING id",
        business,
    )
    starts = datetime.now(UTC) + timedelta(hours=1)
    meeting = await pool.fetchval(
        "INSERT INTO meetings (title, starts_at, ends_at, url) VALUES ('Coaching', $1, $2, "
        "'https://meet.example.com/x') RETURNING id",
        starts,
        starts + timedelta(minutes=30),
    )
    await pool.execute(
        "INSERT INTO meeting_participants (meeting_id, user_id) VALUES ($1, $2)", meeting, user_id
    )
    purchase = await pool.fetchval(
        "INSERT INTO credit_purchases (user_id, credits, amount, currency, provider, "
        "payment_reference, status, purchased_at) "
        "VALUES ($1, 50, 25.00, 'USD', 'paystack', 'PAY-1', 'completed', now()) RETURNING id",
        user_id,
    )
    await pool.execute("INSERT INTO user_credits (user_id, balance) VALUES ($1, 53)", user_id)
    return {"order": order, "guest_order": guest_order, "meeting": meeting, "purchase": purchase}


async def test_every_task_sends_or_is_suppressed(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # Given a consented US user, a German user without email opt-in, and a user without SMS
    # opt-in
    ada = await env.user("Ada Lovelace", email=ADA_EMAIL, phone=ADA_PHONE)
    eva = await env.user(
        "Eva Braun-Schmidt",
        email=EVA_EMAIL,
        phone="+4915112345678",
        zone="Europe/Berlin",
        locale="de-DE",
        country="DE",
        email_opt_in=False,
    )
    ids = await _seed_commerce(env, ada)
    today = "2025-03-05"
    jobs = {
        "send_critical_financial_alert": {
            "user_id": ada,
            "alert_type": "overdraft",
            "message": "Account overdrawn.",
            "amount": "-42.17",
        },
        "send_payment_reminder": {
            "user_id": ada,
            "payee": "City Power",
            "amount": "84.2",
            "currency": "USD",
            "due_date": today,
        },
        "send_weekly_checkin": {"user_id": ada, "week_of": today, "score": 71},
        "send_milestone_reminder": {
            "user_id": ada,
            "milestone": "Half way",
            "saved": "500",
            "target": "1000",
        },
        "send_sms": {"user_id": ada, "body": "Your code is 123456"},
        "send_monthly_report": {
            "user_id": ada,
            "month": today,
            "income": "5200",
            "spending": "3890.55",
            "savings": "1309.45",
            "currency": "USD",
            "categories": [{"name": "Rent", "amount": "1800"}],
        },
        "send_career_insights": {
            "user_id": ada,
            "headline": "Your market this month",
            "insights": ["Demand for analysts is up 8%"],
            "salary_median": "85000",
        },
        "send_educational_content": {
            "user_id": ada,
            "topic": "Budgeting",
            "title": "The 50/30/20 rule",
            "summary": "Split income.",
        },
        "send_welcome_email": {"user_id": ada},
        "send_order_confirmation": {"order_id": ids["order"]},
        "send_meeting_invitation": {"user_id": ada, "meeting_id": ids["meeting"]},
        "send_meeting_reminder": {"user_id": ada, "meeting_id": ids["meeting"], "window": "1h"},
        "send_goal_milestone": {
            "user_id": ada,
            "goal": "Emergency fund",
            "milestone": "First 1000",
            "saved": "1000",
            "target": "3000",
        },
        "send_phase_transition": {
            "user_id": ada,
            "from_phase": "discovery",
            "to_phase": "tracking",
        },
        "send_credit_purchase_confirmation": {"purchase_id": ids["purchase"]},
        "send_low_credit_alert": {"user_id": ada, "balance": "3", "threshold": "10"},
        "send_email": {"user_id": ada, "subject": "Hello", "body": "Line one.\n\nLine two."},
        "send_onboarding_sequence": {"user_id": ada},
    }
    # When every task is enqueued once, plus a guest receipt and two that must be suppressed
    job_ids = {task: await env.enqueue(task, payload) for task, payload in jobs.items()}
    guest = await env.enqueue("send_order_confirmation", {"order_id": ids["guest_order"]})
    eva_welcome = await env.enqueue("send_welcome_email", {"user_id": eva})
    await env.pool.execute("DELETE FROM consents WHERE user_id = $1 AND channel = 'sms'", eva)
    eva_sms = await env.enqueue("send_weekly_checkin", {"user_id": eva, "week_of": today})

    # Then each job succeeds with the outcome its rules call for
    results = {task: (await env.finished(job_id)).result for task, job_id in job_ids.items()}
    for task, result in results.items():
        assert result["status"] == "sent", (task, result)
    assert (await env.finished(guest)).result["status"] == "sent"
    assert (await env.finished(eva_welcome)).result == {
        "status": "suppressed",
        "reason": "no email opt-in (opt-in jurisdiction)",
    }
    assert (await env.finished(eva_sms)).result["status"] == "suppressed"

    # And the providers received exactly one message per send
    sms = await env.twilio.wait_for_messages(5)
    assert len(sms) == 5 and {m.to for m in sms} == {ADA_PHONE}
    emails = await env.resend.wait_for_messages(14)
    assert len(emails) == 14
    by_subject = {e.subject: e for e in emails}
    reminder = next(m.body for m in sms if "City Power" in m.body)
    assert reminder == (
        "Hi Ada, your City Power bill of $84.20 is due Mar 5, 2025. Reply STOP to opt out."
    )
    receipt = by_subject["Order A-1001 confirmed"]
    assert "2 x Green tea" in receipt.text and "$9.00" in receipt.text
    assert any(e.to == ("guest@example.org",) for e in emails)
    for e in emails:
        assert e.idempotency_key and e.idempotency_key.startswith("qr-")
        assert e.headers["List-Unsubscribe"].startswith("<https://hooks.example.test/unsubscribe?")
        assert e.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert e.html and e.text

    # And every attempt is in the delivery log, masked, with the SMS cost per segment
    rows = await env.log_rows(user_id=ada, channel="sms")
    assert {r["status"] for r in rows} == {"sent"}
    assert all(r["cost"] == Decimal("0.00790") and r["currency"] == "USD" for r in rows)
    assert all(r["recipient_masked"] == "+1******0111" for r in rows)
    cost = await env.pool.fetchval(
        "SELECT sum(cost) FROM daily_user_costs WHERE user_id = $1 AND channel = 'sms'", ada
    )
    assert cost == Decimal("0.03950")
    suppressed = await env.log_rows(user_id=eva)
    assert [r["status"] for r in suppressed] == ["suppressed", "suppressed"]
    stamped = await env.pool.fetchval(
        "SELECT reminded_1h_at IS NOT NULL FROM meeting_participants WHERE user_id = $1", ada
    )
    assert stamped

    # And no log line carries a full phone number or email address
    for secret in (ADA_PHONE, ADA_EMAIL, EVA_EMAIL, "+4915112345678", "guest@example.org"):
        assert secret not in caplog.text


async def test_sandbox_without_credentials(redis_url: str, database_url: str) -> None:
    async with messaging_env(redis_url, database_url, providers=False) as env:
        # Given no provider credentials
        ada = await env.user("Ada", email=ADA_EMAIL, phone=ADA_PHONE)
        # When an SMS and an email are sent
        sms = await env.enqueue("send_weekly_checkin", {"user_id": ada, "week_of": "2025-03-03"})
        mail = await env.enqueue("send_welcome_email", {"user_id": ada})
        # Then both land in the sandbox outbox and the log says sandbox
        assert (await env.finished(sms)).result == {"status": "sandbox"}
        assert (await env.finished(mail)).result == {"status": "sandbox"}
        rows = await env.pool.fetch(
            "SELECT channel, recipient, subject, headers FROM sandbox_outbox"
        )
        assert {(r["channel"], r["recipient"]) for r in rows} == {
            ("sms", ADA_PHONE),
            ("email", ADA_EMAIL),
        }
        email_row = next(r for r in rows if r["channel"] == "email")
        assert email_row["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert {r["status"] for r in await env.log_rows(user_id=ada)} == {"sandbox"}
        assert not env.twilio.messages and not env.resend.messages


async def test_unknown_user_is_dead_lettered(env: Env) -> None:
    job = await env.enqueue("send_welcome_email", {"user_id": 999_999})
    status = await env.finished(job)
    assert status.state == "dead" and "does not exist" in (status.last_error or "")


async def test_quiet_hours_defer_and_later_deliver(env: Env) -> None:
    # Given it is 22:00 in New York (03:00 UTC)
    ada = await env.user("Ada", email=ADA_EMAIL, phone=ADA_PHONE)
    env.clock.now = datetime.fromisoformat("2025-03-06T03:00:00+00:00")
    # When a payment reminder and a critical alert are due
    reminder = await env.enqueue(
        "send_payment_reminder",
        {
            "user_id": ada,
            "payee": "Gas",
            "amount": "20",
            "currency": "USD",
            "due_date": "2025-03-08",
        },
    )
    alert = await env.enqueue(
        "send_critical_financial_alert",
        {"user_id": ada, "alert_type": "security", "message": "New login from Lagos."},
    )
    # Then the critical alert goes at once, and the reminder is deferred, not dropped
    assert (await env.finished(alert)).result["status"] == "sent"

    async def deferred() -> bool:
        return bool(await env.log_rows(job_id=reminder, status="deferred"))

    await wait_for(deferred, what="a quiet-hours deferral")
    assert len(env.twilio.messages) == 1
    status = await env.client.status(reminder)
    assert status.state in ("scheduled", "running", "queued")
    assert status.attempt == 1
    # When the morning comes (08:00 in New York)
    env.clock.now = datetime.fromisoformat("2025-03-06T13:00:00+00:00")
    # Then the reminder is delivered, without having spent a retry
    done = await env.finished(reminder)
    assert done.result["status"] == "sent" and done.attempt == 1
    assert len(env.twilio.messages) == 2


async def test_demo_mix_runs_without_dead_letters(redis_url: str, database_url: str) -> None:
    from notifyhub.demo_data import seed_demo_data
    from notifyhub.messaging.demo import enqueue_demo_messages

    async with messaging_env(redis_url, database_url, providers=False) as env:
        # Given the demo data set
        await seed_demo_data(env.pool)
        # When the demo mix is enqueued (twice: the second time adds nothing)
        ids = await enqueue_demo_messages(env.client, env.pool)
        assert await enqueue_demo_messages(env.client, env.pool) == ids
        assert len(ids) >= 8

        # Then every job finishes or waits for its recipient's quiet hours to end
        async def settled() -> bool:
            for job_id in ids:
                status = await env.client.status(job_id)
                if status.state == "succeeded":
                    continue
                if status.state == "dead" or not await env.log_rows(job_id=job_id):
                    return False
            return True

        await wait_for(settled, what="every demo job to settle")
        for job_id in ids:
            assert (await env.client.status(job_id)).state != "dead"
        statuses = {r["status"] for r in await env.log_rows()}
        assert {"sandbox", "suppressed"} <= statuses
