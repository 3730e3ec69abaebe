"""The upkeep package's registry and clock, shared by its task modules."""

from __future__ import annotations

from datetime import UTC, datetime

from qrunner import Registry

registry = Registry()

QUEUE = "maintenance"


def utc_now(override: datetime | None = None) -> datetime:
    """The current time, or a payload's ``now`` (tests and re-runs); naive means UTC."""
    if override is None:
        return datetime.now(UTC)
    return override if override.tzinfo else override.replace(tzinfo=UTC)
