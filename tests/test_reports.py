"""Reports, exports and inventory alerts through a real worker, PostgreSQL and Redis.

Given a shop with sales, customers and stock, when the report tasks run, then the stored files
hold exactly the rows of the requested business and period, every run is recorded, and
inventory alerts go out as one digest per business per day however often the checks run.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import asyncpg  # type: ignore[import-untyped]
import pypdf
import pytest
from notifyhub.reports import registry as reports_registry
from notifyhub.reports.files import read_file
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


async def read_csv(db: asyncpg.Pool, file_id: int) -> list[list[str]]:
    data = await read_file(db, file_id)
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


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
    rows = await read_csv(env.db, as_csv["file_id"])
    assert rows[0][:2] == ["sold_at", "receipt_no"]
    assert [r[1] for r in rows[1:]] == ["R-1", "R-2", "R-3"]
    assert as_csv["row_count"] == 3
    assert as_csv["totals"] == [
        {"payment_method": "card", "currency": "GBP", "sales": 2, "total": "10.00"},
        {"payment_method": "cash", "currency": "GBP", "sales": 1, "total": "10.00"},
    ]
    # And the XLSX has the same rows on its data sheet, plus a summary sheet
    with zipfile.ZipFile(io.BytesIO(await read_file(env.db, as_xlsx["file_id"]))) as book:
        data = book.read("xl/worksheets/sheet1.xml").decode()
        assert "xl/worksheets/sheet2.xml" in book.namelist()
    assert len(re.findall(r"<row ", data)) == 5  # header, three sales, totals
    assert all(f">{r}<" in data for r in ("R-1", "R-2", "R-3")) and "R-late" not in data
    # And both runs are recorded with their stored files, and nothing is left on local disk
    runs = await env.db.fetch("SELECT status, row_count, file_id FROM report_runs ORDER BY id")
    assert [(r["status"], r["row_count"], r["file_id"]) for r in runs] == [
        ("succeeded", 3, as_csv["file_id"]),
        ("succeeded", 3, as_xlsx["file_id"]),
    ]
    assert not [p for p in env.state.settings.exports_dir.rglob("*") if p.is_file()]


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
    rows = await read_csv(env.db, result["file_id"])
    assert result["row_count"] == 2500 and len(rows) == 2501
    assert rows[1][0] == "C00000" and rows[1][6] == "1" and rows[1][8] == "12.00"
    assert rows[2][6] == "0"


async def test_unknown_business_is_dead_lettered_without_retries(env: Env) -> None:
    await env.run("export_table", {"table": "orders", "business_id": 999}, expect="dead")


async def test_low_stock_is_one_digest_per_business_per_day(env: Env) -> None:
    # Given 25 products at or below their reorder level (one sold out), one well stocked,
    # and a low product in an ownerless shop
    owner = await add_owner(env.db, "owner")
    shop = await add_business(env.db, "corner-shop", owner)
    ownerless = await add_business(env.db, "ownerless", None)
    for i in range(24):
        await add_product(env.db, shop, f"LOW{i:02d}", 2, 5)
    await add_product(env.db, shop, "OUT", 0, 0)
    await add_product(env.db, shop, "FINE", 50, 5)
    await add_product(env.db, ownerless, "LOW", 0, 5)

    # When the 6-hourly check runs twice on the same day
    first = await env.run("check_low_stock", {"now": NOW.isoformat()})
    await env.run("check_low_stock", {"now": (NOW + timedelta(hours=6)).isoformat()})

    # Then the owner got one digest listing 20 products, sold-out first, and counting the rest
    assert first == {"businesses_alerted": 1, "low_stock_products": 25, "sold_out_products": 1}
    assert [key for _, key in env.sent] == [f"low-stock:{shop}:2024-03-11"]
    mail = env.sent[0][0]
    assert mail["user_id"] == owner and mail["subject"].startswith("25 product(s) low on stock")
    listed = [line for line in mail["body"].splitlines() if line.startswith("  - ")]
    assert len(listed) == 20 and "OUT" in listed[0] and "SOLD OUT" in listed[0]
    assert "... and 5 more" in mail["body"] and "FINE" not in mail["body"]

    # When it runs on the next day, the products still being low
    await env.run("check_low_stock", {"now": (NOW + timedelta(days=1)).isoformat()})

    # Then one more digest goes out
    assert len(env.sent) == 2


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
        "SELECT params, row_count, file_id FROM report_runs WHERE status = 'succeeded' ORDER BY id"
    )
    assert len(runs) == 2
    shop_run = next(r for r in runs if r["params"]["business_id"] == shop)
    rows = await read_csv(env.db, shop_run["file_id"])
    assert rows[1:] == [
        ["MILK", "Product MILK", "5", "12", "0", "7", "10"],
        ["BREAD", "Product BREAD", "1", "0", "0", "-1", "10"],
    ]
    # And the owner got one summary email naming the best seller
    assert len(env.sent) == 1 and "1. Product MILK: 5 sold" in env.sent[0][0]["body"]


def pdf_pages(data: bytes) -> list[str]:
    return [page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages]


async def test_sales_pdf_is_a_paged_table_with_totals(env: Env) -> None:
    # Given 60 card and cash sales in March, and one in April
    shop = await add_business(env.db, "corner-shop", None)
    await env.db.execute("UPDATE businesses SET name = 'Corner Shop Ltd' WHERE id = $1", shop)
    for i in range(60):
        at = datetime(2024, 3, 1, 9, tzinfo=UTC) + timedelta(hours=i)
        await add_sale(env.db, shop, f"R-{i:03d}", at, f"{i + 1}.25", ("card", "cash")[i % 2])
    await add_sale(env.db, shop, "R-april", datetime(2024, 4, 2, tzinfo=UTC), "999.00")

    # When the March sales report is asked for as a PDF
    result = await env.run(
        "generate_sales_report",
        {"business_id": shop, "start_date": "2024-03-01", "end_date": "2024-03-31"},
    )

    # Then every page carries the business, the period and "Page N of M"
    pages = pdf_pages(await read_file(env.db, result["file_id"]))
    assert result["format"] == "pdf" and result["row_count"] == 60 and len(pages) >= 2
    for n, text in enumerate(pages, 1):
        assert "Corner Shop Ltd" in text and "Sales report - 2024-03-01 to 2024-03-31" in text
        assert f"Page {n} of {len(pages)}" in text
        assert "receipt_no" in text  # the column headings repeat on every page
    # And the table holds every sale of the period once, then the totals
    text = "\n".join(pages)
    assert all(text.count(f"R-{i:03d}") == 1 for i in range(60)) and "R-april" not in text
    total = sum(Decimal(f"{i + 1}.25") for i in range(60))  # 1845.00
    assert re.search(rf"Total 60 sales 0 {total} {total} GBP", text), text[-600:]
    card = sum(Decimal(f"{i + 1}.25") for i in range(0, 60, 2))
    assert f"card GBP 30 {card}" in text and f"cash GBP 30 {total - card}" in text


async def test_inventory_pdf_leaves_out_sold_out_products_unless_asked(env: Env) -> None:
    # Given 40 stocked products and two sold out
    shop = await add_business(env.db, "deli", None)
    await env.db.execute("UPDATE businesses SET name = 'The Deli' WHERE id = $1", shop)
    for i in range(40):
        await add_product(env.db, shop, f"P{i:03d}", i + 1, 5)
    await add_product(env.db, shop, "ZERO-A", 0, 5)
    await add_product(env.db, shop, "ZERO-B", 0, 0)

    # When the inventory report runs with and without sold-out products
    default = await env.run(
        "generate_inventory_report", {"business_id": shop, "now": NOW.isoformat()}
    )
    everything = await env.run(
        "generate_inventory_report",
        {"business_id": shop, "include_zero_stock": True, "now": NOW.isoformat()},
    )

    # Then the default leaves them out and the totals count units and value at 2.50 each
    units = sum(range(1, 41))  # 820
    assert default["totals"] == {
        "products": 40,
        "units": units,
        "at_or_below_reorder_level": 5,
        "value": "2050.00",
    }
    pages = pdf_pages(await read_file(env.db, default["file_id"]))
    text = "\n".join(pages)
    assert len(pages) >= 2 and f"Page 2 of {len(pages)}" in pages[1]
    assert "The Deli" in pages[0] and "stock on 2024-03-11 06:00" in pages[0]
    assert "ZERO" not in text and "P039" in text
    assert re.search(rf"Total 40 products {units} 2050.00 GBP", text), text[-400:]
    # And with include_zero_stock they are listed, changing only the product count
    text = "\n".join(pdf_pages(await read_file(env.db, everything["file_id"])))
    assert "ZERO-A" in text and "ZERO-B" in text
    assert re.search(rf"Total 42 products {units} 2050.00 GBP", text)


def column_index(ref: str) -> int:
    """0 for "A1", 27 for "AB3": blank cells are absent from the XML, so positions come from
    the cell references."""
    index = 0
    for ch in re.match(r"[A-Z]+", ref).group(0):  # type: ignore[union-attr]
        index = index * 26 + ord(ch) - ord("A") + 1
    return index - 1


def xlsx_sheets(data: bytes) -> dict[str, list[list[str]]]:
    """Every sheet of a workbook as rows of cell texts, read from its XML parts."""
    ns = {
        "m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main",
        "r": "http://schemas.openxmlformats.org/officeDocument/2006/relationships",
    }
    with zipfile.ZipFile(io.BytesIO(data)) as book:
        names = book.namelist()
        shared = []
        if "xl/sharedStrings.xml" in names:
            root = ElementTree.fromstring(book.read("xl/sharedStrings.xml"))
            shared = ["".join(t.text or "" for t in si.iter(f"{{{ns['m']}}}t")) for si in root]
        rels = ElementTree.fromstring(book.read("xl/_rels/workbook.xml.rels"))
        targets = {r.get("Id"): r.get("Target") for r in rels}
        workbook = ElementTree.fromstring(book.read("xl/workbook.xml"))
        sheets: dict[str, list[list[str]]] = {}
        for sheet in workbook.iterfind("m:sheets/m:sheet", ns):
            target = targets[sheet.get(f"{{{ns['r']}}}id")]
            root = ElementTree.fromstring(book.read(f"xl/{target}"))
            rows = []
            for row in root.iterfind("m:sheetData/m:row", ns):
                cells: dict[int, str] = {}
                for c in row.iterfind("m:c", ns):
                    v = c.find("m:v", ns)
                    if c.get("t") == "s" and v is not None:
                        text = shared[int(v.text or 0)]
                    elif c.get("t") == "inlineStr":
                        text = "".join(t.text or "" for t in c.iter(f"{{{ns['m']}}}t"))
                    else:
                        text = "" if v is None else v.text or ""
                    cells[column_index(str(c.get("r")))] = text
                rows.append([cells.get(i, "") for i in range(max(cells, default=-1) + 1)])
            sheets[str(sheet.get("name"))] = rows
    return sheets


async def test_transactions_workbook_has_a_sales_and_a_payments_sheet(env: Env) -> None:
    # Given paid sales, a sale on credit (nothing paid) and a part-paid one, and another month's
    shop = await add_business(env.db, "corner-shop", None)
    day = datetime(2024, 3, 5, 12, tzinfo=UTC)
    await add_sale(env.db, shop, "R-1", day, "10.00", "cash")
    await add_sale(env.db, shop, "R-2", day + timedelta(hours=1), "25.50", "card")
    await env.db.execute(
        "INSERT INTO sales (business_id, receipt_no, total, amount_paid, currency,"
        " payment_method, sold_at) VALUES ($1, 'R-3', 40.00, 0, 'GBP', 'credit', $2),"
        " ($1, 'R-4', 30.00, 12.00, 'GBP', 'mobile_money', $3)",
        shop,
        day + timedelta(hours=2),
        day + timedelta(hours=3),
    )
    await add_sale(env.db, shop, "R-feb", datetime(2024, 2, 20, tzinfo=UTC), "5.00")

    # When March's transactions are exported
    result = await env.run(
        "export_transactions",
        {"business_id": shop, "start_date": "2024-03-01", "end_date": "2024-03-31"},
    )

    # Then the workbook has both sheets: every sale, and the payments actually taken
    sheets = xlsx_sheets(await read_file(env.db, result["file_id"]))
    assert list(sheets) == ["Sales", "Payments"]
    sales, payments = sheets["Sales"], sheets["Payments"]
    assert sales[0][:2] == ["sold_at", "receipt_no"]
    assert [r[1] for r in sales[1:-1]] == ["R-1", "R-2", "R-3", "R-4"]
    assert sales[-1][:2] == ["Total", "4 sales"]
    assert [float(x) for x in sales[-1][5:7]] == [105.5, 47.5] and sales[-1][7] == "GBP"
    assert payments[0] == [
        "paid_at",
        "receipt_no",
        "customer",
        "payment_method",
        "amount_paid",
        "balance_due",
        "currency",
    ]
    assert [(r[1], r[3], float(r[4]), float(r[5])) for r in payments[1:-1]] == [
        ("R-1", "cash", 10.0, 0.0),
        ("R-2", "card", 25.5, 0.0),
        ("R-4", "mobile_money", 12.0, 18.0),
    ]
    assert payments[-1][:2] == ["Total", "3 payments"]
    assert [float(x) for x in payments[-1][4:6]] == [47.5, 18.0]
    assert result["table_rows"] == {"Sales": 4, "Payments": 3}
    assert result["totals"] == {"sales": 4, "sales_total": "105.50", "payments": 3, "paid": "47.50"}
