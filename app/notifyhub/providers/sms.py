"""SMS through Twilio's official SDK, with every outcome sorted into the provider outcome model.

The SDK does the wire format (form encoding, auth, error parsing); this module decides what each
outcome means for a retry. The one distinction the SDK cannot make is whether a failed request
had already left the process: a refused connection is safe to retry, a timeout after the request
was written may have sent a text. An aiohttp trace hook records the moment the request headers
are written, and that moment splits ``TransientProviderError`` from ``MaybeSent``.
"""

from __future__ import annotations

import base64
import contextvars
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import SimpleNamespace, TracebackType
from typing import Any

import aiohttp
from twilio.base.exceptions import (  # type: ignore[import-untyped]
    TwilioException,
    TwilioRestException,
    TwilioServiceException,
)
from twilio.http.async_http_client import AsyncTwilioHttpClient  # type: ignore[import-untyped]
from twilio.rest import Client  # type: ignore[import-untyped]

from notifyhub.providers import (
    DEFAULT_RETRY_AFTER_S,
    MaybeSent,
    PermanentProviderError,
    ProviderError,
    ProviderThrottled,
    SmsResult,
    TransientProviderError,
    parse_retry_after,
)
from notifyhub.providers.redact import mask_phone, redact_text

logger = logging.getLogger(__name__)

PROVIDER = "twilio"
DEFAULT_BASE_URL = "https://api.twilio.com"
DEFAULT_TIMEOUT_S = 10.0

# GSM 03.38 default alphabet (without the escape character) and its extension table, whose
# characters take two septets (escape + character).
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")


def segments(body: str) -> int:
    """How many SMS segments ``body`` is billed as.

    GSM-7 text fits 160 septets in one SMS, 153 per part once split (the rest is the
    concatenation header); any other character forces UCS-2, 70 / 67 UTF-16 units. An escape
    pair or a surrogate pair is never split across parts, which can add a segment at a boundary.
    """
    if all(ch in _GSM7_BASIC or ch in _GSM7_EXTENDED for ch in body):
        units = [2 if ch in _GSM7_EXTENDED else 1 for ch in body]
        single, per_part = 160, 153
    else:
        units = [2 if ord(ch) > 0xFFFF else 1 for ch in body]
        single, per_part = 70, 67
    if sum(units) <= single:
        return 1
    parts, used = 1, 0
    for width in units:
        if used + width > per_part:
            parts += 1
            used = 0
        used += width
    return parts


def classify_twilio_error(
    status: int,
    code: int | None,
    message: str,
    retry_after: str | None,
    *,
    now_s: float | None = None,
) -> ProviderError:
    """Maps an error answer from Twilio to the outcome the caller must act on.

    429 and 503 mean "not now" and nothing was sent. Other 4xx are refusals of this message
    (21211 invalid number, 21610 opted out, ...). Any other 5xx arrived after Twilio had the
    request in hand, so the text may be on its way: ``MaybeSent``, never an automatic resend.
    """
    if status in (429, 503):
        delay = parse_retry_after(retry_after, default_s=DEFAULT_RETRY_AFTER_S, now_s=now_s)
        return ProviderThrottled(delay, provider=PROVIDER, status=status)
    if 400 <= status < 500:
        return PermanentProviderError(
            code if code is not None else status,
            redact_text(message),
            provider=PROVIDER,
            status=status,
        )
    return MaybeSent(f"HTTP {status} from Twilio: {redact_text(message)}", provider=PROVIDER)


@dataclass(slots=True)
class _Attempt:
    """What the transport saw during one ``send``; the SDK's exceptions do not carry it."""

    request_sent: bool = False
    retry_after: str | None = None


_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar(
    "qrunner_twilio_attempt", default=None
)


async def _on_request_headers_sent(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: Any
) -> None:
    attempt = _ATTEMPT.get()
    if attempt is not None:
        attempt.request_sent = True


class _TwilioTransport:
    """The HTTP client handed to the SDK: ``AsyncTwilioHttpClient`` with three corrections.

    - The SDK passes credentials as aiohttp's ``auth=`` argument, deprecated in aiohttp 3.14 (a
      warning on every send); this sends the same Basic credentials as a header instead.
    - ``AsyncTwilioHttpClient`` ignores its own ``timeout`` unless each call passes one, which
      would let a stuck request hang a worker forever; the default is applied here.
    - Each response's ``Retry-After`` is kept for the classification of a 429/503.
    """

    is_async = True

    def __init__(self, timeout_s: float) -> None:
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_on_request_headers_sent)
        # max_retries stays None: the SDK's retry wrapper would resend SMS on its own.
        self._inner = AsyncTwilioHttpClient(
            pool_connections=True, trace_configs=[trace], timeout=timeout_s
        )
        self.timeout = timeout_s

    async def request(
        self,
        method: str,
        url: str,
        params: Mapping[str, object] | None = None,
        data: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the SDK's HttpClient signature
        allow_redirects: bool = False,
    ) -> Any:
        all_headers = dict(headers or {})
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            all_headers["Authorization"] = f"Basic {token}"
        response = await self._inner.request(
            method,
            url,
            params=params,
            data=data,
            headers=all_headers,
            auth=None,
            timeout=timeout if timeout is not None else self.timeout,
            allow_redirects=allow_redirects,
        )
        attempt = _ATTEMPT.get()
        if attempt is not None:
            attempt.retry_after = response.headers.get("Retry-After")
        return response

    async def close(self) -> None:
        await self._inner.close()


