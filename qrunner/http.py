"""The worker's HTTP endpoint: metrics, health, readiness and a small read-only API.

Routes::

    GET /metrics          Prometheus text (queue gauges refreshed from Redis per scrape)
    GET /healthz          the process is alive; always public, never touches a dependency
    GET /readyz           Redis answers PING and every readiness check passes, else 503
    GET /api/queues       depth, pending, delayed, dead and consumers per queue
    GET /api/jobs/{id}    one job's status record, 404 when unknown
    ...                   the operator routes of :mod:`qrunner.http_control`
    GET /dashboard/       the web dashboard (:mod:`qrunner.dashboard`), when mounted

The endpoint exposes job payload results and queue internals, so it binds 127.0.0.1 unless a
bearer token is configured (:func:`check_bind_address`). With a token, every route needs it
except ``/healthz`` (liveness probes carry no credentials) and routes whose pattern starts with
one of ``public_prefixes``: callers that authenticate on their own terms, such as a provider's
signed webhook or a link in a message. Publicness is judged on the *matched route's
pattern*, not the raw request path, so no spelling of a URL (``/hooks/../api/queues``, percent
escapes) can borrow a public prefix to reach a protected route.

The module only serves what :class:`~qrunner.metrics.Metrics` collects; it adds no hooks itself.

The server is public-facing when webhooks are mounted, so :class:`HttpLimits` bounds what one
client can hold: a request line or header field over its size limit is answered 414 or 431
(other unparsable requests 400), each as JSON and logged at DEBUG without a traceback; a
connection idle for ``keepalive_timeout_s`` (including one that never completes a request) is
closed; and past ``max_connections`` open connections a new one is answered 503 and closed.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.typedefs import Middleware
from aiohttp.web_request import BaseRequest
from prometheus_client import CONTENT_TYPE_LATEST
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .errors import BackendUnavailable, ConfigError, JobNotFound, KeyConflict, RedisFault
from .faults import classify
from .metrics import Metrics
from .queue import Client

if TYPE_CHECKING:
    from .dashboard import Dashboard, DashboardOptions

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Handed to ``setups`` through the application so added routes can reach the queue and Redis.
CLIENT_KEY = web.AppKey("qrunner_client", Client)
REDIS_KEY = web.AppKey("qrunner_redis", Redis)
#: Whether the app enforces a token; :func:`serve_http` refuses public binds without one.
TOKEN_REQUIRED_KEY = web.AppKey("qrunner_token_required", bool)

ALWAYS_PUBLIC = ("/healthz",)
LOOPBACK_NAMES = frozenset({"localhost"})

#: A dependency that hangs is as unready as one that refuses; a probe must answer in time.
READINESS_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one client may send or hold open. The defaults suit a public webhook endpoint."""

    #: Longest request target (URL); longer is answered 414.
    max_url_bytes: int = 8_192
    #: Longest header field, name and value together; longer is answered 431. Keep it
    #: different from ``max_url_bytes``: the parser reports only the limit it hit, and equal
    #: limits make every oversized request a 431.
    max_header_bytes: int = 16_384
    #: More header fields than this is answered 431.
    max_headers: int = 100
    #: A connection with no request in progress for this long is closed (also one that opened
    #: and never sent a whole request).
    keepalive_timeout_s: float = 75.0
    #: Open connections beyond this are answered 503 and closed at once.
    max_connections: int = 1_000
    #: Connections the kernel queues before they are accepted.
    backlog: int = 128

    def __post_init__(self) -> None:
        if min(self.max_url_bytes, self.max_header_bytes, self.max_headers) < 1:
            raise ConfigError("HTTP size limits must be positive")
        if self.keepalive_timeout_s <= 0 or self.max_connections < 1 or self.backlog < 1:
            raise ConfigError("HTTP keep-alive timeout, connection cap and backlog must be > 0")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _redis_where(redis: Redis) -> str:
    """host:port (or socket path) of the client's server; never the password in its URL."""
    kw = redis.connection_pool.connection_kwargs
    return str(kw.get("path") or f"{kw.get('host', '?')}:{kw.get('port', '?')}")


def check_bind_address(host: str, *, token_required: bool) -> None:
    """Refuse to listen beyond loopback without a token.

    Job results and queue contents are readable through the API, so an open port on a shared
    network would leak them. Raises :class:`ConfigError` naming the setting to change.
    """
    if token_required:
        return
    if host in LOOPBACK_NAMES:
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ConfigError(
        f"refusing to serve HTTP on {host or '(all interfaces)'!r} without a token; "
        "set QRUNNER_HTTP_TOKEN or bind 127.0.0.1"
    )


