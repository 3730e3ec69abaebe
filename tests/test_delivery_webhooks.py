"""Provider feedback end to end: Twilio status callbacks and Resend's Svix-signed events, through
the messaging routes, a real worker, PostgreSQL, Redis and the fake Twilio and Resend.

Given messages sent (or maybe sent) through the fakes, when the providers call back, then
maybe-sent SMS are resolved only when the callback says which message it is, nothing moves
back to an earlier status, bounces and complaints suppress the address, opens and clicks are
engagement, and unsigned or forged requests change nothing.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from messaging_fixtures import PUBLIC_URL, Env, messaging_env
from notifyhub.commands import register_commands
from notifyhub.upkeep.monitoring import METRICS_PATH, metrics_route
from notifyhub.webhooks.signature import sign_standard
from pydantic import SecretStr
from twilio.request_validator import RequestValidator

from qrunner import Registry, Settings

pytestmark = pytest.mark.timeout(60)

PHONE = "+15555550142"
EMAIL = "lin@example.com"
CHECKIN = {"week_of": "2025-03-03", "score": 80}
WHSEC = "whsec_" + base64.b64encode(b"resend-test-key-0123456789abcdef").decode()


@pytest.fixture
async def env(redis_url: str, database_url: str) -> AsyncIterator[Env]:
    async with messaging_env(redis_url, database_url) as e:
        e.state.settings = e.state.settings.model_copy(
            update={"resend_webhook_secret": SecretStr(WHSEC)}
        )
        yield e


async def status_callback(
    env: Env, fields: Mapping[str, str], *, query: str = "", signature: str | None = None
) -> tuple[int, dict[str, Any]]:
    path = "/hooks/twilio/status" + (f"?{query}" if query else "")
    validator = RequestValidator(env.twilio.auth_token)
    sig = signature or validator.compute_signature(PUBLIC_URL + path, dict(fields))
    async with env.http.post(path, data=dict(fields), headers={"X-Twilio-Signature": sig}) as r:
        return r.status, await r.json()


async def resend_event(
    env: Env, event: dict[str, Any], msg_id: str, *, secret: str = WHSEC
) -> tuple[int, dict[str, Any]]:
    body = orjson.dumps(event)
    stamp = int(time.time())
    key = base64.b64decode(secret.removeprefix("whsec_"))
    headers = {
        "svix-id": msg_id,
        "svix-timestamp": str(stamp),
        "svix-signature": sign_standard(key, msg_id, stamp, body),
        "Content-Type": "application/json",
    }
    async with env.http.post("/hooks/resend", data=body, headers=headers) as r:
        return r.status, await r.json()


async def maybe_sent_sms(env: Env, user: int) -> str:
    """An SMS job whose text Twilio accepted and then answered 500: logged maybe-sent."""
    env.twilio.fail_next("error_after_accept", match_to=PHONE)
    job = await env.enqueue("send_weekly_checkin", {"user_id": user, **CHECKIN})
    assert (await env.finished(job)).result == {"status": "maybe_sent"}
    return job


def fields(sid: str, status: str, **extra: str) -> dict[str, str]:
    return {"MessageSid": sid, "MessageStatus": status, "To": PHONE, **extra}


async def test_delivered_callback_resolves_a_maybe_sent_sms_by_its_number(env: Env) -> None:
    # Given an SMS recorded maybe-sent, whose SID only Twilio knows
    user = await env.user("Lin", email=EMAIL, phone=PHONE)
    job = await maybe_sent_sms(env, user)
    (message,) = env.twilio.messages
    # When Twilio reports it delivered (and redelivers the same callback)
    first = await status_callback(env, fields(message.sid, "delivered"))
    again = await status_callback(env, fields(message.sid, "delivered"))
    # And a late "sent" arrives after "delivered"
    late = await status_callback(env, fields(message.sid, "sent"))
    # Then the row is sent, carries the SID and remembers it was maybe-sent; nothing went back
    assert first == (200, {"status": "resolved"})
    assert again == (200, {"status": "redelivery"})
    assert late == (200, {"status": "stale"})
    (row,) = await env.log_rows(job_id=job)
    assert (row["status"], row["resolved_from"]) == ("sent", "maybe_sent")
    assert (row["provider_message_id"], row["provider_status"]) == (message.sid, "delivered")
    ledger = await env.pool.fetchrow("SELECT * FROM effect_ledger WHERE job_id = $1", job)
    assert (ledger["state"], ledger["provider_message_id"]) == ("sent", message.sid)
    assert len(env.twilio.messages) == 1


async def test_undelivered_callback_marks_a_maybe_sent_sms_failed_by_its_key(env: Env) -> None:
    # Given an SMS recorded maybe-sent
    user = await env.user("Lin", email=EMAIL, phone=PHONE)
    job = await maybe_sent_sms(env, user)
    (message,) = env.twilio.messages
    key = (await env.log_rows(job_id=job))[0]["idempotency_key"]
    # When the callback URL names its idempotency key and Twilio reports it undelivered
    status, body = await status_callback(
        env, fields(message.sid, "undelivered", ErrorCode="30003"), query=f"key={key}"
    )
    # Then the row is failed with Twilio's error code, and the ledger still forbids a resend
    assert (status, body) == (200, {"status": "resolved"})
    (row,) = await env.log_rows(job_id=job)
    assert (row["status"], row["resolved_from"], row["provider_error_code"]) == (
        "failed",
        "maybe_sent",
        "30003",
    )
    assert (
        await env.pool.fetchval("SELECT state FROM effect_ledger WHERE job_id = $1", job)
        == "maybe_sent"
    )


async def test_an_ambiguous_callback_resolves_nothing(env: Env) -> None:
    # Given two maybe-sent SMS to the same number
    user = await env.user("Lin", email=EMAIL, phone=PHONE)
    jobs = [await maybe_sent_sms(env, user) for _ in range(2)]
    # When a callback arrives with neither a known SID nor a key
    status, body = await status_callback(env, fields(env.twilio.messages[0].sid, "delivered"))
    # Then both stay maybe-sent: guessing could mark the wrong one
    assert (status, body) == (200, {"status": "ambiguous"})
    for job in jobs:
        assert [r["status"] for r in await env.log_rows(job_id=job)] == ["maybe_sent"]


async def test_a_sent_sms_records_the_carriers_answer_without_changing_status(env: Env) -> None:
    user = await env.user("Lin", email=EMAIL, phone=PHONE)
    job = await env.enqueue("send_weekly_checkin", {"user_id": user, **CHECKIN})
    sid = (await env.finished(job)).result["sid"]
    status, body = await status_callback(env, fields(sid, "failed", ErrorCode="30008"))
    assert (status, body) == (200, {"status": "updated"})
    (row,) = await env.log_rows(job_id=job)
    assert (row["status"], row["provider_status"], row["resolved_from"]) == (
        "sent",
        "failed",
        None,
    )


async def test_forged_or_unsigned_callbacks_change_nothing(env: Env) -> None:
    user = await env.user("Lin", email=EMAIL, phone=PHONE)
    job = await maybe_sent_sms(env, user)
    sid = env.twilio.messages[0].sid
    forged, _ = await status_callback(env, fields(sid, "delivered"), signature="bm9wZQ==")
    missing, _ = await status_callback(env, {"MessageSid": sid}, signature=None)
    assert forged == 403 and missing == 400
    assert [r["status"] for r in await env.log_rows(job_id=job)] == ["maybe_sent"]
    assert await env.pool.fetchval("SELECT count(*) FROM inbound_events") == 0


async def sent_email(env: Env, user: int) -> tuple[str, str]:
    job = await env.enqueue("send_email", {"user_id": user, "subject": "Hi", "body": "Hello."})
    assert (await env.finished(job)).state == "succeeded"
    (row,) = await env.log_rows(job_id=job)
    return job, row["provider_message_id"]


def resend(kind: str, email_id: str, to: str = EMAIL, **data: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "created_at": "2025-03-05T17:05:00.000Z",
        "data": {"email_id": email_id, "to": [to], "subject": "Hi", **data},
    }


async def test_resend_bounce_and_complaint_suppress_the_address(env: Env) -> None:
    # Given two users with an email each
    lin = await env.user("Lin", email=EMAIL, phone=None)
    kai = await env.user("Kai", email="kai@example.com", phone=None)
    job, email_id = await sent_email(env, lin)
    _, kai_email = await sent_email(env, kai)
    # When Resend reports a hard bounce (twice, same svix-id), a soft bounce and a complaint
    bounce = resend("email.bounced", email_id, bounce={"type": "Permanent"})
    assert await resend_event(env, bounce, "msg_1") == (200, {"status": "recorded"})
    assert await resend_event(env, bounce, "msg_1") == (200, {"status": "duplicate"})
    soft = resend("email.bounced", kai_email, to="kai@example.com", bounce={"type": "Transient"})
    assert (await resend_event(env, soft, "msg_2"))[0] == 200
    complaint = resend("email.complained", kai_email, to="kai@example.com")
    assert (await resend_event(env, complaint, "msg_3"))[0] == 200
    # Then the bounced and the complaining addresses are suppressed, each for its reason
    rows = await env.pool.fetch("SELECT recipient, reason, source FROM suppressions ORDER BY 1")
    assert [tuple(r) for r in rows] == [
        ("kai@example.com", "complaint", "resend_webhook"),
        ("lin@example.com", "bounce", "resend_webhook"),
    ]
    (row,) = await env.log_rows(job_id=job)
    assert row["provider_status"] == "bounced"
    # And the next email to the bounced address is suppressed, not sent
    again = await env.enqueue("send_email", {"user_id": lin, "subject": "Hi", "body": "Again."})
    assert (await env.finished(again)).result["status"] == "suppressed"


async def test_resend_opens_and_clicks_are_engagement(env: Env) -> None:
    lin = await env.user("Lin", email=EMAIL, phone=None)
    _, email_id = await sent_email(env, lin)
    assert (await resend_event(env, resend("email.opened", email_id), "msg_o"))[1] == {
        "status": "engagement"
    }
    assert (await resend_event(env, resend("email.clicked", email_id), "msg_c"))[0] == 200
    assert (await resend_event(env, resend("email.clicked", email_id), "msg_c"))[1] == {
        "status": "duplicate"
    }
    rows = await env.pool.fetch(
        "SELECT user_id, channel, kind, delivery_log_id IS NOT NULL AS linked, occurred_at"
        " FROM engagement_events ORDER BY id"
    )
    assert [(r["user_id"], r["channel"], r["kind"], r["linked"]) for r in rows] == [
        (lin, "email", "open", True),
        (lin, "email", "click", True),
    ]
    assert rows[0]["occurred_at"].isoformat() == "2025-03-05T17:05:00+00:00"


async def test_resend_events_need_a_valid_svix_signature_and_a_secret(env: Env) -> None:
    lin = await env.user("Lin", email=EMAIL, phone=None)
    _, email_id = await sent_email(env, lin)
    other = "whsec_" + base64.b64encode(b"some-other-key-0123456789abcdef").decode()
    forged = await resend_event(env, resend("email.bounced", email_id), "msg_x", secret=other)
    assert forged == (401, {"error": "invalid signature"})
    env.state.settings = env.state.settings.model_copy(update={"resend_webhook_secret": None})
    unset = await resend_event(env, resend("email.bounced", email_id), "msg_y")
    assert unset[0] == 503
    assert await env.pool.fetchval("SELECT count(*) FROM suppressions") == 0
    assert await env.pool.fetchval("SELECT count(*) FROM inbound_events") == 0


async def test_an_sms_reply_is_engagement_of_the_user_holding_the_number(env: Env) -> None:
    lin = await env.user("Lin", email=EMAIL, phone=PHONE)
    status, _ = await env.inbound_sms("Thanks, paid it", PHONE, "SM" + "7" * 32)
    assert status == 200
    rows = await env.pool.fetch("SELECT user_id, channel, kind FROM engagement_events")
    assert [tuple(r) for r in rows] == [(lin, "sms", "reply")]


async def test_operators_see_maybe_sent_messages_in_the_cli_and_the_gauge(
    env: Env, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two maybe-sent SMS, one of which a callback then resolves
    user = await env.user("Lin", email=EMAIL, phone=PHONE)
    first = await maybe_sent_sms(env, user)
    await status_callback(env, fields(env.twilio.messages[0].sid, "delivered"))
    second = await maybe_sent_sms(env, user)
    # When an operator runs `qrunner --app notifyhub.app maybe-sent --json` and the table form
    monkeypatch.setenv("NOTIFYHUB_DATABASE_URL", database_url)
    registry = Registry()
    register_commands(registry)
    command = registry.commands["maybe-sent"].fn
    assert await command(["--json"], Settings()) == 0
    listed = json.loads(capsys.readouterr().out)
    assert await command([], Settings()) == 0
    table = capsys.readouterr().out
    # Then only the unresolved one is listed, with its recipient masked
    assert [(r["job_id"], r["channel"]) for r in listed] == [(second, "sms")]
    assert first not in table and second in table and PHONE not in table
    assert listed[0]["recipient_masked"] != PHONE and PHONE[-4:] in listed[0]["recipient_masked"]
    # And Prometheus reads the same count from the messaging metrics route
    token = "read-token-" + "x" * 32
    env.state.settings = env.state.settings.model_copy(update={"api_read_token": SecretStr(token)})
    app = web.Application()
    metrics_route(app, env.state)
    async with TestClient(TestServer(app, host="127.0.0.1")) as http:
        refused = await http.get(METRICS_PATH)
        scraped = await http.get(METRICS_PATH, headers={"Authorization": f"Bearer {token}"})
        text = await scraped.text()
    assert refused.status == 401 and scraped.status == 200
    assert 'notifyhub_messages_maybe_sent{channel="sms"} 1.0' in text
    assert 'notifyhub_messages_maybe_sent{channel="email"} 0.0' in text
