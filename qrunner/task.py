"""Task declarations: a handler function plus the options that govern its jobs.

A :class:`Registry` is a plain object: nothing registers itself at import time into a global.
Handler modules build one registry each and the worker (or the enqueue client) is handed it.

Handlers run on the worker's event loop, shared with every other job and with the worker's own
lease renewal, timeouts and signal handling. A handler must therefore never block it: a
CPU-bound body or a blocking client belongs in a thread (declare the task with
``run_in_thread=True`` and write a plain ``def``) or, for sustained CPU work, in a process pool
(``loop.run_in_executor(ProcessPoolExecutor(), ...)``), since a thread still shares the
interpreter lock with the loop. The worker's loop watchdog (:mod:`qrunner.watchdog`) logs a
handler that blocks the loop and ends the process when it blocks too long.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from .context import LifespanArgs
from .errors import ConfigError, InvalidPayload, UnknownTask

#: ``async def fn(ctx, payload)``: runs on the event loop.
Handler = Callable[..., Awaitable[Any]]
#: ``def fn(ctx, payload)``: a ``run_in_thread`` task's body, run on a thread of its own.
ThreadHandler = Callable[..., Any]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class RateLimitOptions:
    """A task's rate limit as declared; parsed into buckets by :mod:`qrunner.ratelimit`."""

    rates: tuple[str, ...]
    burst: int | None = None
    key: Callable[[Any], str] | None = None
    cost: Callable[[Any], int] | None = None


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    #: A :data:`Handler`, or a :data:`ThreadHandler` when ``run_in_thread`` is true.
    fn: Callable[..., Any]
    queue: str = "default"
    payload_model: type[BaseModel] | None = None
    max_retries: int = 3
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 3600.0
    jitter: bool = True
    timeout_s: float | None = 300.0
    max_deliveries: int = 5
    rate_limit: RateLimitOptions | None = None
    run_in_thread: bool = False
    #: Fairness key of a job (from its validated payload): jobs of different keys are served
    #: round-robin within the queue (see :mod:`qrunner.fairness`).
    fair_key: Callable[[Any], str] | None = None

    def validate(self, payload: Mapping[str, Any]) -> Any:
        """The handler's argument: the payload model instance, or the dict when there is no model.

        Raises :class:`InvalidPayload` listing every validation error.
        """
        if self.payload_model is None:
            return dict(payload)
        from pydantic import ValidationError

        try:
            return self.payload_model.model_validate(payload)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
                for err in exc.errors(include_url=False)
            )
            raise InvalidPayload(f"payload for task {self.name!r} is invalid: {problems}") from exc


Lifespan = Callable[[LifespanArgs], AbstractAsyncContextManager[Any]]
HttpSetup = Callable[[Any, Any], None]
#: ``async def check(state)``: raises when the application is not ready (``/ready`` says 503).
ReadinessCheck = Callable[[Any], Awaitable[None]]
#: ``def command(args, settings) -> int``: a CLI command an application adds; ``args`` are the
#: words after the command's name. It may be ``async``.
Command = Callable[[list[str], Any], "int | Awaitable[int]"]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    fn: Command
    help: str


