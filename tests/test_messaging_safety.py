"""The guarantees around sending: STOP wins over queued, delayed and in-flight messages, forged
webhooks change nothing, ambiguous outcomes are never re-sent, throttling waits, fallbacks
switch channel, unsubscribing ends the onboarding sequence, and the ledger stops a redelivered
or replayed job from sending twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from messaging_fixtures import Env, messaging_env, wait_for
from notifyhub.messaging import MessagingOptions

from qrunner import keys
from qrunner.job import Job

PHONE = "+15555550122"
EMAIL = "grace@example.com"
CHECKIN = {"week_of": "2025-03-03", "score": 80}


@pytest.fixture
async def env(redis_url: str, database_url: str) -> AsyncIterator[Env]:
    async with messaging_env(
        redis_url, database_url, options=MessagingOptions(onboarding_delays_s=(0, 2.0, 2.0, 2.0))
    ) as e:
        yield e


async def _sms_consented(env: Env, user_id: int) -> bool:
    return bool(
        await env.pool.fetchval(
            "SELECT consented FROM current_consents WHERE user_id = $1 AND channel = 'sms'", user_id
        )
    )


async def test_stop_beats_queued_delayed_and_in_flight_messages(
    redis_url: str, database_url: str
) -> None:
    async with messaging_env(redis_url, database_url, concurrency=1) as env:
        # Given a user with one SMS in flight (the provider holds its answer), two queued
        # behind it and two delayed
        user = await env.user("Grace Hopper", email=EMAIL, phone=PHONE)
        env.twilio.fail_next("timeout_after_accept", match_to=PHONE, hold_s=1.0)
        jobs = [
            await env.enqueue("send_weekly_checkin", {"user_id": user, **CHECKIN}) for _ in range(3)
        ]
        jobs += [
            await env.enqueue("send_weekly_checkin", {"user_id": user, **CHECKIN}, delay_s=delay)
            for delay in (0.3, 1.5)
        ]
        await env.twilio.wait_for_messages(1)
        # When STOP arrives through the signed webhook while the first is in flight
        status, body = await env.inbound_sms("Stop", PHONE, "SM" + "1" * 32)
        assert status == 200 and "<Response" in body
        opted_out_at = await env.pool.fetchval(
            "SELECT opted_out_at FROM consents WHERE user_id = $1 AND channel = 'sms'", user
        )
        # Then the in-flight message finished before the opt-out was committed, and nothing
        # else was sent: the queued and delayed messages are suppressed
        results = [(await env.finished(j)).result["status"] for j in jobs]
        assert results == ["sent", "suppressed", "suppressed", "suppressed", "suppressed"]
        accepted = [r for r in env.twilio.requests if r.status == 201]
        assert len(env.twilio.messages) == 1 and len(accepted) == 1
        assert accepted[0].received_at < opted_out_at.timestamp()
        # (the opt-out waited for the in-flight send: a STOP landing between a send's consent
        # check and its provider call cannot slip past it)
        assert opted_out_at.timestamp() >= accepted[0].received_at + 0.9
        assert not await _sms_consented(env, user)
        assert (
            await env.pool.fetchval(
                "SELECT reason FROM suppressions WHERE channel = 'sms' AND recipient = $1", PHONE
            )
            == "stop"
        )


async def test_forged_or_unsigned_webhooks_are_refused_and_change_nothing(env: Env) -> None:
    # Given a consented user
    user = await env.user("Grace", email=EMAIL, phone=PHONE)
    # When STOP arrives with a wrong signature, with none, or signed for another body
    wrong = await env.inbound_sms("STOP", PHONE, "SM" + "2" * 32, signature="bm9wZQ==")
    unsigned = await env.inbound_sms("STOP", PHONE, "SM" + "3" * 32, signature="")
    other = env.signature("/hooks/twilio/sms", {"Body": "HELLO"})
    tampered = await env.inbound_sms("STOP", PHONE, "SM" + "4" * 32, signature=other)
    # Then each is refused and nothing changed
    assert [wrong[0], unsigned[0], tampered[0]] == [403, 403, 403]
    assert await _sms_consented(env, user)
    assert await env.pool.fetchval("SELECT count(*) FROM inbound_events") == 0
    assert await env.pool.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_help_start_and_redelivered_stop(env: Env) -> None:
    user = await env.user("Grace", email=EMAIL, phone=PHONE)
    # HELP answers with help text as TwiML
    status, body = await env.inbound_sms("help", PHONE, "SM" + "5" * 32)
    assert status == 200 and "<Message>" in body and "Reply STOP" in body
    # STOP opts out, START opts back in and lifts the suppression
    stop_sid = "SM" + "6" * 32
    await env.inbound_sms("STOP", PHONE, stop_sid)
    assert not await _sms_consented(env, user)
    await env.inbound_sms("START", PHONE, "SM" + "7" * 32)
    assert await _sms_consented(env, user)
    assert await env.pool.fetchval("SELECT count(*) FROM suppressions") == 0
    # Twilio redelivering the old STOP is answered but not applied again
    status, _ = await env.inbound_sms("STOP", PHONE, stop_sid)
    assert status == 200 and await _sms_consented(env, user)
    assert await env.pool.fetchval("SELECT count(*) FROM inbound_events") == 3
    # And SMS flows again
    job = await env.enqueue("send_weekly_checkin", {"user_id": user, **CHECKIN})
    assert (await env.finished(job)).result["status"] == "sent"


async def test_email_500_after_accept_is_retried_with_the_same_key(env: Env) -> None:
    # Given Resend accepts the email but answers 500
    user = await env.user("Grace", email=EMAIL, phone=PHONE)
    env.resend.fail_next("error_after_accept")
    # When the welcome email is sent
    job = await env.enqueue("send_welcome_email", {"user_id": user})
    status = await env.finished(job)
    # Then it was retried with the same Idempotency-Key and one email exists
    assert status.result["status"] == "sent" and status.attempt == 2
    keys_sent = [r.headers["Idempotency-Key"] for r in env.resend.requests]
    assert len(keys_sent) == 2 and len(set(keys_sent)) == 1
    assert len(env.resend.messages) == 1
    assert [r["status"] for r in await env.log_rows(job_id=job)] == ["failed", "sent"]


async def test_sms_500_after_accept_is_maybe_sent_and_never_resent(env: Env) -> None:
    # Given Twilio accepts the SMS but answers 500
    user = await env.user("Grace", email=EMAIL, phone=PHONE)
    env.twilio.fail_next("error_after_accept")
    # When the SMS job runs
    job = await env.enqueue("send_weekly_checkin", {"user_id": user, **CHECKIN})
    status = await env.finished(job)
    # Then it succeeds as maybe-sent, recorded in the log and the ledger, and is not resent
    assert status.result == {"status": "maybe_sent"} and status.attempt == 1
    assert [r["status"] for r in await env.log_rows(job_id=job)] == ["maybe_sent"]
    assert (
        await env.pool.fetchval("SELECT state FROM effect_ledger WHERE job_id = $1", job)
        == "maybe_sent"
    )
    # Even when the same job is delivered again
    await _redeliver(env, job, "send_weekly_checkin", "sms_daily", {"user_id": user, **CHECKIN})
    assert len(env.twilio.messages) == 1 and len(env.twilio.requests) == 1


@pytest.mark.parametrize("provider", ["twilio", "resend"])
async def test_429_waits_for_retry_after_then_sends(env: Env, provider: str) -> None:
    # Given the provider answers 429 with Retry-After: 1 once
    user = await env.user("Grace", email=EMAIL, phone=PHONE)
    fake = env.twilio if provider == "twilio" else env.resend
    fake.fail_next("throttled", retry_after_s=1)
    # When a message is sent
    if provider == "twilio":
        job = await env.enqueue("send_weekly_checkin", {"user_id": user, **CHECKIN})
    else:
        job = await env.enqueue("send_welcome_email", {"user_id": user})
    status = await env.finished(job)
    # Then it waited at least the Retry-After, sent once, and spent no attempt
    assert status.result["status"] == "sent" and status.attempt == 1
    first, second = fake.requests
    assert second.received_at - first.received_at >= 0.95
    assert len(fake.messages) == 1
    assert [r["status"] for r in await env.log_rows(job_id=job)] == ["deferred", "sent"]


async def test_ledger_stops_a_second_send_of_the_same_job(env: Env) -> None:
    # Given an SMS job that was sent
    user = await env.user("Grace", email=EMAIL, phone=PHONE)
    payload = {"user_id": user, **CHECKIN}
    job = await env.enqueue("send_weekly_checkin", payload)
    assert (await env.finished(job)).result["status"] == "sent"
    # When the same job (same id) is delivered again: once with the Redis fast path, once
    # after Redis lost the ledger keys (PostgreSQL decides)
    await _redeliver(env, job, "send_weekly_checkin", "sms_daily", payload)
    for key in await env.redis.keys("qr:msg:ledger:*"):
        await env.redis.delete(key)
    await _redeliver(env, job, "send_weekly_checkin", "sms_daily", payload)
    # Then the provider got one message
    assert len(env.twilio.messages) == 1
    assert [r["status"] for r in await env.log_rows(job_id=job)] == ["sent"]


async def _redeliver(
    env: Env, job_id: str, task: str, queue: str, payload: dict[str, object]
) -> None:
    """Puts the job back on its stream with its id, as a reclaim or a DLQ replay would."""
    job = Job(id=job_id, task=task, payload=payload, queue=queue)
    # Its record says queued again (a success leaves a string record: replaced, not edited).
    await env.redis.delete(keys.job(queue, job_id))
    await env.redis.hset(keys.job(queue, job_id), mapping={"state": "queued", "result": ""})
    await env.redis.xadd(keys.stream(queue), {"j": job.encode()})

    async def duplicate() -> bool:
        status = await env.client.status(job_id)
        return status.state == "succeeded" and (status.result or {}).get("status") == "duplicate"

    await wait_for(duplicate, what="the redelivered job to finish as a duplicate")


async def test_critical_sms_falls_back_to_email(env: Env) -> None:
    # Given Twilio refuses the number as invalid
    user = await env.user("Grace", email=EMAIL, phone=PHONE)
    env.twilio.fail_next("invalid_number")
    # When a critical alert is sent
    job = await env.enqueue(
        "send_critical_financial_alert",
        {"user_id": user, "alert_type": "fraud", "message": "Card 4242 blocked."},
    )
    # Then the SMS job is dead-lettered and the alert arrives by email
    status = await env.finished(job)
    assert status.state == "dead" and "21211" in (status.last_error or "")
    [email] = await env.resend.wait_for_messages(1)
    assert "Card 4242 blocked." in (email.text or "") and email.to == (EMAIL,)
    assert not env.twilio.messages


async def test_urgent_email_falls_back_to_sms(env: Env) -> None:
    # Given Resend refuses the address
    user = await env.user("Grace", email=EMAIL, phone=PHONE)
    env.resend.fail_next("invalid_number")
    # When a low-credit alert is sent
    job = await env.enqueue(
        "send_low_credit_alert", {"user_id": user, "balance": "3", "threshold": "10"}
    )
    assert (await env.finished(job)).state == "dead"
    # Then it arrives by SMS
    [sms] = await env.twilio.wait_for_messages(1)
    assert "credit balance is down to 3" in sms.body


async def test_carrier_opt_out_is_recorded(env: Env) -> None:
    user = await env.user("Grace", email=EMAIL, phone=PHONE)
    env.twilio.fail_next("unsubscribed")
    job = await env.enqueue("send_weekly_checkin", {"user_id": user, **CHECKIN})
    assert (await env.finished(job)).result == {"status": "opted_out"}
    assert not await _sms_consented(env, user)
    source = await env.pool.fetchval(
        "SELECT opt_out_source FROM consents WHERE user_id = $1 AND channel = 'sms'", user
    )
    assert source == "twilio_21610"


async def test_onboarding_stops_after_one_click_unsubscribe(env: Env) -> None:
    # Given the onboarding sequence started (steps two seconds apart here)
    user = await env.user("Grace", email=EMAIL, phone=PHONE)
    await env.enqueue("send_onboarding_sequence", {"user_id": user})
    [first] = await env.resend.wait_for_messages(1)
    link = urlsplit(first.headers["List-Unsubscribe"].strip("<>"))
    target = f"{link.path}?{link.query}"
    # When the recipient opens the link (GET changes nothing) and confirms with one click
    async with env.http.get(target) as page:
        assert page.status == 200 and "<form method='post'" in await page.text()
    assert await env.pool.fetchval(
        "SELECT consented FROM current_consents WHERE user_id = $1 AND channel = 'email'", user
    )
    async with env.http.post(target, data={"List-Unsubscribe": "One-Click"}) as response:
        assert response.status == 200

    # Then the next step finds the opt-out, stops the sequence and sends nothing more
    async def stopped() -> bool:
        return bool(
            await env.pool.fetchval(
                "SELECT stopped_at IS NOT NULL FROM onboarding_progress WHERE user_id = $1", user
            )
        )

    await wait_for(stopped, what="the onboarding sequence to stop")
    assert len(env.resend.messages) == 1
    assert [r["template"] for r in await env.log_rows(user_id=user, status="suppressed")] == [
        "onboarding_1"
    ]
    # And a tampered link is refused
    async with env.http.post(target.replace("token=", "token=x")) as bad:
        assert bad.status == 400
