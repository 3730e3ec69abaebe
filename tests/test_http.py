"""The HTTP endpoint against a real worker, a real Redis and real HTTP requests.

A worker runs test tasks with :class:`Metrics` as its observer and the endpoint as one of its
extra loops, exactly as the command line wires them; the tests then read what an operator (or
Prometheus) would read over HTTP and compare it with what the jobs did and what Redis holds.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import NoBackoff
from yarl import URL

from qrunner import Context, Registry
from qrunner.errors import BackendUnavailable, ConfigError, Permanent
from qrunner.http import build_app, check_bind_address, serve_http
from qrunner.metrics import Metrics
from qrunner.queue import Client
from qrunner.settings import Settings
from qrunner.worker import Worker

pytestmark = pytest.mark.both_topologies

pytestmark = pytest.mark.timeout(60)

QUEUE = "default"
TOKEN = "s3cret-token-for-tests"
#: Short intervals so retries and shutdown happen in milliseconds, not seconds.
FAST = Settings(
    block_ms=100, promote_interval_ms=20, grace_s=5.0, lease_ms=2_000, reclaim_interval_ms=1_000
)
ReadinessCheck = Callable[[], Awaitable[None]]
Setup = Callable[[web.Application], None]


def make_registry() -> Registry:
    """One task per outcome the metrics must tell apart."""
    registry = Registry()

    @registry.task(queue=QUEUE)
    async def ok(ctx: Context[None], payload: dict[str, Any]) -> dict[str, Any]:
        return {"n": payload["n"]}

    @registry.task(queue=QUEUE)
    async def doomed(ctx: Context[None], payload: dict[str, Any]) -> None:
        raise Permanent("recipient does not exist")

    @registry.task(queue=QUEUE, max_retries=2, backoff_base_s=0.01, jitter=False)
    async def flaky(ctx: Context[None], payload: dict[str, Any]) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("provider hiccup")
        return "sent"

    return registry


# -- helpers -----------------------------------------------------------------------------------


async def eventually(
    condition: Callable[[], Awaitable[bool]], *, timeout_s: float = 15.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` when the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


def closed_port() -> int:
    """A port nothing listens on (bound, read, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with exactly ``labels`` in a Prometheus exposition."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels} in the exposition")


