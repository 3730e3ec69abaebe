"""Upkeep (queue ``maintenance``): health and queue monitors, delivery rates, re-driving
transient delivery failures, meeting status and reminders, chat retention."""

from . import meetings, monitoring, redrive, retention
from ._registry import registry

__all__ = ["meetings", "monitoring", "redrive", "registry", "retention"]
