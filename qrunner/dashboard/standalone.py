"""``qrunner dashboard``: the dashboard alone, for operators who want it apart from any worker.

It loads the application's registry (for rate limits and schedules) but runs no lifespans, no
worker and no cron loop; the worker's own metrics (finished/s, p95 wait) are not shown. With
no token it binds loopback only, like the endpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from ..http import TOKEN_REQUIRED_KEY, check_bind_address, serve_http
from ..queue import Client
from ..settings import Settings
from . import DEFAULT_PREFIX, mount


async def serve_dashboard(
    app_name: str,
    port: int,
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    on_bound: Callable[[list[tuple[str, int]]], None] | None = None,
) -> int:
    from ..runtime import connect_redis, load_registry, redis_url
    from ..service import app_modules, install_signal_handlers

    registry = load_registry(app_modules(app_name, settings)) if app_name or settings.app else None
    token = settings.http_token_value
    check_bind_address(settings.http_host, token_required=bool(token))
    if stop is None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
    redis = await connect_redis(redis_url(settings))
    try:
        client = Client(redis, registry, status_ttl_s=settings.status_ttl_s)
        app = web.Application()
        app[TOKEN_REQUIRED_KEY] = bool(token)
        mount(
            app,
            redis=redis,
            client=client,
            token=token,
            status_ttl_s=settings.status_ttl_s,
            registry=registry,
        )

        async def home(request: web.Request) -> web.Response:
            return web.Response(status=302, headers={"Location": f"{DEFAULT_PREFIX}/"})

        app.router.add_get("/", home)
        await serve_http(app, settings.http_host, port, stop, on_bound=on_bound)
    finally:
        await redis.aclose()
    return 0
