"""qrunner: an asyncio job runtime on Redis Streams.

The enqueue side (``Client``) imports nothing from the worker; ``Worker`` is loaded on first use
so ``from qrunner import Client`` stays light in web processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .context import Context, LifespanArgs
from .deadletter import DeadJob, DeadLetters
from .errors import (
    BackendUnavailable,
    ConfigError,
    EnqueueError,
    InvalidPayload,
    JobNotFound,
    PayloadTooLarge,
    Permanent,
    QrunnerError,
    RateLimited,
    Retry,
    UnknownTask,
)
from .job import Job
from .queue import Client, JobSpec, JobStatus, QueueStats
from .settings import Settings, load_settings
from .task import Registry, Task

if TYPE_CHECKING:
    from .worker import Worker

__all__ = [
    "BackendUnavailable",
    "Client",
    "ConfigError",
    "Context",
    "DeadJob",
    "DeadLetters",
    "EnqueueError",
    "InvalidPayload",
    "Job",
    "JobNotFound",
    "JobSpec",
    "JobStatus",
    "LifespanArgs",
    "PayloadTooLarge",
    "Permanent",
    "QrunnerError",
    "QueueStats",
    "RateLimited",
    "Registry",
    "Retry",
    "Settings",
    "Task",
    "UnknownTask",
    "Worker",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    if name == "Worker":
        from .worker import Worker

        return Worker
    raise AttributeError(name)
