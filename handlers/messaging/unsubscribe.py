"""Unsubscribe links: HMAC-signed tokens and the one-click endpoint (RFC 8058).

Every email carries ``List-Unsubscribe: <{public_url}/unsubscribe?token=...>`` and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click``. Mail clients POST to that URL; a person
following the link gets a confirmation page (GET) whose button POSTs the same form. GET itself
never unsubscribes, because mail scanners fetch every link in a message.

Tokens have no expiry (an unsubscribe link must work in a years-old email) and are deterministic,
so every attempt of a job renders byte-identical email and its Idempotency-Key stays valid. They
are signed with ``QRUNNER_SIGNING_SECRET``; without one a random per-process secret is used and
a warning says so: links then break on restart, and a retry landing on another worker process
renders a different link (the provider refuses the changed payload). Set the secret in
production.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import secrets
from dataclasses import dataclass, field
from urllib.parse import quote

from aiohttp import web

from handlers.providers.redact import mask_email
from handlers.state import HandlerState
from qrunner import Settings

from .recipients import record_opt_out

log = logging.getLogger(__name__)

PATH = "/unsubscribe"


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


@dataclass
class Signer:
    """Signs and checks tokens; holds the per-process fallback secret when none is configured."""

    _generated: bytes | None = field(default=None, repr=False)

    def _secret(self, settings: Settings) -> bytes:
        if settings.signing_secret:
            return settings.signing_secret.encode()
        if self._generated is None:
            self._generated = secrets.token_bytes(32)
            log.warning(
                "QRUNNER_SIGNING_SECRET is not set: unsubscribe links are signed with a random "
                "per-process secret and stop working when this process exits"
            )
        return self._generated

    def _mac(self, settings: Settings, payload: str) -> str:
        digest = hmac.new(self._secret(settings), f"unsubscribe|{payload}".encode(), hashlib.sha256)
        return _b64(digest.digest()[:18])

    def token(self, settings: Settings, subject: Subject) -> str:
        payload = subject.encode()
        return f"{_b64(payload.encode())}.{self._mac(settings, payload)}"

    def verify(self, settings: Settings, token: str) -> Subject | None:
        encoded, _, mac = token.partition(".")
        try:
            payload = _unb64(encoded).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(settings, payload).encode()):
            return None
        return Subject.decode(payload)

    def url(self, settings: Settings, subject: Subject) -> str:
        token = self.token(settings, subject)
        return f"{settings.public_url.rstrip('/')}{PATH}?token={quote(token, safe='')}"


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

    def _subject(self, request: web.Request) -> Subject | None:
        return self.signer.verify(self.state.settings, request.query.get("token", ""))

    async def confirm_page(self, request: web.Request) -> web.Response:
        if self._subject(request) is None:
            return _page("Invalid link", "<p>This unsubscribe link is not valid.</p>", 400)
        action = html.escape(f"{PATH}?token={quote(request.query['token'], safe='')}")
        form = (
            f"<form method='post' action='{action}'>"
            "<input type='hidden' name='List-Unsubscribe' value='One-Click'>"
            "<p>Stop receiving these emails?</p>"
            "<button type='submit'>Unsubscribe</button></form>"
        )
        return _page("Unsubscribe", form)

    async def one_click(self, request: web.Request) -> web.Response:
        subject = self._subject(request)
        if subject is None:
            return _page("Invalid link", "<p>This unsubscribe link is not valid.</p>", 400)
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