def _auth_middleware(
    token: bytes, public_prefixes: Sequence[str], dashboard: Dashboard | None = None
) -> Middleware:
    prefixes = (*ALWAYS_PUBLIC, *public_prefixes)

    def is_public(request: web.Request) -> bool:
        resource = request.match_info.route.resource
        # Unmatched requests (404/405) have no resource: they need the token like any other,
        # so probing without one reveals nothing about which routes exist.
        return resource is not None and resource.canonical.startswith(prefixes)

    @web.middleware
    async def bearer_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_public(request):
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # compare_digest on bytes: constant time, and safe for non-ASCII input.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
            # The dashboard's routes also take its signed session cookie; a browser without
            # one gets the dashboard's login form instead of a JSON 401.
            resource = request.match_info.route.resource
            if dashboard is not None and resource is not None:
                if resource.canonical.startswith(f"{dashboard.prefix}/"):
                    if dashboard.is_public(request) or dashboard.accepts(request):
                        return await handler(request)
                    return dashboard.refuse(request)
            response = _json({"error": "missing or invalid bearer token"}, status=401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="qrunner"'
            return response
        return await handler(request)

    return bearer_token


@web.middleware
async def _backend_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Redis down is a 503 with host:port, not a 500 with a traceback; so is a Redis fault a
    route left as it was (busy, out of memory), and a key of another type under a queue's name
    (:class:`~qrunner.errors.KeyConflict`) is a 409 naming the keys to check."""
    try:
        return await handler(request)
    except BackendUnavailable as exc:
        return _json({"error": str(exc)}, status=503)
    except (RedisFault, RedisError) as exc:
        fault = classify(exc)
        if fault is None:
            raise
        return _json({"error": str(fault)}, status=409 if isinstance(fault, KeyConflict) else 503)


class _Routes:
    """The built-in handlers, sharing the objects :func:`build_app` was given."""

    def __init__(
        self, client: Client, metrics: Metrics, redis: Redis, readiness: Sequence[ReadinessCheck]
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.redis = redis
        self.readiness = list(readiness)

    async def metrics_text(self, request: web.Request) -> web.Response:
        await self.metrics.refresh(self.client)
        body = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        # The Redis ping bounds its own wait so that a timeout still names host:port.
        checks: list[tuple[str, ReadinessCheck, float | None]] = [("redis", self._ping_redis, None)]
        for index, check in enumerate(self.readiness):
            name = getattr(check, "__name__", f"check_{index}")
            checks.append((name, check, READINESS_TIMEOUT_S))
        errors = await asyncio.gather(*(_run_check(check, t) for _, check, t in checks))
        failed = [
            {"dependency": name, "error": error}
            for (name, _, _), error in zip(checks, errors, strict=True)
            if error is not None
        ]
        if failed:
            reasons = "; ".join(f"{f['dependency']}: {f['error']}" for f in failed)
            log.warning("not ready: %s", reasons)
            return _json({"status": "unavailable", "failed": failed}, status=503)
        return _json({"status": "ready", "checked": [name for name, _, _ in checks]})

    async def _ping_redis(self) -> None:
        where = _redis_where(self.redis)
        try:
            async with asyncio.timeout(READINESS_TIMEOUT_S):
                await self.redis.ping()
        except TimeoutError as exc:
            raise BackendUnavailable(
                f"Redis at {where} did not answer within {READINESS_TIMEOUT_S:g}s"
            ) from exc
        except Exception as exc:  # any failure means "not ready"; the reason says where
            reason = f"Redis at {where} is unreachable: {type(exc).__name__}"
            raise BackendUnavailable(reason) from exc

    async def queues(self, request: web.Request) -> web.Response:
        return _json([s.to_dict() for s in await self.client.stats()])

    async def job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        try:
            status = await self.client.status(job_id)
        except JobNotFound as exc:
            return _json({"error": str(exc)}, status=404)
        return _json(status.to_dict())


async def _run_check(check: ReadinessCheck, timeout_s: float | None) -> str | None:
    """None when the check passed, else a reason fit to publish.

    Only :class:`BackendUnavailable` messages are shown verbatim (by contract they carry host and
    port, never credentials); any other exception is reduced to its type, because driver errors
    may quote connection strings.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await check()
    except BackendUnavailable as exc:
        return str(exc)
    except TimeoutError:
        return f"no answer within {timeout_s:g}s"
    except Exception as exc:  # a failed check is a 503, not a crashed probe
        return type(exc).__name__
    return None


def build_app(
    *,
    client: Client,
    metrics: Metrics,
    redis: Redis,
    token: str | None,
    readiness: Sequence[ReadinessCheck] = (),
    setups: Sequence[Callable[[web.Application], None]] = (),
    public_prefixes: Sequence[str] = (),
    dashboard: DashboardOptions | None = None,
) -> web.Application:
    """The endpoint's application.

    ``readiness`` checks run on every ``/readyz`` next to a Redis PING; each raises to report
    its dependency down (raise :class:`BackendUnavailable` with host:port to have the reason
    shown) and is named in the answer by its ``__name__``. ``setups`` add routes of their own
    (webhooks, unsubscribe links); routes under ``public_prefixes`` skip the token check and
    must authenticate requests themselves. An empty ``token`` counts as none: otherwise the
    header ``Bearer `` alone would pass. ``dashboard`` serves :mod:`qrunner.dashboard` under its
    prefix, which also accepts the dashboard's session cookie.
    """
    board = None
    if dashboard is not None:
        from .dashboard import Dashboard

        board = Dashboard(
            redis=redis,
            client=client,
            token=token,
            status_ttl_s=client.status_ttl_ms // 1000,
            options=dashboard,
            metrics=metrics,
        )
    middlewares: list[Middleware] = []
    if token:
        middlewares.append(_auth_middleware(token.encode(), public_prefixes, board))
    middlewares.append(_backend_errors)
    app = web.Application(middlewares=middlewares)
    app[CLIENT_KEY] = client
    app[REDIS_KEY] = redis
    app[TOKEN_REQUIRED_KEY] = bool(token)
    routes = _Routes(client, metrics, redis, readiness)
    app.router.add_get("/metrics", routes.metrics_text)
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/readyz", routes.readyz)
    app.router.add_get("/api/queues", routes.queues)
    app.router.add_get("/api/jobs/{id}", routes.job)
    from .http_control import ControlRoutes

    ControlRoutes(redis, client, client.status_ttl_ms // 1000).add_to(app)
    for setup in setups:
        setup(app)
    if board is not None:
        board.attach(app)
    return app


def _client_error(exc: HttpProcessingError, limits: HttpLimits) -> tuple[int, str]:
    """Status and message for a request the parser refused."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == limits.max_url_bytes and limits.max_url_bytes != limits.max_header_bytes:
            return 414, f"request URL longer than {limits.max_url_bytes} bytes"
        return 431, f"request header field longer than {limits.max_header_bytes} bytes"
    if "too many headers" in exc.message.lower():
        return 431, f"more than {limits.max_headers} request header fields"
    return 400, "malformed HTTP request"


class _NoAccessLog(AbstractAccessLogger):
    """No access log: a scrape every few seconds would drown the job log lines."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        return None

    @property
    def enabled(self) -> bool:
        return False


class _Handler(web.RequestHandler):
    """aiohttp's connection handler with :class:`HttpLimits`, answering requests the parser
    refused with a JSON 4xx and a DEBUG line instead of a 400 and an ERROR traceback."""

    def __init__(
        self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, limits: HttpLimits
    ) -> None:
        super().__init__(
            manager,
            loop=loop,
            keepalive_timeout=limits.keepalive_timeout_s,
            max_line_size=limits.max_url_bytes,
            max_field_size=limits.max_header_bytes,
            max_headers=limits.max_headers,
            access_log_class=_NoAccessLog,
        )
        self.limits = limits

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        code, text = _client_error(exc, self.limits)
        log.debug("refused a request from %s with %d: %s", request.remote, code, text)
        response = _json({"error": text}, status=code)
        response.force_close()
        return response


_BUSY_BODY = orjson.dumps({"error": "too many connections"})
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
) % (len(_BUSY_BODY), _BUSY_BODY)


class _Busy(asyncio.Protocol):
    """Answers a connection over the cap with 503 and closes it without reading the request."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        transport.close()


class _Protocols:
    """The listening socket's protocol factory: a limited handler per connection, or
    :class:`_Busy` once ``max_connections`` are open (warned about at most once a minute)."""

    def __init__(self, server: web.Server, limits: HttpLimits) -> None:
        self.server = server
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.refused = 0
        self._warned_at = float("-inf")

    def __call__(self) -> asyncio.Protocol:
        if len(self.server.connections) >= self.limits.max_connections:
            self.refused += 1
            now = time.monotonic()
            if now - self._warned_at >= 60:
                self._warned_at = now
                log.warning(
                    "http endpoint at its cap of %d connections: refusing new ones with 503 "
                    "(%d refused so far)",
                    self.limits.max_connections,
                    self.refused,
                )
            return _Busy()
        return _Handler(self.server, loop=self.loop, limits=self.limits)


async def serve_http(
    app: web.Application,
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    on_bound: Callable[[list[tuple[str, int]]], None] | None = None,
    limits: HttpLimits | None = None,
) -> None:
    """Serve ``app`` until ``stop`` is set or the task is cancelled: a worker ``extra_loops`` loop.

    ``port`` 0 picks a free port; ``on_bound`` receives the bound (host, port) pairs so a caller
    (a test, a supervisor) can learn it without racing for a port itself. ``limits`` default to
    :class:`HttpLimits`' defaults.
    """
    check_bind_address(host, token_required=app.get(TOKEN_REQUIRED_KEY, False))
    limits = limits or HttpLimits()
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    listener: asyncio.Server | None = None
    try:
        assert runner.server is not None
        listener = await asyncio.get_running_loop().create_server(
            _Protocols(runner.server, limits), host or None, port, backlog=limits.backlog
        )
        bound = [
            (str(name[0]), int(name[1])) for name in (s.getsockname() for s in listener.sockets)
        ]
        log.info("http endpoint listening on %s", ", ".join(f"{h}:{p}" for h, p in bound))
        if on_bound is not None:
            on_bound(bound)
        await stop.wait()
    finally:
        if listener is not None:
            listener.close()  # stop accepting; the runner closes the open connections
        await runner.cleanup()
        if listener is not None:
            await listener.wait_closed()
        log.info("http endpoint stopped")
