"""The domain handlers qrunner runs: messaging (SMS, email), daily outlooks, reports and
exports, payment webhooks and upkeep. ``registry`` merges them all, with the shared lifespan
that builds the database pool and provider clients (see :mod:`handlers.state`)."""

from __future__ import annotations

from qrunner import Registry

from .messaging import registry as _messaging
from .outlook import registry as _outlook
from .reports import registry as _reports
from .state import lifespan
from .upkeep import registry as _upkeep
from .webhooks import registry as _webhooks

registry: Registry = (
    Registry(requires_database=True)
    .merge(_messaging)
    .merge(_outlook)
    .merge(_reports)
    .merge(_webhooks)
    .merge(_upkeep)
)
registry.lifespan(lifespan)

__all__ = ["registry"]
