"""Report and export tasks (queue ``reports``): sales and inventory reports (PDF, XLSX, CSV),
the two-sheet transactions workbook, table exports, and the expiry of stored files.

Every file is stored in PostgreSQL and reached through a signed, expiring link
(:mod:`.files`, :mod:`.links`). A payload's ``user_id`` asks for an email carrying that link
when the report is ready; the email's key is the run's, so a retried job sends it once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal

import asyncpg  # type: ignore[import-untyped]
from pydantic import BaseModel, Field, model_validator

from notifyhub.state import HandlerState
from qrunner import Context

from .catalog import QUEUE, fetch_business, registry, utc_now
from .files import delete_expired
from .runs import Export, Table, local_times, resolve_zone, run_export
from .writers import Format, Heading

log = logging.getLogger(__name__)

MAIL_KEY_TTL_S = 14 * 24 * 3600


class _Period(BaseModel):
    """One business between two local dates, both inclusive; ``user_id`` is emailed the link."""

    business_id: int
    start_date: date
    end_date: date
    user_id: int | None = None

    @model_validator(mode="after")
    def _ordered(self) -> _Period:
        if self.end_date < self.start_date:
            raise ValueError("end_date is before start_date")
        return self

    def bounds(self, zone: Any) -> tuple[datetime, datetime]:
        start = datetime.combine(self.start_date, time(0), zone)
        end = datetime.combine(self.end_date + timedelta(days=1), time(0), zone)
        return start, end

    @property
    def label(self) -> str:
        return f"{self.start_date} to {self.end_date}"


async def mail_link(
    ctx: Context[HandlerState], user_id: int | None, subject: str, result: dict[str, Any]
) -> None:
    """Email ``user_id`` the download link of a finished report (never a path: workers share
    no disk, and the link works from any of them)."""
    if user_id is None:
        return
    url = result["download_url"]
    if url is None:
        log.warning("report run %d: no signing secret, so no link to email", result["run_id"])
        return
    until = result["expires_at"][:10]
    body = (
        f"Your report is ready: {result['filename']} ({result['row_count']} rows).\n\n"
        f"Download it here: {url}\n\nThe link works until {until}.\n"
    )
    await ctx.client.enqueue(
        "send_email",
        {"user_id": user_id, "subject": subject, "body": body, "template": "report_ready"},
        key=f"report-ready:{result['run_id']}:{result['file_id']}",
        key_ttl_s=MAIL_KEY_TTL_S,
    )


def _money_totals(currencies: set[str], *amounts: Decimal) -> list[Any]:
    """Totals cells, or blanks when rows mix currencies (the summary splits them)."""
    if len(currencies) > 1:
        return ["" for _ in amounts] + ["mixed"]
    return [*amounts, next(iter(currencies), "")]


# -- sales report ------------------------------------------------------------------------------


class SalesReport(_Period):
    format: Format = "pdf"


_SALES = """
SELECT s.sold_at, s.receipt_no, c.name AS customer, s.payment_method,
       (SELECT coalesce(sum(i.quantity), 0) FROM sale_items i WHERE i.sale_id = s.id) AS items,
       s.total, s.amount_paid, s.currency
