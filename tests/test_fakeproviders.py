"""The fake providers speak the providers' wire format and fail exactly as scripted.

These tests talk to the fakes with plain aiohttp, so they pin the HTTP surface (status codes,
JSON shapes, headers) that the provider clients and the demo rely on.
"""

from __future__ import annotations

import asyncio
import base64
import re
import sys
from collections.abc import AsyncIterator, Mapping

import aiohttp
import orjson
import pytest
from notifyhub.fakeproviders import FailureKind, FakeResend, FakeTwilio, count_segments

TO = "+15551234567"
FROM = "+15557654321"


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as fake:
        yield fake


@pytest.fixture
async def resend() -> AsyncIterator[FakeResend]:
    async with FakeResend() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def post_sms(
    http: aiohttp.ClientSession,
    fake: FakeTwilio,
    form: dict[str, str],
    *,
    token: str | None = None,
) -> tuple[int, dict[str, object], dict[str, str]]:
    url = f"{fake.base_url}/2010-04-01/Accounts/{fake.account_sid}/Messages.json"
    auth = basic(fake.account_sid, token if token is not None else fake.auth_token)
    async with http.post(url, data=form, headers={"Authorization": auth}) as response:
        return response.status, await response.json(), dict(response.headers)


async def post_email(
    http: aiohttp.ClientSession,
    fake: FakeResend,
    body: Mapping[str, object],
    *,
    key: str | None = None,
    api_key: str | None = None,
) -> tuple[int, dict[str, object], dict[str, str]]:
    headers = {"Authorization": f"Bearer {api_key if api_key is not None else fake.api_key}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    async with http.post(f"{fake.base_url}/emails", json=body, headers=headers) as response:
        return response.status, await response.json(), dict(response.headers)


EMAIL: dict[str, object] = {
    "from": "Acme <news@acme.test>",
    "to": "jane@example.com",
    "subject": "Hi",
    "text": "x",
}


# --- Twilio -------------------------------------------------------------------------------


async def test_twilio_create_returns_message_resource_and_records_it(
    twilio: FakeTwilio, http: aiohttp.ClientSession
) -> None:
    # Given a fake Twilio / When a valid form is posted with the right credentials
    status, body, _ = await post_sms(http, twilio, {"To": TO, "From": FROM, "Body": "hello"})

    # Then the answer is Twilio's 201 message resource and the message is recorded
    assert status == 201
    assert re.fullmatch(r"SM[0-9a-f]{32}", str(body["sid"]))
    assert body["status"] == "queued"
    assert body["num_segments"] == "1"
    assert body["price"] is None
    assert (body["to"], body["from"], body["body"]) == (TO, FROM, "hello")
    assert body["uri"] == (f"/2010-04-01/Accounts/{twilio.account_sid}/Messages/{body['sid']}.json")
    [message] = twilio.messages
    assert (message.sid, message.to, message.from_) == (body["sid"], TO, FROM)
    assert message.body == "hello"
    assert twilio.requests[0].body == {"To": TO, "From": FROM, "Body": "hello"}
    assert twilio.requests[0].headers["Authorization"] == "Basic ***"


async def test_twilio_wrong_token_gets_401_in_twilio_error_shape(
    twilio: FakeTwilio, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await post_sms(
        http, twilio, {"To": TO, "From": FROM, "Body": "x"}, token="wrong"
    )

    assert status == 401
    assert body == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    assert twilio.messages == []


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"From": FROM, "Body": "x"}, 21604),
        ({"To": TO, "Body": "x"}, 21603),
        ({"To": TO, "From": FROM}, 21602),
        ({"To": "12345", "From": FROM, "Body": "x"}, 21211),
        ({"To": TO, "From": FROM, "Body": "x" * 1601}, 21617),
    ],
)
async def test_twilio_validation_errors_use_twilio_codes(
    twilio: FakeTwilio, http: aiohttp.ClientSession, form: dict[str, str], code: int
) -> None:
    status, body, _ = await post_sms(http, twilio, form)

    assert (status, body["code"], body["status"]) == (400, code, 400)
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"
    assert twilio.messages == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),
        ("€" * 81, 2),
        ("ж" * 70, 1),
        ("ж" * 71, 2),
        ("ж" * 134, 2),
        ("ж" * 135, 3),
        ("😀" * 35, 1),
    ],
)
def test_fake_counts_segments_by_gsm7_and_ucs2_lengths(body: str, expected: int) -> None:
    assert count_segments(body) == expected


