"""Provider webhooks: what Twilio and Resend tell the app after (or instead of) a send.

=============================  ==============================================================
route                          what it does
=============================  ==============================================================
``POST /hooks/twilio/sms``     inbound SMS: STOP / START / HELP keywords; any other text is a
                               reply, counted as engagement of the user holding the number
``POST /hooks/twilio/status``  status callbacks: resolve ``maybe_sent`` rows (delivered/sent ->
                               sent, failed/undelivered -> failed) and record the provider's
                               status on the delivery log
``POST /hooks/resend``         Resend events: bounces and complaints suppress the address,
                               opens and clicks are engagement, deliveries are recorded
=============================  ==============================================================

Every Twilio request must carry a valid ``X-Twilio-Signature`` (HMAC of the public URL and the form
fields with the account's auth token); anything else is answered 403 and changes nothing. Without
a configured auth token no request can be verified, so all are refused.

Each message is stored once in ``inbound_events`` (unique MessageSid), so Twilio's redeliveries
of the same webhook are answered again but applied once. An opt-out updates consent for every
user holding the number and suppresses the number itself (it may belong to no user yet), all in
one transaction that first waits for any SMS to that user still in flight (see
:mod:`.recipients`): once the webhook has answered, no further SMS goes to that number.

STOP and START get an empty TwiML answer: Twilio's own opt-out handling already confirms them
to the sender, and a second confirmation would be a duplicate text. HELP is answered here.

A status callback is matched to its delivery-log row by ``MessageSid``; a maybe-sent SMS has
no SID of its own (no answer came back), so it is matched by the ``key`` query parameter of the
callback URL (the idempotency key, part of what Twilio signs) when the sender set one, else by
the ``To`` number when exactly one unresolved maybe-sent SMS to it is recent. An ambiguous
callback changes nothing: guessing could mark the wrong message. A resolved row keeps
``resolved_from = 'maybe_sent'`` and its effect-ledger entry stays settled, so it is never sent
again automatically, whichever way it was resolved.

Resend signs with Svix (``svix-id``, ``svix-timestamp``, ``svix-signature: v1,<base64>``,
HMAC-SHA256 of ``id.timestamp.body`` under the ``whsec_`` secret ``RESEND_WEBHOOK_SECRET``),
the Standard Webhooks scheme under other header names. Unset, every event is answered 503 and
Resend keeps retrying. Each event is stored once in ``inbound_events`` (by ``svix-id``).

Twilio posts ``application/x-www-form-urlencoded`` UTF-8; ``multipart/form-data`` with text
fields is read too. A body that is neither, or cannot be decoded, is answered 400 with a JSON
error before anything else; refusals are JSON too (``{"error": ...}``).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import asyncpg  # type: ignore[import-untyped]
import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from multidict import MultiDict
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
from twilio.twiml.messaging_response import MessagingResponse  # type: ignore[import-untyped]

from notifyhub.engagement import record_engagement
from notifyhub.providers.redact import mask_email, mask_phone
from notifyhub.settings import reveal

from .ledger import recipient_hash
from .options import MessagingOptions
from .recipients import record_opt_in, record_opt_out, users_with_phone

if TYPE_CHECKING:
    from notifyhub.state import HandlerState

log = logging.getLogger(__name__)

PATH = "/hooks/twilio/sms"
STATUS_PATH = "/hooks/twilio/status"
RESEND_PATH = "/hooks/resend"
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


def twilio_verified(state: HandlerState, request: web.Request, form: MultiDict[str]) -> bool:
    """True when ``X-Twilio-Signature`` signs the public URL (query included) and ``form``."""
    token = reveal(state.settings.twilio_auth_token)
    signature = request.headers.get("X-Twilio-Signature", "")
    if not token or not signature or not signature.isascii():
        return False
    url = state.settings.public_url.rstrip("/") + str(request.rel_url)
    return bool(RequestValidator(token).validate(url, form, signature))


async def _signed_form(
    state: HandlerState, request: web.Request, what: str
) -> MultiDict[str] | web.Response:
    """The form of a Twilio request, or the JSON refusal to answer it with."""
    try:
        form = await read_form(request)
    except MalformedForm as exc:
        log.warning("%s refused: %s", what, exc)
        return _error(str(exc), 400)
    except web.HTTPRequestEntityTooLarge:
        return _error("body too large", 413)
    if not twilio_verified(state, request, form):
        log.warning("%s refused: missing or invalid X-Twilio-Signature", what)
        return _error("invalid signature", 403)
    return form


class TwilioInbound:
    def __init__(self, state: HandlerState, options: MessagingOptions) -> None:
        self.state = state
        self.options = options

    async def handle(self, request: web.Request) -> web.Response:
        form = await _signed_form(self.state, request, "inbound sms")
        if isinstance(form, web.Response):
            return form
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
                await self._apply(conn, word, phone, event_id)
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

    async def _apply(
        self, conn: asyncpg.Connection, word: str | None, phone: str, event_id: int
    ) -> None:
        if word is None:
            # A reply is engagement of whoever holds the number; a number several users share
            # says nothing about which of them replied, so it is not counted.
            users = await users_with_phone(conn, phone)
            if len(users) == 1:
                await record_engagement(
                    conn, user_id=users[0], channel="sms", kind="reply", inbound_event_id=event_id
                )
        elif word == "stop":
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


# -- twilio status callbacks -------------------------------------------------------------------

#: How final each Twilio message status is: a callback never moves a row back to a lower rank
#: (callbacks may arrive out of order).
STATUS_RANK = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 0,
    "sending": 0,
    "sent": 1,
    "delivered": 2,
    "read": 2,
    "undelivered": 2,
    "failed": 2,
    "canceled": 2,
}
#: What a maybe-sent row becomes when Twilio reports each status.
RESOLUTION = {
    "sent": "sent",
    "delivered": "sent",
    "read": "sent",
    "undelivered": "failed",
    "failed": "failed",
}
#: How far back an unresolved maybe-sent SMS may be matched by its number alone.
MATCH_BY_NUMBER_WINDOW = "3 days"


async def _rows_for_callback(
    conn: asyncpg.Connection, sid: str, key: str | None, to: str | None
) -> list[asyncpg.Record] | None:
    """The delivery-log rows a callback is about (locked), ``[]`` when none, ``None`` when the
    number matches several unresolved maybe-sent SMS (ambiguous)."""
    rows = await conn.fetch(
        "SELECT id, status, provider_status, resolved_from, idempotency_key FROM delivery_log"
        " WHERE provider = 'twilio' AND provider_message_id = $1 ORDER BY id FOR UPDATE",
        sid,
    )
    if rows:
        return list(rows)
    if not key and to:
        keys = await conn.fetch(
            "SELECT idempotency_key FROM effect_ledger WHERE channel = 'sms'"
            " AND state = 'maybe_sent' AND provider_message_id IS NULL AND recipient_hash = $1"
            f" AND created_at > now() - interval '{MATCH_BY_NUMBER_WINDOW}'",
            recipient_hash(to),
        )
        if len(keys) > 1:
            return None
        key = keys[0]["idempotency_key"] if keys else None
    if not key:
        return []
    return list(
        await conn.fetch(
            "SELECT id, status, provider_status, resolved_from, idempotency_key"
            " FROM delivery_log WHERE idempotency_key = $1 AND channel = 'sms'"
            " AND status = 'maybe_sent' ORDER BY id FOR UPDATE",
            key,
        )
    )


async def apply_sms_status(
    conn: asyncpg.Connection,
    sid: str,
    status: str,
    error_code: str | None,
    *,
    key: str | None = None,
    to: str | None = None,
) -> str:
    """Record one Twilio status on the rows it is about; returns what happened
    (``resolved``, ``updated``, ``stale``, ``unmatched``, ``ambiguous``)."""
    rows = await _rows_for_callback(conn, sid, key, to)
    if rows is None:
        return "ambiguous"
    if not rows:
        return "unmatched"
    rank = STATUS_RANK.get(status, 0)
    outcome = "stale"
    for row in rows:
        if rank < STATUS_RANK.get(row["provider_status"] or "", -1):
            continue
        resolvable = row["status"] == "maybe_sent" or row["resolved_from"] == "maybe_sent"
        new_status = RESOLUTION.get(status) if resolvable else None
        await conn.execute(
            """
            UPDATE delivery_log
            SET status = coalesce($2, status),
                resolved_from = CASE WHEN $2::text IS NULL THEN resolved_from
                                     ELSE 'maybe_sent' END,
                provider_message_id = coalesce(provider_message_id, $3),
                provider_status = $4, provider_error_code = $5,
                provider_status_at = clock_timestamp()
            WHERE id = $1
            """,
            row["id"],
            new_status,
            sid,
            status,
            error_code,
        )
        outcome = "resolved" if new_status is not None or outcome == "resolved" else "updated"
        if new_status is not None and row["idempotency_key"]:
            # The ledger keeps the SID; its state stays settled (maybe_sent or sent), so a
            # replay of the job never sends the text again, even after a failure report.
            await conn.execute(
                "UPDATE effect_ledger SET provider_message_id = $2,"
                " state = CASE WHEN $3 THEN 'sent' ELSE state END, updated_at = now()"
                " WHERE idempotency_key = $1 AND state IN ('maybe_sent', 'sent')",
                row["idempotency_key"],
                sid,
                new_status == "sent",
            )
    return outcome


class TwilioStatus:
    """``POST /hooks/twilio/status``: Twilio's message status callbacks."""

    def __init__(self, state: HandlerState) -> None:
        self.state = state

    async def handle(self, request: web.Request) -> web.Response:
        form = await _signed_form(self.state, request, "twilio status callback")
        if isinstance(form, web.Response):
            return form
        params = {key: form.getone(key) for key in form}
        sid = params.get("MessageSid") or params.get("SmsSid")
        status = (params.get("MessageStatus") or params.get("SmsStatus") or "").lower()
        if not sid or not status:
            return _error("MessageSid and MessageStatus are required", 400)
        error_code = params.get("ErrorCode") or None
        key = request.query.get("key") or None
        async with self.state.db.acquire() as conn, conn.transaction():
            event_id = await conn.fetchval(
                """
                INSERT INTO inbound_events (provider, provider_event_id, type, payload)
                VALUES ('twilio', $1, $2, $3)
                ON CONFLICT (provider, provider_event_id) DO NOTHING
                RETURNING id
                """,
                f"{sid}:status:{status}",
                f"sms.status.{status}",
                params,
            )
            outcome = "redelivery"
            if event_id is not None:
                outcome = await apply_sms_status(
                    conn, sid, status, error_code, key=key, to=params.get("To")
                )
                await conn.execute(
                    "UPDATE inbound_events SET processed_at = clock_timestamp(),"
                    " error = CASE WHEN $2 IN ('unmatched', 'ambiguous') THEN $2 END"
                    " WHERE id = $1",
                    event_id,
                    outcome,
                )
        log_at = logging.WARNING if outcome == "ambiguous" else logging.INFO
        log.log(
            log_at,
            "twilio status %s for %s to %s%s: %s",
            status,
            sid,
            mask_phone(params.get("To", "")),
            f" (error {error_code})" if error_code else "",
            outcome,
        )
        return web.json_response({"status": outcome})


