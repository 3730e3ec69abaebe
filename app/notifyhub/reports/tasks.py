"""Report, export and inventory-alert tasks (queue ``reports``).

Alerts are enqueued as ``send_email`` jobs to the business owner with keys built from the
product (or business) and the business's local date, so the 6-hourly and daily checks alert
once per day however often they run or are retried.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import asyncpg  # type: ignore[import-untyped]
from pydantic import BaseModel, Field, model_validator

from notifyhub.state import HandlerState
from qrunner import Context, JobSpec, Permanent, Registry

from .runs import Export, local_times, resolve_zone, run_export
from .writers import Format

log = logging.getLogger(__name__)

registry = Registry()

QUEUE = "reports"
ALERT_KEY_TTL_S = 48 * 3600
BATCH = 500
#: Products listed in one expiry email; the rest are counted ("and 12 more").
MAX_LISTED = 20


def exports_dir(ctx: Context[HandlerState]) -> Path:
    return ctx.state.settings.exports_dir


def _now(override: datetime | None) -> datetime:
    if override is None:
        return datetime.now(UTC)
    return override if override.tzinfo else override.replace(tzinfo=UTC)


async def _business(conn: asyncpg.Connection, business_id: int) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT id, slug, name, time_zone, owner_user_id, currency FROM businesses WHERE id = $1",
        business_id,
    )
    if row is None:
        raise Permanent(f"business {business_id} does not exist")
    return row


# -- sales report ------------------------------------------------------------------------------


class SalesReport(BaseModel):
    """Sales of one business between two local dates, both inclusive."""

    business_id: int
    start_date: date
    end_date: date
    format: Format = "csv"

    @model_validator(mode="after")
    def _ordered(self) -> SalesReport:
        if self.end_date < self.start_date:
            raise ValueError("end_date is before start_date")
        return self


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


@registry.task(queue=QUEUE, payload=SalesReport, max_retries=2, backoff_base_s=60, timeout_s=1800)
async def generate_sales_report(ctx: Context[HandlerState], payload: SalesReport) -> dict[str, Any]:
    """One row per sale; the XLSX adds a summary sheet of totals per payment method."""
    async with ctx.state.db.acquire() as conn:
        biz = await _business(conn, payload.business_id)
    zone = resolve_zone(biz["time_zone"])
    start = datetime.combine(payload.start_date, time(0), zone)
    end = datetime.combine(payload.end_date + timedelta(days=1), time(0), zone)
    totals: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, Decimal(0)])

    def observe(r: asyncpg.Record) -> None:
        t = totals[(r["payment_method"], r["currency"])]
        t[0] += 1
        t[1] += r["total"]

    def summary() -> tuple[str, list[list[Any]]]:
        rows: list[list[Any]] = [["payment_method", "currency", "sales", "total"]]
        rows += [[m, c, n, s] for (m, c), (n, s) in sorted(totals.items())]
        return "Summary", rows

    spec = Export(
        kind="sales_report",
        params=payload.model_dump(mode="json"),
        fmt=payload.format,
        columns=_SALES_COLUMNS,
        sql=_SALES,
        args=(payload.business_id, start, end),
        stem=f"sales-{biz['slug']}-{payload.start_date}-{payload.end_date}",
        convert=local_times(zone),
        observe=observe,
        summary=summary,
    )
    result = await run_export(ctx.state.db, exports_dir(ctx), ctx.job_id, spec)
    result["totals"] = [
        {"payment_method": m, "currency": c, "sales": n, "total": str(s)}
        for (m, c), (n, s) in sorted(totals.items())
    ]
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


@registry.task(queue=QUEUE, payload=TableExport, max_retries=2, backoff_base_s=60, timeout_s=1800)
async def export_table(ctx: Context[HandlerState], payload: TableExport) -> dict[str, Any]:
    async with ctx.state.db.acquire() as conn:
        biz = await _business(conn, payload.business_id)
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
    spec = Export(
        kind=f"export_{payload.table}",
        params=payload.model_dump(mode="json"),
        fmt=payload.format,
        columns=columns,
        sql=sql,
        args=args,
        stem=f"{payload.table}-{biz['slug']}",
        convert=local_times(zone),
    )
    return await run_export(ctx.state.db, exports_dir(ctx), ctx.job_id, spec)


# -- weekly stock movements --------------------------------------------------------------------


class StockMovementReport(BaseModel):
    """Without ``business_id`` (the cron case) one job per business is fanned out.

    The period is the ``period_days`` UTC days before ``period_end`` (exclusive), which
    defaults to the date of the cron slot, so a catch-up run still reports its own week.
    """

    business_id: int | None = None
    period_end: date | None = None
    period_days: int = Field(default=7, ge=1, le=366)
    format: Format = "csv"
    scheduled_for: datetime | None = None
    now: datetime | None = None


_MOVEMENTS = """
SELECT p.sku, p.name,
       coalesce(-sum(m.quantity) FILTER (WHERE m.reason = 'sale'), 0) AS sold,
       coalesce(sum(m.quantity) FILTER (WHERE m.reason = 'restock'), 0) AS restocked,
       coalesce(sum(m.quantity) FILTER (WHERE m.reason NOT IN ('sale', 'restock')), 0) AS other,
       coalesce(sum(m.quantity), 0) AS net,
       p.stock AS stock_now
