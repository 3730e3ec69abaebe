"""Push notifications through FCM HTTP v1 (Android) and APNs (iOS), sorted into the provider
outcome model of :mod:`notifyhub.providers`.

Both providers answer in ways that map onto the same outcomes:

===========================================  ============================  ==================
answer                                       FCM                           APNs
===========================================  ============================  ==================
the token no longer reaches a device         404 ``UNREGISTERED``,         410 ``Unregistered``,
(:class:`DeviceUnregistered`: remove it,     400 ``INVALID_ARGUMENT`` on   400 ``BadDeviceToken``
never retry)                                 ``message.token``
"not now" (:class:`ProviderThrottled`,       429 ``QUOTA_EXCEEDED``,       429, 503
Retry-After honoured)                        503 ``UNAVAILABLE``
failed, safe to retry with backoff           500 ``INTERNAL``, 503         500
(:class:`TransientProviderError`)            without Retry-After
refused for good                             other 4xx                     other 4xx
===========================================  ============================  ==================

A push whose answer was lost (a timeout after the request left) is :class:`MaybeSent`, and the
push channel retries it anyway: every notification carries a collapse id derived from its job
(``android.collapse_key``, ``apns-collapse-id``), so a repeat replaces the first notification on
the device instead of adding a second one. SMS has no such thing, which is why it never resends.

APNs speaks HTTP/2 only, so its client is ``httpx`` with HTTP/2 (the ``h2`` package); against a
plain ``http://`` base URL (the fake server) it uses HTTP/2 with prior knowledge.

Tokens and access tokens never reach a log line or an exception whole: :func:`mask_token`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import httpx
import orjson

from notifyhub.providers import (
    DEFAULT_RETRY_AFTER_S,
    MaybeSent,
    PermanentProviderError,
    ProviderError,
    ProviderThrottled,
    TransientProviderError,
    parse_retry_after,
)
from notifyhub.providers.redact import redact_text

logger = logging.getLogger(__name__)

Platform = Literal["fcm", "apns"]
PLATFORMS: tuple[Platform, ...] = ("fcm", "apns")

FCM_BASE_URL = "https://fcm.googleapis.com"
APNS_BASE_URL = "https://api.push.apple.com"
DEFAULT_TIMEOUT_S = 10.0
#: APNs refuses a longer ``apns-collapse-id`` (400 BadCollapseId).
MAX_COLLAPSE_ID_BYTES = 64
#: FCM error codes (``error.details[].errorCode``) meaning the token is gone for good.
FCM_TOKEN_GONE = frozenset({"UNREGISTERED"})
#: APNs reasons meaning the same.
APNS_TOKEN_GONE = frozenset({"Unregistered", "BadDeviceToken"})


def mask_token(token: str) -> str:
    """A device or access token as logs may show it: its last six characters only."""
    return f"...{token[-6:]}" if len(token) > 12 else "***"


class DeviceUnregistered(PermanentProviderError):
    """The provider says the token reaches no device (app uninstalled, token rotated or
    invalid): delete it and do not retry. ``code`` is the provider's own reason."""


@dataclass(frozen=True, slots=True)
class PushMessage:
    """One notification as the push channel renders it; the same job renders the same one."""

    title: str
    body: str
    #: Key-value data for the app (FCM requires string values; APNs gets them beside ``aps``).
    data: Mapping[str, str] = field(default_factory=dict)
    #: Replaces an earlier notification with the same id on the device (at most 64 bytes).
    collapse_id: str | None = None
    priority: Literal["high", "normal"] = "high"
    #: How long the provider keeps an undeliverable notification (device offline).
    ttl_s: int = 86_400

    def __post_init__(self) -> None:
        if self.collapse_id is not None and len(self.collapse_id.encode()) > MAX_COLLAPSE_ID_BYTES:
            raise ValueError(f"collapse_id is longer than {MAX_COLLAPSE_ID_BYTES} bytes")

    def fcm_payload(self, token: str) -> dict[str, Any]:
        """The JSON body of FCM's ``messages:send``."""
        android: dict[str, Any] = {
            "priority": "HIGH" if self.priority == "high" else "NORMAL",
            "ttl": f"{self.ttl_s}s",
        }
        if self.collapse_id is not None:
            android["collapse_key"] = self.collapse_id
        message: dict[str, Any] = {
            "token": token,
            "notification": {"title": self.title, "body": self.body},
            "android": android,
        }
        if self.data:
            message["data"] = dict(self.data)
        return {"message": message}

    def apns_payload(self) -> dict[str, Any]:
        return {
            **self.data,
            "aps": {"alert": {"title": self.title, "body": self.body}, "sound": "default"},
        }

    def apns_headers(self, topic: str, now_s: float) -> dict[str, str]:
        headers = {
            "apns-push-type": "alert",
            "apns-topic": topic,
            # 10: deliver now; 5: when it suits the device's power budget.
            "apns-priority": "10" if self.priority == "high" else "5",
            "apns-expiration": str(int(now_s) + self.ttl_s),
        }
        if self.collapse_id is not None:
            headers["apns-collapse-id"] = self.collapse_id
        return headers