# -- resend events -----------------------------------------------------------------------------

#: Provider status each Resend event records on the delivery log, with its rank.
EMAIL_STATUS = {
    "email.sent": ("sent", 0),
    "email.delivery_delayed": ("delivery_delayed", 0),
    "email.delivered": ("delivered", 1),
    "email.bounced": ("bounced", 2),
    "email.complained": ("complained", 3),
}
ENGAGEMENT = {"email.opened": "open", "email.clicked": "click"}
#: Resend's bounce types that say nothing about the address itself: no suppression.
SOFT_BOUNCES = frozenset({"transient", "temporary", "undetermined"})
_EMAIL_RANK = {status: rank for status, rank in EMAIL_STATUS.values()}


def _recipients(data: dict[str, Any]) -> list[str]:
    to = data.get("to")
    items = to if isinstance(to, list) else [to]
    return [t.strip().lower() for t in items if isinstance(t, str) and "@" in t]


def _occurred(event: dict[str, Any]) -> datetime | None:
    for value in (event.get("created_at"), event.get("data", {}).get("created_at")):
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


class ResendEvents:
    """``POST /hooks/resend``: Resend's email events, signed the Svix way."""

    def __init__(self, state: HandlerState) -> None:
        self.state = state

    async def handle(self, request: web.Request) -> web.Response:
        # Imported here: the webhooks package imports the handler state, which imports this.
        from notifyhub.webhooks.signature import (
            ID_HEADER,
            SIGNATURE_HEADER,
            TIMESTAMP_HEADER,
            SignatureError,
            decode_whsec,
            verify_standard,
        )

        secret = reveal(self.state.settings.resend_webhook_secret)
        if secret is None:
            return _error("RESEND_WEBHOOK_SECRET is not set", 503)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error("body too large", 413)
        headers = {
            ID_HEADER: request.headers.get("svix-id", ""),
            TIMESTAMP_HEADER: request.headers.get("svix-timestamp", ""),
            SIGNATURE_HEADER: request.headers.get("svix-signature", ""),
        }
        try:
            msg_id = verify_standard(decode_whsec(secret), body, headers, now=time.time())
        except SignatureError as exc:
            reason = str(exc).replace("webhook-", "svix-")
            log.warning("resend webhook refused: %s", reason)
            return _error(reason, 401)
        except ValueError:
            log.error("RESEND_WEBHOOK_SECRET is not a whsec_<base64> secret")
            return _error("RESEND_WEBHOOK_SECRET is malformed", 503)
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error("body is not valid JSON", 400)
        if (
            not isinstance(event, dict)
            or not isinstance(event.get("type"), str)
            or not isinstance(event.get("data"), dict)
        ):
            return _error("expected a JSON object with 'type' and 'data'", 400)
        try:
            async with self.state.db.acquire() as conn, conn.transaction():
                event_id = await conn.fetchval(
                    "INSERT INTO inbound_events (provider, provider_event_id, type, payload)"
                    " VALUES ('resend', $1, $2, $3)"
                    " ON CONFLICT (provider, provider_event_id) DO NOTHING RETURNING id",
                    msg_id,
                    event["type"][:100],
                    event,
                )
                if event_id is None:
                    return web.json_response({"status": "duplicate"})
                outcome = await self._apply(conn, event, event_id)
                await conn.execute(
                    "UPDATE inbound_events SET processed_at = clock_timestamp() WHERE id = $1",
                    event_id,
                )
        except asyncpg.DataError as exc:  # e.g. a NUL character, which PostgreSQL text refuses
            log.warning("resend webhook not storable: %s", type(exc).__name__)
            return _error("event cannot be stored", 400)
        return web.json_response({"status": outcome})

    async def _apply(self, conn: asyncpg.Connection, event: dict[str, Any], event_id: int) -> str:
        kind: str = event["type"]
        data: dict[str, Any] = event["data"]
        email_id = data.get("email_id") if isinstance(data.get("email_id"), str) else None
        row = None
        if email_id:
            row = await conn.fetchrow(
                "SELECT id, user_id, provider_status FROM delivery_log"
                " WHERE provider = 'resend' AND provider_message_id = $1 ORDER BY id LIMIT 1",
                email_id,
            )
        recipients = _recipients(data)
        masked = ", ".join(mask_email(r) for r in recipients) or "-"
        if kind in ("email.bounced", "email.complained"):
            found = data.get("bounce")
            bounce: dict[str, Any] = found if isinstance(found, dict) else {}
            soft = str(bounce.get("type", "")).lower() in SOFT_BOUNCES
            if not (kind == "email.bounced" and soft):
                reason = "bounce" if kind == "email.bounced" else "complaint"
                for address in recipients:
                    await conn.execute(
                        "INSERT INTO suppressions (channel, recipient, reason, source)"
                        " VALUES ('email', $1, $2, 'resend_webhook')"
                        " ON CONFLICT (channel, recipient) DO NOTHING",
                        address,
                        reason,
                    )
                log.info("suppressed email to %s after %s", masked, kind)
        if kind in ENGAGEMENT:
            user_id = row["user_id"] if row is not None else None
            if user_id is None and len(recipients) == 1:
                user_id = await conn.fetchval(
                    "SELECT id FROM users WHERE lower(email) = $1", recipients[0]
                )
            if user_id is None:
                return "unmatched"
            await record_engagement(
                conn,
                user_id=user_id,
                channel="email",
                kind=ENGAGEMENT[kind],
                occurred_at=_occurred(event),
                delivery_log_id=row["id"] if row is not None else None,
                inbound_event_id=event_id,
            )
            return "engagement"
        if kind in EMAIL_STATUS and row is not None:
            status, rank = EMAIL_STATUS[kind]
            if rank >= _EMAIL_RANK.get(row["provider_status"] or "", -1):
                await conn.execute(
                    "UPDATE delivery_log SET provider_status = $2,"
                    " provider_status_at = clock_timestamp() WHERE id = $1",
                    row["id"],
                    status,
                )
            return "recorded"
        return "recorded" if kind in EMAIL_STATUS else "ignored"


def add_routes(app: web.Application, state: HandlerState, options: MessagingOptions) -> None:
    app.router.add_post(PATH, TwilioInbound(state, options).handle)
    app.router.add_post(STATUS_PATH, TwilioStatus(state).handle)
    app.router.add_post(RESEND_PATH, ResendEvents(state).handle)
