"""What a handler and a registry's lifespan receive from the worker.

Kept apart from :mod:`qrunner.task` (declarations) and :mod:`qrunner.queue` (the client) so
that neither has to import the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .job import Job
    from .progress import ProgressSink
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
    #: Where :meth:`progress` goes: the job's status record in a worker, a list in eager
    #: mode (:mod:`qrunner.testing`); None drops reports.
    reporter: ProgressSink | None = None
    #: Makes :attr:`reporter` on the first :meth:`progress` call (a worker's: most jobs never
    #: report, and a reporter per job is not free).
    open_reporter: Callable[[Job], ProgressSink] | None = None
    #: For a task with a rate limit: when this run's token became its own, on the Redis clock
    #: (ms since epoch), i.e. when it was granted, or when the turn it waited for in place
    #: came. What a provider may count against the limit starts here. None for other tasks.
    turn_ms: int | None = None

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def attempt(self) -> int:
        return self.job.attempt

    async def progress(self, fraction: float, meta: Mapping[str, Any] | None = None) -> None:
        """Report how far the job is, from 0.0 to 1.0, with optional JSON-able ``meta``.

        Cheap to call in a tight loop: writes are throttled (see :mod:`qrunner.progress`) and
        the last value is always written when the job ends. Raises ``ValueError`` for a
        fraction outside 0..1 and ``TypeError`` for meta that is not JSON-serialisable.
        """
        reporter = self.reporter
        if reporter is None:
            if self.open_reporter is None:
                return
            reporter = self.reporter = self.open_reporter(self.job)
        await reporter.report(fraction, meta)

    @property
    def upstream(self) -> dict[str, Any] | None:
        """For an ``on_success`` / ``on_failure`` follow-up: the job that triggered it, as
        ``{"id", "task", "state", "result", "error"}``; None for any other job."""
        flow = self.job.flow or {}
        up = flow.get("upstream")
        return up if isinstance(up, dict) else None

    @property
    def group_results(self) -> list[dict[str, Any]] | None:
        """For a group's callback: one ``{"id", "task", "state", "result", "error"}`` per
        member, in the order the members were given; None for any other job."""
        flow = self.job.flow or {}
        got = flow.get("group_results")
        return got if isinstance(got, list) else None


def worker_context(
    job: Job,
    redis: Redis,
    client: Client,
    state: Any,
    settings: Settings,
    deliveries: int,
    open_reporter: Callable[[Job], ProgressSink] | None,
) -> Context[Any]:
    """``Context(job, redis, client, state, settings, deliveries, {}, None, open_reporter)``
    with its slots filled directly: the worker makes one per job, and the dataclass'
    ``__init__`` call cost a third more. The fields are checked against this list at import,
    so a field added to Context without a line here fails loudly instead of staying unset."""
    ctx: Context[Any] = _new_context(Context)
    ctx.job = job
    ctx.redis = redis
    ctx.client = client
    ctx.state = state
    ctx.settings = settings
    ctx.deliveries = deliveries
    ctx.extra = {}
    ctx.reporter = None
    ctx.open_reporter = open_reporter
    ctx.turn_ms = None
    return ctx


_new_context = object.__new__
_CONTEXT_FIELDS = (
    "job",
    "redis",
    "client",
    "state",
    "settings",
    "deliveries",
    "extra",
    "reporter",
    "open_reporter",
    "turn_ms",
)
if tuple(f.name for f in fields(Context)) != _CONTEXT_FIELDS:  # pragma: no cover - a slip
    raise RuntimeError("Context's fields changed: update _CONTEXT_FIELDS and worker_context")


@dataclass(frozen=True, slots=True)
class LifespanArgs:
    """What a registry's lifespan gets to build its handlers' state from."""

    settings: Settings
    redis: Redis
    client: Client