def total(text: str, name: str) -> float:
    """Sum of every sample called ``name`` whatever its labels (0 when there is none)."""
    return sum(
        float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


@dataclass
class Endpoint:
    base: str
    session: aiohttp.ClientSession

    async def get(self, path: str, token: str | None = None) -> aiohttp.ClientResponse:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with self.session.get(self.base + path, headers=headers) as resp:
            await resp.read()
            return resp

    async def json(self, path: str, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with self.session.get(self.base + path, headers=headers) as resp:
            return resp.status, await resp.json()

    async def text(self, path: str, token: str | None = None) -> str:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with self.session.get(self.base + path, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.text()


@dataclass
class Running(Endpoint):
    client: Client
    stop: asyncio.Event
    worker: asyncio.Task[None]


async def _started(bound: asyncio.Future[list[tuple[str, int]]], task: asyncio.Task[None]) -> str:
    """Base URL once the server has bound; surfaces the task's error if it died first."""
    either: set[asyncio.Future[Any]] = {bound, task}
    done, _ = await asyncio.wait(either, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # re-raises what stopped it
        pytest.fail("the server stopped before binding")
    if bound not in done:
        pytest.fail("the server did not bind within 10s")
    host, port = bound.result()[0]
    return f"http://{host}:{port}"


@asynccontextmanager
async def running_worker(
    redis: Redis,
    *,
    token: str | None = None,
    readiness: Sequence[ReadinessCheck] = (),
) -> AsyncIterator[Running]:
    """A worker with Metrics and the endpoint on a free port; stopped (and checked) on exit."""
    registry = make_registry()
    metrics = Metrics()
    client = Client(redis, registry)
    app = build_app(client=client, metrics=metrics, redis=redis, token=token, readiness=readiness)
    bound: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()

    async def http_loop(stop: asyncio.Event) -> None:
        await serve_http(app, "127.0.0.1", 0, stop, on_bound=bound.set_result)

    worker = Worker(
        redis,
        registry,
        queues=[QUEUE],
        concurrency=4,
        burst=False,
        settings=FAST,
        observer=metrics,
        extra_loops=[http_loop],
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        base = await _started(bound, task)
        async with aiohttp.ClientSession() as session:
            yield Running(base, session, client, stop, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[Endpoint]:
    """The endpoint alone (no worker) for tests of routing, auth and failures."""
    stop = asyncio.Event()
    bound: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_http(app, "127.0.0.1", 0, stop, on_bound=bound.set_result))
    try:
        base = await _started(bound, task)
        async with aiohttp.ClientSession() as session:
            yield Endpoint(base, session)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


def bare_app(redis: Redis, **kwargs: Any) -> web.Application:
    return build_app(client=Client(redis), metrics=Metrics(), redis=redis, **kwargs)


async def all_finished(client: Client, ids: Sequence[str]) -> bool:
    states = [(await client.status(i)).state for i in ids]
    return all(s in {"succeeded", "dead"} for s in states)


# -- metrics over HTTP -------------------------------------------------------------------------


async def test_metrics_count_each_task_by_outcome_and_mirror_queue_stats(redis: Redis) -> None:
    # Given a worker serving its metrics, and jobs that succeed, fail for good, or fail once
    async with running_worker(redis) as w:
        ok_ids = [await w.client.enqueue("ok", {"n": n}) for n in range(5)]
        flaky_ids = [await w.client.enqueue("flaky") for _ in range(2)]
        doomed_ids = [await w.client.enqueue("doomed")]
        ids = ok_ids + flaky_ids + doomed_ids
        await eventually(lambda: all_finished(w.client, ids), what="every job to finish")

        # When Prometheus scrapes (the hooks may trail the status write by a loop turn)
        runs = 5 + 2 * 2 + 1

        async def all_runs_counted() -> bool:
            return total(await w.text("/metrics"), "qrunner_jobs_total") == runs

        await eventually(all_runs_counted, what=f"{runs} runs in qrunner_jobs_total")
        text = await w.text("/metrics")
        stats = {s.queue: s for s in await w.client.stats()}

    # Then each task's runs are counted under their outcome
    assert sample(text, "qrunner_jobs_total", task="ok", queue=QUEUE, outcome="succeeded") == 5
    assert sample(text, "qrunner_jobs_total", task="flaky", queue=QUEUE, outcome="retried") == 2
    assert sample(text, "qrunner_jobs_total", task="flaky", queue=QUEUE, outcome="succeeded") == 2
    assert sample(text, "qrunner_jobs_total", task="doomed", queue=QUEUE, outcome="dead") == 1
    # and every finished run has one duration observation, every started run one wait
    for task, finished in {"ok": 5, "flaky": 4, "doomed": 1}.items():
        count = sample(text, "qrunner_job_duration_seconds_count", task=task, queue=QUEUE)
        assert count == finished, task
    assert total(text, "qrunner_job_duration_seconds_count") == runs
    assert sample(text, "qrunner_job_wait_seconds_count", queue=QUEUE) == runs
    # and the queue gauges show what Redis holds: one dead job, nothing waiting, one worker
    assert stats[QUEUE].dead == 1
    assert (stats[QUEUE].depth, stats[QUEUE].pending, stats[QUEUE].delayed) == (0, 0, 0)
    for field in ("depth", "pending", "delayed", "dead", "consumers"):
        gauge = sample(text, f"qrunner_queue_{field}", queue=QUEUE)
        assert gauge == getattr(stats[QUEUE], field), field
    assert sample(text, "qrunner_queue_consumers", queue=QUEUE) == 1
    assert sample(text, "qrunner_redis_up") == 1


async def test_metrics_response_carries_the_prometheus_content_type(redis: Redis) -> None:
    from prometheus_client import CONTENT_TYPE_LATEST

    async with serving(bare_app(redis, token=None)) as ep:
        resp = await ep.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST


async def test_metrics_still_served_when_redis_is_down(redis: Redis) -> None:
    # Given an endpoint whose Redis is not there
    port = closed_port()
    gone = Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=1, retry=RedisRetry(NoBackoff(), 0)
    )
    metrics = Metrics()
    metrics.job_finished("ok", QUEUE, "succeeded", 0.01)
    app = build_app(client=Client(gone), metrics=metrics, redis=gone, token=None)
    try:
        # When it is scraped
        async with serving(app) as ep:
            text = await ep.text("/metrics")
    finally:
        await gone.aclose()
    # Then the process's counters are there, the queue gauges are not, and redis_up says why
    assert sample(text, "qrunner_jobs_total", task="ok", queue=QUEUE, outcome="succeeded") == 1
    assert sample(text, "qrunner_redis_up") == 0
    assert total(text, "qrunner_queue_depth") == 0


def test_two_metrics_instances_keep_separate_registries() -> None:
    # Given two Metrics in one process (constructing the second would raise on a shared registry)
    first, second = Metrics(), Metrics()
    # When only the first records a job
    first.job_finished("ok", QUEUE, "succeeded", 0.2)
    # Then only the first reports it
    one = first.exposition().decode()
    other = second.exposition().decode()
    assert sample(one, "qrunner_jobs_total", task="ok", queue=QUEUE, outcome="succeeded") == 1
    assert total(other, "qrunner_jobs_total") == 0


# -- the API -----------------------------------------------------------------------------------


async def test_api_jobs_returns_status_json_and_404_for_unknown_ids(redis: Redis) -> None:
    async with running_worker(redis) as w:
        # Given a job that succeeded and one that was dead-lettered
        good = await w.client.enqueue("ok", {"n": 7})
        bad = await w.client.enqueue("doomed")
        await eventually(lambda: all_finished(w.client, [good, bad]), what="both jobs")
        # When their status is fetched over HTTP
        good_status, good_body = await w.json(f"/api/jobs/{good}")
        bad_status, bad_body = await w.json(f"/api/jobs/{bad}")
        missing_status, missing_body = await w.json("/api/jobs/no-such-job")
    # Then the JSON is the status record, and an unknown id is a JSON 404
    assert good_status == 200
    assert good_body == (await Client(redis).status(good)).to_dict()
    assert (good_body["state"], good_body["task"]) == ("succeeded", "ok")
    assert good_body["result"] == {"n": 7}
    assert bad_status == 200
    assert (bad_body["state"], bad_body["task"]) == ("dead", "doomed")
    assert "recipient does not exist" in bad_body["last_error"]
    assert missing_status == 404
    assert "no-such-job" in missing_body["error"]


async def test_api_queues_lists_the_stats_of_every_queue(redis: Redis) -> None:
    # Given a queue with a delayed job and one waiting job, and no worker
    client = Client(redis)
    await client.enqueue("later", delay_s=3600, queue="reports")
    await client.enqueue("now", queue="reports")
    # When the queues are listed over HTTP
    async with serving(bare_app(redis, token=None)) as ep:
        status, body = await ep.json("/api/queues")
    # Then the list is Client.stats() as JSON
    assert status == 200
    assert body == [s.to_dict() for s in await client.stats()]
    assert {
        "queue": "reports",
        "depth": 1,
        "pending": 0,
        "delayed": 1,
        "dead": 0,
        "consumers": 0,
    } in body


# -- health and readiness ----------------------------------------------------------------------


async def test_healthz_answers_ok(redis: Redis) -> None:
    async with serving(bare_app(redis, token=None)) as ep:
        status, body = await ep.json("/healthz")
    assert (status, body) == (200, {"status": "ok"})


async def test_readyz_follows_redis_and_each_readiness_check(redis: Redis) -> None:
    # Given a dependency listening on a port, checked by connecting to it
    dependency = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = dependency.sockets[0].getsockname()[1]

    async def postgres() -> None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            raise BackendUnavailable(f"PostgreSQL at 127.0.0.1:{port} is unreachable") from exc
        writer.close()
        await writer.wait_closed()

    async with running_worker(redis, readiness=[postgres]) as w:
        # When Redis and the dependency are up, then the worker is ready
        up_status, up_body = await w.json("/readyz")
        # When the dependency goes away, then it is not, and the answer names it by host:port
        dependency.close()
        await dependency.wait_closed()
        down_status, down_body = await w.json("/readyz")
    assert (up_status, up_body) == (200, {"status": "ready", "checked": ["redis", "postgres"]})
    assert down_status == 503
    assert down_body == {
        "status": "unavailable",
        "failed": [
            {"dependency": "postgres", "error": f"PostgreSQL at 127.0.0.1:{port} is unreachable"}
        ],
    }


async def test_readyz_names_redis_by_host_and_port_when_it_is_down(redis: Redis) -> None:
    port = closed_port()
    url_password = "hunter2"
    gone = Redis(
        host="127.0.0.1",
        port=port,
        password=url_password,
        socket_connect_timeout=1,
        retry=RedisRetry(NoBackoff(), 0),
    )
    app = build_app(client=Client(gone), metrics=Metrics(), redis=gone, token=None)
    try:
        async with serving(app) as ep:
            status, body = await ep.json("/readyz")
    finally:
        await gone.aclose()
    assert status == 503
    [failure] = body["failed"]
    assert failure["dependency"] == "redis"
    assert f"127.0.0.1:{port}" in failure["error"]
    assert url_password not in str(body)


async def test_readyz_does_not_publish_messages_of_unexpected_errors(redis: Redis) -> None:
    # Given a check whose driver error quotes a connection string with a password
    async def database() -> None:
        raise RuntimeError("could not connect to postgresql://app:pa55word@db:5432/app")

    async with serving(bare_app(redis, token=None, readiness=[database])) as ep:
        status, body = await ep.json("/readyz")
    # Then only the error's type is shown
    assert status == 503
    assert body["failed"] == [{"dependency": "database", "error": "RuntimeError"}]
    assert "pa55word" not in str(body)


# -- bearer token ------------------------------------------------------------------------------


async def test_token_guards_every_route_but_healthz(redis: Redis) -> None:
    async with running_worker(redis, token=TOKEN) as w:
        for path in ("/metrics", "/readyz", "/api/queues", "/api/jobs/x"):
            # Without a header, or with a wrong or malformed one: 401 JSON
            for given in (None, "wrong-token", TOKEN[:-1], ""):
                status, body = await w.json(path, token=given)
                assert status == 401, (path, given)
                assert body == {"error": "missing or invalid bearer token"}
            basic = {"Authorization": f"Basic {TOKEN}"}
            async with w.session.get(w.base + path, headers=basic) as r:
                assert r.status == 401, path
            # With the right token: through to the route
            resp = await w.get(path, token=TOKEN)
            assert resp.status == (404 if path == "/api/jobs/x" else 200), path
        # /healthz stays open for liveness probes that carry no credentials
        assert (await w.json("/healthz")) == (200, {"status": "ok"})
        # and an unknown path needs the token too, so it reveals nothing without one
        assert (await w.get("/nowhere")).status == 401


async def test_routes_under_public_prefixes_skip_the_token(redis: Redis) -> None:
    # Given a webhook added by a setup under a public prefix, and a private route next to it
    async def webhook(request: web.Request) -> web.Response:
        return web.json_response({"received": True})

    def add_routes(app: web.Application) -> None:
        app.router.add_get("/hooks/twilio", webhook)
        app.router.add_get("/admin/replay", webhook)

    app = bare_app(redis, token=TOKEN, setups=[add_routes], public_prefixes=["/hooks/"])
    async with serving(app) as ep:
        # Then the webhook needs no token, the private route does
        assert await ep.json("/hooks/twilio") == (200, {"received": True})
        assert (await ep.get("/admin/replay")).status == 401
        assert (await ep.get("/admin/replay", token=TOKEN)).status == 200
        # and no spelling of a path borrows the public prefix to reach a protected route
        for raw in ("/hooks/../api/queues", "/hooks/%2e%2e/api/queues", "/hooks//../metrics"):
            url = URL(ep.base + raw, encoded=True)
            async with ep.session.get(url) as resp:
                assert resp.status == 401, raw


# -- binding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.10", "example.com"])
async def test_serving_beyond_loopback_without_a_token_is_refused(redis: Redis, host: str) -> None:
    with pytest.raises(ConfigError, match="QRUNNER_HTTP_TOKEN"):
        await serve_http(bare_app(redis, token=None), host, 0, asyncio.Event())


async def test_an_empty_token_counts_as_no_token(redis: Redis) -> None:
    app = bare_app(redis, token="")
    with pytest.raises(ConfigError):
        await serve_http(app, "0.0.0.0", 0, asyncio.Event())
    async with serving(app) as ep:
        assert (await ep.get("/api/queues")).status == 200


@pytest.mark.parametrize(
    ("host", "token_required", "allowed"),
    [
        ("127.0.0.1", False, True),
        ("127.0.0.2", False, True),
        ("::1", False, True),
        ("localhost", False, True),
        ("0.0.0.0", False, False),
        ("10.0.0.5", False, False),
        ("0.0.0.0", True, True),
        ("::", True, True),
    ],
)
def test_check_bind_address(host: str, token_required: bool, allowed: bool) -> None:
    if allowed:
        check_bind_address(host, token_required=token_required)
    else:
        with pytest.raises(ConfigError):
            check_bind_address(host, token_required=token_required)


# -- shutdown ----------------------------------------------------------------------------------


async def test_worker_and_endpoint_stop_cleanly_on_the_stop_event(redis: Redis) -> None:
    # Given a running worker that has served a request
    async with running_worker(redis) as w:
        job = await w.client.enqueue("ok", {"n": 1})
        await eventually(lambda: all_finished(w.client, [job]), what="the job")
        assert (await w.get("/healthz")).status == 200
        base, stop, task = w.base, w.stop, w.worker
        # When its stop event is set
        stop.set()
        await asyncio.wait_for(asyncio.shield(task), timeout=15)
    # Then run() returned without error and the port no longer answers
    assert task.done() and task.exception() is None
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(base + "/healthz"):
                pass
