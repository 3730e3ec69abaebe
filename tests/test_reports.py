"""Reports, exports and inventory alerts through a real worker, PostgreSQL and Redis.

Given a shop with sales, customers and stock, when the report tasks run, then the files hold
exactly the rows of the requested business and period, every run is recorded, and inventory
alerts go out once per product (or business) per day however often the checks run.
"""

from __future__ import annotations

import csv
import re
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from notifyhub.reports import registry as reports_registry
from pydantic import BaseModel
from redis.asyncio import Redis

from qrunner import Context
from tests.handler_fixtures import EmailIn, HandlerEnv, handler_stack, standin_registry

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2024, 3, 11, 6, 0, tzinfo=UTC)  # Monday 06:00 UTC: the weekly report slot


@dataclass
class Env(HandlerEnv):
    sent: list[tuple[dict[str, Any], str | None]] = field(default_factory=list)


@pytest.fixture
async def env(database_url: str, redis: Redis, tmp_path: Path) -> AsyncIterator[Env]:
    e: Env

    async def record(name: str, ctx: Context[Any], payload: BaseModel) -> None:
        e.sent.append((payload.model_dump(), ctx.job.key))

    standins = standin_registry("email_reports", {"send_email": EmailIn}, record)
    async with handler_stack(database_url, redis, tmp_path, reports_registry, standins) as stack:
        e = Env(*stack)
        yield e


async def add_business(
    db: asyncpg.Pool, slug: str, owner: int | None, zone: str = "Europe/London"
) -> int:
    bid: int = await db.fetchval(
        "INSERT INTO businesses (slug, name, owner_user_id, time_zone, currency)"
        " VALUES ($1, $2, $3, $4, 'GBP') RETURNING id",
        slug,
        slug.title(),
        owner,
        zone,
    )
    return bid


async def add_owner(db: asyncpg.Pool, name: str) -> int:
    uid: int = await db.fetchval(
        "INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id", name, f"{name}@example.com"
    )
    return uid


async def add_sale(
    db: asyncpg.Pool,
    bid: int,
    receipt: str,
    at: datetime,
    total: str,
    method: str = "card",
    customer: int | None = None,
) -> None:
    await db.execute(
        "INSERT INTO sales (business_id, receipt_no, customer_id, total, amount_paid, currency,"
        " payment_method, sold_at) VALUES ($1, $2, $3, $4::numeric, $4::numeric, 'GBP', $5, $6)",
        bid,
        receipt,
        customer,
        total,
        method,
        at,
    )


async def add_product(
    db: asyncpg.Pool, bid: int, sku: str, stock: int, reorder: int, expiry: date | None = None
) -> int:
    pid: int = await db.fetchval(
        "INSERT INTO products (business_id, sku, name, unit_price, currency, stock, reorder_level,"
        " expiry_date) VALUES ($1, $2, $3, 2.50, 'GBP', $4, $5, $6) RETURNING id",
        bid,
        sku,
        f"Product {sku}",
        stock,
        reorder,
        expiry,
    )
    return pid


def read_csv(path: str) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


async def test_sales_report_holds_the_period_of_one_business_in_csv_and_xlsx(env: Env) -> None:
    # Given sales of one shop inside and outside March 1-7 (London time), and another shop's
    shop = await add_business(env.db, "corner-shop", None)
    other = await add_business(env.db, "other-shop", None)
    london_midnight = datetime(2024, 3, 1, 0, 0, tzinfo=UTC)  # GMT in March before the 31st
    await add_sale(env.db, shop, "R-1", london_midnight, "10.00", "cash")
    await add_sale(env.db, shop, "R-2", datetime(2024, 3, 4, 12, 0, tzinfo=UTC), "5.50", "card")
    await add_sale(env.db, shop, "R-3", datetime(2024, 3, 7, 23, 59, tzinfo=UTC), "4.50", "card")
    await add_sale(env.db, shop, "R-late", datetime(2024, 3, 8, 0, 0, tzinfo=UTC), "99.00")
    await add_sale(env.db, shop, "R-early", london_midnight - timedelta(seconds=1), "99.00")
    await add_sale(env.db, other, "R-1", datetime(2024, 3, 2, 12, 0, tzinfo=UTC), "7.00")
    period = {"business_id": shop, "start_date": "2024-03-01", "end_date": "2024-03-07"}

    # When a CSV and an XLSX report are generated
    as_csv = await env.run("generate_sales_report", {**period, "format": "csv"})
    as_xlsx = await env.run("generate_sales_report", {**period, "format": "xlsx"})

    # Then the CSV has a header and exactly the three sales of the period, oldest first
    rows = read_csv(as_csv["file_path"])
    assert rows[0][:2] == ["sold_at", "receipt_no"]
    assert [r[1] for r in rows[1:]] == ["R-1", "R-2", "R-3"]
    assert as_csv["row_count"] == 3
    assert as_csv["totals"] == [
        {"payment_method": "card", "currency": "GBP", "sales": 2, "total": "10.00"},
        {"payment_method": "cash", "currency": "GBP", "sales": 1, "total": "10.00"},
    ]
    # And the XLSX has the same rows on its data sheet, plus a summary sheet
    with zipfile.ZipFile(as_xlsx["file_path"]) as book:
        data = book.read("xl/worksheets/sheet1.xml").decode()
        assert "xl/worksheets/sheet2.xml" in book.namelist()
    assert len(re.findall(r"<row ", data)) == 4
    assert all(f">{r}<" in data for r in ("R-1", "R-2", "R-3")) and "R-late" not in data
    # And both runs are recorded, with no partial file left behind
    runs = await env.db.fetch("SELECT status, row_count, file_path FROM report_runs ORDER BY id")
    assert [(r["status"], r["row_count"]) for r in runs] == [("succeeded", 3), ("succeeded", 3)]
    assert not list(Path(as_csv["file_path"]).parent.glob("*.part"))


