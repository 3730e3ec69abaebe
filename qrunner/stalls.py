"""What a worker does while its event loop is blocked, from the watchdog's thread.

A handler that blocks the loop (CPU-bound code, a synchronous client) stops everything that
runs on it, lease renewal included. :class:`StallGuard` gives :class:`~qrunner.watchdog.
LoopWatchdog` its callbacks:

- ``renew``: while the loop is stalled, renew the leases of the entries the worker holds through
  a synchronous connection of its own, so other workers do not take over jobs of a worker that
  is alive but busy (at most once per lease/3);
- ``record``: past the hard limit, just before the process ends, note on the blocking job that
  it blocked the event loop (``qr:{q}:stall:<job id>``, kept a day), so that when the job has
  been redelivered ``max_deliveries`` times its dead letter says why.

Everything here runs in the watchdog thread: it only reads plain data of the worker and never
touches the asyncio client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis as syncredis

from . import keys
from .scripts import Script

log = logging.getLogger(__name__)

STALL_NOTE_TTL_S = 24 * 3600
_SYNC_KWARGS = ("host", "port", "db", "username", "password", "path")


def sync_twin(client: Any, socket_timeout_s: float = 2.0) -> Any:
    """A synchronous client to the same server (or cluster) as the asyncio ``client``."""
    manager = getattr(client, "nodes_manager", None)
    if manager is not None:
        from redis.cluster import ClusterNode, RedisCluster

        kw = manager.connection_kwargs
        seeds = [
            ClusterNode(n.host, n.port)  # type: ignore[no-untyped-call]
            for n in manager.startup_nodes.values()
        ]
        return RedisCluster(
            startup_nodes=seeds,
            username=kw.get("username"),
            password=kw.get("password"),
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
        )
    kw = client.connection_pool.connection_kwargs
    args = {k: kw[k] for k in _SYNC_KWARGS if kw.get(k) is not None}
    if "path" in args:
        args["unix_socket_path"] = args.pop("path")
        args.pop("host", None)
        args.pop("port", None)
    if kw.get("connection_class") is not None and "SSL" in kw["connection_class"].__name__:
        args["ssl"] = True
    return syncredis.Redis(
        **args, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
    )


class StallGuard:
    """Watchdog callbacks for one worker (see the module docstring)."""

    _extend = Script("extend_lease")

    def __init__(
        self,
        client: Any,
        consumer_name: str,
        held: Callable[[], list[tuple[str, str]]],
        culprit: Callable[[], tuple[str, str] | None],
        lease_ms: int,
    ) -> None:
        self._client = client
        self._name = consumer_name
        #: (queue, entry id) of every entry the worker holds; plain data.
        self._held = held
        #: (queue, job id) of the job whose code is blocking the loop, when known.
        self._culprit = culprit
        self._every_s = lease_ms / 3000
        self._last_renewal = 0.0
        self._sync: Any = None

    def _redis(self) -> Any:
        if self._sync is None:
            self._sync = sync_twin(self._client)
        return self._sync

    def renew(self, stalled_s: float) -> None:
        now = time.monotonic()
        if now - self._last_renewal < self._every_s:
            return
        self._last_renewal = now
        by_queue: dict[str, list[str]] = {}
        for queue, entry_id in self._held():
            by_queue.setdefault(queue, []).append(entry_id)
        r = self._redis()
        for queue, ids in by_queue.items():
            keys_ = [keys.stream(queue), keys.consumers(queue)]
            args = [keys.GROUP, self._name, "", *ids]
            try:
                r.evalsha(self._extend.sha, len(keys_), *keys_, *args)
            except syncredis.exceptions.NoScriptError:
                r.eval(self._extend.source, len(keys_), *keys_, *args)
        log.info(
            "event loop blocked for %.1fs: renewed %d lease(s) from the watchdog thread",
            stalled_s,
            sum(len(v) for v in by_queue.values()),
        )

    def record(self, stalled_s: float, running: list[tuple[str, str]]) -> None:
        culprit = self._culprit()
        if culprit is None:
            return
        queue, job_id = culprit
        note = (
            f"it blocked the event loop for {stalled_s:.1f}s and the watchdog ended worker "
            f"{self._name}"
        )
        self._redis().set(keys.stall_note(queue, job_id), note, ex=STALL_NOTE_TTL_S)