FROM products p
LEFT JOIN stock_movements m ON m.product_id = p.id AND m.created_at >= $2 AND m.created_at < $3
WHERE p.business_id = $1
GROUP BY p.id
HAVING p.active OR count(m.id) > 0
ORDER BY sold DESC, p.sku
"""


@registry.task(
    queue=QUEUE, payload=StockMovementReport, max_retries=2, backoff_base_s=300, timeout_s=1800
)
async def stock_movement_report(
    ctx: Context[HandlerState], payload: StockMovementReport
) -> dict[str, Any]:
    end_day = payload.period_end or _now(payload.now or payload.scheduled_for).date()
    if payload.business_id is None:
        return await _fan_out_movements(ctx, payload, end_day)
    async with ctx.state.db.acquire() as conn:
        biz = await _business(conn, payload.business_id)
    start_day = end_day - timedelta(days=payload.period_days)
    start = datetime.combine(start_day, time(0), UTC)
    end = datetime.combine(end_day, time(0), UTC)
    top: list[tuple[str, int]] = []

    def observe(r: asyncpg.Record) -> None:
        if len(top) < 5 and r["sold"] > 0:  # rows arrive best seller first
            top.append((r["name"], r["sold"]))

    spec = Export(
        kind="stock_movement_report",
        params={
            "business_id": biz["id"],
            "period_start": start_day.isoformat(),
            "period_end": end_day.isoformat(),
        },
        fmt=payload.format,
        columns=("sku", "name", "sold", "restocked", "other", "net", "stock_now"),
        sql=_MOVEMENTS,
        args=(biz["id"], start, end),
        stem=f"stock-movements-{biz['slug']}-{start_day}",
        convert=lambda r: list(r.values()),
        observe=observe,
    )
    result = await run_export(ctx.state.db, exports_dir(ctx), ctx.job_id, spec)
    result["top_sellers"] = [{"name": n, "sold": s} for n, s in top]
    if biz["owner_user_id"] is not None:
        lines = [
            f"Stock movements for {biz['name']}, {start_day} to {end_day - timedelta(days=1)}:",
            "",
        ]
        lines += [f"  {i}. {n}: {s} sold" for i, (n, s) in enumerate(top, 1)] or ["  No sales."]
        lines += ["", f"Full report ({result['row_count']} products): {result['file_path']}"]
        await ctx.client.enqueue(
            "send_email",
            {
                "user_id": biz["owner_user_id"],
                "subject": f"Weekly stock report: {biz['name']}",
                "body": "\n".join(lines) + "\n",
                "template": "stock_movement_report",
            },
            key=f"stock-movement-mail:{biz['id']}:{end_day}",
            key_ttl_s=14 * 24 * 3600,
        )
    return result


async def _fan_out_movements(
    ctx: Context[HandlerState], payload: StockMovementReport, end_day: date
) -> dict[str, Any]:
    async with ctx.state.db.acquire() as conn:
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM businesses ORDER BY id")]
    await ctx.client.enqueue_many(
        JobSpec(
            "stock_movement_report",
            {
                "business_id": bid,
                "period_end": end_day.isoformat(),
                "period_days": payload.period_days,
                "format": payload.format,
            },
            key=f"stock-movement:{bid}:{end_day}:{payload.period_days}",
            key_ttl_s=14 * 24 * 3600,
        )
        for bid in ids
    )
    return {"period_end": end_day.isoformat(), "businesses": len(ids)}


# -- inventory alerts --------------------------------------------------------------------------


class LowStockCheck(BaseModel):
    business_id: int | None = None
    now: datetime | None = None


_LOW_STOCK = """
SELECT p.id, p.sku, p.name, p.stock, p.reorder_level,
       b.id AS business_id, b.name AS business, b.owner_user_id, b.time_zone
FROM products p JOIN businesses b ON b.id = p.business_id
WHERE p.active AND p.stock <= p.reorder_level AND b.owner_user_id IS NOT NULL
  AND ($1::bigint IS NULL OR b.id = $1)
