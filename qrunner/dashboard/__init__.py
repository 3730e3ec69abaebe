"""A web dashboard over :mod:`qrunner.control`: queues, workers, jobs, dead letters, schedules
and rate limits, server-rendered (jinja2, autoescaped), with no script and nothing fetched from
elsewhere, so it works offline.

Mounted under a prefix (``/dashboard`` by default) as an aiohttp sub-application, either by the
worker's endpoint (:func:`qrunner.http.build_app` with ``dashboard=``), by ``qrunner dashboard``
standalone, or by :func:`mount` into any aiohttp application. Routes, under the prefix::

    GET  /                                   queues: depth, pending, delayed, dead, rates
    POST /queues/{queue}/pause|resume
    GET  /workers                            live workers and the jobs each runs
    GET  /jobs                               ?id= (search) or ?queue=&state=&offset= (a page)
    GET  /jobs/{id}                          status, progress, payload (hidden), attempts
    POST /jobs/{id}/reveal                   the same page with payload values shown (masked)
    POST /jobs/{id}/cancel
    GET  /dead                               ?queue=&task=
    GET  /dead/{queue}/{dlq_id}
    POST /dead/{queue}/{dlq_id}/replay|delete
    GET  /schedules
    POST /schedules/{name}/fire|pause|resume
    GET  /limits
    POST /limits/{task}/set|reset
    GET  /login, POST /login, POST /logout
    GET  /static/...

Authentication (see :mod:`.session`): with a token, an API client sends ``Authorization:
Bearer``; a browser posts the token to the login form once and gets a signed, HttpOnly,
SameSite=Strict session cookie. Without a token the dashboard is open, as the endpoint is then
bound to loopback. Every POST, the login included, must carry the CSRF field (403 otherwise).
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from redis.asyncio import Redis

from ..control import Control
from ..deadletter import DeadLetters
from ..queue import Client
from . import session
from .reads import Rates

if TYPE_CHECKING:
    from ..metrics import Metrics
    from ..task import Registry


DEFAULT_PREFIX = "/dashboard"
SESSION_TTL_S = 12 * 3600
_HERE = Path(__file__).parent


@dataclass(frozen=True, slots=True)
class DashboardOptions:
    """What the endpoint needs beyond its own objects to serve the dashboard."""

    #: The application's tasks (rate limits, schedule tasks, enqueueing a fired schedule).
    registry: Registry | None = None
    #: The cron file; ``None``: the registry's own, if any.
    schedules: Path | None = None
    prefix: str = DEFAULT_PREFIX
    session_ttl_s: int = SESSION_TTL_S
    #: Signs sessions and CSRF tokens; default derived from the token.
    signing_key: bytes | None = None


class Dashboard:
    """The dashboard's shared state and its access rules; :meth:`attach` adds its routes."""

    def __init__(
        self,
        *,
        redis: Redis,
        client: Client,
        token: str | None,
        status_ttl_s: int,
        options: DashboardOptions = DashboardOptions(),
        metrics: Metrics | None = None,
    ) -> None:
        prefix = "/" + options.prefix.strip("/")
        if prefix == "/":
            raise ValueError("the dashboard needs a prefix such as /dashboard")
        self.prefix = prefix
        self.redis = redis
        self.client = client
        self.token = token or None
        self.registry = options.registry
        schedules = options.schedules
        if schedules is None and options.registry is not None:
            schedules = options.registry.schedules
        self.schedules = schedules
        self.metrics = metrics
        self.session_ttl_s = options.session_ttl_s
        self.key = options.signing_key or session.derive_key(self.token)
        self.control = Control(redis, actor="dashboard", status_ttl_s=status_ttl_s)
        self.dead = DeadLetters(redis, status_ttl_s)
        self.rates = Rates()
        import jinja2

        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        #: Paths under the prefix reachable without a session: the login form and the CSS.
        self.public = (f"{prefix}/login", f"{prefix}/static")

    # -- access --------------------------------------------------------------------------

    def is_public(self, request: web.Request) -> bool:
        resource = request.match_info.route.resource
        return resource is not None and resource.canonical.startswith(self.public)

    def accepts(self, request: web.Request) -> bool:
        """A request may see the dashboard: no token configured, the bearer token, or a valid
        session cookie."""
        if self.token is None:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and session.token_matches(self.token, given.strip()):
            return True
        cookie = request.cookies.get(session.SESSION_COOKIE)
        return session.session_valid(self.key, cookie, int(time.time()))

    def refuse(self, request: web.Request) -> web.StreamResponse:
        """401: the login form for a browser, JSON for anything else."""
        if "text/html" in request.headers.get("Accept", ""):
            from .routes import login_page

            return login_page(self, request, status=401)
        response = web.Response(
            body=orjson.dumps({"error": "missing or invalid bearer token"}),
            status=401,
            content_type="application/json",
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="qrunner"'
        return response

    def attach(self, app: web.Application) -> web.Application:
        """Add the dashboard to ``app`` under the prefix; returns the sub-application."""
        from .routes import build_subapp

        sub = build_subapp(self)
        app.add_subapp(self.prefix, sub)
        return sub


def available() -> bool:
    """Whether the dashboard can run here (it renders with jinja2)."""
    return importlib.util.find_spec("jinja2") is not None


def mount(
    app: web.Application,
    *,
    redis: Redis,
    client: Client,
    token: str | None,
    status_ttl_s: int = 7 * 86400,
    registry: Registry | None = None,
    schedules: Path | None = None,
    metrics: Metrics | None = None,
    prefix: str = DEFAULT_PREFIX,
    session_ttl_s: int = SESSION_TTL_S,
    signing_key: bytes | None = None,
) -> Dashboard:
    """Serve the dashboard from any aiohttp application under ``prefix``. It checks access on
    its own (bearer token or session cookie), so the host app needs no auth of its own for it;
    without a token it is open, so bind such an app to loopback."""
    board = Dashboard(
        redis=redis,
        client=client,
        token=token,
        status_ttl_s=status_ttl_s,
        metrics=metrics,
        options=DashboardOptions(
            registry=registry,
            schedules=schedules,
            prefix=prefix,
            session_ttl_s=session_ttl_s,
            signing_key=signing_key,
        ),
    )
    board.attach(app)
    return board


__all__ = ["DEFAULT_PREFIX", "Dashboard", "DashboardOptions", "available", "mount"]
