"""The notification app's registry: every task, the lifespan that builds the handlers' state
(database pool, provider clients; see :mod:`notifyhub.state`), the HTTP routes, the PostgreSQL
readiness check, the queue order, the cron file and the app's commands."""

from __future__ import annotations

from pathlib import Path

from qrunner import Registry

from .api import registry as _api
from .commands import register_commands
from .engagement import registry as _engagement
from .experiments import registry as _experiments
from .messaging import registry as _messaging
from .outlook import registry as _outlook
from .reports import registry as _reports
from .state import HandlerState, lifespan
from .upkeep import registry as _upkeep
from .webhooks import registry as _webhooks

#: Queues of the systems this app replaces, highest priority first.
QUEUE_ORDER: tuple[str, ...] = (
    "sms_critical",
    "sms_daily",
    "email_reports",
    "email_education",
    "daily_outlook",
    "reports",
    "default",
    "maintenance",
)
SCHEDULES = Path(__file__).resolve().parent / "schedules.yaml"

registry: Registry = (
    Registry(queue_order=QUEUE_ORDER, schedules=SCHEDULES)
    .merge(_messaging)
    .merge(_outlook)
    .merge(_reports)
    .merge(_webhooks)
    .merge(_upkeep)
    .merge(_api)
    .merge(_engagement)
    .merge(_experiments)
)
registry.lifespan(lifespan)


@registry.readiness("postgres")
async def postgres_ready(state: HandlerState) -> None:
    async with state.db.acquire(timeout=2.0) as conn:
        await conn.fetchval("SELECT 1")


register_commands(registry)

__all__ = ["registry"]
