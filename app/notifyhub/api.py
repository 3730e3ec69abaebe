"""The app's job API (seed 003), for backends that enqueue over HTTP instead of importing the
app, each route guarded by a token of its own scope (one secret per purpose)::

    POST /api/v1/jobs                        scope enqueue: {"task", "payload", "delay_s"?,
                                             "key"?} -> 202 {"id"}
    GET  /api/v1/jobs/{id}                   scope read: the job's status -> 200, 404
    POST /api/v1/notifications/test/email    scope admin: {"to"} -> 202 {"id"}: a test email
                                             to a bare address, through the usual checks

Tokens: ``NOTIFYHUB_API_ENQUEUE_TOKEN``, ``NOTIFYHUB_API_READ_TOKEN``,
``NOTIFYHUB_API_ADMIN_TOKEN`` (each at least 32 characters, all different; an unset one turns
its routes off with 503). A token opens its own scope only. The routes sit under a public
prefix of the worker's endpoint (they do not take the operator's token) and check theirs with
a constant-time comparison; every refusal is a JSON 4xx.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from aiohttp import web

from qrunner import EnqueueError, JobNotFound, Registry, UnknownTask

from .settings import reveal
from .state import HandlerState

registry = Registry()
SCOPES = ("enqueue", "read", "admin")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _authorised(request: web.Request, state: HandlerState, scope: str) -> web.Response | None:
    expected = reveal(getattr(state.settings, f"api_{scope}_token"))
    if expected is None:
        return _json({"error": f"the {scope} API is not configured"}, 503)
    kind, _, given = request.headers.get("Authorization", "").partition(" ")
    if kind != "Bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
        return _json({"error": f"needs a bearer token with the {scope} scope"}, 401)
    return None


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    if request.content_type != "application/json":
        return _json({"error": "send Content-Type: application/json"}, 415)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _json({"error": "body is not valid JSON"}, 400)
    if not isinstance(body, dict):
        return _json({"error": "body must be a JSON object"}, 400)
    return body


@registry.http_setup(public_prefixes=["/api/v1/"])
def routes(app: web.Application, state: HandlerState) -> None:
    async def enqueue(request: web.Request) -> web.Response:
        if (refused := _authorised(request, state, "enqueue")) is not None:
            return refused
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        unknown = sorted(set(body) - {"task", "payload", "delay_s", "key"})
        if unknown:
            return _json({"error": f"unknown field {unknown[0]!r}"}, 400)
        task, payload = body.get("task"), body.get("payload", {})
        if not isinstance(task, str) or not isinstance(payload, dict):
            return _json({"error": "task must be a string and payload an object"}, 400)
        try:
            job_id = await state.client.enqueue(
                task, payload, delay_s=body.get("delay_s"), key=body.get("key")
            )
        except UnknownTask as exc:
            return _json({"error": str(exc)}, 404)
        except EnqueueError as exc:
            return _json({"error": str(exc)}, 422)
        return _json({"id": job_id}, 202)

    async def status(request: web.Request) -> web.Response:
        if (refused := _authorised(request, state, "read")) is not None:
            return refused
        try:
            found = await state.client.status(request.match_info["id"])
        except JobNotFound as exc:
            return _json({"error": str(exc)}, 404)
        return _json(found.to_dict())

    async def test_email(request: web.Request) -> web.Response:
        if (refused := _authorised(request, state, "admin")) is not None:
            return refused
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        to = body.get("to")
        if not isinstance(to, str):
            return _json({"error": "to: give the address to send the test email to"}, 400)
        try:
            job_id = await state.client.enqueue(
                "send_email",
                {
                    "to": to,
                    "subject": "Test email",
                    "body": "This is a test email sent from the admin API.",
                    # Asked for by an administrator for this address: a service message, so
                    # no marketing opt-in applies (suppressions still do).
                    "category": "required",
                },
            )
        except EnqueueError as exc:
            return _json({"error": str(exc)}, 422)
        return _json({"id": job_id}, 202)

    app.router.add_post("/api/v1/jobs", enqueue)
    app.router.add_get("/api/v1/jobs/{id}", status)
    app.router.add_post("/api/v1/notifications/test/email", test_email)
