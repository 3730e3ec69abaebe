"""Webhook signatures as each provider sends them: pure functions, no I/O.

Which scheme a request must carry depends only on the provider in its path
(``/hooks/payments/{provider}``):

=============  ===========================================================================
provider       scheme
=============  ===========================================================================
paystack       ``x-paystack-signature``: hex HMAC-SHA512 of the raw body under
               ``PAYSTACK_SECRET_KEY``
flutterwave    ``verif-hash``: equal to ``FLUTTERWAVE_SECRET_HASH`` (compared in constant time)
stripe         ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=...]``: HMAC-SHA256 of ``t.body``
               under ``STRIPE_WEBHOOK_SECRET``; ``t`` within the tolerance
anything else  Standard Webhooks (qrunner's own scheme): ``webhook-id``, ``webhook-timestamp``,
               ``webhook-signature: v1,<base64> [v1,...]``, HMAC-SHA256 of
               ``id.timestamp.body`` under a key derived from ``NOTIFYHUB_SIGNING_SECRET`` for
               that provider name (:func:`notifyhub.secrets.webhook_key`); timestamp within
               the tolerance
=============  ===========================================================================

Everything is checked on the raw bytes before the body is parsed, so nothing a forger controls
is interpreted. Header values are used only when they are printable ASCII: anything else is a
:class:`SignatureError`, never a crash.

Paystack and Flutterwave sign no timestamp, so a captured body stays valid; it is stored once
per (provider, event id) and never applied twice, and events acted on must also be recent by
the date in their (signed) body (see :mod:`.payments`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping

from notifyhub.secrets import MASTER_VARIABLE, PROVIDER_VARIABLES, ProviderSecrets, webhook_key

#: How far a signed timestamp may be from this server's clock, either way.
DEFAULT_TOLERANCE_S = 300

PAYSTACK_HEADER = "x-paystack-signature"
FLUTTERWAVE_HEADER = "verif-hash"
STRIPE_HEADER = "Stripe-Signature"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"

#: What ``{provider}`` in the path may be.
PROVIDER_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")
#: Names that have their own route and their own events in ``inbound_events``.
RESERVED_PROVIDERS = frozenset({"twilio", "resend"})
#: Providers verified with their own scheme; any other name uses the Standard Webhooks scheme.
VENDOR_SCHEMES = frozenset({"paystack", "flutterwave", "stripe"})
#: Providers whose scheme signs no timestamp.
UNTIMED = frozenset({"paystack", "flutterwave"})

_HEX_128 = re.compile(r"^[0-9a-fA-F]{128}$")
_UNIX_TIME = re.compile(r"^[0-9]{1,12}$")
_MAX_ID_CHARS = 256


class SignatureError(Exception):
    """The request is not authentic; the message says why and is safe to return."""


class NotConfigured(Exception):
    """No secret is configured for this provider; the message names the variable to set."""


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise SignatureError(f"missing {name} header")
    if not (value.isascii() and value.isprintable()):
        raise SignatureError(f"{name} header is not printable ASCII")
    return value.strip()


def _check_time(timestamp: int, now: float, tolerance_s: float) -> None:
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(
            f"signature timestamp {timestamp} is outside the {tolerance_s:g}s tolerance"
        )


# -- paystack ----------------------------------------------------------------------------------


def verify_paystack(secret_key: str, body: bytes, headers: Mapping[str, str]) -> None:
    given = _header(headers, PAYSTACK_HEADER)
    if not _HEX_128.match(given):
        raise SignatureError(f"{PAYSTACK_HEADER} is not a hex SHA-512 digest")
    expected = hmac.new(secret_key.encode(), body, hashlib.sha512).hexdigest()
    if not hmac.compare_digest(expected.encode(), given.lower().encode()):
        raise SignatureError("invalid signature")


# -- flutterwave -------------------------------------------------------------------------------


def verify_flutterwave(secret_hash: str, headers: Mapping[str, str]) -> None:
    given = _header(headers, FLUTTERWAVE_HEADER)
    if not hmac.compare_digest(secret_hash.encode(), given.encode()):
        raise SignatureError("invalid signature")


# -- stripe ------------------------------------------------------------------------------------


def verify_stripe(
    secret: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> int:
    """Check ``Stripe-Signature``; returns its timestamp. Any ``v1`` may match (Stripe sends
    one per active secret while a secret is being rolled); other schemes (``v0``) are ignored."""
    header = _header(headers, STRIPE_HEADER)
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if not _UNIX_TIME.match(value):
                raise SignatureError(f"{STRIPE_HEADER} has an invalid timestamp")
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value.lower())
    if timestamp is None:
        raise SignatureError(f"{STRIPE_HEADER} has no timestamp")
    if not candidates:
        raise SignatureError(f"{STRIPE_HEADER} has no v1 signature")
    signed = str(timestamp).encode() + b"." + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest().encode()
    if not _any_equal(expected, [c.encode() for c in candidates]):
        raise SignatureError("invalid signature")
    _check_time(timestamp, now, tolerance_s)
    return timestamp


# -- standard webhooks (qrunner's own scheme) --------------------------------------------------


def sign_standard(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value a sender puts on a message (one ``v1`` entry)."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def standard_headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """All three headers of a Standard Webhooks message (what a sender, or a test, posts)."""
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign_standard(key, msg_id, timestamp, body),
    }


def decode_whsec(secret: str) -> bytes:
    """The key bytes of a ``whsec_<base64>`` secret."""
    text = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not a whsec_<base64> secret: {exc}") from None
    if not key:
        raise ValueError("empty webhook secret")
    return key


def verify_standard(
    key: bytes,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> str:
    """Check a Standard Webhooks message; returns its ``webhook-id``. The signature header
    may hold several space-separated entries; any valid ``v1`` one is enough."""
    msg_id = _header(headers, ID_HEADER)
    stamp = _header(headers, TIMESTAMP_HEADER)
    given = _header(headers, SIGNATURE_HEADER)
    if len(msg_id) > _MAX_ID_CHARS:
        raise SignatureError(f"{ID_HEADER} is longer than {_MAX_ID_CHARS} characters")
    if not _UNIX_TIME.match(stamp):
        raise SignatureError(f"{TIMESTAMP_HEADER} is not a Unix time in seconds")
    timestamp = int(stamp)
    candidates: list[bytes] = []
    for entry in given.split():
        version, sep, encoded = entry.partition(",")
        if version != "v1" or not sep:
            continue
        try:
            candidates.append(base64.b64decode(encoded, validate=True))
        except binascii.Error:
            continue
    if not candidates:
        raise SignatureError(f"{SIGNATURE_HEADER} has no v1 signature")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    if not _any_equal(expected, candidates):
        raise SignatureError("invalid signature")
    _check_time(timestamp, now, tolerance_s)
    return msg_id


def _any_equal(expected: bytes, candidates: list[bytes]) -> bool:
    """Constant-time per candidate, and every candidate is compared."""
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(expected, candidate)
    return found


# -- dispatch ----------------------------------------------------------------------------------


def authenticate(
    provider: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    master: str | None,
    providers: ProviderSecrets,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> None:
    """Raise :class:`SignatureError` unless the request carries a valid signature of the scheme
    ``provider`` uses, or :class:`NotConfigured` when the secret it needs is not set."""
    if provider in VENDOR_SCHEMES:
        secret = providers.for_provider(provider)
        if secret is None:
            raise NotConfigured(f"{PROVIDER_VARIABLES[provider]} is not set")
        if provider == "paystack":
            verify_paystack(secret, body, headers)
        elif provider == "flutterwave":
            verify_flutterwave(secret, headers)
        else:
            verify_stripe(secret, body, headers, now=now, tolerance_s=tolerance_s)
        return
    if not master:
        raise NotConfigured(f"{MASTER_VARIABLE} is not set")
    verify_standard(webhook_key(master, provider), body, headers, now=now, tolerance_s=tolerance_s)
