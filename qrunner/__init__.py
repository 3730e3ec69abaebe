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
    KeyConflict,
    PayloadTooLarge,
    Permanent,
    QrunnerError,
    RateLimited,
    Retry,
    UnknownTask,
)
from .job import Job
from .queue import Client, Group, JobSpec, JobStatus, QueueStats
from .settings import Settings, SettingsModel, build_settings, load_settings
from .task import Registry, Task
from .workflow import GroupCounts

if TYPE_CHECKING:
    from .runtime import connect_redis, load_registry
    from .service import WorkerOptions, install_signal_handlers, serve
    from .sync_client import SyncClient
    from .worker import Worker

__all__ = [
    "BackendUnavailable",
    "Client",
    "ConfigError",
    "Context",
    "DeadJob",
    "DeadLetters",
    "EnqueueError",
    "Group",
    "GroupCounts",
    "InvalidPayload",
    "Job",
    "JobNotFound",
    "JobSpec",
    "JobStatus",
    "KeyConflict",
    "LifespanArgs",
    "PayloadTooLarge",
    "Permanent",
    "QrunnerError",
    "QueueStats",
    "RateLimited",
    "Registry",
    "Retry",
    "Settings",
    "SettingsModel",
    "SyncClient",
    "Task",
    "UnknownTask",
    "Worker",
    "WorkerOptions",
    "build_settings",
    "connect_redis",
    "install_signal_handlers",
    "load_registry",
    "load_settings",
    "serve",
]


#: Loaded on first use, so that ``from qrunner import Client`` stays light in web processes.
_LAZY = {
    "Worker": "worker",
    "SyncClient": "sync_client",
    "WorkerOptions": "service",
    "serve": "service",
    "install_signal_handlers": "service",
    "connect_redis": "runtime",
    "load_registry": "runtime",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
