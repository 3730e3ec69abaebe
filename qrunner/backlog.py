"""How far behind each queue is, read from its stream: the age of the oldest job not yet
delivered to any worker, and how many entries the stream has taken since it was created.

Both come from stream metadata (``XINFO GROUPS`` for the group's last-delivered id, one
``XRANGE`` after it, ``XINFO STREAM`` for ``entries-added``), so a scrape costs three commands
per queue whatever the backlog. ``entries-added`` exists from Redis 7 (and Valkey); on 6.2 the
count is reported as unknown (``None``) rather than guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from . import keys


@dataclass(frozen=True, slots=True)
class Backlog:
    queue: str
    #: Enqueue time (ms, from the entry id) of the oldest entry no worker has read; None: none.
    oldest_waiting_ms: int | None
    #: Entries ever added to the stream (Redis 7+); None when the server does not say.
    entries_added: int | None


def _field(info: Any, name: str) -> Any:
    if not isinstance(info, dict):
        return None
    value = info.get(name)
    return info.get(name.encode()) if value is None else value


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _id_ms(entry_id: Any) -> int | None:
    head = _text(entry_id).split("-", 1)[0]
    return int(head) if head.isdigit() else None


async def read_backlog(redis: Redis, queues: Sequence[str]) -> list[Backlog]:
    """One :class:`Backlog` per queue; a queue whose stream or group is missing has none."""
    if not queues:
        return []
    pipe = redis.pipeline(transaction=False)
    for q in queues:
        pipe.xinfo_groups(keys.stream(q))
        pipe.xinfo_stream(keys.stream(q))
    replies = await pipe.execute(raise_on_error=False)
    last_ids: dict[str, Any] = {}
    added: dict[str, int | None] = {}
    for i, q in enumerate(queues):
        groups, stream = replies[2 * i], replies[2 * i + 1]
        if isinstance(groups, ResponseError) or isinstance(stream, ResponseError):
            continue  # no stream yet
        group = next((g for g in groups or [] if _text(_field(g, "name")) == keys.GROUP), None)
        # No group yet (no worker has started on the queue): every entry is waiting.
        last_ids[q] = (_field(group, "last-delivered-id") if group is not None else None) or "0-0"
        raw_added = _field(stream, "entries-added")
        added[q] = int(raw_added) if raw_added is not None else None
    if not last_ids:
        return []
    pipe = redis.pipeline(transaction=False)
    order = list(last_ids)
    for q in order:
        pipe.xrange(keys.stream(q), min=f"({_text(last_ids[q])}", max="+", count=1)
    firsts = await pipe.execute(raise_on_error=False)
    out = []
    for q, first in zip(order, firsts, strict=True):
        oldest = None
        if isinstance(first, list) and first:
            oldest = _id_ms(first[0][0])
        out.append(Backlog(q, oldest, added[q]))
    return out