FROM sales s
LEFT JOIN customers c ON c.id = s.customer_id
WHERE s.business_id = $1 AND s.sold_at >= $2 AND s.sold_at < $3
ORDER BY s.sold_at, s.id
"""
_SALES_COLUMNS = (
    "sold_at",
    "receipt_no",
    "customer",
    "payment_method",
    "items",
    "total",
    "amount_paid",
    "currency",
)


class _SalesTally:
    """Running totals of the sales rows, overall and per (payment method, currency)."""

    def __init__(self) -> None:
        self.count = self.items = 0
        self.total = self.paid = Decimal(0)
        self.currencies: set[str] = set()
        self.by_method: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, Decimal(0)])

    def observe(self, r: asyncpg.Record) -> None:
        self.count += 1
        self.items += r["items"]
        self.total += r["total"]
        self.paid += r["amount_paid"]
        self.currencies.add(r["currency"])
        t = self.by_method[(r["payment_method"], r["currency"])]
        t[0] += 1
        t[1] += r["total"]

    def totals_row(self) -> list[Any]:
        money = _money_totals(self.currencies, self.total, self.paid)
        return ["Total", f"{self.count} sales", "", "", self.items, *money]

    def summary(self) -> list[tuple[str, list[list[Any]]]]:
        rows: list[list[Any]] = [["payment_method", "currency", "sales", "total"]]
        rows += [[m, c, n, s] for (m, c), (n, s) in sorted(self.by_method.items())]
        return [("Summary", rows)]


@registry.task(queue=QUEUE, payload=SalesReport, max_retries=2, backoff_base_s=60, timeout_s=1800)
async def generate_sales_report(ctx: Context[HandlerState], payload: SalesReport) -> dict[str, Any]:
    """One row per sale with a totals row; XLSX and PDF add totals per payment method."""
    async with ctx.state.db.acquire() as conn:
        biz = await fetch_business(conn, payload.business_id)
    zone = resolve_zone(biz["time_zone"])
    tally = _SalesTally()
    spec = Export(
        kind="sales_report",
        params=payload.model_dump(mode="json"),
        fmt=payload.format,
        heading=Heading(biz["name"], "Sales report", payload.label),
        tables=[
            Table(
                "Sales",
                _SALES_COLUMNS,
                _SALES,
                (payload.business_id, *payload.bounds(zone)),
                convert=local_times(zone),
                observe=tally.observe,
                totals=tally.totals_row,
            )
        ],
        stem=f"sales-{biz['slug']}-{payload.start_date}-{payload.end_date}",
        business_id=biz["id"],
        summary=tally.summary,
    )
    result = await run_export(ctx.state.db, ctx.state.settings, ctx.job_id, spec)
    result["totals"] = [
        {"payment_method": m, "currency": c, "sales": n, "total": str(s)}
        for (m, c), (n, s) in sorted(tally.by_method.items())
    ]
    await mail_link(ctx, payload.user_id, f"Sales report: {biz['name']}", result)
    return result


# -- inventory report --------------------------------------------------------------------------


class InventoryReport(BaseModel):
    """A snapshot of a business's active products; sold-out ones only when asked for."""

    business_id: int
    format: Format = "pdf"
    include_zero_stock: bool = False
    user_id: int | None = None
    now: datetime | None = None


_INVENTORY = """
SELECT sku, name, stock, reorder_level, unit_price, (stock * unit_price)::numeric(14, 2) AS value,
       currency, expiry_date
FROM products
WHERE business_id = $1 AND active AND ($2::boolean OR stock > 0)
ORDER BY sku
"""
_INVENTORY_COLUMNS = (
    "sku",
    "name",
    "stock",
    "reorder_level",
    "unit_price",
    "stock_value",
    "currency",
    "expiry_date",
)


class _StockTally:
    def __init__(self) -> None:
        self.products = self.units = self.low = 0
        self.value = Decimal(0)
        self.currencies: set[str] = set()

    def observe(self, r: asyncpg.Record) -> None:
        self.products += 1
        self.units += r["stock"]
        self.low += r["stock"] <= r["reorder_level"]
        self.value += r["value"]
        self.currencies.add(r["currency"])

    def totals_row(self) -> list[Any]:
        value, currency = _money_totals(self.currencies, self.value)
        return ["Total", f"{self.products} products", self.units, "", "", value, currency, ""]


@registry.task(
    queue=QUEUE, payload=InventoryReport, max_retries=2, backoff_base_s=60, timeout_s=1800
)
async def generate_inventory_report(
    ctx: Context[HandlerState], payload: InventoryReport
) -> dict[str, Any]:
    async with ctx.state.db.acquire() as conn:
        biz = await fetch_business(conn, payload.business_id)
    local = utc_now(payload.now).astimezone(resolve_zone(biz["time_zone"]))
    tally = _StockTally()
    spec = Export(
        kind="inventory_report",
        params=payload.model_dump(mode="json", exclude={"now"}),
        fmt=payload.format,
        heading=Heading(
            biz["name"],
            "Inventory report" + ("" if payload.include_zero_stock else " (in stock only)"),
            f"stock on {local:%Y-%m-%d %H:%M}",
        ),
        tables=[
            Table(
                "Inventory",
                _INVENTORY_COLUMNS,
                _INVENTORY,
                (biz["id"], payload.include_zero_stock),
                observe=tally.observe,
                totals=tally.totals_row,
            )
        ],
        stem=f"inventory-{biz['slug']}-{local:%Y-%m-%d}",
        business_id=biz["id"],
    )
    result = await run_export(ctx.state.db, ctx.state.settings, ctx.job_id, spec)
    result["totals"] = {
        "products": tally.products,
        "units": tally.units,
        "at_or_below_reorder_level": tally.low,
        "value": str(tally.value),
    }
    await mail_link(ctx, payload.user_id, f"Inventory report: {biz['name']}", result)
    return result


