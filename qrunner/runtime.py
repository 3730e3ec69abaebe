"""Wiring: build connections, registries and the worker from settings. The only place that
knows how the parts fit together; everything else receives what it needs."""

from __future__ import annotations

import importlib
import logging
from typing import Any, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connection import (
    GuardedConnection,
    GuardedSentinelConnection,
    GuardedSentinelSSLConnection,
    GuardedSSLConnection,
    connection_class_for,
)
from .errors import BackendUnavailable, ConfigError
from .pool import LEAN, LeanConnectionPool
from .redis_url import RedisTarget, parse_redis_url
from .settings import Settings
from .task import Registry

log = logging.getLogger(__name__)


def redact_url(url: str) -> str:
    """host:port of a URL, never its credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or '?'}:{parts.port or 6379}"


def redis_url(settings: Settings) -> str:
    """The Redis URL to use: ``QRUNNER_REDIS_URL``. The runtime never starts a server of its
    own; development tooling that does sets the variable before calling in."""
    url = settings.redis_url_value
    if not url:
        hint = (
            ""
            if settings.env == "production"
            else " (for a private development server, run through bin/qrunner)"
        )
        raise ConfigError(f"QRUNNER_REDIS_URL: not set; give the Redis to use{hint}")
    return url


async def connect_redis(
    url: str,
    *,
    check: bool = True,
    max_connections: int = 10_000,
    socket_timeout_s: float | None = 5.0,
) -> Redis:
    """A client that retries dropped connections with backoff and fails fast (host:port) when
    the server is not there at start.

    Retrying a command whose reply was lost is safe for every command qrunner sends: enqueue
    writes a job id at most once, and the scripts that finish an entry report an entry that is
    already gone instead of acting twice. The socket timeout bounds a reply that never comes
    (a proxy that dropped it): the connection is then closed, since a late reply would answer
    the wrong command. Blocking reads must ask for less than this.

    The pool is a plain one with a generous cap rather than a blocking pool: a blocking pool
    adds a lock and a timeout to every command, which on the job hot path cost more than the
    job body. Connections are opened on demand; the cap (Redis' own default ``maxclients``)
    only makes a runaway fail loudly. At concurrency 1000 a cap of 1000 was too low: handlers'
    commands and the worker's own shared the pool, and a few jobs failed for want of one.
    """
    target = parse_redis_url(url)
    client = _build(url, target, max_connections, socket_timeout_s)
    if check:
        try:
            await client.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            await client.aclose()
            raise BackendUnavailable(f"Redis at {target.shown()} is unreachable: {exc}") from exc
    return client


def _build(
    url: str, target: RedisTarget, max_connections: int, socket_timeout_s: float | None
) -> Redis:
    """The one place a Redis client is made: one server, a cluster or Sentinel's master.

    A cluster client serves the same commands as a single-server one (it routes each by its
    key's slot, and scripts by their first key), so the rest of qrunner receives it as a
    ``Redis`` and never asks which it is, except where reading several queues at once would
    cross slots (:func:`is_cluster`).
    """
    common: dict[str, Any] = {
        "decode_responses": False,
        "health_check_interval": 15,
        "socket_connect_timeout": 5,
        "socket_timeout": socket_timeout_s,
        "username": target.username,
        "password": target.password,
    }
    if target.kind == "single":
        # What aioredis.from_url does, with the lean pool (qrunner.pool) where redis-py has
        # its hooks; the client owns the pool and closes it with itself, as from_url's does.
        pool = (LeanConnectionPool if LEAN else aioredis.ConnectionPool).from_url(
            url,
            max_connections=max_connections,
            connection_class=connection_class_for(url),
            retry=RedisRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            **{k: v for k, v in common.items() if k not in ("username", "password")},
        )
        client: Redis = aioredis.Redis(connection_pool=pool)
        client.auto_close_connection_pool = True
        return client
    guarded = GuardedSSLConnection if target.tls else GuardedConnection
    if target.kind == "cluster":
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(h, p, connection_class=guarded) for h, p in target.nodes]
        cluster = RedisCluster(
            startup_nodes=nodes, ssl=target.tls, max_connections=max_connections, **common
        )
        # Nodes discovered later are made from these kwargs: they get the guarded class too.
        cluster.nodes_manager.connection_kwargs["connection_class"] = guarded
        return cast(Redis, cluster)
    from redis.asyncio.sentinel import Sentinel

    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
        list(target.nodes),
        sentinel_kwargs={
            "socket_connect_timeout": 5,
            "socket_timeout": socket_timeout_s,
            "password": target.password,
            "username": target.username,
        },
        ssl=target.tls,
        **common,
    )
    assert target.service is not None
    master: Redis = sentinel.master_for(
        target.service,
        redis_class=_SentinelMaster,
        db=target.db,
        connection_class=GuardedSentinelSSLConnection if target.tls else GuardedSentinelConnection,
        max_connections=max_connections,
    )
    return master


class _SentinelMaster(aioredis.Redis):
    """The master's client; closing it closes the connections to the sentinels too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        await self.connection_pool.sentinel_manager.aclose()  # type: ignore[attr-defined]


def is_cluster(client: Any) -> bool:
    """True for a Redis Cluster client (reads must not span slots)."""
    return hasattr(client, "nodes_manager")


async def warn_on_eviction_policy(client: Redis) -> None:
    try:
        cfg = await client.config_get("maxmemory-policy")
    except NoPermissionError:
        log.warning(
            "cannot check Redis' maxmemory-policy: CONFIG GET is denied to this user (ACL). "
            "Make sure it is 'noeviction', or Redis may evict queued jobs under memory pressure."
        )
        return
    except ResponseError as exc:  # CONFIG renamed or disabled by the provider
        log.warning("cannot check Redis' maxmemory-policy (%s); make sure it is 'noeviction'", exc)
        return
    raw: dict[Any, Any] = dict(cfg)
    policy = raw.get(b"maxmemory-policy") or raw.get("maxmemory-policy")
    if isinstance(policy, bytes):
        policy = policy.decode()
    if policy and policy != "noeviction":
        log.warning(
            "Redis maxmemory-policy is %r: under memory pressure Redis may evict queued jobs. "
            "Set it to 'noeviction'.",
            policy,
        )


def load_registry(modules: str | list[str]) -> Registry:
    """Import each module and merge the ``registry`` it exposes."""
    names = [m.strip() for m in (modules.split(",") if isinstance(modules, str) else modules)]
    merged = Registry()
    for name in filter(None, names):
        try:
            module: Any = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"cannot import handler module {name!r}: {exc}") from exc
        reg = getattr(module, "registry", None)
        if not isinstance(reg, Registry):
            raise ConfigError(f"handler module {name!r} has no `registry` (a qrunner.Registry)")
        merged = merged.merge(reg)
    return merged
