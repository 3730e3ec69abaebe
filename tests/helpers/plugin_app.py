"""An application that uses every plug-in point of a registry: a route (public and not), a
readiness check, a command, a queue order and weights, and its own cron file. Used by
tests/test_app_plugins.py as ``--app tests.helpers.plugin_app``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from qrunner import ConfigError, Context, LifespanArgs, Registry, Settings

SCHEDULES = Path(__file__).with_name("plugin_schedules.yaml")

registry = Registry(queue_order=["urgent", "bulk"], weights={"urgent": 5}, schedules=SCHEDULES)


@registry.task(queue="bulk")
async def tidy(ctx: Context[dict[str, Any]], payload: dict[str, Any]) -> str:
    return f"tidied by {ctx.state['name']}"


@registry.task(queue="urgent")
async def page(ctx: Context[dict[str, Any]], payload: dict[str, Any]) -> str:
    return "paged"


@registry.lifespan
async def lifespan(args: LifespanArgs) -> AsyncIterator[dict[str, Any]]:
    yield {"name": "plugin-app", "ready": os.environ.get("PLUGIN_APP_READY", "1") == "1"}


@registry.http_setup(public_prefixes=["/hooks/"])
def routes(app: web.Application, state: dict[str, Any]) -> None:
    async def hook(request: web.Request) -> web.Response:
        return web.json_response({"hook": state["name"]})

    async def private(request: web.Request) -> web.Response:
        return web.json_response({"private": state["name"]})

    app.router.add_post("/hooks/ping", hook)
    app.router.add_get("/plugin/private", private)


@registry.readiness("plugin-backend")
async def backend_ready(state: dict[str, Any]) -> None:
    if not state["ready"]:
        raise ConnectionError("plugin backend is down")


@registry.command("hello", help="greets")
def hello(args: list[str], settings: Settings) -> int:
    if args[:1] == ["--fail"]:
        raise ConfigError("hello: --fail given")
    print("hello " + " ".join(args))
    return 0
