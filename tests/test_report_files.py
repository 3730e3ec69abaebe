"""Stored report files and their signed download links, end to end: a real worker runs the
report and messaging tasks against PostgreSQL and Redis, emails go to the fake Resend, and the
links are followed through the app's HTTP routes.

Given a report emailed to its owner, when the link in the email is followed, then the file
comes back from PostgreSQL; a link past its expiry is refused with 410, a tampered one with 403,
and an email never names a local path.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pypdf
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from notifyhub.fakeproviders import FakeResend
from notifyhub.messaging import Messaging
from notifyhub.messaging import registry as messaging_registry
from notifyhub.providers.email import ResendEmail
from notifyhub.reports import registry as reports_registry
from notifyhub.reports.links import LinkSigner
from notifyhub.reports.runs import Export, Table, run_export
from notifyhub.reports.writers import Heading
from notifyhub.secrets import UNSUBSCRIBE, derive_key
from notifyhub.state import HandlerState
from notifyhub.upkeep import registry as upkeep_registry
from redis.asyncio import Redis

from qrunner import Client, Registry
from tests.handler_fixtures import HandlerEnv, handler_stack

pytestmark = pytest.mark.timeout(90)

PUBLIC_URL = "https://shop.example.test"
SECRET = "report-links-test-secret-0123456789abcdef"
NOW = datetime(2024, 3, 11, 6, 0, tzinfo=UTC)  # Monday 06:00 UTC: the weekly report slot


def forge(key: bytes, payload: str) -> str:
    """A token in the link format signed with ``key`` (another purpose's, say)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    mac = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return f"{b64(payload.encode())}.{b64(mac)}"


@dataclass
class ShopEnv(HandlerEnv):
    """Reports, upkeep and messaging on one burst worker, the fake Resend, and an HTTP client
    on the registry's routes."""

    resend: FakeResend
    http: TestClient[Any, Any]

    async def owner(self, name: str) -> int:
        uid: int = await self.db.fetchval(
            "INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id",
            name,
            f"{name}@example.com",
        )
        await self.db.execute(
            "INSERT INTO consents (user_id, channel, opted_in_at, opt_in_source)"
            " VALUES ($1, 'email', now() - interval '1 day', 'test')",
            uid,
        )
        return uid

    async def business(self, slug: str, owner: int | None, name: str | None = None) -> int:
        bid: int = await self.db.fetchval(
            "INSERT INTO businesses (slug, name, owner_user_id, time_zone, currency)"
            " VALUES ($1, $2, $3, 'Europe/London', 'GBP') RETURNING id",
            slug,
            name or slug.title(),
            owner,
        )
        return bid

    async def get(self, url: str) -> tuple[int, dict[str, str], bytes]:
        assert url.startswith(PUBLIC_URL + "/reports/"), "links point at the public URL"
        async with self.http.get(url.removeprefix(PUBLIC_URL)) as response:
            return response.status, dict(response.headers), await response.read()


@asynccontextmanager
async def shop_stack(
    database_url: str, redis: Redis, tmp_path: Path, *registries: Registry
) -> AsyncIterator[ShopEnv]:
    """The reports registry merged with ``registries`` and messaging, sending email through the
    fake Resend, with the merged HTTP routes on a local test server."""
    handlers = reports_registry
    for extra in registries:
        handlers = handlers.merge(extra)
    async with AsyncExitStack() as stack:
        resend = await stack.enter_async_context(FakeResend())
        base = await stack.enter_async_context(
            handler_stack(
                database_url,
                redis,
                tmp_path,
                handlers,
                messaging_registry,
                public_url=PUBLIC_URL,
                signing_secret=SECRET,
                email_base_url=resend.base_url,
                resend_api_key=resend.api_key,
            )
        )
        email = ResendEmail(resend.api_key, base_url=resend.base_url)
        stack.push_async_callback(email.close)
        client = Client(redis, base.registry)
        state = HandlerState(
            base.state.settings, base.db, redis, client, None, email, messaging=Messaging()
        )
        app = web.Application()
        for setup in base.registry.http_setups:
            setup(app, state)
        http: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await http.start_server()
        stack.push_async_callback(http.close)
        yield ShopEnv(base.db, redis, base.registry, client, state, resend, http)


@pytest.fixture
async def env(database_url: str, redis: Redis, tmp_path: Path) -> AsyncIterator[ShopEnv]:
    async with shop_stack(database_url, redis, tmp_path, upkeep_registry) as e:
        yield e


async def test_weekly_stock_email_carries_a_link_that_downloads_the_report(env: ShopEnv) -> None:
    # Given a shop whose milk sold last week
    owner = await env.owner("owner")
    shop = await env.business("deli", owner)
    milk: int = await env.db.fetchval(
        "INSERT INTO products (business_id, sku, name, unit_price, currency, stock)"
        " VALUES ($1, 'MILK', 'Milk', 1.20, 'GBP', 10) RETURNING id",
        shop,
    )
    await env.db.execute(
        "INSERT INTO stock_movements (product_id, quantity, reason, created_at)"
        " VALUES ($1, -4, 'sale', $2)",
        milk,
        NOW - timedelta(days=2),
    )

    # When the weekly report runs for it and its email is sent
    result = await env.run(
        "stock_movement_report", {"business_id": shop, "period_end": NOW.date().isoformat()}
    )

    # Then the owner's email names the best seller and carries the signed link, not a path
    [mail] = env.resend.messages
    assert mail.to == ("owner@example.com",)
    text = mail.text or ""
    assert "1. Milk: 4 sold" in text and result["download_url"] in text
    assert str(env.state.settings.exports_dir) not in text and ".csv" not in text
    # And the link serves the stored CSV with a download name
    status, headers, body = await env.get(result["download_url"])
    assert status == 200
    assert headers["Content-Type"].startswith("text/csv")
    assert f'filename="{result["filename"]}"' in headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(body.decode())))
    assert rows == [
        ["sku", "name", "sold", "restocked", "other", "net", "stock_now"],
        ["MILK", "Milk", "4", "0", "0", "-4", "10"],
    ]


