"""The dashboard's handlers and its guard (access, then CSRF on every POST). Actions answer
303 to the page that shows their effect, so reloading that page repeats nothing."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web
from markupsafe import Markup

from ..control import JOB_STATES, TERMINAL
from ..errors import ConfigError, EnqueueError, JobNotFound
from ..names import InvalidJobOption, check_queue_name
from . import session
from .reads import declared_limits, find_envelope, hide, masked_text, overview

if TYPE_CHECKING:
    from . import Dashboard

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PAGE_SIZE = 25
DEAD_LIMIT = 200
_SEED_KEY = web.RequestKey("qrunner_dashboard_seed", str)


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(ms: int | None) -> str:
    if not ms:
        return "-"
    return _seconds(max(0.0, time.time() - ms / 1000))


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def _seed(request: web.Request) -> tuple[str, bool]:
    """This browser's CSRF seed and whether it is new (and so must be set as a cookie)."""
    seed = request.cookies.get(session.CSRF_COOKIE, "")
    if len(seed) == 32 and all(c in "0123456789abcdef" for c in seed):
        return seed, False
    if _SEED_KEY in request:
        return request[_SEED_KEY], True
    request[_SEED_KEY] = session.new_seed()
    return request[_SEED_KEY], True


def render(
    board: Dashboard, request: web.Request, name: str, status: int = 200, **context: Any
) -> web.Response:
    seed, new = _seed(request)
    csrf = session.csrf_token(board.key, seed)
    field = Markup('<input type="hidden" name="{}" value="{}">').format(session.CSRF_FIELD, csrf)
    html = board.templates.get_template(name).render(
        base=board.prefix,
        csrf_field=session.CSRF_FIELD,
        csrf=csrf,
        csrf_input=lambda: field,
        auth=board.token is not None,
        when=_when,
        ago=_ago,
        seconds=_seconds,
        **context,
    )
    response = web.Response(text=html, status=status, content_type="text/html")
    if new:
        response.set_cookie(
            session.CSRF_COOKIE,
            seed,
            path=board.prefix,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
    return response


def login_page(
    board: Dashboard, request: web.Request, status: int = 200, error: str | None = None
) -> web.Response:
    target = request.path_qs if request.method == "GET" else f"{board.prefix}/"
    if target.startswith(f"{board.prefix}/login"):
        target = f"{board.prefix}/"
    return render(board, request, "login.html", status=status, error=error, next=target)


def _see(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _problem(board: Dashboard, request: web.Request, status: int, message: str) -> web.Response:
    return render(board, request, "problem.html", status=status, message=message)


def build_subapp(board: Dashboard) -> web.Application:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not board.is_public(request) and not board.accepts(request):
            return board.refuse(request)
        if request.method == "POST":
            form = await request.post()
            given = form.get(session.CSRF_FIELD)
            seed = request.cookies.get(session.CSRF_COOKIE)
            if not session.csrf_valid(board.key, seed, given if isinstance(given, str) else None):
                log.warning(
                    "dashboard: refused a POST to %s without a valid CSRF token", request.path
                )
                return _problem(board, request, 403, "Missing or invalid CSRF token.")
        response = await handler(request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
        return response

    sub = web.Application(middlewares=[guard])
    pages = Pages(board)
    r = sub.router
    r.add_get("/", pages.overview)
    r.add_post("/queues/{queue}/{action:pause|resume}", pages.queue_action)
    r.add_get("/workers", pages.workers)
    r.add_get("/jobs", pages.jobs)
    r.add_get("/jobs/{id}", pages.job)
    r.add_post("/jobs/{id}/reveal", pages.reveal)
    r.add_post("/jobs/{id}/cancel", pages.cancel)
    r.add_get("/dead", pages.dead)
    r.add_get("/dead/{queue}/{dlq_id}", pages.dead_one)
    r.add_post("/dead/{queue}/{dlq_id}/{action:replay|delete}", pages.dead_action)
    r.add_get("/schedules", pages.schedules)
    r.add_post("/schedules/{name}/{action:fire|pause|resume}", pages.schedule_action)
    r.add_get("/limits", pages.limits)
    r.add_post("/limits/{task}/{action:set|reset}", pages.limit_action)
    r.add_get("/login", pages.login_form)
    r.add_post("/login", pages.login)
    r.add_post("/logout", pages.logout)
    r.add_static("/static", Path(__file__).parent / "static")
    return sub


class Pages:
    def __init__(self, board: Dashboard) -> None:
        self.b = board

    # -- overview, workers ---------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.Response:
        b = self.b
        rows = await overview(b.client, await b.control.paused(), b.rates, b.metrics)
        return render(
            b, request, "overview.html", page="overview", rows=rows, in_worker=b.metrics is not None
        )

    async def queue_action(self, request: web.Request) -> web.Response:
        queue, action = request.match_info["queue"], request.match_info["action"]
        try:
            check_queue_name(queue)
        except InvalidJobOption as exc:
            return _problem(self.b, request, 400, str(exc))
        await (self.b.control.pause if action == "pause" else self.b.control.resume)(queue)
        return _see(f"{self.b.prefix}/")

    async def workers(self, request: web.Request) -> web.Response:
        return render(
            self.b, request, "workers.html", page="workers", workers=await self.b.control.workers()
        )

    # -- jobs ----------------------------------------------------------------------------------

    async def jobs(self, request: web.Request) -> web.Response:
        b, q = self.b, request.query
        wanted = q.get("id", "").strip()
        if wanted:
            return _see(f"{b.prefix}/jobs/{quote(wanted, safe='')}")
        queues = await b.client.known_queues()
        queue = q.get("queue") or (queues[0] if queues else "")
        state = q.get("state", "queued")
        page, error = None, None
        try:
            offset = max(0, int(q.get("offset", "0")))
            if queue:
                page = await b.control.jobs(queue, state, offset=offset, limit=PAGE_SIZE)
        except (ValueError, ConfigError, EnqueueError) as exc:
            error = str(exc)
        return render(
            b,
            request,
            "jobs.html",
            page="jobs",
            queues=queues,
            queue=queue,
            state=state,
            states=JOB_STATES,
            result=page,
            error=error,
            size=PAGE_SIZE,
            status=400 if error else 200,
        )

    async def job(self, request: web.Request, *, reveal: bool = False) -> web.Response:
        b = self.b
        job_id = request.match_info["id"]
        try:
            status = await b.client.status(job_id)
        except JobNotFound:
            return _problem(b, request, 404, f"No job {job_id} (or its record has expired).")
        history = await b.control.history(status.queue, job_id)
        envelope = await find_envelope(b.redis, status.queue, job_id, status.dlq_id)
        return render(
            b,
            request,
            "job.html",
            page="jobs",
            job=status,
            attempts=history,
            payload=None if envelope is None else hide(envelope.payload, reveal=reveal),
            errors=[] if envelope is None else envelope.errors,
            result=None if status.result is None else hide(status.result, reveal=reveal),
            meta=None if status.progress_meta is None else hide(status.progress_meta, reveal=True),
            reveal=reveal,
            can_cancel=status.state not in TERMINAL,
            mask=masked_text,
        )

    async def reveal(self, request: web.Request) -> web.Response:
        log.info("dashboard: payload of job %s shown", request.match_info["id"])
        return await self.job(request, reveal=True)

    async def cancel(self, request: web.Request) -> web.Response:
        b = self.b
        try:
            status = await b.client.status(request.match_info["id"])
        except JobNotFound as exc:
            return _problem(b, request, 404, str(exc))
        await b.control.cancel(status.queue, status.id, status.state)
        return _see(f"{b.prefix}/jobs/{status.id}")

    # -- dead letters -------------------------------------------------------------------------

    async def dead(self, request: web.Request) -> web.Response:
        b, q = self.b, request.query
        queues = await b.client.known_queues()
        queue, task = q.get("queue", ""), q.get("task", "").strip()
        chosen = [queue] if queue in queues else queues
        rows = await b.dead.list(chosen, task=task or None, limit=DEAD_LIMIT)
        return render(
            b,
            request,
            "dead.html",
            page="dead",
            rows=rows,
            queues=queues,
            queue=queue if queue in queues else "",
            task=task,
            limit=DEAD_LIMIT,
            mask=masked_text,
        )

    async def _dead_entry(self, request: web.Request) -> Any:
        queue, dlq_id = request.match_info["queue"], request.match_info["dlq_id"]
        try:
            check_queue_name(queue)
        except InvalidJobOption:
            return None
        return await self.b.dead.find([queue], dlq_id)

    async def dead_one(self, request: web.Request) -> web.Response:
        entry = await self._dead_entry(request)
        if entry is None or entry.dlq_id != request.match_info["dlq_id"]:
            return _problem(self.b, request, 404, "No such dead-lettered entry.")
        payload = hide(entry.job.payload, reveal=False) if entry.job else None
        return render(
            self.b,
            request,
            "dead_one.html",
            page="dead",
            entry=entry,
            payload=payload,
            mask=masked_text,
        )

    async def dead_action(self, request: web.Request) -> web.Response:
        b = self.b
        entry = await self._dead_entry(request)
        if entry is None or entry.dlq_id != request.match_info["dlq_id"]:
            return _problem(b, request, 404, "No such dead-lettered entry.")
        if request.match_info["action"] == "delete":
            await b.control.delete_dead(entry.queue, entry.dlq_id)
            return _see(f"{b.prefix}/dead?queue={entry.queue}")
        if entry.job is None or not await b.dead.replay_one(entry):
            return _problem(b, request, 409, "This entry is malformed and cannot be replayed.")
        await b.control.record("dlq-replay", entry.job.id, f"queue {entry.queue}")
        return _see(f"{b.prefix}/jobs/{entry.job.id}")

    # -- schedules ------------------------------------------------------------------------------

    def _schedule_entries(self) -> list[Any]:
        from ..schedules import load_schedules

        if self.b.schedules is None:
            return []
        known = set(self.b.registry.names) if self.b.registry is not None else None
        return list(load_schedules(self.b.schedules, known_tasks=known))

    async def schedules(self, request: web.Request) -> web.Response:
        from ..scheduler import describe_live

        b = self.b
        try:
            entries = self._schedule_entries()
        except ConfigError as exc:
            return _problem(b, request, 500, str(exc))
        rows = await describe_live(b.redis, entries) if entries else []
        return render(
            b,
            request,
            "schedules.html",
            page="schedules",
            rows=rows,
            paused=await b.control.paused_schedules(),
            has_file=b.schedules is not None,
        )

    async def schedule_action(self, request: web.Request) -> web.Response:
        b = self.b
        name, action = request.match_info["name"], request.match_info["action"]
        entry = next((e for e in self._schedule_entries() if e.name == name), None)
        if entry is None:
            return _problem(b, request, 404, f"No schedule {name}.")
        if action == "pause":
            await b.control.pause_schedule(name)
        elif action == "resume":
            await b.control.resume_schedule(name)
        else:
            job_id = await b.client.enqueue(entry.task, dict(entry.payload), queue=entry.queue)
            await b.control.schedule_fired(name, job_id)
            return _see(f"{b.prefix}/jobs/{job_id}")
        return _see(f"{b.prefix}/schedules")

    # -- rate limits ----------------------------------------------------------------------------

    def _declared(self) -> dict[str, str]:
        return declared_limits(self.b.registry) if self.b.registry is not None else {}

    async def limits(self, request: web.Request, error: str | None = None) -> web.Response:
        rows = await self.b.control.limits(sorted(self._declared().items()))
        return render(
            self.b,
            request,
            "limits.html",
            status=400 if error else 200,
            page="limits",
            rows=rows,
            error=error,
            has_registry=self.b.registry is not None,
        )

    async def limit_action(self, request: web.Request) -> web.Response:
        b = self.b
        task, action = request.match_info["task"], request.match_info["action"]
        if task not in self._declared():
            return _problem(b, request, 404, f"{task} has no rate limit in code.")
        if action == "reset":
            await b.control.reset_limit(task)
        else:
            rate = str((await request.post()).get("rate", "")).strip()
            try:
                await b.control.set_limit(task, [r.strip() for r in rate.split(",") if r.strip()])
            except ConfigError as exc:
                return await self.limits(request, error=f"{task}: {exc}")
        return _see(f"{b.prefix}/limits")

    # -- session --------------------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.Response:
        if self.b.token is None:
            return _see(f"{self.b.prefix}/")
        return login_page(self.b, request)

    async def login(self, request: web.Request) -> web.Response:
        b = self.b
        if b.token is None:
            return _see(f"{b.prefix}/")
        form = await request.post()
        given = form.get("token")
        if not session.token_matches(b.token, given if isinstance(given, str) else None):
            log.warning("dashboard: refused a login from %s", request.remote)
            return login_page(b, request, status=401, error="That token is not the one.")
        target = str(form.get("next", ""))
        if not target.startswith(f"{b.prefix}/") or "//" in target or "\\" in target:
            target = f"{b.prefix}/"
        response = _see(target)
        response.set_cookie(
            session.SESSION_COOKIE,
            session.new_session(b.key, int(time.time()), b.session_ttl_s),
            max_age=b.session_ttl_s,
            path=b.prefix,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        response = _see(f"{self.b.prefix}/login")
        response.del_cookie(session.SESSION_COOKIE, path=self.b.prefix)
        return response