# -- transactions workbook ---------------------------------------------------------------------


class TransactionsExport(_Period):
    """Sales and the payments taken for them, as an XLSX with a sheet of each."""

    format: Literal["xlsx"] = "xlsx"


_PAYMENTS = """
SELECT s.sold_at, s.receipt_no, c.name AS customer, s.payment_method, s.amount_paid,
       (s.total - s.amount_paid) AS balance_due, s.currency
FROM sales s
LEFT JOIN customers c ON c.id = s.customer_id
WHERE s.business_id = $1 AND s.sold_at >= $2 AND s.sold_at < $3 AND s.amount_paid > 0
ORDER BY s.sold_at, s.id
"""
_PAYMENT_COLUMNS = (
    "paid_at",
    "receipt_no",
    "customer",
    "payment_method",
    "amount_paid",
    "balance_due",
    "currency",
)


class _PaymentTally:
    def __init__(self) -> None:
        self.count = 0
        self.paid = self.due = Decimal(0)
        self.currencies: set[str] = set()

    def observe(self, r: asyncpg.Record) -> None:
        self.count += 1
        self.paid += r["amount_paid"]
        self.due += r["balance_due"]
        self.currencies.add(r["currency"])

    def totals_row(self) -> list[Any]:
        money = _money_totals(self.currencies, self.paid, self.due)
        return ["Total", f"{self.count} payments", "", "", *money]


@registry.task(
    queue=QUEUE, payload=TransactionsExport, max_retries=2, backoff_base_s=60, timeout_s=1800
)
async def export_transactions(
    ctx: Context[HandlerState], payload: TransactionsExport
) -> dict[str, Any]:
    async with ctx.state.db.acquire() as conn:
        biz = await fetch_business(conn, payload.business_id)
    zone = resolve_zone(biz["time_zone"])
    args = (biz["id"], *payload.bounds(zone))
    sales, payments = _SalesTally(), _PaymentTally()
    spec = Export(
        kind="transactions_export",
        params=payload.model_dump(mode="json"),
        fmt=payload.format,
        heading=Heading(biz["name"], "Transactions", payload.label),
        tables=[
            Table(
                "Sales",
                _SALES_COLUMNS,
                _SALES,
                args,
                convert=local_times(zone),
                observe=sales.observe,
                totals=sales.totals_row,
            ),
            Table(
                "Payments",
                _PAYMENT_COLUMNS,
                _PAYMENTS,
                args,
                convert=local_times(zone),
                observe=payments.observe,
                totals=payments.totals_row,
            ),
        ],
        stem=f"transactions-{biz['slug']}-{payload.start_date}-{payload.end_date}",
        business_id=biz["id"],
    )
    result = await run_export(ctx.state.db, ctx.state.settings, ctx.job_id, spec)
    result["totals"] = {
        "sales": sales.count,
        "sales_total": str(sales.total),
        "payments": payments.count,
        "paid": str(payments.paid),
    }
    await mail_link(ctx, payload.user_id, f"Transactions: {biz['name']}", result)
    return result


# -- table exports -----------------------------------------------------------------------------

ExportTable = Literal["orders", "products", "customers"]

