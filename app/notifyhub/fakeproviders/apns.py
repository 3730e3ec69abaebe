"""A stand-in for APNs, ``POST /3/device/{token}``, served over HTTP/2 as APNs is.

The real service speaks nothing but HTTP/2, so this fake runs under ``hypercorn`` (a plain-TCP
listener that takes HTTP/2 with prior knowledge) instead of aiohttp, which has no HTTP/2 server.
It checks what APNs checks (the ``bearer`` provider token, ``apns-topic``, ``apns-push-type``,
a 64-hex-digit device token, a JSON payload with ``aps``) and answers like APNs: 200 with an
``apns-id`` header, or a status with ``{"reason": ...}`` (plus ``timestamp`` on a 410). Every
request records its ``http_version``, so a test can prove the client used HTTP/2.

The shared failure kinds (:mod:`.failures`) map onto APNs' answers: ``unsubscribed`` -> 410
Unregistered, ``invalid_number`` -> 400 BadDeviceToken, ``throttled`` -> 429 TooManyRequests,
``unavailable`` -> 503 ServiceUnavailable, ``server_error`` -> 500 InternalServerError.
Scripted failures are set with :meth:`fail_next`; this fake has no ``/_fake/*`` endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson
from hypercorn.asyncio import serve
from hypercorn.config import Config

from notifyhub.fakeproviders.failures import FailureKind, FailureRule
from notifyhub.fakeproviders.server import FakeServer, RecordedRequest

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_DEVICE_PATH = re.compile(r"^/3/device/(?P<token>[^/]+)$")
_DEVICE_TOKEN = re.compile(r"^[0-9a-fA-F]{64}$")
_PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "location",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
    }
)
_MAX_PAYLOAD_BYTES = 4096


@dataclass(frozen=True, slots=True)
class ApnsRecord:
    """A notification the fake accepted."""

    apns_id: str
    token: str
    topic: str
    push_type: str
    priority: str | None
    collapse_id: str | None
    expiration: str | None
    payload: dict[str, Any]
    http_version: str


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


class FakeApns(FakeServer[ApnsRecord]):
    """APNs on 127.0.0.1 over HTTP/2; ``base_url`` replaces ``https://api.push.apple.com``."""

    name = "fake-apns"

    def __init__(
        self,
        *,
        topic: str = "com.example.notifyhub",
        auth_token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(host=host, port=port, clock=clock)
        self.topic = topic
        # Shaped like a provider JWT (header.claims.signature); only compared, never decoded.
        self.auth_token = auth_token or ".".join(secrets.token_urlsafe(24) for _ in range(3))
        self.unregistered: set[str] = set()
        self._stop: asyncio.Event | None = None
        self._serving: asyncio.Task[None] | None = None

    def unregister(self, token: str) -> None:
        self.unregistered.add(token)

    def reset(self) -> None:
        super().reset()
        self.unregistered.clear()

    async def start(self) -> None:
        if self._serving is not None:
            raise RuntimeError(f"{self.name} is already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        self._port = int(sock.getsockname()[1])
        config = Config()
        # The listener is bound here (so the port is known before serving starts); hypercorn
        # takes the descriptor over and closes it at shutdown.
        config.bind = [f"fd://{sock.detach()}"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 2.0
        self._stop = asyncio.Event()
        self._release.clear()
        self._serving = asyncio.create_task(
            serve(self._app, config, shutdown_trigger=self._stop.wait, mode="asgi"),  # type: ignore[arg-type]
            name=self.name,
        )

    async def stop(self) -> None:
        serving, self._serving = self._serving, None
        if serving is None or self._stop is None:
            return
        self._release.set()
        self._stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await serving

    # -- the ASGI application ------------------------------------------------------------------

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        answer = await self._handle(scope, body)
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [(k.encode(), v.encode()) for k, v in answer.headers]
                + ([(b"content-type", b"application/json")] if answer.reason else []),
            }
        )
        payload = b""
        if answer.reason is not None:
            error: dict[str, Any] = {"reason": answer.reason}
            if answer.status == 410:
                error["timestamp"] = int(self.clock() * 1000)
            payload = orjson.dumps(error)
        await send({"type": "http.response.body", "body": payload})

    async def _handle(self, scope: Scope, raw: bytes) -> _Answer:
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        recorded = self._record(scope, headers, body)
        answer = await self._answer(scope, headers, raw, body, recorded)
        recorded.status = answer.status
        return answer

    def _record(self, scope: Scope, headers: dict[str, str], body: Any) -> RecordedRequest:
        shown = dict(headers)
        if "authorization" in shown:
            shown["authorization"] = shown["authorization"].split(" ", 1)[0] + " ***"
        shown[":http-version"] = str(scope.get("http_version", ""))
        recorded = RecordedRequest(
            method=str(scope["method"]),
            path=str(scope["path"]),
            headers=shown,
            body=body if isinstance(body, dict) else {},
            received_at=self.clock(),
        )
        self.requests.append(recorded)
        return recorded

    async def _answer(
        self,
        scope: Scope,
        headers: dict[str, str],
        raw: bytes,
        body: Any,
        recorded: RecordedRequest,
    ) -> _Answer:
        match = _DEVICE_PATH.match(str(scope["path"]))
        if scope["method"] != "POST" or match is None:
            return _Answer(405 if match else 404, "MethodNotAllowed" if match else "BadPath")
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if not token:
            return _Answer(403, "MissingProviderToken")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token, self.auth_token):
            return _Answer(403, "InvalidProviderToken")
        device = match["token"]
        rule = self.failures.take([device])
        if rule is not None:
            recorded.failure = rule.kind.value
            if not rule.kind.after_accept:
                return _refusal(rule)
        problem = self._validate(headers, device, raw, body)
        if problem is not None:
            return problem
        if device in self.unregistered:
            return _Answer(410, "Unregistered")
        apns_id = headers.get("apns-id") or str(uuid.uuid4()).upper()
        await self.accept(
            ApnsRecord(
                apns_id=apns_id,
                token=device,
                topic=headers["apns-topic"],
                push_type=headers["apns-push-type"],
                priority=headers.get("apns-priority"),
                collapse_id=headers.get("apns-collapse-id"),
                expiration=headers.get("apns-expiration"),
                payload=body,
                http_version=str(scope.get("http_version", "")),
            )
        )
        if rule is not None and rule.kind is FailureKind.ERROR_AFTER_ACCEPT:
            return _Answer(500, "InternalServerError")
        if rule is not None and rule.kind is FailureKind.TIMEOUT_AFTER_ACCEPT:
            recorded.status = 200
            await self.hold(rule.hold_s)
        return _Answer(200, None, (("apns-id", apns_id),))

    def _validate(
        self, headers: dict[str, str], device: str, raw: bytes, body: Any
    ) -> _Answer | None:
        if not _DEVICE_TOKEN.match(device):
            return _Answer(400, "BadDeviceToken")
        topic = headers.get("apns-topic")
        if not topic:
            return _Answer(400, "MissingTopic")
        if topic != self.topic:
            return _Answer(400, "TopicDisallowed")
        if headers.get("apns-push-type") not in _PUSH_TYPES:
            return _Answer(400, "InvalidPushType")
        if headers.get("apns-priority") not in (None, "1", "5", "10"):
            return _Answer(400, "BadPriority")
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            return _Answer(400, "BadCollapseId")
        if not raw:
            return _Answer(400, "PayloadEmpty")
        if len(raw) > _MAX_PAYLOAD_BYTES:
            return _Answer(413, "PayloadTooLarge")
        if not isinstance(body, dict) or not isinstance(body.get("aps"), dict):
            return _Answer(400, "BadPayload")
        return None


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _refusal(rule: FailureRule) -> _Answer:
    retry = (("retry-after", str(rule.retry_after_s)),) if rule.retry_after_s is not None else ()
    match rule.kind:
        case FailureKind.UNSUBSCRIBED:
            return _Answer(410, "Unregistered")
        case FailureKind.INVALID_NUMBER:
            return _Answer(400, "BadDeviceToken")
        case FailureKind.THROTTLED:
            return _Answer(429, "TooManyRequests", retry)
        case FailureKind.UNAVAILABLE:
            return _Answer(503, "ServiceUnavailable", retry)
        case _:
            return _Answer(500, "InternalServerError")