async def test_requested_pdf_report_is_emailed_to_the_requester_and_downloads(
    env: ShopEnv,
) -> None:
    # Given a shop with a sale, and a manager who asks for the PDF sales report
    manager = await env.owner("manager")
    shop = await env.business("corner-shop", None, "Corner Shop")
    await env.db.execute(
        "INSERT INTO sales (business_id, receipt_no, total, amount_paid, currency,"
        " payment_method, sold_at) VALUES ($1, 'R-1', 12.50, 12.50, 'GBP', 'cash', $2)",
        shop,
        NOW,
    )

    # When the report runs
    result = await env.run(
        "generate_sales_report",
        {
            "business_id": shop,
            "start_date": "2024-03-01",
            "end_date": "2024-03-31",
            "format": "pdf",
            "user_id": manager,
        },
    )

    # Then the manager's email links to a PDF of the period
    [mail] = env.resend.messages
    assert mail.to == ("manager@example.com",) and result["download_url"] in (mail.text or "")
    status, headers, body = await env.get(result["download_url"])
    assert status == 200 and headers["Content-Type"] == "application/pdf"
    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(body)).pages)
    assert "Corner Shop" in text and "2024-03-01 to 2024-03-31" in text
    assert "R-1" in text and "12.50" in text and "Page 1 of 1" in text


async def test_expired_and_tampered_links_are_refused(env: ShopEnv) -> None:
    # Given a stored report and its valid link
    shop = await env.business("corner-shop", None)
    result = await env.run(
        "generate_sales_report",
        {"business_id": shop, "start_date": "2024-03-01", "end_date": "2024-03-07"},
    )
    file_id = result["file_id"]
    signer = LinkSigner(SECRET)
    valid = result["download_url"]
    assert (await env.get(valid))[0] == 200
    token = valid.rsplit("/", 1)[1]
    body, mac = token.split(".")

    # When the link is past its expiry, Then it is refused as gone
    expired = signer.url(PUBLIC_URL, file_id, datetime.now(UTC) - timedelta(seconds=1))
    status, headers, answer = await env.get(expired)
    assert status == 410 and headers["Content-Type"].startswith("application/json")
    assert b"expired" in answer

    # When the link is tampered with (signature, or payload under the old signature), or
    # signed with another purpose's key, Then it is refused as invalid
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    other_file = signer.token(file_id + 1, datetime.now(UTC) + timedelta(days=1)).split(".")[0]
    foreign = forge(derive_key(SECRET, UNSUBSCRIBE), f"v1|report|{file_id}|4102444800")
    for bad in (f"{body}.{flipped}", f"{other_file}.{mac}", foreign, "garbage", "a.b.c"):
        status, headers, answer = await env.get(f"{PUBLIC_URL}/reports/{bad}")
        assert status == 403, bad
        assert headers["Content-Type"].startswith("application/json")
        assert b"invalid link" in answer

    # When the file itself has expired and been deleted, Then a still-signed link says gone
    deleted = await env.run(
        "delete_expired_report_files", {"now": (datetime.now(UTC) + timedelta(days=8)).isoformat()}
    )
    assert deleted == {"deleted": 1}
    assert (await env.get(valid))[0] == 410


async def test_a_retried_report_keeps_one_file_per_run(env: ShopEnv) -> None:
    # Given a report run whose job is run again under the same id (a retry after a crash)
    shop = await env.business("corner-shop", None)
    payload = {"business_id": shop, "start_date": "2024-03-01", "end_date": "2024-03-07"}
    first = await env.run("generate_sales_report", {**payload, "format": "csv"})
    run = await env.db.fetchrow("SELECT job_id FROM report_runs WHERE id = $1", first["run_id"])

    # When the same job stores its file again
    spec = Export(
        kind="sales_report",
        params=payload,
        fmt="csv",
        heading=Heading("Shop", "Sales report", "period"),
        tables=[Table("Sales", ("one",), "SELECT 1", ())],
        stem="sales-again",
    )
    again = await run_export(env.db, env.state.settings, run["job_id"], spec)

    # Then the run points at the new file and the first one is gone
    assert again["run_id"] == first["run_id"] and again["file_id"] != first["file_id"]
    ids = [r["id"] for r in await env.db.fetch("SELECT id FROM report_files")]
    assert ids == [again["file_id"]]