class TwilioSms:
    """Sends SMS through the Twilio SDK against ``base_url`` (Twilio itself or a stand-in).

    The runtime builds one per process from settings (``TWILIO_ACCOUNT_SID``,
    ``TWILIO_AUTH_TOKEN``, ``NOTIFYHUB_TWILIO_BASE_URL``) and closes it at shutdown. The HTTP
    session is opened on first use, inside the running event loop.
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._account_sid = account_sid
        self._auth_token = auth_token
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._clock = clock
        self._transport: _TwilioTransport | None = None
        self._client: Any = None

    def _ensure_client(self) -> Any:
        if self._client is None:
            self._transport = _TwilioTransport(self.timeout_s)
            client = Client(self._account_sid, self._auth_token, http_client=self._transport)
            # The configured base URL is final: TWILIO_EDGE / TWILIO_REGION in the process
            # environment would otherwise rewrite its host name.
            client.edge = None
            client.region = None
            client.api.base_url = self.base_url
            self._client = client
        return self._client

    async def send(
        self, to: str, body: str, *, from_: str, status_callback: str | None = None
    ) -> SmsResult:
        """Sends one SMS; returns its result or raises a ``ProviderError`` subclass.

        ``from_`` is a sender number, or a Messaging Service SID (``MG...``) to let Twilio pick
        the sender from its pool.
        """
        client = self._ensure_client()
        sender: dict[str, str] = (
            {"messaging_service_sid": from_} if from_.startswith("MG") else {"from_": from_}
        )
        extra: dict[str, str] = {"status_callback": status_callback} if status_callback else {}
        attempt = _Attempt()
        token = _ATTEMPT.set(attempt)
        try:
            message = await client.messages.create_async(to=to, body=body, **sender, **extra)
        except (TwilioRestException, TwilioServiceException) as exc:
            error = self._classify_rest(exc, attempt)
            self._log_failure(to, error)
            raise error from None
        except (TimeoutError, aiohttp.ClientError, TwilioException) as exc:
            error = self._classify_transport(exc, attempt)
            self._log_failure(to, error)
            raise error from None
        finally:
            _ATTEMPT.reset(token)
        result = _result_from(message, body)
        logger.info(
            "sms accepted to=%s sid=%s segments=%d", mask_phone(to), result.sid, result.segments
        )
        return result

    def _classify_rest(self, exc: Any, attempt: _Attempt) -> ProviderError:
        status = int(getattr(exc, "status", 0) or 0)
        code = getattr(exc, "code", None)
        if isinstance(exc, TwilioRestException):
            message = str(exc.msg)
        else:
            message = str(getattr(exc, "detail", None) or getattr(exc, "title", ""))
        return classify_twilio_error(
            status,
            int(code) if isinstance(code, int | str) and str(code).isdigit() else None,
            message,
            attempt.retry_after,
            now_s=self._clock(),
        )

    @staticmethod
    def _classify_transport(exc: BaseException, attempt: _Attempt) -> ProviderError:
        kind = type(exc).__name__
        if attempt.request_sent:
            return MaybeSent(f"{kind} after the request was sent", provider=PROVIDER)
        return TransientProviderError(
            f"twilio unreachable before the request was sent ({kind})", provider=PROVIDER
        )

    @staticmethod
    def _log_failure(to: str, error: ProviderError) -> None:
        logger.warning(
            "sms failed to=%s outcome=%s: %s", mask_phone(to), type(error).__name__, error
        )

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()
        self._transport = None
        self._client = None

    async def __aenter__(self) -> TwilioSms:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _result_from(message: Any, body: str) -> SmsResult:
    raw_segments = getattr(message, "num_segments", None)
    count = int(raw_segments) if raw_segments not in (None, "") else segments(body)
    raw_price = getattr(message, "price", None)
    price: Decimal | None
    try:
        price = Decimal(str(raw_price)) if raw_price not in (None, "") else None
    except InvalidOperation:
        price = None
    return SmsResult(
        sid=str(message.sid),
        status=str(message.status),
        segments=count,
        price=price,
        price_unit=getattr(message, "price_unit", None),
    )
