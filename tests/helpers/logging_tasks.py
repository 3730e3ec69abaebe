"""A task whose handler logs through its own logger, for tests/test_job_logs.py."""

from __future__ import annotations

import logging
from typing import Any

from qrunner import Context, Registry

registry = Registry()
log = logging.getLogger("myapp.greetings")


@registry.task(queue="logs")
async def chatty(ctx: Context[None], payload: dict[str, Any]) -> None:
    log.info('sending "%s"\nto someone', payload["word"])


@registry.task(queue="logs", run_in_thread=True)
def chatty_thread(ctx: Context[None], payload: dict[str, Any]) -> None:
    log.info("from a thread")
