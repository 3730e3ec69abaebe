"""Secrets per purpose: keys derived from the master secret, and the payment providers' own.

One master secret, ``NOTIFYHUB_SIGNING_SECRET`` (``settings.signing_secret``), never signs
anything itself. Each use gets its own key, derived with HKDF-SHA256 (RFC 5869) under a
distinct ``info`` label:

- unsubscribe tokens (:data:`UNSUBSCRIBE`),
- qrunner's own webhook scheme, one key per provider name (:func:`webhook_key`), so a body
  signed for one provider path is not valid on another.

Knowing one derived key tells nothing about the master or the other keys, so a sender that
holds its webhook secret cannot mint unsubscribe links.

Payment providers sign with secrets they issue; those are read from the environment under the
vendors' conventional names (:data:`PROVIDER_VARIABLES`) and are never derived from the master.
:func:`load_provider_secrets` checks them all at start-up and names the variable at fault.

Run ``python -m notifyhub.secrets webhook-secret PROVIDER`` to print the ``whsec_...`` secret a
sender configures for qrunner's own scheme on ``/hooks/payments/PROVIDER``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from qrunner import ConfigError

from .settings import MIN_MASTER_CHARS, AppSettings

MASTER_VARIABLE = "NOTIFYHUB_SIGNING_SECRET"
#: Provider-issued secrets are checked for a plausible length too: a typo'd or truncated value
#: would otherwise fail only when the first real webhook arrives.
MIN_PROVIDER_CHARS = 16

#: HKDF salt: fixed and public, it only separates qrunner's keys from other uses of the master.
_SALT = b"qrunner key derivation v1"
#: ``info`` label of the unsubscribe-token key.
UNSUBSCRIBE = "qrunner unsubscribe-token v2"
_WEBHOOK_PREFIX = "qrunner webhook standard-v1 provider="
WHSEC_PREFIX = "whsec_"

PROVIDER_VARIABLES = {
    "paystack": "PAYSTACK_SECRET_KEY",
    "flutterwave": "FLUTTERWAVE_SECRET_HASH",
    "stripe": "STRIPE_WEBHOOK_SECRET",
}


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract a pseudorandom key from ``ikm``, expand it to ``length``
    bytes bound to ``info``."""
    if not 0 < length <= 255 * hashlib.sha256().digest_size:
        raise ValueError(f"HKDF-SHA256 cannot produce {length} bytes")
    prk = hmac.new(salt or bytes(hashlib.sha256().digest_size), ikm, hashlib.sha256).digest()
    okm = b""
    block = b""
    counter = 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


@functools.lru_cache(maxsize=64)
def derive_key(master: str, purpose: str) -> bytes:
    """The 32-byte key for ``purpose`` under ``master`` (deterministic, cached: every email's
    unsubscribe link needs it)."""
    return hkdf_sha256(master.encode(), salt=_SALT, info=purpose.encode())


def webhook_key(master: str, provider: str) -> bytes:
    """The key of qrunner's own webhook scheme on ``/hooks/payments/{provider}``."""
    return derive_key(master, _WEBHOOK_PREFIX + provider)


def webhook_secret(master: str, provider: str) -> str:
    """:func:`webhook_key` as a Standard Webhooks secret (``whsec_`` + base64), for senders."""
    return WHSEC_PREFIX + base64.b64encode(webhook_key(master, provider)).decode()


def check_master_secret(value: str | None) -> None:
    """Refuse a master secret that is set but too short (unset is allowed: see the callers)."""
    if value is not None and len(value) < MIN_MASTER_CHARS:
        raise ConfigError(
            f"{MASTER_VARIABLE} is {len(value)} characters; it needs at least "
            f"{MIN_MASTER_CHARS} (generate one with: python -c "
            "'import secrets; print(secrets.token_urlsafe(32))')"
        )


@dataclass(frozen=True, slots=True)
class ProviderSecrets:
    """Secrets issued by the payment providers; ``None`` means that provider is not set up and
    its webhooks are answered 503 (it retries until configured)."""

    paystack_secret_key: str | None = None
    flutterwave_secret_hash: str | None = None
    stripe_webhook_secret: str | None = None

    def for_provider(self, provider: str) -> str | None:
        return {
            "paystack": self.paystack_secret_key,
            "flutterwave": self.flutterwave_secret_hash,
            "stripe": self.stripe_webhook_secret,
        }.get(provider)


def load_provider_secrets(
    settings: AppSettings, env: Mapping[str, str] | None = None
) -> ProviderSecrets:
    """Check the master secret and read the providers' secrets from ``env`` (default
    ``os.environ``); raises :class:`ConfigError` naming the variable at fault."""
    env = os.environ if env is None else env
    check_master_secret(settings.signing_key)
    found: dict[str, str | None] = {}
    for provider, variable in PROVIDER_VARIABLES.items():
        value = env.get(variable) or None
        if value is not None:
            if value != value.strip() or not value.isascii() or not value.isprintable():
                raise ConfigError(f"{variable} has surrounding spaces or unprintable characters")
            if len(value) < MIN_PROVIDER_CHARS:
                raise ConfigError(
                    f"{variable} is {len(value)} characters; a {provider} secret has at "
                    f"least {MIN_PROVIDER_CHARS}"
                )
            master = settings.signing_key
            if master is not None and hmac.compare_digest(value.encode(), master.encode()):
                raise ConfigError(
                    f"{variable} must differ from {MASTER_VARIABLE}: the master secret is "
                    "never shared with a provider"
                )
        found[provider] = value
    stripe = found["stripe"]
    if stripe is not None and not stripe.startswith(WHSEC_PREFIX):
        raise ConfigError(
            "STRIPE_WEBHOOK_SECRET must be the endpoint's signing secret (whsec_...), "
            "not an API key"
        )
    return ProviderSecrets(found["paystack"], found["flutterwave"], found["stripe"])


def main(argv: list[str]) -> int:
    from notifyhub.webhooks.signature import PROVIDER_NAME, RESERVED_PROVIDERS, VENDOR_SCHEMES

    if len(argv) != 2 or argv[0] != "webhook-secret":
        print("usage: python -m notifyhub.secrets webhook-secret PROVIDER", file=sys.stderr)
        return 2
    provider = argv[1]
    if not PROVIDER_NAME.match(provider) or provider in RESERVED_PROVIDERS | VENDOR_SCHEMES:
        print(
            f"{provider!r} does not use qrunner's scheme (names: [a-z0-9_-]{{1,32}}, "
            f"not {', '.join(sorted(RESERVED_PROVIDERS | VENDOR_SCHEMES))})",
            file=sys.stderr,
        )
        return 2
    master = os.environ.get(MASTER_VARIABLE)
    if not master:
        print(f"{MASTER_VARIABLE} is not set", file=sys.stderr)
        return 2
    try:
        check_master_secret(master)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(webhook_secret(master, provider))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
