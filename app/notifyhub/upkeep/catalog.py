"""The upkeep registry every upkeep task module declares its tasks on, the queue they share,
and the clock they read (a payload's ``now`` overrides it, for tests and re-runs)."""

from __future__ import annotations

from datetime import UTC, datetime

from qrunner import Registry

#: Every upkeep task; :mod:`notifyhub.upkeep` imports the modules that declare them.
registry = Registry()

QUEUE = "maintenance"


def utc_now(override: datetime | None = None) -> datetime:
    """The current time, or a payload's ``now`` (tests and re-runs); naive means UTC."""
    if override is None:
        return datetime.now(UTC)
    return override if override.tzinfo else override.replace(tzinfo=UTC)
