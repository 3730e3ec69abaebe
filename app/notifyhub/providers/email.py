"""Email through Resend's HTTP API, with every outcome sorted into the provider outcome model.

Unlike SMS, an email send is safe to repeat: each request carries an ``Idempotency-Key`` derived
from the job, and Resend answers a repeat of the same key and payload with the original result
instead of sending again. So timeouts and 5xx are plain ``TransientProviderError`` here, and the
worker's ordinary retry is the recovery path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from notifyhub.providers import (
    DEFAULT_RETRY_AFTER_S,
    EmailResult,
    PermanentProviderError,
    ProviderError,
    ProviderThrottled,
    TransientProviderError,
    parse_retry_after,
)
from notifyhub.providers.redact import mask_email, redact_text

logger = logging.getLogger(__name__)

PROVIDER = "resend"
DEFAULT_BASE_URL = "https://api.resend.com"
DEFAULT_TIMEOUT_S = 10.0
#: Resend rejects longer keys with 400 invalid_idempotency_key.
MAX_IDEMPOTENCY_KEY_LEN = 256


@dataclass(frozen=True, slots=True)
class EmailMessage:
    """One email as the handlers build it; ``headers`` carries List-Unsubscribe and friends."""

    from_: str
    to: Sequence[str]
    subject: str
    html: str | None = None
    text: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    reply_to: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.to, str):
            # A bare string would otherwise be sent as a list of characters.
            object.__setattr__(self, "to", (self.to,))
        if not self.to:
            raise ValueError("an email needs at least one recipient")
        if self.html is None and self.text is None:
            raise ValueError("an email needs an html or a text body")

    def payload(self) -> dict[str, Any]:
        """The JSON body of ``POST /emails``."""
        body: dict[str, Any] = {"from": self.from_, "to": list(self.to), "subject": self.subject}
        if self.html is not None:
            body["html"] = self.html
        if self.text is not None:
            body["text"] = self.text
        if self.headers:
            body["headers"] = dict(self.headers)
        if self.reply_to is not None:
            body["reply_to"] = self.reply_to
        if self.tags:
            body["tags"] = [{"name": k, "value": v} for k, v in self.tags.items()]
        return body


def classify_email_error(
    status: int, body: Mapping[str, Any], retry_after: str | None, *, now_s: float | None = None
) -> ProviderError:
    """Maps an error answer from Resend to the outcome the caller must act on.

    A 409 ``invalid_idempotent_request`` means the same key came back with a different payload:
    the job's content changed between attempts, which no retry fixes. A 409 for a request still
    in progress under the same key is only a race with our own earlier attempt.
    """
    name = str(body.get("name") or f"http_{status}")
    message = redact_text(str(body.get("message") or ""))
    if status == 429:
        delay = parse_retry_after(retry_after, default_s=DEFAULT_RETRY_AFTER_S, now_s=now_s)
        return ProviderThrottled(delay, provider=PROVIDER, status=status)
    if status == 409 and name == "concurrent_idempotent_requests":
        return TransientProviderError(
            f"resend is still processing an earlier attempt with this key: {message}",
            provider=PROVIDER,
        )
    if status == 409:
        return PermanentProviderError(
            name,
            "the Idempotency-Key was already used with a different payload; the email changed "
            f"between attempts ({message})",
            provider=PROVIDER,
            status=status,
        )
    if 400 <= status < 500:
        return PermanentProviderError(name, message, provider=PROVIDER, status=status)
    return TransientProviderError(f"HTTP {status} {name}: {message}", provider=PROVIDER)


class ResendEmail:
    """Sends email through Resend's ``POST /emails`` over one reused aiohttp session.

    The runtime builds one per process from settings (``RESEND_API_KEY``,
    ``NOTIFYHUB_EMAIL_BASE_URL``) and closes it at shutdown. The session is opened on first use,
    inside the running event loop.
    """

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"Authorization": f"Bearer {self._api_key}"},
            )
        return self._session

    async def send(self, message: EmailMessage, *, idempotency_key: str) -> EmailResult:
        """Sends one email; returns its id or raises a ``ProviderError`` subclass.

        Pass the same ``idempotency_key`` on every attempt of the same job and recipient: that
        is what makes a retry after a timeout or 5xx harmless.
        """
        if not idempotency_key or len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LEN:
            raise ValueError(f"idempotency_key must be 1..{MAX_IDEMPOTENCY_KEY_LEN} characters")
        recipients = ",".join(mask_email(addr) for addr in message.to)
        session = self._ensure_session()
        try:
            async with session.post(
                f"{self.base_url}/emails",
                data=orjson.dumps(message.payload()),
                headers={"Content-Type": "application/json", "Idempotency-Key": idempotency_key},
            ) as response:
                status = response.status
                raw = await response.read()
                retry_after = response.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError) as exc:
            error: ProviderError = TransientProviderError(
                f"resend request failed ({type(exc).__name__})", provider=PROVIDER
            )
            logger.warning(
                "email failed to=%s outcome=%s: %s", recipients, type(error).__name__, error
            )
            raise error from None
        body = _json_object(raw)
        if 200 <= status < 300 and isinstance(body.get("id"), str):
            logger.info("email accepted to=%s id=%s", recipients, body["id"])
            return EmailResult(id=body["id"])
        if 200 <= status < 300:
            # Accepted but unreadable: the key makes a retry return the real answer.
            error = TransientProviderError(
                f"resend answered HTTP {status} without an id", provider=PROVIDER
            )
        else:
            error = classify_email_error(status, body, retry_after, now_s=self._clock())
        logger.warning("email failed to=%s outcome=%s: %s", recipients, type(error).__name__, error)
        raise error

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> ResendEmail:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
