"""Upkeep (queue ``maintenance``): health and queue monitors, delivery rates, re-driving
transient delivery failures, meeting status and reminders, chat retention, and the shop checks
(low credit balances, unactivated sign-ups, subscription renewals, expired stock reservations).

``registry`` (declared in :mod:`.catalog`) holds the tasks of the modules below, each declared
at module level with ``@registry.task``.
"""

from . import (
    accounts,
    credits,
    meetings,
    monitoring,
    redrive,
    reservations,
    retention,
    subscriptions,
)
from .catalog import registry

__all__ = [
    "accounts",
    "credits",
    "meetings",
    "monitoring",
    "redrive",
    "registry",
    "reservations",
    "retention",
    "subscriptions",
]
