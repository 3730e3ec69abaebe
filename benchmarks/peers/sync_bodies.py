"""Job bodies for the peers whose workers run plain functions (Celery, dramatiq, huey): the
same work as the async peers' bodies, through a synchronous client made once per process."""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from peers.adapter import COUNTER_KEY, LATENCY_KEY

_client: redis.Redis | None = None


def sync_redis() -> redis.Redis:
    """One client per (pool child) process, made on first use, so never shared across a fork."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _client


def noop(data: dict[str, Any]) -> None:
    return None


def incr(data: dict[str, Any]) -> None:
    sync_redis().incr(COUNTER_KEY)


def lat(data: dict[str, Any]) -> None:
    started = time.time()
    sync_redis().rpush(LATENCY_KEY, started - data["t"])
