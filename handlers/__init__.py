"""The domain handlers qrunner runs: messaging (SMS, email), daily outlooks, reports and
exports, payment webhooks and upkeep. ``registry`` merges them all, with the shared lifespan
that builds the database pool and provider clients (see :mod:`handlers.state`)."""

from __future__ import annotations

from qrunner import Registry

from .messaging import registry as messaging
from .outlook import registry as outlook
from .reports import registry as reports
from .state import lifespan
from .upkeep import registry as upkeep
from .webhooks import registry as webhooks

registry: Registry = (
    Registry(requires_database=True)
    .merge(messaging)
    .merge(outlook)
    .merge(reports)
    .merge(webhooks)
    .merge(upkeep)
)
registry.lifespan(lifespan)

__all__ = ["registry"]