#: Whitelisted queries: the table name in a payload selects one, it never reaches SQL itself.
_EXPORTS: dict[str, tuple[tuple[str, ...], str]] = {
    "orders": (
        ("number", "placed_at", "status", "customer_email", "items", "total", "currency"),
        "SELECT o.number, o.placed_at, o.status, o.customer_email,"
        " (SELECT coalesce(sum(i.quantity), 0) FROM order_items i WHERE i.order_id = o.id),"
        " o.total, o.currency FROM orders o"
        " WHERE o.business_id = $1 AND o.placed_at >= $2 AND o.placed_at < $3"
        " ORDER BY o.placed_at, o.id",
    ),
    "products": (
        (
            "sku",
            "name",
            "unit_price",
            "currency",
            "stock",
            "reorder_level",
            "expiry_date",
            "active",
        ),
        "SELECT sku, name, unit_price, currency, stock, reorder_level, expiry_date, active"
        " FROM products WHERE business_id = $1 ORDER BY sku",
    ),
    "customers": (
        (
            "code",
            "name",
            "email",
            "phone",
            "credit_limit",
            "created_at",
            "purchases",
            "last_purchase_at",
            "purchases_total",
        ),
        "SELECT c.code, c.name, c.email, c.phone, c.credit_limit, c.created_at,"
        " count(s.id), max(s.sold_at), coalesce(sum(s.total), 0)"
        " FROM customers c LEFT JOIN sales s ON s.customer_id = c.id"
        "  AND s.sold_at >= $2 AND s.sold_at < $3"
        " WHERE c.business_id = $1 GROUP BY c.id ORDER BY c.name, c.id",
    ),
}


class TableExport(BaseModel):
    """Export a business's orders, products or customers. The optional dates bound orders by
    placing time and customers' purchase history; products are always a current snapshot."""

    table: ExportTable
    business_id: int
    format: Format = "csv"
    start_date: date | None = None
    end_date: date | None = None
    user_id: int | None = None


@registry.task(queue=QUEUE, payload=TableExport, max_retries=2, backoff_base_s=60, timeout_s=1800)
async def export_table(ctx: Context[HandlerState], payload: TableExport) -> dict[str, Any]:
    async with ctx.state.db.acquire() as conn:
        biz = await fetch_business(conn, payload.business_id)
    zone = resolve_zone(biz["time_zone"])
    start = (
        datetime.combine(payload.start_date, time(0), zone)
        if payload.start_date
        else datetime(1970, 1, 1, tzinfo=zone)
    )
    end = (
        datetime.combine(payload.end_date + timedelta(days=1), time(0), zone)
        if payload.end_date
        else datetime(9999, 1, 1, tzinfo=zone)
    )
    columns, sql = _EXPORTS[payload.table]
    args = (
        (payload.business_id,) if payload.table == "products" else (payload.business_id, start, end)
    )
    period = "all dates"
    if payload.start_date or payload.end_date:
        period = f"{payload.start_date or 'start'} to {payload.end_date or 'today'}"
    spec = Export(
        kind=f"export_{payload.table}",
        params=payload.model_dump(mode="json"),
        fmt=payload.format,
        heading=Heading(biz["name"], payload.table.title(), period),
        tables=[Table(payload.table.title(), columns, sql, args, convert=local_times(zone))],
        stem=f"{payload.table}-{biz['slug']}",
        business_id=biz["id"],
    )
    result = await run_export(ctx.state.db, ctx.state.settings, ctx.job_id, spec)
    await mail_link(ctx, payload.user_id, f"{payload.table.title()} export: {biz['name']}", result)
    return result


# -- stored file expiry ------------------------------------------------------------------------


class DeleteExpiredReportFiles(BaseModel):
    batch_size: int = Field(default=100, ge=1, le=10_000)
    max_batches: int = Field(default=100, ge=1)
    now: datetime | None = None


@registry.task(queue=QUEUE, payload=DeleteExpiredReportFiles, max_retries=2, timeout_s=1800)
async def delete_expired_report_files(
    ctx: Context[HandlerState], payload: DeleteExpiredReportFiles
) -> dict[str, Any]:
    """Files whose links have expired are deleted in small batches (each file's chunks go with
    it); a run that hits ``max_batches`` leaves the rest to the next one."""
    now = utc_now(payload.now)
    deleted = batches = 0
    while batches < payload.max_batches:
        n = await delete_expired(ctx.state.db, now, payload.batch_size)
        deleted += n
        batches += 1
        if n < payload.batch_size:
            break
    if deleted:
        log.info("deleted %d expired report file(s)", deleted)
    return {"deleted": deleted}
