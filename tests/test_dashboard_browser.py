"""The dashboard in a real headless Chromium against a real worker and a real Redis: the
overview's counts, a dead job found, inspected, replayed and run, a queue paused and resumed,
a running job cancelled, a schedule fired once, the login gate and the CSRF check. Also saves a
screenshot of each page (to ``$QRUNNER_DASHBOARD_SHOTS`` when set, e.g. ``docs/dashboard``).

One browser serves the whole module (it takes seconds to start on a small machine); each test
gets its own worker, endpoint (a free port) and freshly flushed Redis.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from qrunner import Client, Worker, keys
from qrunner.control import Control
from qrunner.dashboard import DashboardOptions
from qrunner.http import build_app, serve_http
from qrunner.metrics import Metrics
from tests.helpers import dashboard_browser, dashboard_tasks
from tests.helpers.dashboard_browser import Browser
from tests.helpers.waiting import wait_for
from tests.worker_fixtures import FAST

pytestmark = [
    pytest.mark.once,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        dashboard_browser.missing() is not None, reason=str(dashboard_browser.missing())
    ),
]

TOKEN = "browser-dashboard-token-51c9"


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    chrome = dashboard_browser.start_driver()
    try:
        yield chrome
    finally:
        chrome.quit()


@dataclass
class Board:
    browser: Browser
    base: str
    redis: Redis
    client: Client
    worker: Worker


@pytest.fixture
async def board(driver: Any, redis: Redis) -> AsyncIterator[Board]:
    """A worker reading ``dash`` and ``probe`` (never ``limited``, so jobs wait there) with
    the endpoint and its dashboard served on a free port."""
    dashboard_tasks.events.clear()
    dashboard_tasks.seen.clear()
    dashboard_tasks.state["fail"] = True
    registry = dashboard_tasks.registry
    metrics = Metrics(tasks=registry.names)
    client = Client(redis, registry)
    worker = Worker(
        redis, registry, queues=["dash", "probe"], settings=FAST, concurrency=4, observer=metrics
    )
    app = build_app(
        client=client,
        metrics=metrics,
        redis=redis,
        token=TOKEN,
        dashboard=DashboardOptions(registry=registry),
    )
    stop = asyncio.Event()
    bound: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(serve_http(app, "127.0.0.1", 0, stop, on_bound=bound.set_result))
    running = asyncio.create_task(worker.run(stop))
    host, port = (await asyncio.wait_for(bound, 20))[0]
    base = f"http://{host}:{port}"
    try:
        yield Board(Browser(driver, base), base, redis, client, worker)
    finally:
        dashboard_tasks.events.setdefault("release", asyncio.Event()).set()
        stop.set()
        await asyncio.wait_for(asyncio.gather(serving, running), 30)


async def state_of(client: Client, job_id: str) -> str:
    return (await client.status(job_id)).state


def reaches(client: Client, job_id: str, state: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await state_of(client, job_id) == state

    return check


async def cell(b: Browser, row: str, column: str) -> str:
    return await b.text(f'tr[data-queue="{row}"] td.{column}')


async def test_the_dashboard_without_the_token_is_refused(board: Board) -> None:
    b = board.browser
    await b.get("/dashboard/")
    await b.forget()
    await b.get("/dashboard/")
    await b.find("#login")
    assert "Queues" not in await b.source()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{board.base}/api/queues") as api:
            assert api.status == 401
        async with http.get(f"{board.base}/dashboard/") as page:
            assert page.status == 401
    await b.fill("#token", "not-the-token")
    await b.click("#login button[type=submit]")
    assert "not the one" in await b.text("#login-error")
    # The form remembers where the browser was going.
    await b.get("/dashboard/workers")
    await b.fill("#token", TOKEN)
    await b.click("#login button[type=submit]")
    assert await b.text("main h1") == "Workers"


async def test_an_action_without_the_csrf_token_is_refused(board: Board) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        url = f"{board.base}/dashboard/queues/dash/pause"
        async with http.post(url, data={}, allow_redirects=False) as answer:
            assert answer.status == 403
        async with http.post(url, data={"csrf": "f" * 64}, allow_redirects=False) as answer:
            assert answer.status == 403
    assert await Control(board.redis).paused() == set()


async def test_the_overview_shows_the_right_counts(board: Board) -> None:
    client = board.client
    for n in range(2):
        await client.enqueue("throttled", {"n": n})  # its queue is not read: waiting
    for n in range(3):
        await client.enqueue("notify", {"n": n}, delay_s=3600)
    dead = await client.enqueue("fragile", {})
    await wait_for(reaches(client, dead, "dead"), timeout_s=20, what="a dead job")
    b = board.browser
    await b.login(TOKEN)
    await b.get("/dashboard/")
    assert await cell(b, "limited", "depth") == "2"
    assert await cell(b, "limited", "delayed") == "0"
    assert await cell(b, "dash", "delayed") == "3"
    assert await cell(b, "dash", "dead") == "1"
    assert await cell(b, "dash", "depth") == "0"
    assert await cell(b, "limited", "oldest") != "-"
    assert await cell(b, "dash", "paused") == "reading"
    await b.get("/dashboard/workers")
    assert await b.text(f'tr[data-worker="{board.worker.name}"] td:nth-child(7)') == "0/4"


async def test_a_dead_job_is_found_inspected_replayed_and_runs(board: Board) -> None:
    client = board.client
    job_id = await client.enqueue("fragile", {"order": 42})
    await client.enqueue("notify", {})
    await wait_for(reaches(client, job_id, "dead"), timeout_s=20, what="the job to die")
    b = board.browser
    await b.login(TOKEN)
    await b.get("/dashboard/dead")
    await b.fill("input[name=task]", "fragile")
    await b.click(".filters button")
    await b.click(f'tr[data-job="{job_id}"] a.dead-link')
    assert "upstream said no" in await b.text("#reason")
    assert await b.text("#dead-job") == job_id
    dashboard_tasks.state["fail"] = False
    await b.click("#replay")
    assert await b.text("#job-id") == job_id
    await wait_for(reaches(client, job_id, "succeeded"), timeout_s=20, what="the replay to run")
    await b.get(f"/dashboard/jobs/{job_id}")
    assert await b.text("#state") == "succeeded"
    outcomes = await b.text("#attempts tbody")
    assert "succeeded" in outcomes
    assert dashboard_tasks.seen.count(f"succeeded {job_id}") == 1
    assert await client.redis.xlen(keys.dlq("dash")) == 0


async def test_a_queue_paused_in_the_dashboard_stops_being_read_and_resumes(board: Board) -> None:
    b, client, worker = board.browser, board.client, board.worker
    await b.login(TOKEN)
    await b.get("/dashboard/")
    await b.click('tr[data-queue="dash"] button.pause')
    assert await cell(b, "dash", "paused") == "paused"
    await wait_for(
        lambda: _value(worker.paused == {"dash"}), timeout_s=20, what="the worker to see it"
    )
    # A read already waiting when the pause landed may return one batch: after the first
    # probe ran, every later read leaves the paused queue alone.
    job_id = ""
    for round_ in range(2):
        dashboard_tasks.events["probe"] = asyncio.Event()
        await client.enqueue("probe", {})
        await asyncio.wait_for(dashboard_tasks.events["probe"].wait(), 20)
        if round_ == 0:
            job_id = await client.enqueue("notify", {})
    assert await state_of(client, job_id) == "queued"
    await b.get("/dashboard/")
    assert await cell(b, "dash", "depth") == "1"
    await b.click('tr[data-queue="dash"] button.resume')
    assert await cell(b, "dash", "paused") == "reading"
    await wait_for(reaches(client, job_id, "succeeded"), timeout_s=20, what="the job to run")


async def _value(value: bool) -> bool:
    return value


async def test_a_running_job_cancelled_in_the_dashboard_stops(board: Board) -> None:
    client = board.client
    dashboard_tasks.events["started"] = asyncio.Event()
    job_id = await client.enqueue("hold", {"to": "+14155550123"})
    await asyncio.wait_for(dashboard_tasks.events["started"].wait(), 20)
    b = board.browser
    await b.login(TOKEN)
    await b.get("/dashboard/jobs?queue=dash&state=running")
    await b.click(f'#jobs a[href$="/jobs/{job_id}"]')
    assert await b.text("#state") == "running"
    assert "+14155550123" not in await b.source()
    await b.click("#cancel")
    await wait_for(reaches(client, job_id, "cancelled"), timeout_s=20, what="the cancel")
    await b.get(f"/dashboard/jobs/{job_id}")
    assert await b.text("#state") == "cancelled"
    assert f"cancelled {job_id}" in dashboard_tasks.seen
    assert "released" not in str((await client.status(job_id)).result)


async def test_a_schedule_fired_from_the_dashboard_enqueues_once(board: Board) -> None:
    b, client = board.browser, board.client
    await b.login(TOKEN)
    await b.get("/dashboard/schedules")
    assert await b.text('tr[data-schedule="tidy-nightly"] td:nth-child(6)') != "-"
    await b.click('tr[data-schedule="tidy-nightly"] button.fire')
    job_id = await b.text("#job-id")
    assert await b.text("#task") == "tidy"
    await wait_for(reaches(client, job_id, "succeeded"), timeout_s=20, what="the fired job")
    # Reloading the page the action led to repeats nothing.
    await b.get(f"/dashboard/jobs/{job_id}")
    await b.find("#state")
    assert [s for s in dashboard_tasks.seen if s.startswith("tidy")] == [f"tidy {job_id}"]
    fired = [a for a in await Control(board.redis).audit() if a["action"] == "schedule-fire"]
    assert [(a["target"], a["actor"]) for a in fired] == [("tidy-nightly", "dashboard")]
    await b.get("/dashboard/schedules")
    await b.click('tr[data-schedule="tidy-nightly"] button.pause')
    assert await b.text('tr[data-schedule="tidy-nightly"] td.paused') == "paused"
    assert await Control(board.redis).paused_schedules() == {"tidy-nightly"}


async def test_rate_limits_are_set_and_reset(board: Board) -> None:
    b = board.browser
    await b.login(TOKEN)
    await b.get("/dashboard/limits")
    row = 'tr[data-task="throttled"]'
    assert await b.text(f"{row} td.effective") == "5/s"
    await b.fill(f"{row} input[name=rate]", "2/s,100/day")
    await b.click(f"{row} button.set")
    assert await b.text(f"{row} td.override") == "2/s,100/day"
    await b.fill(f"{row} input[name=rate]", "lots")
    await b.click(f"{row} button.set")
    assert "throttled" in await b.text("#limit-error")
    await b.click(f"{row} button.reset")
    assert await b.text(f"{row} td.effective") == "5/s"


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: ``$QRUNNER_DASHBOARD_SHOTS`` (docs/dashboard to refresh the
    README's images), else the test's own folder."""
    out = Path(os.environ.get("QRUNNER_DASHBOARD_SHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


async def test_every_page_renders_for_a_screenshot(board: Board, shots: Path) -> None:
    client = board.client
    out = shots
    dashboard_tasks.events["started"] = asyncio.Event()
    running = await client.enqueue("hold", {"to": "+14155550123", "template": "welcome"})
    await asyncio.wait_for(dashboard_tasks.events["started"].wait(), 20)
    for n in range(3):
        await client.enqueue("throttled", {"n": n})
        await client.enqueue("notify", {"email": "jane@example.com", "n": n}, delay_s=600 * (n + 1))
    dead = await client.enqueue("fragile", {"order": 1001, "email": "jane@example.com"})
    await wait_for(reaches(client, dead, "dead"), timeout_s=20, what="a dead job")
    await client.enqueue("tidy", {"scope": "all"})
    b = board.browser
    await b.login(TOKEN)
    pages = {
        "overview": "/dashboard/",
        "workers": "/dashboard/workers",
        "jobs": "/dashboard/jobs?queue=dash&state=delayed",
        "job-detail": f"/dashboard/jobs/{running}",
        "dead-letters": "/dashboard/dead",
        "schedules": "/dashboard/schedules",
        "limits": "/dashboard/limits",
    }
    for name, path in pages.items():
        await b.get(path)
        await b.find("main h1")
        assert "Problem" not in await b.text("main h1"), name
        await b.screenshot(str(out / f"{name}.png"))
        width, height = png_size(out / f"{name}.png")
        assert width == dashboard_browser.WIDTH and 0 < height <= dashboard_browser.HEIGHT, name