async def test_fail_next_hits_only_the_matching_number_for_count_requests(
    twilio: FakeTwilio, http: aiohttp.ClientSession
) -> None:
    # Given the next 2 requests to TO are throttled
    twilio.fail_next(FailureKind.THROTTLED, count=2, match_to=TO, retry_after_s=7)
    other = "+15550000000"

    # When another number is sent to, then TO three times
    other_status, _, _ = await post_sms(http, twilio, {"To": other, "From": FROM, "Body": "x"})
    answers = [await post_sms(http, twilio, {"To": TO, "From": FROM, "Body": "x"}) for _ in "abc"]

    # Then only the first two requests to TO got 429 with Retry-After
    assert other_status == 201
    assert [status for status, _, _ in answers] == [429, 429, 201]
    assert answers[0][1]["code"] == 20429
    assert answers[0][2]["Retry-After"] == "7"
    assert [m.to for m in twilio.messages] == [other, TO]


async def test_twilio_error_after_accept_records_the_message_then_answers_500(
    twilio: FakeTwilio, http: aiohttp.ClientSession
) -> None:
    twilio.fail_next("error_after_accept")

    status, body, _ = await post_sms(http, twilio, {"To": TO, "From": FROM, "Body": "x"})

    assert (status, body["code"]) == (500, 20500)
    assert len(twilio.messages) == 1


async def test_held_response_is_released_when_the_fake_stops(http: aiohttp.ClientSession) -> None:
    # Given a fake that holds the response of an accepted message
    fake = FakeTwilio()
    await fake.start()
    fake.fail_next(FailureKind.TIMEOUT_AFTER_ACCEPT, hold_s=60)
    request = asyncio.create_task(post_sms(http, fake, {"To": TO, "From": FROM, "Body": "x"}))

    # When the message is recorded and the fake stops
    await fake.wait_for_messages(1, timeout_s=5)
    assert not request.done()
    await fake.stop()

    # Then the held response goes out: the message had been accepted
    status, body, _ = await request
    assert status == 201
    assert body["sid"] == fake.messages[0].sid


async def test_control_endpoints_script_failures_and_list_messages(
    twilio: FakeTwilio, http: aiohttp.ClientSession
) -> None:
    # Given a failure scripted over HTTP
    async with http.post(
        f"{twilio.base_url}/_fake/failures",
        json={"kind": "unsubscribed", "count": 1, "match_to": TO},
    ) as response:
        assert response.status == 201

    # When two messages are sent
    first, body, _ = await post_sms(http, twilio, {"To": TO, "From": FROM, "Body": "one"})
    second, _, _ = await post_sms(http, twilio, {"To": TO, "From": FROM, "Body": "two"})

    # Then the first was refused with 21610 and GET /_fake/messages lists the second
    assert (first, body["code"], second) == (400, 21610, 201)
    async with http.get(f"{twilio.base_url}/_fake/messages") as response:
        listed = await response.json()
    assert [m["body"] for m in listed["messages"]] == ["two"]
    async with http.get(f"{twilio.base_url}/_fake/requests") as response:
        requests = (await response.json())["requests"]
    assert [r["status"] for r in requests] == [400, 201]
    assert requests[0]["failure"] == "unsubscribed"


