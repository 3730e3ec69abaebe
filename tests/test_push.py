"""Push notifications end to end: a real worker, Redis and PostgreSQL, the fake FCM (HTTP/1.1)
and the fake APNs (HTTP/2), through the same compliance path as SMS and email; the providers'
error tables as pure functions; and the push -> email -> SMS choice of ``send_preferred``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from messaging_fixtures import Env, messaging_env, wait_for
from notifyhub.fakeproviders.apns import FakeApns
from notifyhub.fakeproviders.fcm import FakeFcm
from notifyhub.messaging.push_devices import register_device, user_devices
from notifyhub.providers import (
    PermanentProviderError,
    ProviderThrottled,
    TransientProviderError,
)
from notifyhub.providers.push import (
    ApnsPush,
    DeviceUnregistered,
    FcmPush,
    PushClients,
    classify_apns_error,
    classify_fcm_error,
    mask_token,
)

from qrunner import keys
from qrunner.job import Job

FCM_TOKEN = "fcm-token-" + "a1B2_c3:D4-" * 12
FCM_TOKEN_2 = "fcm-token-" + "z9Y8_x7:W6-" * 12
APNS_TOKEN = "0f" * 32
EMAIL = "katherine@example.com"
PHONE = "+15555550177"


class PushEnv:
    """The messaging stack plus the two push fakes, wired into the handler state."""

    def __init__(self, env: Env, fcm: FakeFcm, apns: FakeApns) -> None:
        self.env, self.fcm, self.apns = env, fcm, apns

    async def user(
        self,
        name: str,
        *,
        devices: tuple[tuple[str, str], ...] = (),
        push: bool = True,
        email: str | None = EMAIL,
        phone: str | None = PHONE,
        sms: bool = True,
        email_opt_in: bool = True,
    ) -> int:
        user_id = await self.env.user(
            name, email=email, phone=phone, sms=sms, email_opt_in=email_opt_in
        )
        if push:
            await self.env.pool.execute(
                "INSERT INTO consents (user_id, channel, opted_in_at, opt_in_source)"
                " VALUES ($1, 'push', now() - interval '1 day', 'test')",
                user_id,
            )
        async with self.env.pool.acquire() as conn:
            for platform, token in devices:
                await register_device(conn, user_id, platform, token)
        return user_id

    async def push(self, user_id: int, **extra: Any) -> str:
        payload = {"user_id": user_id, "title": "Your day", "body": "Three things to know."}
        return await self.env.enqueue("send_push", {**payload, **extra})

    async def devices(self, user_id: int) -> list[str]:
        async with self.env.pool.acquire() as conn:
            return [d.token for d in await user_devices(conn, user_id)]

    async def log(self, job_id: str) -> list[tuple[str, str]]:
        return [(r["status"], r["provider"]) for r in await self.env.log_rows(job_id=job_id)]


@pytest.fixture
async def penv(redis_url: str, database_url: str) -> AsyncIterator[PushEnv]:
    async with (
        messaging_env(redis_url, database_url) as env,
        FakeFcm() as fcm,
        FakeApns() as apns,
        PushClients(
            FcmPush(fcm.access_token, fcm.project, base_url=fcm.base_url),
            ApnsPush(apns.auth_token, apns.topic, base_url=apns.base_url),
        ) as clients,
    ):
        env.state.push = clients
        yield PushEnv(env, fcm, apns)


# -- FCM ---------------------------------------------------------------------------------------


async def test_fcm_push_is_sent_in_fcm_v1_format(penv: PushEnv) -> None:
    # Given a consented user with an Android device
    user = await penv.user("Katherine", devices=(("fcm", FCM_TOKEN),))
    # When a push is sent
    job = await penv.push(user, data={"screen": "outlook"}, template="daily_outlook")
    status = await penv.env.finished(job)
    # Then FCM got one message for the token, with the notification, the data and a collapse key
    assert status.result["status"] == "sent" and status.attempt == 1
    (message,) = penv.fcm.messages
    assert message.token == FCM_TOKEN
    assert (message.title, message.body) == ("Your day", "Three things to know.")
    assert message.data == {"screen": "outlook"}
    assert message.android["priority"] == "HIGH" and message.android["collapse_key"]
    assert penv.fcm.requests[0].path == f"/v1/projects/{penv.fcm.project}/messages:send"
    assert penv.fcm.requests[0].headers["Authorization"] == "Bearer ***"
    # And the delivery log has the send, without the token
    rows = await penv.env.log_rows(job_id=job)
    assert [(r["status"], r["provider"], r["channel"]) for r in rows] == [("sent", "fcm", "push")]
    assert FCM_TOKEN not in rows[0]["recipient_masked"]


@pytest.mark.parametrize("kind", ["unsubscribed", "invalid_number"])
async def test_fcm_unregistered_or_bad_token_removes_the_device_without_retry(
    penv: PushEnv, kind: str
) -> None:
    # Given FCM answers UNREGISTERED (or INVALID_ARGUMENT on message.token) for the device
    user = await penv.user("Katherine", devices=(("fcm", FCM_TOKEN), ("fcm", FCM_TOKEN_2)))
    penv.fcm.fail_next(kind, match_to=FCM_TOKEN)
    # When a push is sent
    job = await penv.push(user)
    status = await penv.env.finished(job)
    # Then that token is removed, not retried, and the other device still got the push
    assert status.result["status"] == "sent" and status.attempt == 1
    assert await penv.devices(user) == [FCM_TOKEN_2]
    assert [r.body["message"]["token"] for r in penv.fcm.requests] == [FCM_TOKEN, FCM_TOKEN_2]
    dead = status.result["devices"][f"fcm:{mask_token(FCM_TOKEN)}"]
    assert dead["status"] == "unregistered"
    assert await penv.log(job) == [("failed", "fcm"), ("sent", "fcm")]


@pytest.mark.parametrize(
    ("kind", "first"),
    [("throttled", "deferred"), ("unavailable", "deferred"), ("server_error", "failed")],
)
async def test_fcm_quota_unavailable_and_internal_are_retried_then_sent(
    penv: PushEnv, kind: str, first: str
) -> None:
    # Given FCM answers QUOTA_EXCEEDED / UNAVAILABLE (with Retry-After) or INTERNAL once
    user = await penv.user("Katherine", devices=(("fcm", FCM_TOKEN),))
    penv.fcm.fail_next(kind, retry_after_s=1)
    # When a push is sent
    job = await penv.push(user)
    status = await penv.env.finished(job)
    # Then it is tried again and sent once; a Retry-After defers without spending an attempt
    # and is the wait the job was given, a 500 is an ordinary retry with backoff
    assert status.result["status"] == "sent"
    assert status.attempt == (2 if kind == "server_error" else 1)
    assert len(penv.fcm.requests) == 2 and len(penv.fcm.messages) == 1
    rows = await penv.env.log_rows(job_id=job)
    assert [r["status"] for r in rows] == [first, "sent"]
    if first == "deferred":
        assert "retry after 1s" in rows[0]["error"]
    assert await penv.devices(user) == [FCM_TOKEN]


# -- APNs --------------------------------------------------------------------------------------


async def test_apns_push_goes_over_http2_with_apns_headers(penv: PushEnv) -> None:
    # Given a consented user with an iPhone
    user = await penv.user("Katherine", devices=(("apns", APNS_TOKEN),))
    # When a push with a collapse key is sent
    job = await penv.push(user, collapse_key="daily-outlook", data={"screen": "outlook"})
    status = await penv.env.finished(job)
    # Then APNs got it over HTTP/2, as an alert for the app's topic, with the collapse id
    assert status.result["status"] == "sent" and status.result["devices"]
    (message,) = penv.apns.messages
    assert message.http_version == "2"
    assert message.token == APNS_TOKEN and message.topic == penv.apns.topic
    assert (message.push_type, message.collapse_id, message.priority) == (
        "alert",
        "daily-outlook",
        "10",
    )
    assert message.payload["aps"]["alert"] == {
        "title": "Your day",
        "body": "Three things to know.",
    }
    assert message.payload["screen"] == "outlook"
    (request,) = penv.apns.requests
    assert request.path == f"/3/device/{APNS_TOKEN}"
    assert request.headers["authorization"] == "bearer ***"
    assert await penv.log(job) == [("sent", "apns")]


async def test_apns_410_removes_the_device(penv: PushEnv) -> None:
    # Given APNs answers 410 Unregistered for the only device
    user = await penv.user("Katherine", devices=(("apns", APNS_TOKEN),))
    penv.apns.fail_next("unsubscribed")
    # When a push is sent
    job = await penv.push(user)
    status = await penv.env.finished(job)
    # Then the device is gone, the job ends without a retry, and nothing was delivered
    assert status.state == "succeeded" and status.attempt == 1
    assert status.result["status"] == "unregistered"
    assert await penv.devices(user) == []
    assert len(penv.apns.requests) == 1 and penv.apns.messages == []


# -- compliance --------------------------------------------------------------------------------


async def test_no_push_without_consent_or_device(penv: PushEnv) -> None:
    # Given a user with a device but no push opt-in, one who opted out, and one with no device
    no_opt_in = await penv.user("A", devices=(("fcm", FCM_TOKEN),), push=False)
    opted_out = await penv.user("B", email=None, devices=(("apns", APNS_TOKEN),))
    await penv.env.pool.execute(
        "UPDATE consents SET opted_out_at = now(), opt_out_source = 'app_settings'"
        " WHERE user_id = $1 AND channel = 'push'",
        opted_out,
    )
    no_device = await penv.user("C", email=None, phone=None)
    # When a push is sent to each
    results = [
        (await penv.env.finished(await penv.push(u))).result
        for u in (no_opt_in, opted_out, no_device)
    ]
    # Then none is sent: each is logged as suppressed with its reason
    assert [(r["status"], r["reason"]) for r in results] == [
        ("suppressed", "no push opt-in"),
        ("suppressed", "opted out of push"),
        ("suppressed", "no registered device"),
    ]
    assert penv.fcm.requests == [] and penv.apns.requests == []
    assert await penv.env.log_rows(status="sent") == []
    assert len(await penv.env.log_rows(channel="push", status="suppressed")) == 3


async def test_quiet_hours_defer_a_push_until_morning(penv: PushEnv) -> None:
    # Given it is 22:00 in New York (03:00 UTC)
    user = await penv.user("Katherine", devices=(("fcm", FCM_TOKEN),))
    penv.env.clock.now = datetime.fromisoformat("2025-03-06T03:00:00+00:00")
    # When a push is due
    job = await penv.push(user)

    async def deferred() -> bool:
        return bool(await penv.env.log_rows(job_id=job, status="deferred"))

    # Then it is deferred, not sent and not dropped
    await wait_for(deferred, what="a quiet-hours deferral")
    assert penv.fcm.requests == []
    assert (await penv.env.client.status(job)).state in ("scheduled", "running", "queued")
    # When the morning comes (08:00 in New York)
    penv.env.clock.now = datetime.fromisoformat("2025-03-06T13:00:00+00:00")
    # Then it is delivered without having spent a retry
    done = await penv.env.finished(job)
    assert done.result["status"] == "sent" and done.attempt == 1
    assert len(penv.fcm.messages) == 1


async def test_a_redelivered_push_job_sends_once_per_device(penv: PushEnv) -> None:
    # Given a push job that reached both of a user's devices
    user = await penv.user("Katherine", devices=(("fcm", FCM_TOKEN), ("apns", APNS_TOKEN)))
    payload = {"user_id": user, "title": "Your day", "body": "Three things to know."}
    job = await penv.env.enqueue("send_push", payload)
    assert (await penv.env.finished(job)).result["status"] == "sent"
    # When the same job is delivered again, with the Redis ledger and then with PostgreSQL only
    await _redeliver(penv.env, job, payload)
    for key in await penv.env.redis.keys("qr:msg:ledger:*"):
        await penv.env.redis.delete(key)
    await _redeliver(penv.env, job, payload)
    # Then each provider got one notification
    assert len(penv.fcm.messages) == 1 and len(penv.apns.messages) == 1
    assert sorted(await penv.log(job)) == [("sent", "apns"), ("sent", "fcm")]


async def test_without_credentials_push_goes_to_the_sandbox(penv: PushEnv) -> None:
    # Given no push clients (no credentials configured)
    penv.env.state.push = None
    user = await penv.user("Katherine", devices=(("apns", APNS_TOKEN),))
    # When a push is sent
    job = await penv.push(user)
    # Then it is kept in the sandbox outbox instead
    assert (await penv.env.finished(job)).result["status"] == "sandbox"
    row = await penv.env.pool.fetchrow("SELECT * FROM sandbox_outbox WHERE job_id = $1", job)
    assert row["channel"] == "push" and row["subject"] == "Your day"
    assert penv.apns.requests == []


# -- preferred channel -------------------------------------------------------------------------


async def test_preferred_delivery_falls_back_push_email_sms(penv: PushEnv) -> None:
    # Given users reachable in different ways
    app_user = await penv.user("Push", email="push@example.com", devices=(("fcm", FCM_TOKEN),))
    no_push = await penv.user(
        "Mail", email="mail@example.com", devices=(("fcm", FCM_TOKEN_2),), push=False
    )
    sms_only = await penv.user("Text", email=None, phone="+15555550188")
    stale = await penv.user("Stale", email="stale@example.com", devices=(("apns", APNS_TOKEN),))
    nobody = await penv.user("None", email=None, phone="+15555550199", sms=False, push=False)
    penv.apns.unregister(APNS_TOKEN)
    # When the same notification is sent to each by preference
    jobs = [
        await penv.env.enqueue(
            "send_preferred",
            {
                "user_id": user,
                "title": "Your day",
                "body": "Three things to know.",
                "email_context": {"email_subject": "Your day", "paragraphs": ["Three things."]},
                "sms_text": "Your day: three things to know.",
                "template": "daily_outlook",
            },
        )
        for user in (app_user, no_push, sms_only, stale, nobody)
    ]
    results = [(await penv.env.finished(j)).result for j in jobs]
    # Then push wins where it may, email next, SMS last, and a stale device falls to email
    assert [(r["status"], r["channel"]) for r in results] == [
        ("sent", "push"),
        ("sent", "email"),
        ("sent", "sms"),
        ("sent", "email"),
        ("suppressed", None),
    ]
    assert [m.token for m in penv.fcm.messages] == [FCM_TOKEN]
    assert sorted(to for m in penv.env.resend.messages for to in m.to) == [
        "mail@example.com",
        "stale@example.com",
    ]
    assert [m.to for m in penv.env.twilio.messages] == ["+15555550188"]
    assert await penv.devices(stale) == []
    assert results[1]["skipped"] == {"push": "no push opt-in"}
    assert set(results[4]["skipped"]) == {"push", "email", "sms"}


# -- registration ------------------------------------------------------------------------------


async def test_registering_a_token_again_refreshes_or_moves_it(penv: PushEnv) -> None:
    # Given a token registered by one user
    first = await penv.user("First", email="first@example.com", devices=(("fcm", FCM_TOKEN),))
    second = await penv.user("Second", email="second@example.com")
    # When the app registers it again, then for another user signed in on the same device
    job = await penv.env.enqueue(
        "register_device", {"user_id": first, "platform": "fcm", "token": FCM_TOKEN}
    )
    assert (await penv.env.finished(job)).result["status"] == "registered"
    async with penv.env.pool.acquire() as conn:
        await register_device(conn, second, "fcm", FCM_TOKEN)
    # Then one row exists, now the second user's
    assert await penv.devices(first) == [] and await penv.devices(second) == [FCM_TOKEN]
    assert await penv.env.pool.fetchval("SELECT count(*) FROM push_devices") == 1


# -- the providers' error tables (pure) --------------------------------------------------------


def _fcm_body(status: str, code: str | None = None, field: str | None = None) -> dict[str, Any]:
    details: list[dict[str, Any]] = []
    if code:
        details.append(
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
        )
    if field:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field}],
            }
        )
    return {"error": {"code": 0, "message": "x", "status": status, "details": details}}


@pytest.mark.parametrize(
    ("status", "body", "retry_after", "outcome"),
    [
        (404, _fcm_body("NOT_FOUND", "UNREGISTERED"), None, DeviceUnregistered),
        (
            400,
            _fcm_body("INVALID_ARGUMENT", "INVALID_ARGUMENT", "message.token"),
            None,
            DeviceUnregistered,
        ),
        (
            400,
            _fcm_body("INVALID_ARGUMENT", "INVALID_ARGUMENT", "message.data"),
            None,
            PermanentProviderError,
        ),
        (429, _fcm_body("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), "7", ProviderThrottled),
        (503, _fcm_body("UNAVAILABLE", "UNAVAILABLE"), "7", ProviderThrottled),
        (503, _fcm_body("UNAVAILABLE", "UNAVAILABLE"), None, TransientProviderError),
        (500, _fcm_body("INTERNAL", "INTERNAL"), None, TransientProviderError),
        (403, _fcm_body("PERMISSION_DENIED", "SENDER_ID_MISMATCH"), None, PermanentProviderError),
    ],
)
def test_fcm_error_table(
    status: int, body: dict[str, Any], retry_after: str | None, outcome: type
) -> None:
    error = classify_fcm_error(status, body, retry_after, now_s=0.0)
    assert type(error) is outcome
    if isinstance(error, ProviderThrottled):
        assert error.retry_after_s == 7.0


@pytest.mark.parametrize(
    ("status", "reason", "outcome"),
    [
        (410, "Unregistered", DeviceUnregistered),
        (400, "BadDeviceToken", DeviceUnregistered),
        (400, "BadCollapseId", PermanentProviderError),
        (429, "TooManyRequests", ProviderThrottled),
        (503, "ServiceUnavailable", ProviderThrottled),
        (500, "InternalServerError", TransientProviderError),
        (403, "ExpiredProviderToken", PermanentProviderError),
    ],
)
def test_apns_error_table(status: int, reason: str, outcome: type) -> None:
    assert type(classify_apns_error(status, reason, None, now_s=0.0)) is outcome


def test_tokens_are_masked() -> None:
    assert mask_token(FCM_TOKEN) == "..." + FCM_TOKEN[-6:]
    assert FCM_TOKEN[:-6] not in mask_token(FCM_TOKEN) and mask_token("short") == "***"


async def _redeliver(env: Env, job_id: str, payload: dict[str, object]) -> None:
    """Puts the job back on its stream with its id, as a reclaim or a DLQ replay would."""
    job = Job(id=job_id, task="send_push", payload=payload, queue="default")
    # Its record says queued again (a success leaves a string record: replaced, not edited).
    await env.redis.delete(keys.job("default", job_id))
    await env.redis.hset(keys.job("default", job_id), mapping={"state": "queued", "result": ""})
    await env.redis.xadd(keys.stream("default"), {"j": job.encode()})

    async def duplicate() -> bool:
        status = await env.client.status(job_id)
        return status.state == "succeeded" and (status.result or {}).get("status") == "duplicate"

    await wait_for(duplicate, what="the redelivered job to finish as a duplicate")
