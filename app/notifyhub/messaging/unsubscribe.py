"""Unsubscribe links: signed, expiring tokens and the one-click endpoint (RFC 8058).

Every email carries ``List-Unsubscribe: <{public_url}/unsubscribe?token=...>`` and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click``. Mail clients POST to that URL; a person
following the link gets a confirmation page (GET) whose button POSTs the same form. GET itself
never unsubscribes, because mail scanners fetch every link in a message.

A token is ``base64url(payload) "." base64url(HMAC-SHA256)`` where the payload is
``v2|unsubscribe|<expires, Unix seconds>|<subject>``: it says what it is for and when it stops
working (:data:`TOKEN_TTL_DAYS` after the day it was issued). The key is derived from
``NOTIFYHUB_SIGNING_SECRET`` for this purpose only (:mod:`notifyhub.secrets`), so no other secret
(a payment webhook's, say) can mint one. The expiry is counted from the start of the UTC day of
issue, so every attempt of a job on the same day renders byte-identical email and its
Idempotency-Key stays valid; pass ``issued_at`` to pin it to something else.

Tokens of the first format (no version, no expiry, signed with the master secret itself) are
refused with a page that says the link is out of date. Without a master secret a random
per-process key is used and a warning says so: links then break on restart, and a retry landing
on another worker process renders a different link (the provider refuses the changed payload).
Set the secret in production.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

from aiohttp import web

from notifyhub.providers.redact import mask_email
from notifyhub.secrets import UNSUBSCRIBE, derive_key

from ..settings import AppSettings
from .recipients import record_opt_out

if TYPE_CHECKING:
    from notifyhub.state import HandlerState

log = logging.getLogger(__name__)

PATH = "/unsubscribe"
VERSION = "v2"
PURPOSE = "unsubscribe"
#: How long a link works, counted from the start of the UTC day it was issued.
TOKEN_TTL_DAYS = 90
_DAY_S = 86_400
_MAX_TOKEN_CHARS = 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Subject:
    """Whom a token unsubscribes: a user, or a bare address (a guest's receipt)."""

    user_id: int | None = None
    address: str | None = None

    def encode(self) -> str:
        return (
            f"u:{self.user_id}" if self.user_id is not None else f"e:{(self.address or '').lower()}"
        )

    @classmethod
    def decode(cls, text: str) -> Subject | None:
        kind, _, value = text.partition(":")
        if kind == "u" and value.isdigit():
            return cls(user_id=int(value))
        if kind == "e" and "@" in value:
            return cls(address=value)
        return None


Problem = Literal["invalid", "expired", "old_format"]


@dataclass(frozen=True, slots=True)
class Checked:
    """What :meth:`Signer.check` found: the subject, or why the token is refused."""

    subject: Subject | None = None
    problem: Problem | None = None


def expiry_for(issued_at: float) -> int:
    """When a token issued at ``issued_at`` stops working (Unix seconds, end of a UTC day)."""
    return (int(issued_at) // _DAY_S + 1 + TOKEN_TTL_DAYS) * _DAY_S


@dataclass
class Signer:
    """Signs and checks tokens; holds the per-process fallback key when no secret is set."""

    _generated: bytes | None = field(default=None, repr=False)

    def _key(self, settings: AppSettings) -> bytes:
        if settings.signing_key:
            return derive_key(settings.signing_key, UNSUBSCRIBE)
        if self._generated is None:
            self._generated = secrets.token_bytes(32)
            log.warning(
                "NOTIFYHUB_SIGNING_SECRET is not set: unsubscribe links are signed with a random "
                "per-process secret and stop working when this process exits"
            )
        return self._generated

    def _mac(self, settings: AppSettings, encoded: str) -> str:
        return _b64(hmac.new(self._key(settings), encoded.encode(), hashlib.sha256).digest())

    def token(
        self, settings: AppSettings, subject: Subject, *, issued_at: float | None = None
    ) -> str:
        expires = expiry_for(time.time() if issued_at is None else issued_at)
        payload = f"{VERSION}|{PURPOSE}|{expires}|{subject.encode()}"
        encoded = _b64(payload.encode())
        return f"{encoded}.{self._mac(settings, encoded)}"

    def check(self, settings: AppSettings, token: str, *, now: float | None = None) -> Checked:
        encoded, dot, mac = token.partition(".")
        if not dot or len(token) > _MAX_TOKEN_CHARS or not token.isascii():
            return Checked(problem="invalid")
        try:
            payload = _unb64(encoded).decode()
        except (ValueError, UnicodeDecodeError):
            return Checked(problem="invalid")
        parts = payload.split("|", 3)
        if len(parts) != 4 or parts[0] != VERSION:
            # The first format was the bare subject; it is not checked (its key was the master
            # secret itself), only recognised so the page can say why it no longer works.
            old = len(parts) == 1 and Subject.decode(payload) is not None
            return Checked(problem="old_format" if old else "invalid")
        if not hmac.compare_digest(mac.encode(), self._mac(settings, encoded).encode()):
            return Checked(problem="invalid")
        _, purpose, expires, subject_text = parts
        subject = Subject.decode(subject_text)
        if purpose != PURPOSE or not expires.isdigit() or subject is None:
            return Checked(problem="invalid")
        if int(expires) <= (time.time() if now is None else now):
            return Checked(problem="expired")
        return Checked(subject=subject)

    def verify(
        self, settings: AppSettings, token: str, *, now: float | None = None
    ) -> Subject | None:
        return self.check(settings, token, now=now).subject

    def url(
        self, settings: AppSettings, subject: Subject, *, issued_at: float | None = None
    ) -> str:
        token = self.token(settings, subject, issued_at=issued_at)
        return f"{settings.public_url.rstrip('/')}{PATH}?token={quote(token, safe='')}"


_REFUSALS: dict[Problem, tuple[str, str]] = {
    "invalid": ("Invalid link", "This unsubscribe link is not valid."),
    "expired": (
        "Link expired",
        f"Unsubscribe links work for {TOKEN_TTL_DAYS} days. Use the link in a more recent "
        "email from us, or reply to any of our emails to stop them.",
    ),
    "old_format": (
        "Link out of date",
        "This unsubscribe link comes from an older email and no longer works. Use the link "
        "in a more recent email from us, or reply to any of our emails to stop them.",
    ),
}


def _page(title: str, body: str, status: int = 200) -> web.Response:
    doc = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>"
        "<body style='font-family:Arial,sans-serif;max-width:480px;margin:48px auto;'>"
        f"<h1 style='font-size:20px;'>{html.escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(text=doc, status=status, content_type="text/html")


class UnsubscribeRoutes:
    def __init__(self, state: HandlerState, signer: Signer) -> None:
        self.state = state
        self.signer = signer

    def _check(self, request: web.Request) -> Checked:
        return self.signer.check(self.state.settings, request.query.get("token", ""))

    @staticmethod
    def _refuse(request: web.Request, problem: Problem) -> web.Response:
        """400 as a page for people, as JSON for programs that ask for it."""
        title, text = _REFUSALS[problem]
        if "application/json" in request.headers.get("Accept", ""):
            return web.json_response({"error": text, "reason": problem}, status=400)
        return _page(title, f"<p>{html.escape(text)}</p>", 400)

    async def confirm_page(self, request: web.Request) -> web.Response:
        checked = self._check(request)
        if checked.subject is None:
            return self._refuse(request, checked.problem or "invalid")
        action = html.escape(f"{PATH}?token={quote(request.query['token'], safe='')}")
        form = (
            f"<form method='post' action='{action}'>"
            "<input type='hidden' name='List-Unsubscribe' value='One-Click'>"
            "<p>Stop receiving these emails?</p>"
            "<button type='submit'>Unsubscribe</button></form>"
        )
        return _page("Unsubscribe", form)

    async def one_click(self, request: web.Request) -> web.Response:
        checked = self._check(request)
        subject = checked.subject
        if subject is None:
            return self._refuse(request, checked.problem or "invalid")
        async with self.state.db.acquire() as conn, conn.transaction():
            if subject.user_id is not None:
                exists = await conn.fetchval(
                    "SELECT true FROM users WHERE id = $1", subject.user_id
                )
                if exists:
                    await record_opt_out(conn, subject.user_id, "email", "list_unsubscribe")
                log.info("email opt-out recorded for user %s (one-click)", subject.user_id)
            else:
                await conn.execute(
                    """
                    INSERT INTO suppressions (channel, recipient, reason, source)
                    VALUES ('email', lower($1), 'manual', 'list_unsubscribe')
                    ON CONFLICT (channel, recipient) DO NOTHING
                    """,
                    subject.address,
                )
                log.info(
                    "email suppression recorded for %s (one-click)",
                    mask_email(subject.address or ""),
                )
        return _page("You are unsubscribed", "<p>You will not receive these emails any more.</p>")


def add_routes(app: web.Application, state: HandlerState, signer: Signer) -> None:
    routes = UnsubscribeRoutes(state, signer)
    app.router.add_get(PATH, routes.confirm_page)
    app.router.add_post(PATH, routes.one_click)
