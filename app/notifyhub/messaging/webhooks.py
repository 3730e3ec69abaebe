"""Inbound SMS from Twilio: STOP / START / HELP keywords at ``POST /hooks/twilio/sms``.

Every request must carry a valid ``X-Twilio-Signature`` (HMAC of the public URL and the form
fields with the account's auth token); anything else is answered 403 and changes nothing. Without
a configured auth token no request can be verified, so all are refused.

Each message is stored once in ``inbound_events`` (unique MessageSid), so Twilio's redeliveries
of the same webhook are answered again but applied once. An opt-out updates consent for every
user holding the number and suppresses the number itself (it may belong to no user yet), all in
one transaction that first waits for any SMS to that user still in flight (see
:mod:`.recipients`): once the webhook has answered, no further SMS goes to that number.

STOP and START get an empty TwiML answer: Twilio's own opt-out handling already confirms them
to the sender, and a second confirmation would be a duplicate text. HELP is answered here.

Twilio posts ``application/x-www-form-urlencoded`` UTF-8; ``multipart/form-data`` with text
fields is read too. A body that is neither, or cannot be decoded, is answered 400 with a JSON
error before anything else; refusals are JSON too (``{"error": ...}``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

import asyncpg  # type: ignore[import-untyped]
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from multidict import MultiDict
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
from twilio.twiml.messaging_response import MessagingResponse  # type: ignore[import-untyped]

from notifyhub.providers.redact import mask_phone
from notifyhub.settings import reveal

from .options import MessagingOptions
from .recipients import record_opt_in, record_opt_out, users_with_phone

if TYPE_CHECKING:
    from notifyhub.state import HandlerState

log = logging.getLogger(__name__)

PATH = "/hooks/twilio/sms"
STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "UNSTOP"})
HELP_WORDS = frozenset({"HELP"})


def keyword(body: str) -> str | None:
    """The carrier keyword a message is, if any: the whole trimmed body, any case."""
    word = body.strip().upper().rstrip(".!")
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    return None


class MalformedForm(ValueError):
    pass


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _brief(exc: BaseException) -> str:
    """An exception's message, shortened and quoted: it may quote the sender's bytes."""
    return repr(str(exc)[:100])


def _checked(fields: MultiDict[str]) -> MultiDict[str]:
    # PostgreSQL text cannot hold NUL, and no SMS field contains one.
    if any("\x00" in key or "\x00" in value for key, value in fields.items()):
        raise MalformedForm("form field contains a NUL character")
    return fields


async def read_form(request: web.Request) -> MultiDict[str]:
    """The posted fields, every value of a repeated name kept (Twilio signs them all).

    Raises :class:`MalformedForm` for anything that is not a well-formed UTF-8 form, and
    aiohttp's ``HTTPRequestEntityTooLarge`` for a body over the application's size limit.
    """
    ctype = request.content_type
    charset = (request.charset or "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise MalformedForm(f"unsupported charset {charset[:40]!r}")
    if ctype == "application/x-www-form-urlencoded":
        try:
            text = (await request.read()).decode("utf-8")
            pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
        except (UnicodeDecodeError, ValueError, RequestPayloadError) as exc:
            raise MalformedForm(f"form body is not UTF-8 form encoding: {_brief(exc)}") from None
        return _checked(MultiDict(pairs))
    if ctype == "multipart/form-data":
        fields: MultiDict[str] = MultiDict()
        try:
            form = await request.post()
        # aiohttp raises ValueError, LookupError (a bad charset), RuntimeError (a bad
        # transfer encoding) or AssertionError on malformed multipart bodies.
        except (ValueError, LookupError, RuntimeError, AssertionError, RequestPayloadError) as exc:
            raise MalformedForm(f"multipart body is malformed: {_brief(exc)}") from None
        for name, value in form.items():
            if not isinstance(value, str):
                raise MalformedForm(f"field {name[:40]!r} is a file upload")
            fields.add(name, value)
        return _checked(fields)
    raise MalformedForm(f"expected application/x-www-form-urlencoded, got {ctype[:60]!r}")


def _twiml(message: str | None = None) -> web.Response:
    response = MessagingResponse()
    if message:
        response.message(message)
    return web.Response(text=str(response), content_type="application/xml")


class TwilioInbound:
    def __init__(self, state: HandlerState, options: MessagingOptions) -> None:
        self.state = state
        self.options = options

    def _verified(self, request: web.Request, form: MultiDict[str]) -> bool:
        token = reveal(self.state.settings.twilio_auth_token)
        signature = request.headers.get("X-Twilio-Signature", "")
        if not token or not signature or not signature.isascii():
            return False
        url = self.state.settings.public_url.rstrip("/") + str(request.rel_url)
        return bool(RequestValidator(token).validate(url, form, signature))

    async def handle(self, request: web.Request) -> web.Response:
        try:
            form = await read_form(request)
        except MalformedForm as exc:
            log.warning("inbound sms refused: %s", exc)
            return _error(str(exc), 400)
        except web.HTTPRequestEntityTooLarge:
            return _error("body too large", 413)
        if not self._verified(request, form):
            log.warning("inbound sms refused: missing or invalid X-Twilio-Signature")
            return _error("invalid signature", 403)
        params = {key: form.getone(key) for key in form}
        sid = params.get("MessageSid") or params.get("SmsSid")
        phone = params.get("From", "")
        if not sid or not phone:
            return _error("MessageSid and From are required", 400)
        word = keyword(params.get("Body", ""))
        async with self.state.db.acquire() as conn, conn.transaction():
            event_id = await conn.fetchval(
                """
                INSERT INTO inbound_events (provider, provider_event_id, type, payload)
                VALUES ('twilio', $1, $2, $3)
                ON CONFLICT (provider, provider_event_id) DO NOTHING
                RETURNING id
                """,
                sid,
                f"sms.{word or 'message'}",
                params,
            )
            if event_id is not None:
                await self._apply(conn, word, phone)
                await conn.execute(
                    "UPDATE inbound_events SET processed_at = clock_timestamp() WHERE id = $1",
                    event_id,
                )
        log.info(
            "inbound sms %s from %s: %s%s",
            sid,
            mask_phone(phone),
            word or "message",
            "" if event_id is not None else " (redelivery, already applied)",
        )
        if word == "help":
            return _twiml(
                f"{self.options.app_name}: account alerts and reminders. Msg & data rates may "
                f"apply. Reply STOP to opt out. Help: {self.options.support_email}"
            )
        return _twiml()

    async def _apply(self, conn: asyncpg.Connection, word: str | None, phone: str) -> None:
        if word == "stop":
            for user_id in await users_with_phone(conn, phone):
                await record_opt_out(conn, user_id, "sms", "sms_stop")
            await conn.execute(
                """
                INSERT INTO suppressions (channel, recipient, reason, source)
                VALUES ('sms', $1, 'stop', 'twilio_inbound')
                ON CONFLICT (channel, recipient) DO NOTHING
                """,
                phone,
            )
        elif word == "start":
            for user_id in await users_with_phone(conn, phone):
                await record_opt_in(conn, user_id, "sms", "sms_start")
            await conn.execute(
                "DELETE FROM suppressions "
                "WHERE channel = 'sms' AND recipient = $1 AND reason = 'stop'",
                phone,
            )


def add_routes(app: web.Application, state: HandlerState, options: MessagingOptions) -> None:
    app.router.add_post(PATH, TwilioInbound(state, options).handle)