async def test_customer_export_streams_every_customer_with_purchase_history(env: Env) -> None:
    # Given more customers than one fetch round trip returns
    shop = await add_business(env.db, "big-shop", None)
    await env.db.executemany(
        "INSERT INTO customers (business_id, code, name) VALUES ($1, $2, $3)",
        [(shop, f"C{i:05d}", f"Customer {i:05d}") for i in range(2500)],
    )
    first = await env.db.fetchval("SELECT id FROM customers WHERE code = 'C00000'")
    await add_sale(env.db, shop, "R-1", NOW, "12.00", customer=first)

    # When the customer table is exported
    result = await env.run("export_table", {"table": "customers", "business_id": shop})

    # Then every customer is in the file, with the one purchase on the first
    rows = read_csv(result["file_path"])
    assert result["row_count"] == 2500 and len(rows) == 2501
    assert rows[1][0] == "C00000" and rows[1][6] == "1" and rows[1][8] == "12.00"
    assert rows[2][6] == "0"


async def test_unknown_business_is_dead_lettered_without_retries(env: Env) -> None:
    await env.run("export_table", {"table": "orders", "business_id": 999}, expect="dead")


async def test_low_stock_alerts_once_per_product_per_day(env: Env) -> None:
    # Given two products at or below their reorder level, one well stocked, one in an
    # ownerless shop
    owner = await add_owner(env.db, "owner")
    shop = await add_business(env.db, "corner-shop", owner)
    ownerless = await add_business(env.db, "ownerless", None)
    low = await add_product(env.db, shop, "LOW", 2, 5)
    out = await add_product(env.db, shop, "OUT", 0, 0)
    await add_product(env.db, shop, "FINE", 50, 5)
    await add_product(env.db, ownerless, "LOW", 0, 5)

    # When the 6-hourly check runs twice on the same day
    first = await env.run("check_low_stock", {"now": NOW.isoformat()})
    await env.run("check_low_stock", {"now": (NOW + timedelta(hours=6)).isoformat()})

    # Then each low product is alerted once, to the owner
    assert first == {"low_stock_products": 2}
    assert sorted(key or "" for _, key in env.sent) == [
        f"low-stock:{low}:2024-03-11",
        f"low-stock:{out}:2024-03-11",
    ]
    assert {p["user_id"] for p, _ in env.sent} == {owner}

    # When it runs on the next day, the products still being low
    await env.run("check_low_stock", {"now": (NOW + timedelta(days=1)).isoformat()})

    # Then they are alerted again, once
    assert len(env.sent) == 4


async def test_expiring_products_one_email_per_business(env: Env) -> None:
    owner = await add_owner(env.db, "owner")
    shop = await add_business(env.db, "deli", owner)
    await add_product(env.db, shop, "MILK", 10, 0, date(2024, 3, 13))
    await add_product(env.db, shop, "OLD", 3, 0, date(2024, 3, 1))
    await add_product(env.db, shop, "TINS", 10, 0, date(2025, 1, 1))
    await add_product(env.db, shop, "GONE", 0, 0, date(2024, 3, 12))  # none left to waste

    result = await env.run("check_expiring_products", {"now": NOW.isoformat(), "days_threshold": 7})
    await env.run("check_expiring_products", {"now": (NOW + timedelta(hours=1)).isoformat()})

    assert result == {"businesses_alerted": 1, "expiring_products": 2, "expired_products": 1}
    assert len(env.sent) == 1
    text = env.sent[0][0]["body"]
    assert "OLD" in text and "EXPIRED" in text and "MILK" in text and "TINS" not in text


async def test_weekly_stock_movement_report_per_business_from_the_cron_slot(env: Env) -> None:
    # Given movements in the week before the Monday slot, and one after it
    owner = await add_owner(env.db, "owner")
    shop = await add_business(env.db, "deli", owner)
    await add_business(env.db, "empty", None)
    milk = await add_product(env.db, shop, "MILK", 10, 0)
    bread = await add_product(env.db, shop, "BREAD", 10, 0)
    for pid, qty, reason, at in [
        (milk, -3, "sale", NOW - timedelta(days=2)),
        (milk, -2, "sale", NOW - timedelta(days=6)),
        (milk, 12, "restock", NOW - timedelta(days=3)),
        (bread, -1, "sale", NOW - timedelta(days=1)),
        (bread, -9, "sale", NOW + timedelta(hours=1)),  # next week's
    ]:
        await env.db.execute(
            "INSERT INTO stock_movements (product_id, quantity, reason, created_at)"
            " VALUES ($1, $2, $3, $4)",
            pid,
            qty,
            reason,
            at,
        )

    # When the cron fires the weekly task (payload {} plus the slot)
    fan_out = await env.run("stock_movement_report", {"scheduled_for": NOW.isoformat()})

    # Then one report per business was produced, the shop's listing last week's movements
    assert fan_out == {"period_end": "2024-03-11", "businesses": 2}
    runs = await env.db.fetch(
        "SELECT params, row_count, file_path FROM report_runs WHERE status = 'succeeded'"
        " ORDER BY id"
    )
    assert len(runs) == 2
    shop_run = next(r for r in runs if r["params"]["business_id"] == shop)
    rows = read_csv(shop_run["file_path"])
    assert rows[1:] == [
        ["MILK", "Product MILK", "5", "12", "0", "7", "10"],
        ["BREAD", "Product BREAD", "1", "0", "0", "-1", "10"],
    ]
    # And the owner got one summary email naming the best seller
    assert len(env.sent) == 1 and "1. Product MILK: 5 sold" in env.sent[0][0]["body"]