class Registry:
    """Named tasks and their options, plus an optional lifespan that builds handler state."""

    def __init__(
        self,
        tasks: Iterable[Task] = (),
        *,
        queue_order: Sequence[str] = (),
        weights: Mapping[str, int] | None = None,
        schedules: str | Path | None = None,
    ) -> None:
        """``queue_order``: queues read first, highest priority first (others follow
        alphabetically). ``weights``: the worker's default read weights per queue.
        ``schedules``: the application's cron file (a path; an application ships it as package
        data and passes ``Path(__file__).parent / "schedules.yaml"``)."""
        self._tasks: dict[str, Task] = {}
        self._lifespans: list[Lifespan] = []
        self._http_setups: list[HttpSetup] = []
        self._public_prefixes: list[str] = []
        self._readiness: list[tuple[str, ReadinessCheck]] = []
        self._commands: dict[str, CommandSpec] = {}
        self.queue_order: tuple[str, ...] = tuple(queue_order)
        self.weights: dict[str, int] = dict(weights or {})
        self.schedules: Path | None = None if schedules is None else Path(schedules)
        for t in tasks:
            self.add(t)

    def add(self, task: Task) -> None:
        if task.name in self._tasks:
            raise ConfigError(f"task {task.name!r} is registered twice")
        is_async = inspect.iscoroutinefunction(task.fn) or inspect.isasyncgenfunction(task.fn)
        if task.run_in_thread and is_async:
            raise ConfigError(
                f"task {task.name!r}: run_in_thread=True takes a plain function (def), not an "
                "async one; an async handler runs on the event loop, so drop run_in_thread"
            )
        if not task.run_in_thread and not inspect.iscoroutinefunction(task.fn):
            raise ConfigError(
                f"task {task.name!r}: handler must be an async function (async def); for a "
                "blocking or CPU-bound body write a plain def and declare run_in_thread=True"
            )
        if task.max_retries < 0 or task.max_deliveries < 1:
            raise ConfigError(f"task {task.name!r}: max_retries >= 0 and max_deliveries >= 1")
        self._tasks[task.name] = task

    def task(
        self,
        name: str | None = None,
        *,
        queue: str = "default",
        payload: type[BaseModel] | None = None,
        max_retries: int = 3,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 3600.0,
        jitter: bool = True,
        timeout_s: float | None = 300.0,
        max_deliveries: int = 5,
        rate_limit: str | Sequence[str] | None = None,
        rate_burst: int | None = None,
        rate_key: Callable[[Any], str] | None = None,
        rate_cost: Callable[[Any], int] | None = None,
        run_in_thread: bool = False,
        fair_key: Callable[[Any], str] | None = None,
    ) -> Callable[[F], F]:
        """Declare a task: ``async def fn(ctx: Context[S], payload: Model) -> Any``.

        The handler runs on the event loop and must not block it (see the module docstring).
        With ``run_in_thread=True`` it is instead a plain ``def fn(ctx, payload)``, run on a
        thread of its own (at most a bounded number at once, see
        :class:`qrunner.runner.HandlerThreads`) while the loop goes on with other jobs.
        Payload validation, rate limits, retries and ``Retry`` / ``Permanent`` /
        ``RateLimited`` raised in the thread work exactly as for an async handler.

        ``timeout_s`` is never cut short and overrun by at most 10 ms, or by about a
        thousandth of it past 10 s (jobs share timers, see :mod:`qrunner.deadlines`).

        Two differences for a thread:

        - ``timeout_s`` cannot stop the thread (Python threads cannot be killed): at the
          timeout the job is failed as timed out like any other, but its thread runs on to
          the end, keeps its slot meanwhile, and what it returns or raises is ignored
          (logged). A body that may run long should check a deadline itself.
        - ``ctx.redis``, ``ctx.client`` and asyncio objects in ``ctx.state`` belong to the
          event loop and cannot be used from the thread (see :class:`Context`).
        """

        def register(fn: F) -> F:
            limit = None
            if rate_limit is not None:
                rates = (rate_limit,) if isinstance(rate_limit, str) else tuple(rate_limit)
                limit = RateLimitOptions(
                    rates=rates, burst=rate_burst, key=rate_key, cost=rate_cost
                )
            self.add(
                Task(
                    name=name or fn.__name__,
                    fn=fn,
                    queue=queue,
                    payload_model=payload,
                    max_retries=max_retries,
                    backoff_base_s=backoff_base_s,
                    backoff_cap_s=backoff_cap_s,
                    jitter=jitter,
                    timeout_s=timeout_s,
                    max_deliveries=max_deliveries,
                    rate_limit=limit,
                    run_in_thread=run_in_thread,
                    fair_key=fair_key,
                )
            )
            return fn

        return register

    def lifespan(self, fn: Callable[[LifespanArgs], AsyncIterator[Any]]) -> Lifespan:
        """Register an async generator that yields the handlers' state and cleans up after."""
        from contextlib import asynccontextmanager

        cm = asynccontextmanager(fn)
        self._lifespans.append(cm)
        return cm

    @property
    def lifespans(self) -> tuple[Lifespan, ...]:
        return tuple(self._lifespans)

    @overload
    def http_setup(self, fn: HttpSetup, *, public_prefixes: Sequence[str] = ()) -> HttpSetup: ...

    @overload
    def http_setup(
        self, fn: None = None, *, public_prefixes: Sequence[str] = ()
    ) -> Callable[[HttpSetup], HttpSetup]: ...

    def http_setup(
        self, fn: HttpSetup | None = None, *, public_prefixes: Sequence[str] = ()
    ) -> HttpSetup | Callable[[HttpSetup], HttpSetup]:
        """Register ``fn(app, state)`` to add routes (webhooks, unsubscribe links) to the
        worker's HTTP endpoint. ``state`` is what the lifespans yielded. Routes under
        ``public_prefixes`` answer without the endpoint's token (they check their own
        signatures). Usable as ``@registry.http_setup`` or
        ``@registry.http_setup(public_prefixes=["/hooks/"])``."""

        def register(f: HttpSetup) -> HttpSetup:
            self._http_setups.append(f)
            self._public_prefixes.extend(
                p for p in public_prefixes if p not in self._public_prefixes
            )
            return f

        return register if fn is None else register(fn)

    @property
    def http_setups(self) -> tuple[HttpSetup, ...]:
        return tuple(self._http_setups)

    @property
    def public_prefixes(self) -> tuple[str, ...]:
        return tuple(self._public_prefixes)

    def readiness(self, name: str) -> Callable[[ReadinessCheck], ReadinessCheck]:
        """Register ``async def check(state)`` run by ``/ready``; it raises when not ready."""

        def register(fn: ReadinessCheck) -> ReadinessCheck:
            self._readiness.append((name, fn))
            return fn

        return register

    @property
    def readiness_checks(self) -> tuple[tuple[str, ReadinessCheck], ...]:
        return tuple(self._readiness)

    def command(self, name: str, *, help: str = "") -> Callable[[Command], Command]:
        """Register a CLI command: ``qrunner --app myapp NAME ARGS...`` calls
        ``fn(ARGS, settings)`` and exits with what it returns."""

        def register(fn: Command) -> Command:
            if name in self._commands:
                raise ConfigError(f"command {name!r} is registered twice")
            self._commands[name] = CommandSpec(name, fn, help)
            return fn

        return register

    @property
    def commands(self) -> dict[str, CommandSpec]:
        return dict(self._commands)

    def get(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTask(name, list(self._tasks)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Any:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def names(self) -> list[str]:
        return sorted(self._tasks)

    def queues(self) -> list[str]:
        """Queues these tasks use, in priority order (``queue_order`` first, others
        alphabetically)."""
        used = {t.queue for t in self._tasks.values()}
        ordered = [q for q in self.queue_order if q in used]
        return ordered + sorted(used - set(ordered))

    def merge(self, other: Registry) -> Registry:
        """Both registries' tasks, lifespans, routes, checks and commands; ``self``'s queue
        order and schedules first."""
        merged = Registry(
            [*self, *other],
            queue_order=[
                *self.queue_order,
                *(q for q in other.queue_order if q not in self.queue_order),
            ],
            weights={**other.weights, **self.weights},
            schedules=self.schedules or other.schedules,
        )
        merged._lifespans = [*self._lifespans, *other._lifespans]
        merged._http_setups = [*self._http_setups, *other._http_setups]
        merged._public_prefixes = [
            *dict.fromkeys([*self._public_prefixes, *other._public_prefixes])
        ]
        merged._readiness = [*self._readiness, *other._readiness]
        for spec in [*self._commands.values(), *other._commands.values()]:
            merged.command(spec.name, help=spec.help)(spec.fn)
        return merged