ORDER BY b.id, p.id
"""


@registry.task(queue=QUEUE, payload=LowStockCheck, max_retries=3, backoff_base_s=60, timeout_s=600)
async def check_low_stock(ctx: Context[HandlerState], payload: LowStockCheck) -> dict[str, Any]:
    """One ``send_email`` per product at or below its reorder level, at most once per product
    and local day (the key carries the business's local date)."""
    now = _now(payload.now)
    found = 0
    async with ctx.state.db.acquire() as conn, conn.transaction(readonly=True):
        cursor = await conn.cursor(_LOW_STOCK, payload.business_id)
        while rows := await cursor.fetch(BATCH):
            found += len(rows)
            await ctx.client.enqueue_many(_low_stock_alert(r, now) for r in rows)
    return {"low_stock_products": found}


def _low_stock_alert(r: asyncpg.Record, now: datetime) -> JobSpec:
    day = now.astimezone(resolve_zone(r["time_zone"])).date()
    state = (
        "sold out" if r["stock"] == 0 else f"{r['stock']} left (reorder level {r['reorder_level']})"
    )
    text = (
        f"{r['name']} (SKU {r['sku']}) at {r['business']} is low: {state}.\n"
        "Reorder soon to avoid running out.\n"
    )
    return JobSpec(
        "send_email",
        {
            "user_id": r["owner_user_id"],
            "subject": f"Low stock: {r['name']}",
            "body": text,
            "template": "low_stock_alert",
        },
        key=f"low-stock:{r['id']}:{day}",
        key_ttl_s=ALERT_KEY_TTL_S,
    )


class ExpiringProductsCheck(BaseModel):
    business_id: int | None = None
    days_threshold: int = Field(default=30, ge=0, le=365)
    now: datetime | None = None


_EXPIRING = """
SELECT p.sku, p.name, p.stock, p.expiry_date,
       b.id AS business_id, b.name AS business, b.owner_user_id, b.time_zone
FROM products p JOIN businesses b ON b.id = p.business_id
WHERE p.active AND p.stock > 0 AND p.expiry_date IS NOT NULL AND p.expiry_date <= $1
  AND b.owner_user_id IS NOT NULL AND ($2::bigint IS NULL OR b.id = $2)
ORDER BY b.id, p.expiry_date, p.sku
"""


@registry.task(
    queue=QUEUE, payload=ExpiringProductsCheck, max_retries=3, backoff_base_s=60, timeout_s=600
)
async def check_expiring_products(
    ctx: Context[HandlerState], payload: ExpiringProductsCheck
) -> dict[str, Any]:
    """One email per business per local day listing stock that expires within the threshold
    (or already has: expired stock still on the shelf matters most)."""
    now = _now(payload.now)
    # The widest local date (UTC+14) bounds the query; each business is then cut at its own.
    horizon = (now + timedelta(days=1)).date() + timedelta(days=payload.days_threshold)
    per_business: dict[int, dict[str, Any]] = {}
    async with ctx.state.db.acquire() as conn, conn.transaction(readonly=True):
        cursor = await conn.cursor(_EXPIRING, horizon, payload.business_id)
        while rows := await cursor.fetch(BATCH):
            for r in rows:
                today = now.astimezone(resolve_zone(r["time_zone"])).date()
                if r["expiry_date"] > today + timedelta(days=payload.days_threshold):
                    continue
                b = per_business.setdefault(
                    r["business_id"],
                    {
                        "business": r["business"],
                        "owner": r["owner_user_id"],
                        "today": today,
                        "items": [],
                        "count": 0,
                        "expired": 0,
                    },
                )
                b["count"] += 1
                b["expired"] += r["expiry_date"] < today
                if len(b["items"]) < MAX_LISTED:
                    b["items"].append((r["name"], r["sku"], r["stock"], r["expiry_date"]))
    specs = [_expiry_alert(bid, b) for bid, b in per_business.items()]
    await ctx.client.enqueue_many(specs)
    return {
        "businesses_alerted": len(specs),
        "expiring_products": sum(b["count"] for b in per_business.values()),
        "expired_products": sum(b["expired"] for b in per_business.values()),
    }


def _expiry_alert(business_id: int, b: dict[str, Any]) -> JobSpec:
    today: date = b["today"]
    lines = [f"Products at {b['business']} expiring soon:", ""]
    for name, sku, stock, expiry in b["items"]:
        when = "EXPIRED" if expiry < today else f"expires {expiry}"
        lines.append(f"  - {name} (SKU {sku}), {stock} in stock: {when}")
    if b["count"] > len(b["items"]):
        lines.append(f"  ... and {b['count'] - len(b['items'])} more")
    return JobSpec(
        "send_email",
        {
            "user_id": b["owner"],
            "subject": f"{b['count']} product(s) expiring at {b['business']}",
            "body": "\n".join(lines) + "\n",
            "template": "expiring_products",
        },
        key=f"expiring:{business_id}:{today}",
        key_ttl_s=ALERT_KEY_TTL_S,
    )
