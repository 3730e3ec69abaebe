"""The ``worker`` command: one process with the worker, its cron loop and its HTTP endpoint,
stopping in stages on SIGTERM/SIGINT (a second signal exits at once)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from . import keys
from .context import LifespanArgs
from .errors import ConfigError
from .events import Observer
from .queue import Client
from .settings import Settings
from .task import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    #: Modules with a ``registry``, comma-separated (``--app``; default ``QRUNNER_APP``).
    app: str = ""
    queues: Sequence[str] | None = None
    concurrency: int | None = None
    burst: bool = False
    metrics_port: int | None = None
    cron: bool = True
    #: The cron file; ``None``: the registry's own (``Registry(schedules=...)``), if any.
    schedules: Path | None = None
    #: Read weights per queue; ``None``: the registry's (``Registry(weights=...)``).
    weights: dict[str, int] | None = None
    #: Refuse to start (ConfigError) instead of warning when ``queues`` names a queue that no
    #: registered task uses: a typo there creates a queue nobody ever enqueues to.
    strict: bool = False


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(130)
        log.info(
            "%s: finishing in-flight jobs, then stopping (send again to exit now)",
            signal.Signals(signum).name,
        )
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


async def enter_lifespans(stack: AsyncExitStack, registry: Registry, args: LifespanArgs) -> Any:
    states = [await stack.enter_async_context(ls(args)) for ls in registry.lifespans]
    if not states:
        return None
    return states[0] if len(states) == 1 else tuple(states)


async def serve(opts: WorkerOptions, settings: Settings, stop: asyncio.Event | None = None) -> int:
    from .runtime import connect_redis, load_registry, redis_url, warn_on_eviction_policy
    from .worker import Worker

    registry = load_registry(app_modules(opts.app, settings))
    if not len(registry):
        raise ConfigError(f"no tasks registered by {opts.app or settings.app!r}")
    check_worker_queues(opts, registry, opts.app or settings.app or "")
    if opts.metrics_port is not None:
        from .http import check_bind_address

        check_bind_address(settings.http_host, token_required=bool(settings.http_token_value))
    schedules = _load_schedules(opts, registry)
    escape = stop is None  # the process' signals are ours: a blocked loop must not hang SIGTERM
    if stop is None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
    redis = await connect_redis(redis_url(settings))
    await warn_on_eviction_policy(redis)
    try:
        client = Client(
            redis,
            registry,
            max_payload_bytes=settings.max_payload_bytes,
            status_ttl_s=settings.status_ttl_s,
        )
        async with AsyncExitStack() as stack:
            state = await enter_lifespans(stack, registry, LifespanArgs(settings, redis, client))
            observer, loops = _extras(opts, settings, registry, redis, client, state, schedules)
            gate = _gate(redis, registry, opts.concurrency or settings.concurrency)
            watch = getattr(observer, "watch_gate", None)
            if gate is not None and watch is not None:
                watch(gate)
            worker = Worker(
                redis,
                registry,
                queues=opts.queues,
                concurrency=opts.concurrency,
                burst=opts.burst,
                settings=settings,
                state=state,
                observer=observer,
                gate=gate,
                weights=opts.weights if opts.weights is not None else registry.weights or None,
                extra_loops=loops,
                signal_escape=escape,
            )
            watch_worker = getattr(observer, "watch_worker", None)
            if watch_worker is not None:
                watch_worker(worker)
            try:
                await worker.run(stop)
            except BaseExceptionGroup as group:
                # A loop that failed for good (e.g. the metrics port is taken) stops the worker;
                # report its own error rather than the group wrapping it.
                raise group.exceptions[0] from None
    finally:
        await redis.aclose()
    return 0


async def serve_endpoint(
    app_name: str, port: int, settings: Settings, stop: asyncio.Event | None = None
) -> int:
    """The HTTP endpoint alone (``qrunner http``): metrics, health, the API and the routes the
    application adds (webhooks, links), with the application's lifespans but no worker loops.
    For a web-facing process that takes webhooks while workers run elsewhere."""
    from .http import build_app, check_bind_address, serve_http
    from .metrics import Metrics
    from .runtime import connect_redis, load_registry, redis_url

    registry = load_registry(app_modules(app_name, settings))
    check_bind_address(settings.http_host, token_required=bool(settings.http_token_value))
    if stop is None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
    redis = await connect_redis(redis_url(settings))
    try:
        client = Client(
            redis,
            registry,
            max_payload_bytes=settings.max_payload_bytes,
            status_ttl_s=settings.status_ttl_s,
        )
        async with AsyncExitStack() as stack:
            state = await enter_lifespans(stack, registry, LifespanArgs(settings, redis, client))
            app = build_app(
                client=client,
                metrics=Metrics(tasks=registry.names),
                redis=redis,
                token=settings.http_token_value,
                setups=[_bind_state(fn, state) for fn in registry.http_setups],
                readiness=[_bind_check(n, fn, state) for n, fn in registry.readiness_checks],
                public_prefixes=registry.public_prefixes,
                dashboard=_dashboard(registry, registry.schedules),
            )
            await serve_http(app, settings.http_host, port, stop)
    finally:
        await redis.aclose()
    return 0


def check_worker_queues(opts: WorkerOptions, registry: Registry, app: str = "") -> None:
    """Warn about (or with ``strict``, refuse) queues to read that no registered task uses."""
    if not opts.queues:
        return
    used = registry.queues()
    unused = [q for q in opts.queues if q not in used]
    if not unused:
        return
    message = (
        f"--queues: no registered task uses {', '.join(repr(q) for q in unused)} "
        f"(tasks of {app!r} use: {', '.join(used)})"
    )
    if opts.strict:
        raise ConfigError(message)
    log.warning("%s; reading it anyway (--strict refuses)", message)


def _bind_state(fn: Callable[[Any, Any], None], state: Any) -> Callable[[Any], None]:
    def setup(app: Any) -> None:
        fn(app, state)

    return setup


def _bind_check(
    name: str, fn: Callable[[Any], Awaitable[None]], state: Any
) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        await fn(state)

    check.__name__ = name
    return check


def app_modules(app: str, settings: Settings) -> str:
    """The application modules to load: ``--app``, else ``QRUNNER_APP``."""
    modules = app or settings.app
    if not modules:
        raise ConfigError("--app: no application given; pass --app MODULE or set QRUNNER_APP")
    return modules


def _gate(redis: Redis, registry: Registry, concurrency: int) -> Any:
    if not any(t.rate_limit for t in registry):
        return None
    from .admission import TokenBucketGate

    # Jobs waiting in place for a turn under a second away never take more than half the slots.
    return TokenBucketGate(redis, registry, max_holding=max(1, concurrency // 2))


def _load_schedules(opts: WorkerOptions, registry: Registry) -> list[Any]:
    path = opts.schedules if opts.schedules is not None else registry.schedules
    if not opts.cron or path is None:
        return []
    if not path.exists():
        raise ConfigError(f"--schedules: {path} does not exist")
    from .schedules import load_schedules

    entries = load_schedules(path, known_tasks=set(registry.names))
    return [e for e in entries if e.enabled]


def _dashboard(registry: Registry, schedules: Path | None) -> Any:
    """The endpoint's dashboard options, or None where jinja2 (which renders it) is missing."""
    from .dashboard import DashboardOptions, available

    return DashboardOptions(registry=registry, schedules=schedules) if available() else None


