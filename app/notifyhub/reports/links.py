"""Signed, expiring download links for stored report files: ``{public_url}/reports/{token}``.

A token is ``base64url(payload) "." base64url(HMAC-SHA256(payload))`` with the payload
``v1|report|<file id>|<expires, Unix seconds>``. The key is derived from the master secret for
this purpose only (:data:`PURPOSE`, see :mod:`notifyhub.secrets`), so an unsubscribe or webhook
key cannot mint a download link, and every worker holding the master secret verifies links any
other worker issued. The expiry is the stored file's own (``report_files.expires_at``), so
every attempt of a job renders the same link and the email provider's idempotency key holds.

Without a master secret no link can be issued or honoured: a per-process key would make a link
work only on the worker that wrote it, which is exactly what storing files in PostgreSQL avoids.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from datetime import datetime
from hashlib import sha256
from typing import Literal

from notifyhub.secrets import derive_key

PATH_PREFIX = "/reports/"
VERSION = "v1"
#: HKDF ``info`` label of the download-link key.
PURPOSE = "qrunner report-download-link v1"
_MAX_TOKEN_CHARS = 256


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a token says: ``ok`` with the file id, or why it is refused."""

    status: Literal["ok", "invalid", "expired"]
    file_id: int | None = None


class LinkSigner:
    """Issues and checks download tokens under the key derived from ``master``."""

    def __init__(self, master: str) -> None:
        self._key = derive_key(master, PURPOSE)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, sha256).digest()

    def token(self, file_id: int, expires_at: datetime) -> str:
        payload = f"{VERSION}|report|{file_id}|{int(expires_at.timestamp())}".encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def url(self, public_url: str, file_id: int, expires_at: datetime) -> str:
        return public_url.rstrip("/") + PATH_PREFIX + self.token(file_id, expires_at)

    def verify(self, token: str, now_s: float) -> Verdict:
        """Checks the signature before reading anything from the payload; the expiry is checked
        last, so "expired" is only ever said of a token this key signed."""
        if len(token) > _MAX_TOKEN_CHARS or token.count(".") != 1:
            return Verdict("invalid")
        body, _, mac = token.partition(".")
        try:
            payload, given = _unb64(body), _unb64(mac)
        except ValueError:
            return Verdict("invalid")
        if not hmac.compare_digest(given, self._mac(payload)):
            return Verdict("invalid")
        parts = payload.decode("ascii", "replace").split("|")
        if len(parts) != 4 or parts[:2] != [VERSION, "report"]:
            return Verdict("invalid")
        try:
            file_id, expires = int(parts[2]), int(parts[3])
        except ValueError:
            return Verdict("invalid")
        if now_s >= expires:
            return Verdict("expired", file_id)
        return Verdict("ok", file_id)


def signer_for(master: str | None) -> LinkSigner | None:
    return None if master is None else LinkSigner(master)
