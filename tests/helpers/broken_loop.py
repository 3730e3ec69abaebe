"""Handlers for a worker one of whose loops has a bug: the loop named by ``BREAK_LOOP`` raises
ZeroDivisionError the first time it runs (its step is replaced, a fault injected from outside
the code under test). Used by tests/test_supervision.py through ``--handlers``."""

from __future__ import annotations

import os
from typing import Any

from qrunner.scheduler import Scheduler
from qrunner.worker import Worker
from tests.helpers.core_tasks import registry

__all__ = ["registry"]

_LOOP = os.environ.get("BREAK_LOOP", "")


async def _broken(self: Any, *args: Any) -> Any:
    raise ZeroDivisionError(f"injected into the {_LOOP} loop")


if _LOOP == "cron":
    Scheduler.tick = _broken  # type: ignore[method-assign]
elif _LOOP:
    setattr(Worker, f"_{_LOOP}_step", _broken)
