"""A stand-in for FCM HTTP v1, ``POST /v1/projects/{project}/messages:send``.

Bearer auth is checked against ``access_token``, the body as FCM checks it (a ``message`` with
a ``token``, string-only ``data``), and errors come back in Google's shape: ``error.code``,
``error.status`` and an ``FcmError`` detail carrying ``errorCode``. The shared failure kinds
(:mod:`.failures`) map onto FCM's answers:

==================  ==================================================================
kind                answer
==================  ==================================================================
unsubscribed        404 NOT_FOUND, errorCode UNREGISTERED (the app was uninstalled)
invalid_number      400 INVALID_ARGUMENT with a violation on ``message.token``
throttled           429 RESOURCE_EXHAUSTED, errorCode QUOTA_EXCEEDED, Retry-After
unavailable         503 UNAVAILABLE, Retry-After
server_error        500 INTERNAL
==================  ==================================================================

A token passed to :meth:`FakeFcm.unregister` answers UNREGISTERED on every later request, as a
real uninstalled app's token does.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from notifyhub.fakeproviders.failures import FailureKind, FailureRule
from notifyhub.fakeproviders.server import FakeServer, RecordedRequest, json_response

_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


@dataclass(frozen=True, slots=True)
class FcmRecord:
    """A message the fake accepted."""

    name: str
    project: str
    token: str
    title: str | None
    body: str | None
    data: dict[str, str]
    android: dict[str, Any]


def fcm_error(
    status: int,
    message: str,
    error_code: str | None = None,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    details: list[dict[str, Any]] = []
    if error_code is not None:
        details.append({"@type": _FCM_ERROR, "errorCode": error_code})
    if field is not None:
        details.append(
            {"@type": _BAD_REQUEST, "fieldViolations": [{"field": field, "description": message}]}
        )
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return json_response({"error": error}, status=status, headers=headers)


class FakeFcm(FakeServer[FcmRecord]):
    """FCM HTTP v1 on 127.0.0.1; ``base_url`` replaces ``https://fcm.googleapis.com``."""

    name = "fake-fcm"

    def __init__(
        self,
        *,
        project: str = "notifyhub-test",
        access_token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(host=host, port=port, clock=clock)
        self.project = project
        self.access_token = access_token or "ya29." + secrets.token_urlsafe(32)
        self.unregistered: set[str] = set()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)

    def unregister(self, token: str) -> None:
        self.unregistered.add(token)

    def reset(self) -> None:
        super().reset()
        self.unregistered.clear()

    async def _send(self, request: web.Request) -> web.Response:
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
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token, self.access_token):
            return fcm_error(
                401, "Request had invalid authentication credentials.", "THIRD_PARTY_AUTH_ERROR"
            )
        if request.match_info["project"] != self.project:
            return fcm_error(403, "Permission denied on the project.", "SENDER_ID_MISMATCH")
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, dict):
            return fcm_error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT")
        device = message.get("token")
        if not isinstance(device, str) or not device:
            return fcm_error(
                400, "Recipient of the message is not set.", "INVALID_ARGUMENT", field="message"
            )
        rule = self.failures.take([device])
        if rule is not None:
            recorded.failure = rule.kind.value
            if not rule.kind.after_accept:
                return _refusal(rule)
        if device in self.unregistered:
            return fcm_error(404, "Requested entity was not found.", "UNREGISTERED")
        problem = _validate(message)
        if problem is not None:
            return problem
        record = self._record(message, device)
        await self.accept(record)
        if rule is not None and rule.kind is FailureKind.ERROR_AFTER_ACCEPT:
            return fcm_error(500, "Internal error encountered.", "INTERNAL")
        if rule is not None and rule.kind is FailureKind.TIMEOUT_AFTER_ACCEPT:
            recorded.status = 200
            await self.hold(rule.hold_s)
        return json_response({"name": record.name})

    def _record(self, message: dict[str, Any], device: str) -> FcmRecord:
        notification = message.get("notification") or {}
        return FcmRecord(
            name=f"projects/{self.project}/messages/0:{secrets.token_hex(8)}",
            project=self.project,
            token=device,
            title=notification.get("title"),
            body=notification.get("body"),
            data=dict(message.get("data") or {}),
            android=dict(message.get("android") or {}),
        )


def _validate(message: dict[str, Any]) -> web.Response | None:
    data = message.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return fcm_error(
            400,
            "Invalid value at 'message.data': values must be strings.",
            "INVALID_ARGUMENT",
            field="message.data",
        )
    notification = message.get("notification", {})
    if not isinstance(notification, dict):
        return fcm_error(400, "Invalid 'message.notification'.", "INVALID_ARGUMENT")
    return None


def _refusal(rule: FailureRule) -> web.Response:
    retry_headers = (
        {"Retry-After": str(rule.retry_after_s)} if rule.retry_after_s is not None else None
    )
    match rule.kind:
        case FailureKind.UNSUBSCRIBED:
            return fcm_error(404, "Requested entity was not found.", "UNREGISTERED")
        case FailureKind.INVALID_NUMBER:
            return fcm_error(
                400,
                "The registration token is not a valid FCM registration token",
                "INVALID_ARGUMENT",
                field="message.token",
            )
        case FailureKind.THROTTLED:
            return fcm_error(
                429, "Quota exceeded for the project.", "QUOTA_EXCEEDED", headers=retry_headers
            )
        case FailureKind.UNAVAILABLE:
            return fcm_error(
                503, "The service is currently unavailable.", "UNAVAILABLE", headers=retry_headers
            )
        case _:
            return fcm_error(500, "Internal error encountered.", "INTERNAL")
