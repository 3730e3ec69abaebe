"""The weekly stock movement report: a file per business, and an email to its owner naming the
top sellers and carrying the file's signed download link."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from pydantic import BaseModel, Field

from notifyhub.state import HandlerState
from qrunner import Context, JobSpec

from .catalog import QUEUE, fetch_business, registry, utc_now
from .runs import Export, Table, run_export
from .writers import Format, Heading

MAIL_KEY_TTL_S = 14 * 24 * 3600
TOP_SELLERS = 5


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
    end_day = payload.period_end or utc_now(payload.now or payload.scheduled_for).date()
    if payload.business_id is None:
        return await _fan_out(ctx, payload, end_day)
    async with ctx.state.db.acquire() as conn:
        biz = await fetch_business(conn, payload.business_id)
    start_day = end_day - timedelta(days=payload.period_days)
    last_day = end_day - timedelta(days=1)
    top: list[tuple[str, int]] = []

    def observe(r: asyncpg.Record) -> None:
        if len(top) < TOP_SELLERS and r["sold"] > 0:  # rows arrive best seller first
            top.append((r["name"], r["sold"]))

    spec = Export(
        kind="stock_movement_report",
        params={
            "business_id": biz["id"],
            "period_start": start_day.isoformat(),
            "period_end": end_day.isoformat(),
        },
        fmt=payload.format,
        heading=Heading(biz["name"], "Stock movements", f"{start_day} to {last_day}"),
        tables=[
            Table(
                "Stock movements",
                ("sku", "name", "sold", "restocked", "other", "net", "stock_now"),
                _MOVEMENTS,
                (biz["id"], datetime.combine(start_day, time(0), UTC), _midnight(end_day)),
                observe=observe,
            )
        ],
        stem=f"stock-movements-{biz['slug']}-{start_day}",
        business_id=biz["id"],
    )
    result = await run_export(ctx.state.db, ctx.state.settings, ctx.job_id, spec)
    result["top_sellers"] = [{"name": n, "sold": s} for n, s in top]
    if biz["owner_user_id"] is not None:
        await ctx.client.enqueue(
            "send_email",
            {
                "user_id": biz["owner_user_id"],
                "subject": f"Weekly stock report: {biz['name']}",
                "body": _email_body(biz["name"], start_day, last_day, top, result),
                "template": "stock_movement_report",
            },
            key=f"stock-movement-mail:{biz['id']}:{end_day}",
            key_ttl_s=MAIL_KEY_TTL_S,
        )
    return result


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), UTC)


def _email_body(
    business: str, first: date, last: date, top: list[tuple[str, int]], result: dict[str, Any]
) -> str:
    lines = [f"Stock movements for {business}, {first} to {last}:", ""]
    lines += [f"  {i}. {n}: {s} sold" for i, (n, s) in enumerate(top, 1)] or ["  No sales."]
    lines.append("")
    if result["download_url"] is not None:
        lines += [
            f"Full report ({result['row_count']} products): {result['download_url']}",
            "",
            f"The link works until {result['expires_at'][:10]}.",
        ]
    else:
        lines.append(f"The full report ({result['row_count']} products) is ready in the app.")
    return "\n".join(lines) + "\n"


async def _fan_out(
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
            key_ttl_s=MAIL_KEY_TTL_S,
        )
        for bid in ids
    )
    return {"period_end": end_day.isoformat(), "businesses": len(ids)}
