"""The HTTP API's operator routes, over :mod:`qrunner.control` (the same operations as the
CLI and the dashboard)::

    GET    /api/workers                        live workers and the jobs each runs
    GET    /api/queues/{queue}/jobs            ?state=queued|running|delayed|scheduled
                                               &offset=&limit= (a page)
    GET    /api/jobs/{id}/history              every attempt of a job
    POST   /api/jobs/{id}/cancel               cancel a queued, delayed or running job
    POST   /api/queues/{queue}/pause           stop workers reading the queue
    POST   /api/queues/{queue}/resume
    POST   /api/queues/{queue}/purge           body {"confirm": "<queue>"}: remove waiting jobs
    DELETE /api/dead/{queue}/{dlq_id}          delete one dead-lettered job

They sit behind the endpoint's bearer token like every other API route. A mutating request
must say ``Content-Type: application/json`` (415 otherwise): an HTML form on another site can
post to a loopback endpoint without a token, but it cannot set that header without a CORS
preflight, which this endpoint never grants.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from redis.asyncio import Redis

from .control import Control, find_job
from .errors import ConfigError, EnqueueError, JobNotFound
from .names import InvalidJobOption, check_queue_name
from .queue import Client


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _bad(message: str, status: int = 400) -> web.Response:
    return _json({"error": message}, status=status)


class ControlRoutes:
    def __init__(self, redis: Redis, client: Client, status_ttl_s: int) -> None:
        self.client = client
        self.control = Control(redis, actor="api", status_ttl_s=status_ttl_s)

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/api/workers", self.workers)
        app.router.add_get("/api/queues/{queue}/jobs", self.jobs)
        app.router.add_get("/api/jobs/{id}/history", self.history)
        app.router.add_post("/api/jobs/{id}/cancel", self.cancel)
        app.router.add_post("/api/queues/{queue}/pause", self.pause)
        app.router.add_post("/api/queues/{queue}/resume", self.resume)
        app.router.add_post("/api/queues/{queue}/purge", self.purge)
        app.router.add_delete("/api/dead/{queue}/{dlq_id}", self.delete_dead)

    async def workers(self, request: web.Request) -> web.Response:
        return _json([w.to_dict() for w in await self.control.workers()])

    async def jobs(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            offset = int(q.get("offset", "0"))
            limit = int(q.get("limit", "50"))
        except ValueError:
            return _bad("offset and limit must be integers")
        try:
            page = await self.control.jobs(
                request.match_info["queue"], q.get("state", "queued"), offset=offset, limit=limit
            )
        except (ConfigError, EnqueueError) as exc:
            return _bad(str(exc))
        return _json(page.to_dict())

    async def history(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        try:
            queue = await find_job(self.control.redis, job_id, await self.client.known_queues())
        except JobNotFound as exc:
            return _bad(str(exc), 404)
        return _json([a.to_dict() for a in await self.control.history(queue, job_id)])

    async def cancel(self, request: web.Request) -> web.Response:
        if (refused := _needs_json(request)) is not None:
            return refused
        try:
            status = await self.client.status(request.match_info["id"])
        except JobNotFound as exc:
            return _bad(str(exc), 404)
        state = await self.control.cancel(status.queue, status.id, status.state)
        code = 409 if state == status.state else 200
        return _json({"id": status.id, "state": state}, status=code)

    async def pause(self, request: web.Request) -> web.Response:
        return await self._queue_action(request, self.control.pause, "paused")

    async def resume(self, request: web.Request) -> web.Response:
        return await self._queue_action(request, self.control.resume, "resumed")

    async def _queue_action(self, request: web.Request, act: Any, word: str) -> web.Response:
        if (refused := _needs_json(request)) is not None:
            return refused
        queue = request.match_info["queue"]
        try:
            check_queue_name(queue)
        except InvalidJobOption as exc:
            return _bad(str(exc))
        changed = await act(queue)
        return _json({"queue": queue, "state": word, "changed": changed})

    async def purge(self, request: web.Request) -> web.Response:
        if (refused := _needs_json(request)) is not None:
            return refused
        queue = request.match_info["queue"]
        try:
            body = await request.json(loads=orjson.loads)
        except ValueError:
            return _bad('body must be JSON: {"confirm": "<queue>"}')
        if not isinstance(body, dict) or body.get("confirm") != queue:
            return _bad(
                f'purging removes every waiting job of {queue}: send {{"confirm": "{queue}"}}'
            )
        try:
            check_queue_name(queue)
        except InvalidJobOption as exc:
            return _bad(str(exc))
        return _json({"queue": queue, "purged": await self.control.purge(queue)})

    async def delete_dead(self, request: web.Request) -> web.Response:
        queue, dlq_id = request.match_info["queue"], request.match_info["dlq_id"]
        try:
            check_queue_name(queue)
        except InvalidJobOption as exc:
            return _bad(str(exc))
        if not await self.control.delete_dead(queue, dlq_id):
            return _bad(f"no dead-lettered entry {dlq_id} in {queue}", 404)
        return _json({"queue": queue, "deleted": dlq_id})


def _needs_json(request: web.Request) -> web.Response | None:
    if request.content_type != "application/json":
        return _bad("send Content-Type: application/json", 415)
    return None
