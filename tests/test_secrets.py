"""Secrets per purpose: HKDF against RFC 5869, keys that do not stand in for one another,
unsubscribe tokens that expire and name their purpose, and start-up checks that name the
variable at fault."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
import sys
from pathlib import Path

import pytest
from notifyhub.messaging.unsubscribe import TOKEN_TTL_DAYS, Signer, Subject, expiry_for
from notifyhub.secrets import (
    UNSUBSCRIBE,
    ProviderSecrets,
    check_master_secret,
    derive_key,
    hkdf_sha256,
    load_provider_secrets,
    main,
    webhook_key,
    webhook_secret,
)
from notifyhub.settings import AppSettings
from notifyhub.webhooks.signature import SignatureError, authenticate, standard_headers

from qrunner.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
MASTER = "m" * 16 + "-master-secret-of-32+chars"
SETTINGS = AppSettings(signing_secret=MASTER)
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


# -- HKDF --------------------------------------------------------------------------------------


def test_hkdf_matches_rfc5869_test_case_1() -> None:
    okm = hkdf_sha256(
        bytes.fromhex("0b" * 22),
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_hkdf_matches_rfc5869_test_case_3_without_salt_or_info() -> None:
    okm = hkdf_sha256(bytes.fromhex("0b" * 22), salt=b"", info=b"", length=42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_hkdf_refuses_impossible_lengths() -> None:
    with pytest.raises(ValueError):
        hkdf_sha256(b"k", salt=b"", info=b"", length=255 * 32 + 1)


def test_each_purpose_and_provider_gets_its_own_key() -> None:
    keys = {
        derive_key(MASTER, UNSUBSCRIBE),
        webhook_key(MASTER, "acme"),
        webhook_key(MASTER, "globex"),
        MASTER.encode(),
    }
    assert len(keys) == 4
    assert all(len(k) == 32 for k in keys - {MASTER.encode()})
    assert derive_key(MASTER, UNSUBSCRIBE) != derive_key(MASTER + "x", UNSUBSCRIBE)
    secret = webhook_secret(MASTER, "acme")
    assert secret.startswith("whsec_")
    assert base64.b64decode(secret.removeprefix("whsec_")) == webhook_key(MASTER, "acme")


# -- unsubscribe tokens ------------------------------------------------------------------------


def _forge(key: bytes, payload: str) -> str:
    """A token in the current format, MAC'd under ``key`` (as someone holding it would)."""
    encoded = base64.urlsafe_b64encode(payload.encode()).rstrip(b"=").decode()
    mac = hmac.new(key, encoded.encode(), hashlib.sha256).digest()
    return f"{encoded}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def test_an_unsubscribe_token_cannot_be_forged_with_the_payment_webhook_secret() -> None:
    # Given someone who holds a payment sender's webhook secret (and every provider secret)
    stolen = [
        webhook_key(MASTER, "acme"),
        base64.b64decode(webhook_secret(MASTER, "acme").removeprefix("whsec_")),
        b"sk_test_paystack_secret_key_0123456789",
        b"whsec_stripe_endpoint_secret_0123456789",
    ]
    payload = f"v2|unsubscribe|{expiry_for(NOW)}|u:42"
    signer = Signer()
    # When they mint a well-formed token for user 42 with each of those
    forged = [_forge(key, payload) for key in stolen]
    # Then every one is refused, while the same payload under the unsubscribe key passes
    for token in forged:
        assert signer.check(SETTINGS, token, now=NOW).problem == "invalid"
    genuine = _forge(derive_key(MASTER, UNSUBSCRIBE), payload)
    assert signer.verify(SETTINGS, genuine, now=NOW) == Subject(user_id=42)
    assert genuine == signer.token(SETTINGS, Subject(user_id=42), issued_at=NOW)


def test_the_webhook_key_does_not_verify_as_an_unsubscribe_key_either_way() -> None:
    # A token MAC'd under the unsubscribe key is no webhook signature for any provider name.
    body = b'{"id": "evt_1", "type": "payment.succeeded"}'
    headers = standard_headers(derive_key(MASTER, UNSUBSCRIBE), "msg_1", int(NOW), body)
    with pytest.raises(SignatureError, match="invalid signature"):
        authenticate("acme", body, headers, master=MASTER, providers=ProviderSecrets(), now=NOW)