@dataclass(frozen=True, slots=True)
class PushResult:
    """A notification the provider accepted: FCM's message name or the ``apns-id``."""

    id: str
    platform: Platform


def _fcm_details(error: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    """FCM's ``errorCode`` and the fields a ``BadRequest`` detail says were wrong."""
    code: str | None = None
    fields: list[str] = []
    for detail in error.get("details") or []:
        if not isinstance(detail, dict):
            continue
        if isinstance(detail.get("errorCode"), str):
            code = detail["errorCode"]
        for violation in detail.get("fieldViolations") or []:
            if isinstance(violation, dict) and isinstance(violation.get("field"), str):
                fields.append(violation["field"])
    return code, fields


def classify_fcm_error(
    status: int, body: Mapping[str, Any], retry_after: str | None, *, now_s: float | None = None
) -> ProviderError:
    """Maps an error answer of FCM HTTP v1 to the outcome the caller must act on.

    ``INVALID_ARGUMENT`` is a bad token only when the violation names ``message.token`` (or the
    message says so); otherwise the payload is at fault and the token stays.
    """
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    assert isinstance(error, dict)
    detail_code, fields = _fcm_details(error)
    code = detail_code or str(error.get("status") or f"HTTP_{status}")
    message = redact_text(str(error.get("message") or ""))
    bad_token = code == "INVALID_ARGUMENT" and (
        "message.token" in fields or "registration token" in message.lower()
    )
    if code in FCM_TOKEN_GONE or bad_token:
        return DeviceUnregistered(code, message, provider="fcm", status=status)
    if status == 429 or (status == 503 and retry_after is not None):
        delay = parse_retry_after(retry_after, default_s=DEFAULT_RETRY_AFTER_S, now_s=now_s)
        return ProviderThrottled(delay, provider="fcm", status=status)
    if status >= 500:
        return TransientProviderError(f"HTTP {status} {code}: {message}", provider="fcm")
    return PermanentProviderError(code, message, provider="fcm", status=status)


def classify_apns_error(
    status: int, reason: str, retry_after: str | None, *, now_s: float | None = None
) -> ProviderError:
    """Maps an error answer of APNs (``{"reason": ...}``) to the outcome the caller must act
    on. APNs rarely sends Retry-After; without one a 429/503 waits the default."""
    if status == 410 or reason in APNS_TOKEN_GONE:
        return DeviceUnregistered(reason or "Unregistered", reason, provider="apns", status=status)
    if status in (429, 503):
        delay = parse_retry_after(retry_after, default_s=DEFAULT_RETRY_AFTER_S, now_s=now_s)
        return ProviderThrottled(delay, provider="apns", status=status)
    if status >= 500:
        return TransientProviderError(f"HTTP {status} {reason}", provider="apns")
    return PermanentProviderError(
        reason or f"HTTP_{status}", reason, provider="apns", status=status
    )


def _transport_error(exc: httpx.TransportError, provider: str) -> ProviderError:
    kind = type(exc).__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return TransientProviderError(f"{provider} unreachable ({kind})", provider=provider)
    return MaybeSent(f"{kind} after the request was sent", provider=provider)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class _HttpClient:
    """One reused ``httpx.AsyncClient``, opened on first use inside the running loop."""

    provider: str

    def __init__(self, base_url: str, *, timeout_s: float, clock: Callable[[], float]) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._clock = clock
        self._client: httpx.AsyncClient | None = None

    def _new_client(self) -> httpx.AsyncClient:
        raise NotImplementedError

    def _ensure_client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = self._new_client()
        return self._client

    async def _post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        try:
            return await self._ensure_client().post(
                f"{self.base_url}{path}", content=body, headers=headers
            )
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.provider) from None

    def _fail(self, token: str, error: ProviderError) -> ProviderError:
        logger.warning(
            "push failed provider=%s to=%s outcome=%s: %s",
            self.provider,
            mask_token(token),
            type(error).__name__,
            error,
        )
        return error

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        self._client = None