async def test_control_endpoint_rejects_unknown_failure_kind(
    twilio: FakeTwilio, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{twilio.base_url}/_fake/failures", json={"kind": "gremlins"}) as r:
        assert r.status == 400
    assert twilio.failures.pending() == []


async def test_wait_for_messages_times_out_with_the_count_seen(twilio: FakeTwilio) -> None:
    with pytest.raises(TimeoutError, match="0 message"):
        await twilio.wait_for_messages(1, timeout_s=0.05)


# --- Resend -------------------------------------------------------------------------------


async def test_resend_accepts_an_email_and_records_it(
    resend: FakeResend, http: aiohttp.ClientSession
) -> None:
    body = {**EMAIL, "headers": {"List-Unsubscribe": "<https://acme.test/u>"}, "html": "<p>x</p>"}

    status, answer, _ = await post_email(http, resend, body, key="job-1")

    assert status == 200
    assert re.fullmatch(r"[0-9a-f-]{36}", str(answer["id"]))
    [email] = resend.messages
    assert email.id == answer["id"]
    assert email.to == ("jane@example.com",)
    assert email.headers == {"List-Unsubscribe": "<https://acme.test/u>"}
    assert email.idempotency_key == "job-1"


@pytest.mark.parametrize(
    ("api_key", "status", "name"),
    [("", 401, "missing_api_key"), ("re_wrong", 403, "invalid_api_key")],
)
async def test_resend_auth_errors_use_resend_shape(
    resend: FakeResend, http: aiohttp.ClientSession, api_key: str, status: int, name: str
) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with http.post(f"{resend.base_url}/emails", json=EMAIL, headers=headers) as response:
        answer = await response.json()

    assert response.status == status
    assert answer["statusCode"] == status
    assert answer["name"] == name
    assert resend.messages == []


async def test_resend_same_key_same_body_replays_without_a_second_email(
    resend: FakeResend, http: aiohttp.ClientSession
) -> None:
    first = await post_email(http, resend, EMAIL, key="k1")
    second = await post_email(http, resend, EMAIL, key="k1")

    assert first[0] == second[0] == 200
    assert first[1]["id"] == second[1]["id"]
    assert len(resend.messages) == 1


async def test_resend_same_key_other_body_is_a_409(
    resend: FakeResend, http: aiohttp.ClientSession
) -> None:
    await post_email(http, resend, EMAIL, key="k1")

    status, answer, _ = await post_email(http, resend, {**EMAIL, "subject": "Other"}, key="k1")

    assert (status, answer["name"]) == (409, "invalid_idempotent_request")
    assert len(resend.messages) == 1


async def test_resend_idempotency_key_expires_after_24_hours(http: aiohttp.ClientSession) -> None:
    now = [1_000_000.0]
    async with FakeResend(clock=lambda: now[0]) as fake:
        await post_email(http, fake, EMAIL, key="k1")
        now[0] += 24 * 3600 + 1

        _, answer, _ = await post_email(http, fake, EMAIL, key="k1")

        assert len(fake.messages) == 2
        assert answer["id"] == fake.messages[1].id


async def test_resend_missing_subject_is_a_422(
    resend: FakeResend, http: aiohttp.ClientSession
) -> None:
    body = {k: v for k, v in EMAIL.items() if k != "subject"}

    status, answer, _ = await post_email(http, resend, body)

    assert (status, answer["statusCode"], answer["name"]) == (422, 422, "missing_required_field")


async def test_resend_throttle_sends_retry_after(
    resend: FakeResend, http: aiohttp.ClientSession
) -> None:
    resend.fail_next(FailureKind.THROTTLED, retry_after_s=3, match_to="jane@example.com")

    status, answer, headers = await post_email(http, resend, EMAIL)

    assert (status, answer["name"], headers["Retry-After"]) == (429, "rate_limit_exceeded", "3")
    assert resend.messages == []


# --- Command line -------------------------------------------------------------------------


async def test_main_prints_base_urls_and_serves_both_fakes(http: aiohttp.ClientSession) -> None:
    # Given the fakes started as a program on free ports
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "notifyhub.fakeproviders",
        "--twilio-port",
        "0",
        "--resend-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        lines = [(await asyncio.wait_for(process.stdout.readline(), 10)).decode() for _ in range(5)]
        settings = dict(line.strip().split("=", 1) for line in lines)

        # When both control endpoints are asked for their messages
        for name in ("NOTIFYHUB_TWILIO_BASE_URL", "NOTIFYHUB_EMAIL_BASE_URL"):
            async with http.get(f"{settings[name]}/_fake/messages") as response:
                # Then each answers with an empty list
                assert orjson.loads(await response.read()) == {"messages": []}
        assert settings["TWILIO_ACCOUNT_SID"].startswith("AC")
    finally:
        process.terminate()
        # And a SIGTERM is a clean exit
        assert await asyncio.wait_for(process.wait(), 10) == 0