def test_tokens_expire_after_the_ttl_and_are_deterministic_within_a_day() -> None:
    signer = Signer()
    morning = signer.token(SETTINGS, Subject(user_id=7), issued_at=NOW + 60)
    evening = signer.token(SETTINGS, Subject(user_id=7), issued_at=NOW + 23 * 3600)
    assert morning == evening  # retries of one job on one day render the same email
    expires = expiry_for(NOW)
    assert expires == NOW + (TOKEN_TTL_DAYS + 1) * 86_400
    assert signer.verify(SETTINGS, morning, now=expires - 1) == Subject(user_id=7)
    assert signer.check(SETTINGS, morning, now=expires).problem == "expired"


def test_a_token_for_another_purpose_is_refused() -> None:
    token = _forge(derive_key(MASTER, UNSUBSCRIBE), f"v2|resubscribe|{expiry_for(NOW)}|u:42")
    assert Signer().check(SETTINGS, token, now=NOW).problem == "invalid"


def test_old_format_tokens_are_recognised_and_refused() -> None:
    # The first format: base64url(subject) "." base64url(HMAC(master, "unsubscribe|" subject))
    payload = "u:42"
    mac = hmac.new(MASTER.encode(), f"unsubscribe|{payload}".encode(), hashlib.sha256)
    old = (
        base64.urlsafe_b64encode(payload.encode()).rstrip(b"=").decode()
        + "."
        + base64.urlsafe_b64encode(mac.digest()[:18]).rstrip(b"=").decode()
    )
    checked = Signer().check(SETTINGS, old, now=NOW)
    assert checked.subject is None and checked.problem == "old_format"


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "é.x", "x" * 5000, "!!!.???"])
def test_garbage_tokens_are_invalid_not_errors(token: str) -> None:
    assert Signer().check(SETTINGS, token, now=NOW).problem == "invalid"


# -- start-up checks ---------------------------------------------------------------------------


def test_a_short_master_secret_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"NOTIFYHUB_SIGNING_SECRET is 31 characters.*32"):
        check_master_secret("x" * 31)
    check_master_secret("x" * 32)
    check_master_secret(None)  # unset: allowed, with warnings (no signed webhooks)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PAYSTACK_SECRET_KEY": "sk_short"}, "PAYSTACK_SECRET_KEY is 8 characters"),
        ({"FLUTTERWAVE_SECRET_HASH": "abc"}, "FLUTTERWAVE_SECRET_HASH is 3 characters"),
        ({"STRIPE_WEBHOOK_SECRET": "sk_live_0123456789abcdef"}, "STRIPE_WEBHOOK_SECRET must be"),
        ({"PAYSTACK_SECRET_KEY": " sk_test_0123456789abcdef"}, "PAYSTACK_SECRET_KEY has"),
        ({"FLUTTERWAVE_SECRET_HASH": MASTER}, "FLUTTERWAVE_SECRET_HASH must differ"),
    ],
)
def test_bad_provider_secrets_are_refused_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_provider_secrets(SETTINGS, env)


def test_provider_secrets_are_read_under_the_vendors_names() -> None:
    env = {
        "PAYSTACK_SECRET_KEY": "sk_test_0123456789abcdef0123",
        "FLUTTERWAVE_SECRET_HASH": "my-flutterwave-hash-0123",
        "STRIPE_WEBHOOK_SECRET": "whsec_0123456789abcdef",
        "UNRELATED": "x",
    }
    assert load_provider_secrets(SETTINGS, env) == ProviderSecrets(
        "sk_test_0123456789abcdef0123", "my-flutterwave-hash-0123", "whsec_0123456789abcdef"
    )
    assert load_provider_secrets(SETTINGS, {}) == ProviderSecrets()


def test_a_worker_with_a_short_master_secret_does_not_start(
    redis_url: str, database_url: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")}
    env.update(
        QRUNNER_REDIS_URL=redis_url,
        NOTIFYHUB_DATABASE_URL=database_url,
        NOTIFYHUB_SIGNING_SECRET="too-short",
        QRUNNER_LOG_LEVEL="WARNING",
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "qrunner.cli",
            "worker",
            "--app",
            "notifyhub.app",
            "--burst",
            "--no-cron",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "NOTIFYHUB_SIGNING_SECRET: is 9 characters" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_the_sender_secret_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFYHUB_SIGNING_SECRET", MASTER)
    assert main(["webhook-secret", "acme"]) == 0
    assert capsys.readouterr().out.strip() == webhook_secret(MASTER, "acme")
    assert main(["webhook-secret", "stripe"]) == 2  # Stripe signs with its own secret
    assert main(["webhook-secret", "Bad Name"]) == 2
    monkeypatch.setenv("NOTIFYHUB_SIGNING_SECRET", "short")
    assert main(["webhook-secret", "acme"]) == 2
