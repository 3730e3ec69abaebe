"""A stand-in for Resend's ``POST /emails``, including its Idempotency-Key behaviour.

The idempotency rules are the point of this fake: the email client's safety argument (retry a
timeout or a 5xx freely) rests on them. As Resend documents: within 24 hours the same key with the
same payload returns the original answer without sending again, and the same key with another
payload is refused with 409 ``invalid_idempotent_request``.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from notifyhub.fakeproviders.failures import FailureKind, FailureRule
from notifyhub.fakeproviders.server import FakeServer, RecordedRequest, json_response

IDEMPOTENCY_TTL_S = 24 * 3600.0
_MAX_KEY_LEN = 256
_MAX_RECIPIENTS = 50
_ADDRESS_RE = re.compile(r"^(?:[^<>]*<\s*)?[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+(?:\s*>)?$")


@dataclass(frozen=True, slots=True)
class EmailRecord:
    """An email the fake accepted."""

    id: str
    from_: str
    to: tuple[str, ...]
    subject: str
    html: str | None
    text: str | None
    headers: dict[str, str]
    reply_to: str | list[str] | None
    tags: list[dict[str, str]]
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    idempotency_key: str | None = None
    created_at: str = ""


@dataclass(frozen=True, slots=True)
class _Remembered:
    fingerprint: bytes
    payload: dict[str, Any]
    stored_at: float


def resend_error(
    status: int, name: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response(
        {"statusCode": status, "name": name, "message": message}, status=status, headers=headers
    )


class FakeResend(FakeServer[EmailRecord]):
    """Resend's emails API on 127.0.0.1; ``base_url`` replaces ``https://api.resend.com``."""

    name = "fake-resend"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(host=host, port=port, clock=clock)
        self.api_key = api_key or "re_" + secrets.token_urlsafe(24)
        self._idempotent: dict[str, _Remembered] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/emails", self._send_email)

    def reset(self) -> None:
        super().reset()
        self._idempotent.clear()

    async def _send_email(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = None
        recorded = self.record(request, body if isinstance(body, dict) else {})
        response = await self._answer(request, body, recorded)
        recorded.status = response.status
        return response

    async def _answer(
        self, request: web.Request, body: Any, recorded: RecordedRequest
    ) -> web.Response:
        denied = self._check_auth(request.headers.get("Authorization"))
        if denied is not None:
            return denied
        if not isinstance(body, dict):
            return resend_error(422, "validation_error", "The request body must be a JSON object.")
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= _MAX_KEY_LEN:
            return resend_error(
                400, "invalid_idempotency_key", "The key must be between 1-256 chars."
            )
        rule = self.failures.take(_addresses(body.get("to")))
        if rule is not None:
            recorded.failure = rule.kind.value
            if not rule.kind.after_accept:
                return _refusal(rule)
        payload = self._replay(key, body) if key is not None else None
        if isinstance(payload, web.Response):
            return payload
        if payload is None:
            problem = _validate(body)
            if problem is not None:
                return resend_error(*problem)
            payload = await self._deliver(body, key)
        if rule is not None and rule.kind is FailureKind.ERROR_AFTER_ACCEPT:
            return resend_error(500, "application_error", "An unexpected error occurred.")
        if rule is not None and rule.kind is FailureKind.TIMEOUT_AFTER_ACCEPT:
            recorded.status = 200
            await self.hold(rule.hold_s)
        return json_response(payload)

    def _check_auth(self, header: str | None) -> web.Response | None:
        if not header:
            return resend_error(
                401,
                "missing_api_key",
                "Missing API key in the authorization header. Include the following header "
                "in the request: Authorization: Bearer YOUR_API_KEY",
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token, self.api_key):
            return resend_error(403, "invalid_api_key", "API key is invalid")
        return None

    def _replay(self, key: str, body: dict[str, Any]) -> dict[str, Any] | web.Response | None:
        """The stored answer for a repeated key, a 409 for a reused key, or None when new."""
        remembered = self._idempotent.get(key)
        if remembered is None:
            return None
        if self.clock() - remembered.stored_at > IDEMPOTENCY_TTL_S:
            del self._idempotent[key]
            return None
        if remembered.fingerprint != _fingerprint(body):
            return resend_error(
                409,
                "invalid_idempotent_request",
                "Same idempotency key used with a different request payload. Change your "
                "idempotency key or payload.",
            )
        return remembered.payload

    async def _deliver(self, body: dict[str, Any], key: str | None) -> dict[str, Any]:
        email_id = str(uuid.uuid4())
        headers = body.get("headers") or {}
        record = EmailRecord(
            id=email_id,
            from_=str(body["from"]),
            to=tuple(_addresses(body["to"])),
            subject=str(body["subject"]),
            html=body.get("html"),
            text=body.get("text"),
            headers={str(k): str(v) for k, v in headers.items()},
            reply_to=body.get("reply_to"),
            tags=list(body.get("tags") or []),
            cc=_addresses(body.get("cc")),
            bcc=_addresses(body.get("bcc")),
            idempotency_key=key,
            created_at=datetime.fromtimestamp(self.clock(), UTC).isoformat(),
        )
        payload = {"id": email_id}
        if key is not None:
            self._idempotent[key] = _Remembered(_fingerprint(body), payload, self.clock())
        await self.accept(record)
        return payload


def _fingerprint(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def _addresses(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(item) for item in value]
    return [str(value)]


def _validate(body: dict[str, Any]) -> tuple[int, str, str] | None:
    for required in ("from", "to", "subject"):
        if not body.get(required):
            return 422, "missing_required_field", f"Missing `{required}` field."
    if not body.get("html") and not body.get("text"):
        return 422, "validation_error", "Missing `html` or `text` field."
    if not isinstance(body.get("headers", {}), dict):
        return 422, "validation_error", "The `headers` field must be an object."
    recipients = _addresses(body["to"])
    if len(recipients) > _MAX_RECIPIENTS:
        return 422, "validation_error", "Too many recipients: the limit is 50."
    for field_name, addresses in (("from", [str(body["from"])]), ("to", recipients)):
        if not all(_ADDRESS_RE.match(address) for address in addresses):
            return (
                422,
                "validation_error",
                f"Invalid `{field_name}` field. The email address needs to follow the "
                "`email@example.com` or `Name <email@example.com>` format.",
            )
    return None


def _refusal(rule: FailureRule) -> web.Response:
    retry_headers = (
        {"Retry-After": str(rule.retry_after_s)} if rule.retry_after_s is not None else None
    )
    match rule.kind:
        case FailureKind.INVALID_NUMBER:
            return resend_error(
                422,
                "validation_error",
                "Invalid `to` field. The email address needs to follow the "
                "`email@example.com` or `Name <email@example.com>` format.",
            )
        case FailureKind.UNSUBSCRIBED:
            return resend_error(
                422, "validation_error", "The recipient is on the account's suppression list."
            )
        case FailureKind.THROTTLED:
            return resend_error(
                429,
                "rate_limit_exceeded",
                "Too many requests. You can only make 2 requests per second.",
                retry_headers,
            )
        case FailureKind.UNAVAILABLE:
            return resend_error(
                503,
                "service_unavailable",
                "The service is temporarily unavailable.",
                retry_headers,
            )
        case _:
            return resend_error(500, "internal_server_error", "An unexpected error occurred.")