def _extras(
    opts: WorkerOptions,
    settings: Settings,
    registry: Registry,
    redis: Redis,
    client: Client,
    state: Any,
    schedules: list[Any],
) -> tuple[Observer, list[Any]]:
    from .metrics import Metrics

    metrics = Metrics(tasks=registry.names)
    loops: list[Any] = []
    if schedules:
        from .clock import RedisClock
        from .scheduler import Scheduler

        scheduler = Scheduler(
            redis,
            client,
            schedules,
            RedisClock(redis),
            on_fire=metrics.cron_fired,
            on_miss=metrics.cron_missed,
        )

        async def cron(stop: asyncio.Event) -> None:
            await scheduler.run(stop)

        loops.append(cron)
    if opts.metrics_port is not None:
        from .http import build_app, serve_http

        setups = [_bind_state(fn, state) for fn in registry.http_setups]
        readiness = [_bind_check(name, fn, state) for name, fn in registry.readiness_checks]
        app = build_app(
            client=client,
            metrics=metrics,
            redis=redis,
            token=settings.http_token_value,
            setups=setups,
            readiness=readiness,
            public_prefixes=registry.public_prefixes,
            dashboard=_dashboard(registry, opts.schedules or registry.schedules),
        )
        port = opts.metrics_port

        async def http(stop: asyncio.Event) -> None:
            await serve_http(app, settings.http_host, port, stop)

        loops.append(http)
    return metrics, loops


async def print_schedules(
    path: Path | None, app: str, settings: Settings, *, as_json: bool = False
) -> int:
    from .runtime import connect_redis, load_registry, redis_url
    from .scheduler import describe_live
    from .schedules import load_schedules

    registry = load_registry(app_modules(app, settings))
    path = path if path is not None else registry.schedules
    if path is None:
        raise ConfigError("--file: the application declares no schedules file; give one")
    entries = load_schedules(path, known_tasks=set(registry.names))
    redis = await connect_redis(redis_url(settings))
    try:
        rows = await describe_live(redis, entries)
        paused = {
            m.decode() if isinstance(m, bytes) else str(m)
            for m in await redis.smembers(keys.paused_schedules())
        }
    finally:
        await redis.aclose()
    if as_json:
        import orjson

        print(
            orjson.dumps(
                [
                    {
                        "name": r.name,
                        "task": r.task,
                        "cron": r.cron,
                        "timezone": r.timezone,
                        "last_fire": _when(r.last_fire),
                        "next_fire": _when(r.next_fire),
                        "paused": r.name in paused,
                    }
                    for r in rows
                ]
            ).decode()
        )
        return 0
    from .cli_ops import table

    table(
        None,
        ["name", "task", "cron", "tz", "last fire", "next fire", "paused"],
        [
            [
                r.name,
                r.task,
                r.cron,
                r.timezone,
                _when(r.last_fire),
                _when(r.next_fire),
                "paused" if r.name in paused else "",
            ]
            for r in rows
        ],
    )
    return 0


def _when(value: Any) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")
