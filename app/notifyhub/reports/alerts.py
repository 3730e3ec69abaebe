"""Inventory alerts (queue ``reports``): low stock and expiring products, each as ONE digest
email per business listing up to :data:`MAX_LISTED` products (the rest are counted).

Each digest is a ``send_email`` job to the business owner keyed by the business and its local
date, so the 6-hourly and daily checks alert once per day however often they run or are retried.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from pydantic import BaseModel, Field

from notifyhub.state import HandlerState
from qrunner import Context, JobSpec

from .catalog import QUEUE, registry, utc_now
from .runs import resolve_zone

ALERT_KEY_TTL_S = 48 * 3600
BATCH = 500
#: Products listed in one digest; the rest are counted ("... and 12 more").
MAX_LISTED = 20


class _Digest:
    """One business's alert: the first :data:`MAX_LISTED` lines and a count of the rest."""

    def __init__(self, r: asyncpg.Record, today: date) -> None:
        self.business: str = r["business"]
        self.owner: int = r["owner_user_id"]
        self.today = today
        self.lines: list[str] = []
        self.count = 0
        self.flagged = 0

    def add(self, line: str, flagged: bool = False) -> None:
        self.count += 1
        self.flagged += flagged
        if len(self.lines) < MAX_LISTED:
            self.lines.append(f"  - {line}")

    def body(self, intro: str, outro: str) -> str:
        lines = [intro, "", *self.lines]
        if self.count > len(self.lines):
            lines.append(f"  ... and {self.count - len(self.lines)} more")
        return "\n".join([*lines, "", outro]) + "\n"


async def _digests(
    conn: asyncpg.Connection, sql: str, args: tuple[Any, ...], now: datetime
) -> dict[int, tuple[_Digest, list[asyncpg.Record]]]:
    """Rows of ``sql`` grouped by business, each group with its business's local date."""
    found: dict[int, tuple[_Digest, list[asyncpg.Record]]] = {}
    cursor = await conn.cursor(sql, *args)
    while rows := await cursor.fetch(BATCH):
        for r in rows:
            if r["business_id"] not in found:
                today = now.astimezone(resolve_zone(r["time_zone"])).date()
                found[r["business_id"]] = (_Digest(r, today), [])
            found[r["business_id"]][1].append(r)
    return found


# -- low stock ---------------------------------------------------------------------------------


class LowStockCheck(BaseModel):
    business_id: int | None = None
    now: datetime | None = None


_LOW_STOCK = """
SELECT p.id, p.sku, p.name, p.stock, p.reorder_level,
       b.id AS business_id, b.name AS business, b.owner_user_id, b.time_zone
FROM products p JOIN businesses b ON b.id = p.business_id
WHERE p.active AND p.stock <= p.reorder_level AND b.owner_user_id IS NOT NULL
  AND ($1::bigint IS NULL OR b.id = $1)
ORDER BY b.id, p.stock, p.sku
"""


@registry.task(queue=QUEUE, payload=LowStockCheck, max_retries=3, backoff_base_s=60, timeout_s=600)
async def check_low_stock(ctx: Context[HandlerState], payload: LowStockCheck) -> dict[str, Any]:
    """One digest per business of its products at or below their reorder level, sold-out
    ones first, at most once per business and local day."""
    now = utc_now(payload.now)
    async with ctx.state.db.acquire() as conn, conn.transaction(readonly=True):
        found = await _digests(conn, _LOW_STOCK, (payload.business_id,), now)
    specs = []
    for bid, (digest, rows) in found.items():
        for r in rows:
            state = (
                "SOLD OUT"
                if r["stock"] == 0
                else f"{r['stock']} left (reorder level {r['reorder_level']})"
            )
            digest.add(f"{r['name']} (SKU {r['sku']}): {state}", flagged=r["stock"] == 0)
        specs.append(
            JobSpec(
                "send_email",
                {
                    "user_id": digest.owner,
                    "subject": f"{digest.count} product(s) low on stock at {digest.business}",
                    "body": digest.body(
                        f"Products at {digest.business} at or below their reorder level:",
                        "Reorder soon to avoid running out.",
                    ),
                    "template": "low_stock_alert",
                },
                key=f"low-stock:{bid}:{digest.today}",
                key_ttl_s=ALERT_KEY_TTL_S,
            )
        )
    await ctx.client.enqueue_many(specs)
    return {
        "businesses_alerted": len(specs),
        "low_stock_products": sum(d.count for d, _ in found.values()),
        "sold_out_products": sum(d.flagged for d, _ in found.values()),
    }


# -- expiring products -------------------------------------------------------------------------


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
    now = utc_now(payload.now)
    # The widest local date (UTC+14) bounds the query; each business is then cut at its own.
    horizon = (now + timedelta(days=1)).date() + timedelta(days=payload.days_threshold)
    async with ctx.state.db.acquire() as conn, conn.transaction(readonly=True):
        found = await _digests(conn, _EXPIRING, (horizon, payload.business_id), now)
    specs = []
    for bid, (digest, rows) in found.items():
        cutoff = digest.today + timedelta(days=payload.days_threshold)
        for r in rows:
            if r["expiry_date"] > cutoff:
                continue
            expired = r["expiry_date"] < digest.today
            when = "EXPIRED" if expired else f"expires {r['expiry_date']}"
            digest.add(f"{r['name']} (SKU {r['sku']}), {r['stock']} in stock: {when}", expired)
        if digest.count:
            specs.append(
                JobSpec(
                    "send_email",
                    {
                        "user_id": digest.owner,
                        "subject": f"{digest.count} product(s) expiring at {digest.business}",
                        "body": digest.body(
                            f"Products at {digest.business} expiring soon:",
                            "Sell, discount or remove them before they go to waste.",
                        ),
                        "template": "expiring_products",
                    },
                    key=f"expiring:{bid}:{digest.today}",
                    key_ttl_s=ALERT_KEY_TTL_S,
                )
            )
    await ctx.client.enqueue_many(specs)
    return {
        "businesses_alerted": len(specs),
        "expiring_products": sum(d.count for d, _ in found.values()),
        "expired_products": sum(d.flagged for d, _ in found.values()),
    }
