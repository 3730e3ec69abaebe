"""Upkeep (queue ``maintenance``): health and queue monitors, delivery rates, re-driving
transient delivery failures, meeting status and reminders, chat retention.

``registry`` (declared in :mod:`.catalog`) holds the tasks of the modules below, each declared
at module level with ``@registry.task``.
"""

from . import meetings, monitoring, redrive, retention
from .catalog import registry

__all__ = ["meetings", "monitoring", "redrive", "registry", "retention"]
