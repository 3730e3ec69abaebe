"""What a handler and a registry's lifespan receive from the worker.

Kept apart from :mod:`qrunner.task` (declarations) and :mod:`qrunner.queue` (the client) so
that neither has to import the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .job import Job
    from .queue import Client
    from .settings import Settings

S = TypeVar("S")


@dataclass(slots=True)
class Context(Generic[S]):
    """What a handler receives besides its payload.

    ``state`` is whatever the registry's lifespan yielded (database pool, provider clients), so
    handlers get typed dependencies instead of globals.

    In a ``run_in_thread`` handler only the plain data (``job``, ``job_id``, ``attempt``,
    ``deliveries``, ``settings``, ``extra``) is safe to use. ``redis`` and ``client`` are
    asyncio objects bound to the worker's event loop and cannot be used from the thread; so
    are asyncio resources in ``state`` (connection pools, HTTP sessions). Use a synchronous
    client there, or return the data and do the I/O in an async task.
    """

    job: Job
    redis: Redis
    client: Client
    state: S
    settings: Settings
    deliveries: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def attempt(self) -> int:
        return self.job.attempt


@dataclass(frozen=True, slots=True)
class LifespanArgs:
    """What a registry's lifespan gets to build its handlers' state from."""

    settings: Settings
    redis: Redis
    client: Client
    database_url: str | None