class FcmPush(_HttpClient):
    """Sends through FCM HTTP v1, ``POST /v1/projects/{project}/messages:send``.

    ``access_token`` is an OAuth 2.0 token with the ``firebase.messaging`` scope
    (``NOTIFYHUB_FCM_ACCESS_TOKEN``); it is sent as ``Authorization: Bearer``.
    """

    provider = "fcm"

    def __init__(
        self,
        access_token: str,
        project: str,
        *,
        base_url: str = FCM_BASE_URL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(base_url, timeout_s=timeout_s, clock=clock)
        self._access_token = access_token
        self.project = project

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            http2=True,
            timeout=self.timeout_s,
            headers={"Authorization": f"Bearer {self._access_token}"},
        )

    async def send(self, token: str, message: PushMessage) -> PushResult:
        try:
            response = await self._post(
                f"/v1/projects/{self.project}/messages:send",
                orjson.dumps(message.fcm_payload(token)),
                {"Content-Type": "application/json; charset=UTF-8"},
            )
        except ProviderError as failure:
            raise self._fail(token, failure) from None
        body = _json_object(response.content)
        name = body.get("name")
        if response.is_success and isinstance(name, str):
            logger.info("push accepted provider=fcm to=%s id=%s", mask_token(token), name)
            return PushResult(name, "fcm")
        if response.is_success:
            error: ProviderError = MaybeSent(
                f"HTTP {response.status_code} without a message name", provider="fcm"
            )
        else:
            error = classify_fcm_error(
                response.status_code,
                body,
                response.headers.get("Retry-After"),
                now_s=self._clock(),
            )
        raise self._fail(token, error)


class ApnsPush(_HttpClient):
    """Sends through APNs, ``POST /3/device/{token}`` over HTTP/2 with token-based auth.

    ``auth_token`` is the provider JWT (``NOTIFYHUB_APNS_AUTH_TOKEN``); ``topic`` the app's
    bundle id (``NOTIFYHUB_APNS_TOPIC``).
    """

    provider = "apns"

    def __init__(
        self,
        auth_token: str,
        topic: str,
        *,
        base_url: str = APNS_BASE_URL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(base_url, timeout_s=timeout_s, clock=clock)
        self._auth_token = auth_token
        self.topic = topic

    def _new_client(self) -> httpx.AsyncClient:
        # HTTP/2 only: APNs has no HTTP/1.1, and over plain http:// this means prior knowledge.
        return httpx.AsyncClient(
            http1=False,
            http2=True,
            timeout=self.timeout_s,
            headers={"authorization": f"bearer {self._auth_token}"},
        )

    async def send(self, token: str, message: PushMessage) -> PushResult:
        headers = message.apns_headers(self.topic, self._clock())
        headers["apns-id"] = str(uuid.uuid4())
        headers["content-type"] = "application/json"
        try:
            response = await self._post(
                f"/3/device/{token}", orjson.dumps(message.apns_payload()), headers
            )
        except ProviderError as failure:
            raise self._fail(token, failure) from None
        if response.status_code == 200:
            apns_id = response.headers.get("apns-id") or headers["apns-id"]
            logger.info("push accepted provider=apns to=%s id=%s", mask_token(token), apns_id)
            return PushResult(apns_id, "apns")
        reason = str(_json_object(response.content).get("reason") or "")
        error = classify_apns_error(
            response.status_code, reason, response.headers.get("Retry-After"), now_s=self._clock()
        )
        raise self._fail(token, error)


@dataclass(slots=True)
class PushClients:
    """The configured push providers; a platform without credentials is ``None`` and its
    notifications go to the sandbox outbox."""

    fcm: FcmPush | None = None
    apns: ApnsPush | None = None

    def configured(self, platform: str) -> bool:
        return (self.fcm if platform == "fcm" else self.apns) is not None

    async def send(self, platform: str, token: str, message: PushMessage) -> PushResult:
        client = self.fcm if platform == "fcm" else self.apns
        if client is None:
            raise RuntimeError(f"no {platform} credentials")
        return await client.send(token, message)

    async def close(self) -> None:
        for client in (self.fcm, self.apns):
            if client is not None:
                await client.close()

    async def __aenter__(self) -> PushClients:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


__all__ = [
    "APNS_BASE_URL",
    "FCM_BASE_URL",
    "PLATFORMS",
    "ApnsPush",
    "DeviceUnregistered",
    "FcmPush",
    "Platform",
    "PushClients",
    "PushMessage",
    "PushResult",
    "classify_apns_error",
    "classify_fcm_error",
    "mask_token",
]
