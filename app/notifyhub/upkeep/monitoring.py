"""Health, queue-depth and delivery-rate monitors, and the maybe-sent messages an operator
must look at (``qrunner maybe-sent``, ``GET /api/v1/metrics/messaging``).

Each returns its numbers as the job result (visible with ``qrunner status``) and logs a
warning when a threshold is crossed, so log-based alerting needs no extra wiring.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from pydantic import BaseModel, Field

from notifyhub.settings import reveal
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
    #: The seed's trailing 24 hours; the task runs every 30 minutes over that window.
    window_minutes: int = Field(default=24 * 60, ge=1, le=7 * 24 * 60)
    min_success_rate: float = Field(default=0.9, ge=0, le=1)
    #: Fewer attempts than this and a low rate is noise, not an alert.
    min_attempts: int = Field(default=20, ge=1)
    now: datetime | None = None


#: Statuses that are not delivery attempts: the message was held back on purpose.
_NOT_ATTEMPTS = frozenset({"suppressed", "deferred"})
_DELIVERED = frozenset({"sent", "sandbox"})


def delivery_rates(
    rows: Iterable[tuple[str, str, int]], provider_rows: Iterable[tuple[str, str, int]] = ()
) -> dict[str, dict[str, Any]]:
    """Per channel: counts by status and ``success_rate`` = delivered / attempted, and what the
    providers reported afterwards (status callbacks, webhooks) under ``provider_statuses``.

    maybe_sent counts as attempted but not delivered: the provider did not confirm it (a status
    callback that resolves it turns it into sent or failed).
    """
    out: dict[str, dict[str, Any]] = {}
    for channel, status, n in rows:
        out.setdefault(channel, {"counts": {}, "provider_statuses": {}})["counts"][status] = n
    for channel, status, n in provider_rows:
        entry = out.setdefault(channel, {"counts": {}, "provider_statuses": {}})
        entry["provider_statuses"][status] = n
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
    reported = await ctx.state.db.fetch(
        "SELECT channel, provider_status, count(*) AS n FROM delivery_log"
        " WHERE created_at >= $1 AND created_at < $2 AND provider_status IS NOT NULL"
        " GROUP BY channel, provider_status",
        since,
        now,
    )
    rates = delivery_rates(
        ((r["channel"], r["status"], r["n"]) for r in rows),
        ((r["channel"], r["provider_status"], r["n"]) for r in reported),
    )
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
        "window_minutes": payload.window_minutes,
        "channels": rates,
        "below_threshold": low,
    }


# -- maybe-sent messages: the operator's list and a Prometheus gauge ---------------------------

_MAYBE_SENT = """
SELECT id, created_at, channel, template, recipient_masked, user_id, job_id, provider, error
FROM delivery_log
WHERE status = 'maybe_sent'
ORDER BY created_at, id
LIMIT $1
"""


async def maybe_sent_messages(conn: asyncpg.Connection, limit: int = 1000) -> list[dict[str, Any]]:
    """Messages still recorded maybe-sent (no status callback has said which way they went),
    oldest first; recipients are masked, as the log stores them."""
    return [dict(r) for r in await conn.fetch(_MAYBE_SENT, limit)]


def messaging_metrics(counts: Mapping[str, int], oldest_age_s: Mapping[str, float]) -> bytes:
    """Prometheus text for the maybe-sent gauges, from a registry of its own: the runtime's
    ``/metrics`` is about jobs, this is about messages."""
    registry = CollectorRegistry()
    gauge = Gauge(
        "notifyhub_messages_maybe_sent",
        "Messages recorded maybe-sent that no provider status has resolved yet.",
        ["channel"],
        registry=registry,
    )
    age = Gauge(
        "notifyhub_messages_maybe_sent_oldest_age_seconds",
        "Age of the oldest unresolved maybe-sent message.",
        ["channel"],
        registry=registry,
    )
    for channel in sorted(set(counts) | {"sms", "email"}):
        gauge.labels(channel=channel).set(counts.get(channel, 0))
        age.labels(channel=channel).set(oldest_age_s.get(channel, 0.0))
    return bytes(generate_latest(registry))


METRICS_PATH = "/api/v1/metrics/messaging"


@registry.http_setup(public_prefixes=["/api/v1/"])
def metrics_route(app: web.Application, state: HandlerState) -> None:
    """``GET /api/v1/metrics/messaging``: the maybe-sent gauges, for Prometheus with the read
    scope's bearer token (``NOTIFYHUB_API_READ_TOKEN``; unset, 503)."""

    async def metrics(request: web.Request) -> web.Response:
        expected = reveal(state.settings.api_read_token)
        if expected is None:
            return web.json_response({"error": "the read API is not configured"}, status=503)
        kind, _, given = request.headers.get("Authorization", "").partition(" ")
        if kind != "Bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
            return web.json_response(
                {"error": "needs a bearer token with the read scope"}, status=401
            )
        rows = await state.db.fetch(
            "SELECT channel, count(*) AS n,"
            " extract(epoch FROM clock_timestamp() - min(created_at))::float8 AS oldest"
            " FROM delivery_log WHERE status = 'maybe_sent' GROUP BY channel"
        )
        body = messaging_metrics(
            {r["channel"]: r["n"] for r in rows}, {r["channel"]: r["oldest"] for r in rows}
        )
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get(METRICS_PATH, metrics)
