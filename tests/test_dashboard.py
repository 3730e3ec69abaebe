"""The dashboard over HTTP without a browser: who gets in (bearer token, session cookie, login
form), CSRF on every POST, payload values hidden until revealed (and PII masked even then),
and mounting into an application of one's own. Real Redis; the pages are read as HTML."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from qrunner import Client, keys
from qrunner.cli import _COMMANDS, BUILTIN_COMMANDS, build_parser
from qrunner.dashboard import DashboardOptions, mount, session
from qrunner.http import build_app
from qrunner.metrics import Metrics
from tests.helpers import dashboard_tasks

pytestmark = [pytest.mark.once, pytest.mark.timeout(60)]

TOKEN = "dashboard-token-for-tests-7f3a-0123456789"
HTML = {"Accept": "text/html"}
BEARER = {"Authorization": f"Bearer {TOKEN}"}
PHONE = "+14155550123"
EMAIL = "jane@example.com"


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found is not None, "no CSRF field on the page"
    return found.group(1)


def endpoint(redis: Redis, token: str | None) -> web.Application:
    client = Client(redis, dashboard_tasks.registry)
    return build_app(
        client=client,
        metrics=Metrics(tasks=dashboard_tasks.registry.names),
        redis=redis,
        token=token,
        dashboard=DashboardOptions(registry=dashboard_tasks.registry),
    )


@pytest.fixture
async def http(redis: Redis) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(endpoint(redis, TOKEN))) as client:
        yield client


async def login(http: TestClient[Any, Any]) -> None:
    form = await http.get("/dashboard/login", headers=HTML)
    page = await form.text()
    answer = await http.post(
        "/dashboard/login",
        data={"token": TOKEN, "csrf": csrf_of(page), "next": "/dashboard/workers"},
        allow_redirects=False,
    )
    assert answer.status == 303 and answer.headers["Location"] == "/dashboard/workers"


# -- sessions and CSRF tokens, as plain functions ------------------------------------------------


@pytest.mark.parametrize(
    ("signed_with", "checked_with", "now_s", "tamper", "valid"),
    [
        ("k1", "k1", 1_000, False, True),
        ("k1", "k1", 1_000 + 3600, False, False),  # expired
        ("k1", "k2", 1_000, False, False),  # another token's key
        ("k1", "k1", 1_000, True, False),  # expiry pushed back by hand
    ],
)
def test_session_cookie_is_signed_and_expires(
    signed_with: str, checked_with: str, now_s: int, tamper: bool, valid: bool
) -> None:
    cookie = session.new_session(session.derive_key(signed_with), 1_000, 3600)
    if tamper:
        expires, rest = cookie.split(".", 1)
        cookie = f"{int(expires) + 10_000}.{rest}"
    assert session.session_valid(session.derive_key(checked_with), cookie, now_s) is valid
    assert signed_with not in cookie


@pytest.mark.parametrize("cookie", [None, "", "garbage", "1.2", "a.b.c.d", "9999999999.x.y"])
def test_malformed_session_cookies_are_refused(cookie: str | None) -> None:
    assert not session.session_valid(session.derive_key("k"), cookie, 0)


def test_csrf_token_is_bound_to_the_seed_and_the_key() -> None:
    key, seed = session.derive_key("k"), session.new_seed()
    token = session.csrf_token(key, seed)
    assert session.csrf_valid(key, seed, token)
    assert not session.csrf_valid(key, session.new_seed(), token)
    assert not session.csrf_valid(session.derive_key("other"), seed, token)
    assert not session.csrf_valid(key, seed, None) and not session.csrf_valid(key, None, token)


# -- access ------------------------------------------------------------------------------------


async def test_without_credentials_a_browser_gets_the_login_form_and_an_api_client_401(
    http: TestClient[Any, Any],
) -> None:
    page = await http.get("/dashboard/", headers=HTML)
    text = await page.text()
    assert page.status == 401 and 'id="login"' in text and "Queues" not in text
    api = await http.get("/dashboard/")
    assert api.status == 401 and (await api.json())["error"].startswith("missing or invalid")
    assert (await http.get("/api/queues")).status == 401
    # The stylesheet of the login form is public; nothing else under the prefix is.
    assert (await http.get("/dashboard/static/dashboard.css")).status == 200
    assert (await http.get("/dashboard/workers", headers=HTML)).status == 401


async def test_bearer_token_opens_the_dashboard(http: TestClient[Any, Any]) -> None:
    page = await http.get("/dashboard/", headers=BEARER)
    assert page.status == 200 and "<h1>Queues</h1>" in await page.text()
    wrong = await http.get("/dashboard/", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401


async def test_login_sets_a_signed_httponly_strict_cookie(http: TestClient[Any, Any]) -> None:
    form = await http.get("/dashboard/login", headers=HTML)
    page = await form.text()
    answer = await http.post(
        "/dashboard/login", data={"token": TOKEN, "csrf": csrf_of(page)}, allow_redirects=False
    )
    assert answer.status == 303
    cookie = answer.cookies[session.SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert cookie["path"] == "/dashboard" and int(cookie["max-age"]) > 0
    assert TOKEN not in cookie.value
    workers = await http.get("/dashboard/workers", headers=HTML)
    assert workers.status == 200 and "<h1>Workers</h1>" in await workers.text()


async def test_a_wrong_token_is_refused_and_sets_no_session(http: TestClient[Any, Any]) -> None:
    page = await (await http.get("/dashboard/login", headers=HTML)).text()
    answer = await http.post("/dashboard/login", data={"token": "guess", "csrf": csrf_of(page)})
    assert answer.status == 401 and 'id="login-error"' in await answer.text()
    assert session.SESSION_COOKIE not in answer.cookies
    assert (await http.get("/dashboard/", headers=HTML)).status == 401


async def test_the_session_cookie_opens_dashboard_routes_only(http: TestClient[Any, Any]) -> None:
    await login(http)
    assert (await http.get("/dashboard/", headers=HTML)).status == 200
    # The cookie is scoped to the dashboard's path, and the endpoint would refuse it anyway.
    cookie = http.session.cookie_jar.filter_cookies(http.make_url("/dashboard/"))
    value = cookie[session.SESSION_COOKIE].value
    sent = {"Cookie": f"{session.SESSION_COOKIE}={value}"}
    assert (await http.get("/api/queues", headers=sent)).status == 401
    assert (await http.get("/metrics", headers=sent)).status == 401


async def test_a_forged_or_foreign_session_cookie_is_refused(http: TestClient[Any, Any]) -> None:
    foreign = session.new_session(session.derive_key("another-token"), 0, 10**10)
    sent = {"Cookie": f"{session.SESSION_COOKIE}={foreign}", **HTML}
    assert (await http.get("/dashboard/", headers=sent)).status == 401


async def test_login_never_redirects_off_the_dashboard(http: TestClient[Any, Any]) -> None:
    page = await (await http.get("/dashboard/login", headers=HTML)).text()
    for target in ("//evil.example/", "https://evil.example/", "/dashboard//evil.example"):
        answer = await http.post(
            "/dashboard/login",
            data={"token": TOKEN, "csrf": csrf_of(page), "next": target},
            allow_redirects=False,
        )
        assert answer.headers["Location"] == "/dashboard/", target


async def test_logout_ends_the_session(http: TestClient[Any, Any]) -> None:
    await login(http)
    page = await (await http.get("/dashboard/", headers=HTML)).text()
    await http.post("/dashboard/logout", data={"csrf": csrf_of(page)})
    assert (await http.get("/dashboard/", headers=HTML)).status == 401


# -- CSRF ---------------------------------------------------------------------------------------


async def test_an_action_without_the_csrf_token_is_refused(
    http: TestClient[Any, Any], redis: Redis
) -> None:
    await login(http)
    page = await (await http.get("/dashboard/", headers=HTML)).text()
    missing = await http.post("/dashboard/queues/dash/pause", data={}, allow_redirects=False)
    wrong = await http.post(
        "/dashboard/queues/dash/pause", data={"csrf": "0" * 64}, allow_redirects=False
    )
    # The bearer token does not waive the check either.
    bearer = await http.post("/dashboard/queues/dash/pause", headers=BEARER, data={})
    assert (missing.status, wrong.status, bearer.status) == (403, 403, 403)
    assert "CSRF" in await missing.text()
    assert not await redis.sismember(keys.paused_queues(), "dash")
    done = await http.post(
        "/dashboard/queues/dash/pause", data={"csrf": csrf_of(page)}, allow_redirects=False
    )
    assert done.status == 303 and await redis.sismember(keys.paused_queues(), "dash")


async def test_the_login_itself_needs_the_csrf_token(http: TestClient[Any, Any]) -> None:
    answer = await http.post("/dashboard/login", data={"token": TOKEN}, allow_redirects=False)
    assert answer.status == 403 and session.SESSION_COOKIE not in answer.cookies


async def test_without_a_token_the_dashboard_is_open_but_actions_still_need_csrf(
    redis: Redis,
) -> None:
    async with TestClient(TestServer(endpoint(redis, None))) as http:
        page = await http.get("/dashboard/", headers=HTML)
        text = await page.text()
        assert page.status == 200 and "Log out" not in text
        refused = await http.post("/dashboard/queues/dash/pause", data={})
        assert refused.status == 403
        done = await http.post(
            "/dashboard/queues/dash/pause", data={"csrf": csrf_of(text)}, allow_redirects=False
        )
        assert done.status == 303 and await redis.sismember(keys.paused_queues(), "dash")


# -- masking -----------------------------------------------------------------------------------


async def test_payload_values_are_hidden_and_revealed_with_pii_still_masked(
    http: TestClient[Any, Any], redis: Redis
) -> None:
    client = Client(redis, dashboard_tasks.registry)
    job_id = await client.enqueue(
        "notify", {"to": PHONE, "email": EMAIL, "name": "Jane Doe", "tries": [7]}
    )
    await login(http)
    page = await (await http.get(f"/dashboard/jobs/{job_id}", headers=HTML)).text()
    assert '"to": "***"' in page and '"tries": [\n    "***"\n  ]' in page
    for secret in (PHONE, EMAIL, "Jane Doe", "+1******0123"):
        assert secret not in page
    refused = await http.post(f"/dashboard/jobs/{job_id}/reveal", data={})
    assert refused.status == 403 and "Jane Doe" not in await refused.text()
    shown = await http.post(f"/dashboard/jobs/{job_id}/reveal", data={"csrf": csrf_of(page)})
    text = await shown.text()
    assert shown.status == 200 and "Jane Doe" in text and "+1******0123" in text
    assert "j***@example.com" in text and PHONE not in text and EMAIL not in text


async def test_job_search_goes_to_the_job_page(http: TestClient[Any, Any], redis: Redis) -> None:
    job_id = await Client(redis, dashboard_tasks.registry).enqueue("notify", {})
    found = await http.get(f"/dashboard/jobs?id={job_id}", headers=BEARER, allow_redirects=False)
    assert found.headers["Location"] == f"/dashboard/jobs/{job_id}"
    odd = await http.get("/dashboard/jobs?id=a/b%0d%0ac", headers=BEARER, allow_redirects=False)
    assert odd.status == 303 and odd.headers["Location"] == "/dashboard/jobs/a%2Fb%0D%0Ac"
    missing = await http.get("/dashboard/jobs/nope", headers=BEARER)
    assert missing.status == 404 and "No job nope" in await missing.text()


async def test_page_text_is_escaped(http: TestClient[Any, Any], redis: Redis) -> None:
    client = Client(redis, dashboard_tasks.registry)
    job_id = await client.enqueue("notify", {"<script>alert(1)</script>": "x"})
    await login(http)
    page = await (await http.get(f"/dashboard/jobs/{job_id}", headers=HTML)).text()
    assert "<script>" not in page and "\\u003cscript\\u003e" in page


# -- mounting ----------------------------------------------------------------------------------


async def test_mounts_into_any_aiohttp_app_under_its_own_prefix(redis: Redis) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="the host app")

    app = web.Application()
    app.router.add_get("/", hello)
    mount(
        app,
        redis=redis,
        client=Client(redis, dashboard_tasks.registry),
        token=TOKEN,
        registry=dashboard_tasks.registry,
        prefix="/ops/board",
    )
    await Client(redis, dashboard_tasks.registry).enqueue("notify", {})
    async with TestClient(TestServer(app)) as http:
        assert await (await http.get("/")).text() == "the host app"
        refused = await http.get("/ops/board/", headers=HTML)
        assert refused.status == 401 and 'action="/ops/board/login"' in await refused.text()
        assert (await http.get("/ops/board/")).status == 401
        page = await http.get("/ops/board/", headers=BEARER)
        text = await page.text()
        assert page.status == 200 and 'href="/ops/board/workers"' in text
        assert re.search(r'data-queue="dash">.*?class="num depth">1<', text, re.S)
        limits = await (await http.get("/ops/board/limits", headers=BEARER)).text()
        assert 'data-task="throttled"' in limits and "5/s" in limits


def test_the_cli_has_a_dashboard_command() -> None:
    args = build_parser().parse_args(["dashboard", "--port", "8088", "--app", "m"])
    assert (args.command, args.port, args.sub_app) == ("dashboard", 8088, "m")
    assert "dashboard" in BUILTIN_COMMANDS and _COMMANDS["dashboard"].__name__ == "cmd_dashboard"


async def test_qrunner_dashboard_serves_it_alone_with_its_own_login(redis_url: str) -> None:
    from pydantic import SecretStr

    from qrunner.dashboard.standalone import serve_dashboard
    from qrunner.settings import Settings

    settings = Settings(redis_url=SecretStr(redis_url), http_token=SecretStr(TOKEN))
    stop = asyncio.Event()
    bound: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(
        serve_dashboard(
            "tests.helpers.dashboard_tasks", 0, settings, stop, on_bound=bound.set_result
        )
    )
    host, port = (await asyncio.wait_for(bound, 20))[0]
    try:
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(f"http://{host}:{port}", cookie_jar=jar) as http:
            async with http.get("/", headers=HTML) as home:
                assert home.status == 401 and home.url.path == "/dashboard/"
                csrf = csrf_of(await home.text())
            async with http.post("/dashboard/login", data={"token": TOKEN, "csrf": csrf}) as page:
                text = await page.text()
                assert page.status == 200 and "<h1>Queues</h1>" in text
                assert "not shown here" in text
            async with http.get("/dashboard/schedules") as schedules:
                assert 'data-schedule="tidy-nightly"' in await schedules.text()
            async with http.get("/dashboard/", headers={}) as api:
                assert api.status == 200  # the cookie, not an Accept header, decides
        async with aiohttp.ClientSession(f"http://{host}:{port}") as anonymous:
            async with anonymous.get("/dashboard/") as refused:
                assert refused.status == 401
    finally:
        stop.set()
        assert await asyncio.wait_for(serving, 20) == 0
