"""Health, queue-depth and delivery-rate monitors.

Each returns its numbers as the job result (visible with ``qrunner status``) and logs a
warning when a threshold is crossed, so log-based alerting needs no extra wiring.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from notifyhub.state import HandlerState
from qrunner import Context

from .catalog import QUEUE, registry, utc_now

log = logging.getLogger(__name__)


class HealthCheck(BaseModel):
    timeout_s: float = Field(default=5.0, gt=0, le=60)


async def _probe(check: Callable[[], Awaitable[Any]], timeout_s: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(check(), timeout_s)
    except Exception as exc:  # any failure is the answer, not a crash of the check
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "latency_ms": round((time.perf_counter() - t0) * 1000, 2)}


@registry.task(queue=QUEUE, payload=HealthCheck, max_retries=0, timeout_s=60)
async def health_check(ctx: Context[HandlerState], payload: HealthCheck) -> dict[str, Any]:
    """Redis and PostgreSQL reachable, and how fast. A failure is reported, not raised:
    retrying a health check only delays the news."""
    redis = await _probe(ctx.redis.ping, payload.timeout_s)
    postgres = await _probe(lambda: ctx.state.db.fetchval("SELECT 1"), payload.timeout_s)
    ok = redis["ok"] and postgres["ok"]
    if not ok:
        log.error("health check failed: redis=%s postgres=%s", redis, postgres)
    return {"ok": ok, "redis": redis, "postgres": postgres}


class MonitorQueueDepth(BaseModel):
    default_threshold: int = Field(default=1000, ge=0)
    #: Per-queue overrides of ``default_threshold`` (waiting + delayed jobs).
    thresholds: dict[str, int] = Field(default_factory=dict)
    dead_threshold: int = Field(default=100, ge=0)


def depth_alerts(
    stats: Iterable[Mapping[str, Any]], default: int, per_queue: Mapping[str, int], dead_limit: int
) -> list[str]:
    """Human-readable alerts for queues whose backlog or dead-letter stream is over its limit."""
    alerts: list[str] = []
    for s in stats:
        limit = per_queue.get(s["queue"], default)
        backlog = s["depth"] + s["delayed"]
        if backlog > limit:
            alerts.append(f"queue {s['queue']}: {backlog} jobs waiting (threshold {limit})")
        if s["dead"] > dead_limit:
            alerts.append(
                f"queue {s['queue']}: {s['dead']} dead-lettered jobs (threshold {dead_limit})"
            )
    return alerts


@registry.task(queue=QUEUE, payload=MonitorQueueDepth, max_retries=0, timeout_s=60)
async def monitor_queue_depth(
    ctx: Context[HandlerState], payload: MonitorQueueDepth
) -> dict[str, Any]:
    stats = [s.to_dict() for s in await ctx.client.stats()]
    alerts = depth_alerts(
        stats, payload.default_threshold, payload.thresholds, payload.dead_threshold
    )
    for alert in alerts:
        log.warning("%s", alert)
    return {"queues": {s.pop("queue"): s for s in stats}, "alerts": alerts}


class TrackDeliveryRates(BaseModel):
    window_minutes: int = Field(default=30, ge=1, le=7 * 24 * 60)
    min_success_rate: float = Field(default=0.9, ge=0, le=1)
    #: Fewer attempts than this and a low rate is noise, not an alert.
    min_attempts: int = Field(default=20, ge=1)
    now: datetime | None = None


#: Statuses that are not delivery attempts: the message was held back on purpose.
_NOT_ATTEMPTS = frozenset({"suppressed", "deferred"})
_DELIVERED = frozenset({"sent", "sandbox"})


def delivery_rates(rows: Iterable[tuple[str, str, int]]) -> dict[str, dict[str, Any]]:
    """Per channel: counts by status and ``success_rate`` = delivered / attempted.

    maybe_sent counts as attempted but not delivered: the provider did not confirm it.
    """
    out: dict[str, dict[str, Any]] = {}
    for channel, status, n in rows:
        out.setdefault(channel, {"counts": {}})["counts"][status] = n
    for c in out.values():
        counts = c["counts"]
        attempted = sum(n for s, n in counts.items() if s not in _NOT_ATTEMPTS)
        delivered = sum(n for s, n in counts.items() if s in _DELIVERED)
        c["attempted"] = attempted
        c["delivered"] = delivered
        c["success_rate"] = round(delivered / attempted, 4) if attempted else None
    return out


@registry.task(queue=QUEUE, payload=TrackDeliveryRates, max_retries=1, timeout_s=120)
async def track_delivery_rates(
    ctx: Context[HandlerState], payload: TrackDeliveryRates
) -> dict[str, Any]:
    now = utc_now(payload.now)
    since = now - timedelta(minutes=payload.window_minutes)
    rows = await ctx.state.db.fetch(
        "SELECT channel, status, count(*) AS n FROM delivery_log"
        " WHERE created_at >= $1 AND created_at < $2 GROUP BY channel, status",
        since,
        now,
    )
    rates = delivery_rates((r["channel"], r["status"], r["n"]) for r in rows)
    low = [
        ch
        for ch, r in rates.items()
        if r["attempted"] >= payload.min_attempts and r["success_rate"] < payload.min_success_rate
    ]
    for ch in low:
        log.warning(
            "delivery rate of %s is %.1f%% over the last %d min (%d attempts)",
            ch,
            rates[ch]["success_rate"] * 100,
            payload.window_minutes,
            rates[ch]["attempted"],
        )
    return {
        "since": since.isoformat(),
        "until": now.isoformat(),
        "channels": rates,
        "below_threshold": low,
    }
