"""Each webhook scheme against published or independently computed vectors, and the inbound
HTTP routes (Twilio SMS, unsubscribe) against bodies and headers that used to give 500s.

Standard Webhooks publishes a signing example (its reference libraries' test suite); Stripe and
Paystack publish the algorithm but no vector with its secret, so their expected values are
computed here with hashlib/hmac, independently of the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import MultipartWriter, web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict
from notifyhub.messaging import registry as messaging_registry
from notifyhub.messaging.unsubscribe import Signer, Subject
from notifyhub.secrets import ProviderSecrets, webhook_key
from notifyhub.webhooks.signature import (
    NotConfigured,
    SignatureError,
    authenticate,
    decode_whsec,
    sign_standard,
    verify_flutterwave,
    verify_paystack,
    verify_standard,
    verify_stripe,
)
from redis.asyncio import Redis
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from qrunner import Registry
from qrunner.http import build_app
from qrunner.metrics import Metrics
from tests.handler_fixtures import HandlerEnv, handler_stack

pytestmark = pytest.mark.timeout(60)

# -- Standard Webhooks: the example from the specification's reference test suite --------------

SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TIMESTAMP = 1614265330
SW_BODY = b'{"test": 2432232314}'
SW_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def sw_headers(signature: str = SW_SIGNATURE, **overrides: str) -> dict[str, str]:
    headers = {
        "webhook-id": SW_ID,
        "webhook-timestamp": str(SW_TIMESTAMP),
        "webhook-signature": signature,
    }
    headers.update(overrides)
    return headers


def test_standard_webhooks_published_example_signs_and_verifies() -> None:
    key = decode_whsec(SW_SECRET)
    assert sign_standard(key, SW_ID, SW_TIMESTAMP, SW_BODY) == SW_SIGNATURE
    assert verify_standard(key, SW_BODY, sw_headers(), now=SW_TIMESTAMP) == SW_ID
    # An unprefixed secret is the same key
    assert decode_whsec(SW_SECRET.removeprefix("whsec_")) == key


def test_standard_webhooks_several_signatures_any_v1_may_match() -> None:
    # The reference suite's multi-signature case: wrong v1s and a v2 around the valid one
    header = " ".join(
        [
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            SW_SIGNATURE,
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        ]
    )
    key = decode_whsec(SW_SECRET)
    assert verify_standard(key, SW_BODY, sw_headers(header), now=SW_TIMESTAMP) == SW_ID


@pytest.mark.parametrize(
    ("headers", "now", "reason"),
    [
        # the reference suite's near-miss: last character changed
        (sw_headers("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="), SW_TIMESTAMP, "invalid"),
        (sw_headers(), SW_TIMESTAMP + 301, "outside"),  # stale
        (sw_headers(), SW_TIMESTAMP - 301, "outside"),  # from the future
        (sw_headers(**{"webhook-id": "msg_other"}), SW_TIMESTAMP, "invalid"),
        (sw_headers(**{"webhook-timestamp": str(SW_TIMESTAMP + 1)}), SW_TIMESTAMP, "invalid"),
        (sw_headers(**{"webhook-timestamp": "hello"}), SW_TIMESTAMP, "Unix time"),
        (sw_headers(**{"webhook-signature": ""}), SW_TIMESTAMP, "missing"),
        (sw_headers(**{"webhook-signature": "v1,ünïcode"}), SW_TIMESTAMP, "ASCII"),
        (
            {"webhook-timestamp": str(SW_TIMESTAMP), "webhook-signature": SW_SIGNATURE},
            SW_TIMESTAMP,
            "missing webhook-id",
        ),
    ],
)
def test_standard_webhooks_refusals(headers: dict[str, str], now: float, reason: str) -> None:
    with pytest.raises(SignatureError, match=reason):
        verify_standard(decode_whsec(SW_SECRET), SW_BODY, headers, now=now)


def test_standard_webhooks_tampered_body_is_refused() -> None:
    with pytest.raises(SignatureError, match="invalid"):
        verify_standard(decode_whsec(SW_SECRET), SW_BODY + b" ", sw_headers(), now=SW_TIMESTAMP)


# -- Stripe: the documented algorithm, computed independently ----------------------------------

STRIPE_SECRET = "whsec_test_secret"
STRIPE_BODY = b'{\n  "id": "evt_test_webhook",\n  "object": "event"\n}'
STRIPE_T = 1_700_000_000


def stripe_v1(body: bytes, t: int, secret: str = STRIPE_SECRET) -> str:
    # Stripe: HMAC-SHA256, key = the whole signing secret, message = "<t>.<raw body>", hex
    signed_payload = f"{t}.{body.decode()}"
    return hmac.new(secret.encode("utf-8"), signed_payload.encode("utf-8"), "sha256").hexdigest()


def test_stripe_signature_verifies_and_returns_its_timestamp() -> None:
    header = {"Stripe-Signature": f"t={STRIPE_T},v1={stripe_v1(STRIPE_BODY, STRIPE_T)}"}
    assert verify_stripe(STRIPE_SECRET, STRIPE_BODY, header, now=STRIPE_T + 299) == STRIPE_T


def test_stripe_accepts_any_of_several_v1_and_ignores_v0() -> None:
    good = stripe_v1(STRIPE_BODY, STRIPE_T)
    bad = stripe_v1(STRIPE_BODY, STRIPE_T, secret="whsec_rolled_out")
    header = {"Stripe-Signature": f"t={STRIPE_T},v1={bad},v1={good},v0={bad}"}
    assert verify_stripe(STRIPE_SECRET, STRIPE_BODY, header, now=STRIPE_T) == STRIPE_T


@pytest.mark.parametrize(
    ("header", "now", "reason"),
    [
        (f"t={STRIPE_T},v1={stripe_v1(STRIPE_BODY, STRIPE_T)}", STRIPE_T + 301, "outside"),
        (f"t={STRIPE_T},v1={stripe_v1(STRIPE_BODY, STRIPE_T)}", STRIPE_T - 301, "outside"),
        (f"t={STRIPE_T + 1},v1={stripe_v1(STRIPE_BODY, STRIPE_T)}", STRIPE_T, "invalid"),
        (f"t={STRIPE_T},v0={stripe_v1(STRIPE_BODY, STRIPE_T)}", STRIPE_T, "no v1"),
        (f"v1={stripe_v1(STRIPE_BODY, STRIPE_T)}", STRIPE_T, "no timestamp"),
        (f"t=soon,v1={stripe_v1(STRIPE_BODY, STRIPE_T)}", STRIPE_T, "invalid timestamp"),
        (f"t={STRIPE_T},v1=ß", STRIPE_T, "ASCII"),
        # the documentation's example header, under a secret that did not sign it
        (
            "t=1492774577,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd,"
            "v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39",
            1492774577,
            "invalid",
        ),
    ],
)
def test_stripe_refusals(header: str, now: float, reason: str) -> None:
    with pytest.raises(SignatureError, match=reason):
        verify_stripe(STRIPE_SECRET, STRIPE_BODY, {"Stripe-Signature": header}, now=now)


# -- Paystack and Flutterwave ------------------------------------------------------------------

PAYSTACK_KEY = "sk_test_0123456789abcdef0123456789abcdef01234567"
PAYSTACK_BODY = b'{"event":"charge.success","data":{"id":302961,"reference":"qTPrJoy9Bx"}}'


def test_paystack_signature_is_hmac_sha512_hex_of_the_raw_body() -> None:
    expected = hmac.new(PAYSTACK_KEY.encode(), PAYSTACK_BODY, hashlib.sha512).hexdigest()
    verify_paystack(PAYSTACK_KEY, PAYSTACK_BODY, {"x-paystack-signature": expected})
    # Header names are case-insensitive, as in a request; hex digits may be upper case
    upper = CIMultiDict({"X-Paystack-Signature": expected.upper()})
    verify_paystack(PAYSTACK_KEY, PAYSTACK_BODY, upper)
    sha256 = hmac.new(PAYSTACK_KEY.encode(), PAYSTACK_BODY, hashlib.sha256).hexdigest()
    for wrong in (sha256, "0" * 128, expected[:-1] + "x", "ü" * 128):
        with pytest.raises(SignatureError):
            verify_paystack(PAYSTACK_KEY, PAYSTACK_BODY, {"x-paystack-signature": wrong})
    with pytest.raises(SignatureError):
        verify_paystack(PAYSTACK_KEY, PAYSTACK_BODY + b" ", {"x-paystack-signature": expected})


def test_flutterwave_verif_hash_is_the_configured_secret_hash() -> None:
    verify_flutterwave("my-secret-hash-0123", {"verif-hash": "my-secret-hash-0123"})
    for wrong in ("my-secret-hash-0124", "", "my-secret-hash-0123 x", "é"):
        with pytest.raises(SignatureError):
            verify_flutterwave("my-secret-hash-0123", {"verif-hash": wrong})


def test_dispatch_by_provider_name_and_missing_configuration() -> None:
    master = "a-master-secret-that-is-long-enough-0123"
    body = b'{"id": "e1"}'
    headers = {"x-paystack-signature": hmac.new(b"k" * 20, body, hashlib.sha512).hexdigest()}
    with pytest.raises(NotConfigured, match="PAYSTACK_SECRET_KEY"):
        authenticate("paystack", body, headers, master=master, providers=ProviderSecrets(), now=0)
    with pytest.raises(NotConfigured, match="NOTIFYHUB_SIGNING_SECRET"):
        authenticate("acme", body, {}, master=None, providers=ProviderSecrets(), now=0)
    # The Paystack key signs nothing on a path of qrunner's own scheme
    with pytest.raises(SignatureError):
        authenticate(
            "acme",
            body,
            headers,
            master=master,
            providers=ProviderSecrets(paystack_secret_key="k" * 20),
            now=0,
        )
    own = {
        "webhook-id": "m",
        "webhook-timestamp": "100",
        "webhook-signature": sign_standard(webhook_key(master, "acme"), "m", 100, body),
    }
    authenticate("acme", body, own, master=master, providers=ProviderSecrets(), now=100)
    with pytest.raises(SignatureError):
        authenticate("globex", body, own, master=master, providers=ProviderSecrets(), now=100)


# -- inbound HTTP: Twilio SMS and unsubscribe links --------------------------------------------

PUBLIC_URL = "https://hooks.example.test"
AUTH_TOKEN = "twilio-auth-token-for-tests"
MASTER = "unsubscribe-test-master-secret-0123456789"


@dataclass
class Env(HandlerEnv):
    http: TestClient[web.Request, web.Application]

    def twilio_signature(self, params: dict[str, str]) -> str:
        validator = RequestValidator(AUTH_TOKEN)
        return str(validator.compute_signature(PUBLIC_URL + "/hooks/twilio/sms", params))


@pytest.fixture
async def env(database_url: str, redis: Redis, tmp_path: Path) -> AsyncIterator[Env]:
    async with handler_stack(
        database_url,
        redis,
        tmp_path,
        messaging_registry,
        Registry(),
        public_url=PUBLIC_URL,
        twilio_auth_token=AUTH_TOKEN,
        signing_secret=MASTER,
    ) as stack:

        def install(app: web.Application) -> None:
            for setup in stack.registry.http_setups:
                setup(app, stack.state)

        app = build_app(
            client=stack.client,
            metrics=Metrics(),
            redis=redis,
            token="operator-token",
            setups=[install],
            public_prefixes=("/hooks/", "/unsubscribe"),
        )
        async with TestClient(TestServer(app)) as http:
            yield Env(*stack, http)


MALFORMED_FORMS: list[tuple[str, bytes]] = [
    ("application/x-www-form-urlencoded", b"Body=STOP&From=\xff\xfe"),
    ("application/x-www-form-urlencoded", b"Body=%ff%fe&From=%2B15550001111"),
    ("application/x-www-form-urlencoded", b"Body=STOP%00&From=%2B15550001111"),
    ("application/x-www-form-urlencoded; charset=nope", b"Body=STOP"),
    ("application/x-www-form-urlencoded; charset=utf-16", b"Body=STOP"),
    ("multipart/form-data", b"garbage"),
    ("multipart/form-data; boundary=xyz", b"garbage"),
    ("multipart/form-data; boundary=xyz", b"--xyz\r\nContent-Disposition: form-data\r\n\r\nv\r\n"),
    (
        "multipart/form-data; boundary=xyz",
        b'--xyz\r\nContent-Disposition: form-data; name="Body"\r\n'
        b"Content-Type: text/plain; charset=bogus\r\n\r\nSTOP\r\n--xyz--\r\n",
    ),
    (
        "multipart/form-data; boundary=xyz",
        b'--xyz\r\nContent-Disposition: form-data; name="Body"\r\n'
        b"Content-Transfer-Encoding: bogus\r\n\r\nSTOP\r\n--xyz--\r\n",
    ),
    (
        "multipart/form-data; boundary=xyz",
        b'--xyz\r\nContent-Disposition: form-data; name="Body"\r\n\r\n\xff\xfe\r\n--xyz--\r\n',
    ),
    (
        "multipart/form-data; boundary=xyz",
        b'--xyz\r\nContent-Disposition: form-data; name="Body"; filename="a.txt"\r\n\r\n'
        b"STOP\r\n--xyz--\r\n",
    ),
    ("application/json", b'{"Body": "STOP"}'),
]


@pytest.mark.parametrize(("ctype", "body"), MALFORMED_FORMS)
async def test_malformed_twilio_form_or_multipart_is_400_json(
    env: Env, ctype: str, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    resp = await env.http.post(
        "/hooks/twilio/sms",
        data=body,
        headers={"Content-Type": ctype, "X-Twilio-Signature": "bm9wZQ=="},
    )
    assert resp.status == 400
    assert resp.content_type == "application/json"
    assert "error" in await resp.json()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert await env.db.fetchval("SELECT count(*) FROM inbound_events") == 0


async def test_twilio_multipart_text_fields_are_verified_like_a_form(env: Env) -> None:
    params = {"MessageSid": "SM" + "1" * 32, "From": "+15550001111", "Body": "HELP"}
    with MultipartWriter("form-data") as form:
        for name, value in params.items():
            form.append(value).set_content_disposition("form-data", name=name)
    headers = {"X-Twilio-Signature": env.twilio_signature(params)}
    resp = await env.http.post("/hooks/twilio/sms", data=form, headers=headers)
    assert resp.status == 200 and "Reply STOP" in await resp.text()


@pytest.mark.parametrize("signature", ["é", "☃" * 28, "", "bm9wZQ=="])
async def test_non_ascii_or_wrong_twilio_signature_is_403_json(env: Env, signature: str) -> None:
    params = {"MessageSid": "SM" + "2" * 32, "From": "+15550001111", "Body": "STOP"}
    resp = await env.http.post(
        "/hooks/twilio/sms", data=params, headers={"X-Twilio-Signature": signature}
    )
    assert resp.status == 403
    assert await resp.json() == {"error": "invalid signature"}


async def test_an_oversized_twilio_body_is_413_json(env: Env) -> None:
    big = io.BytesIO(b"Body=" + b"a" * (1024 * 1024))
    resp = await env.http.post(
        "/hooks/twilio/sms",
        data=big,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 413 and await resp.json() == {"error": "body too large"}


def _old_format_token(user_id: int) -> str:
    payload = f"u:{user_id}"
    mac = hmac.new(MASTER.encode(), f"unsubscribe|{payload}".encode(), hashlib.sha256)
    return (
        base64.urlsafe_b64encode(payload.encode()).rstrip(b"=").decode()
        + "."
        + base64.urlsafe_b64encode(mac.digest()[:18]).rstrip(b"=").decode()
    )


async def test_old_format_unsubscribe_token_is_refused_with_a_clear_page(env: Env) -> None:
    user = await env.db.fetchval(
        "INSERT INTO users (name, email) VALUES ('Ada', 'ada@example.com') RETURNING id"
    )
    old = _old_format_token(user)
    # A person gets a page saying the link is out of date; a program asking for JSON gets JSON
    page = await env.http.get("/unsubscribe", params={"token": old})
    assert page.status == 400 and "Link out of date" in await page.text()
    refused = await env.http.post(
        "/unsubscribe",
        params={"token": old},
        data={"List-Unsubscribe": "One-Click"},
        headers={"Accept": "application/json"},
    )
    assert refused.status == 400
    answer: dict[str, Any] = await refused.json()
    assert answer["reason"] == "old_format" and "older email" in answer["error"]
    # And nothing was recorded; a current token for the same user works
    opted_out = "SELECT count(*) FROM consents WHERE opted_out_at IS NOT NULL"
    assert await env.db.fetchval(opted_out) == 0
    current = Signer().token(env.state.settings, Subject(user_id=user))
    done = await env.http.post(
        "/unsubscribe", params={"token": current}, data={"List-Unsubscribe": "One-Click"}
    )
    assert done.status == 200 and "You are unsubscribed" in await done.text()


async def test_expired_unsubscribe_token_is_refused(env: Env) -> None:
    expired = Signer().token(env.state.settings, Subject(user_id=1), issued_at=1_000_000_000)
    resp = await env.http.get(
        "/unsubscribe", params={"token": expired}, headers={"Accept": "application/json"}
    )
    assert resp.status == 400 and (await resp.json())["reason"] == "expired"
