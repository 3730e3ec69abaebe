"""Browser sessions and CSRF tokens for the dashboard: plain functions of a key, a value and
``now``, so they are tested without a server.

A session cookie is ``<expires_s>.<nonce>.<mac>``: the mac is an HMAC-SHA256 of the rest under
a key derived from the endpoint's token (:func:`derive_key`), so changing the token ends every
session, and nothing about the token can be read back from a cookie. The cookie carries no
other state: there is nothing to store server-side and nothing to leak from it.

A CSRF token is the HMAC of a random per-browser seed (its own cookie) under the same key.
Every form carries it in a hidden field; a POST whose field does not match the seed it came
with is refused. Another site can make a browser send the cookies (SameSite=Strict already
stops that in current browsers) but can neither read the seed nor compute its mac.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SESSION_COOKIE = "qrunner_session"
CSRF_COOKIE = "qrunner_csrf"
CSRF_FIELD = "csrf"


def derive_key(token: str | None) -> bytes:
    """The signing key for a token; a random one (good for this process only) without one."""
    if not token:
        return secrets.token_bytes(32)
    return hmac.new(token.encode(), b"qrunner dashboard session v1", hashlib.sha256).digest()


def _mac(key: bytes, purpose: str, value: str) -> str:
    return hmac.new(key, f"{purpose}\n{value}".encode(), hashlib.sha256).hexdigest()


def new_session(key: bytes, now_s: int, ttl_s: int) -> str:
    body = f"{now_s + ttl_s}.{secrets.token_hex(8)}"
    return f"{body}.{_mac(key, 'session', body)}"


def session_valid(key: bytes, cookie: str | None, now_s: int) -> bool:
    """True for a cookie this key signed that has not expired."""
    if not cookie or cookie.count(".") != 2:
        return False
    body, _, mac = cookie.rpartition(".")
    if not hmac.compare_digest(mac.encode(), _mac(key, "session", body).encode()):
        return False
    expires = body.split(".", 1)[0]
    return expires.isdigit() and int(expires) > now_s


def new_seed() -> str:
    return secrets.token_hex(16)


def csrf_token(key: bytes, seed: str) -> str:
    return _mac(key, "csrf", seed)


def csrf_valid(key: bytes, seed: str | None, given: str | None) -> bool:
    if not seed or not given:
        return False
    return hmac.compare_digest(given.encode(), csrf_token(key, seed).encode())


def token_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison of a submitted token with the configured one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
