"""A round of acks lets the read that its freed slots call for go out first (Worker._read_first),
against a real redis-server. Given / When / Then in each test's docstring."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from qrunner import Client, keys
from qrunner import worker as worker_module
from qrunner.worker import Worker
from tests.helpers import core_tasks
from tests.helpers.waiting import wait_for
from tests.worker_fixtures import FAST


def _worker(redis: Redis) -> Worker:
    return Worker(redis, core_tasks.registry, burst=True, settings=FAST, concurrency=10)


async def test_an_ack_round_waits_until_the_read_is_sent(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the fetch loop waiting for slots and every slot free, when a round of acks starts,
    then it waits, and the fetch loop releases it before it reads: the read is written first,
    and the ack round goes on after."""
    monkeypatch.setattr(worker_module, "READ_FIRST_S", 30.0)  # only the read releases it
    await Client(redis, core_tasks.registry).enqueue("record", {"i": 1})
    worker = _worker(redis)
    assert await worker._start_up()
    released_at_read: list[bool] = []
    read = worker.consumer.read_available

    async def read_available(*args: Any, **kwargs: Any) -> Any:
        due = worker._read_due
        released_at_read.append(due is not None and due.done())
        return await read(*args, **kwargs)

    monkeypatch.setattr(worker.consumer, "read_available", read_available)
    worker._waiting_slots = True  # as while _fetch_step waits in _wait_slots
    ack_round = asyncio.ensure_future(worker._read_first())
    await asyncio.sleep(0)
    assert not ack_round.done()
    assert worker._read_due is not None and not worker._read_due.done()

    worker._waiting_slots = False
    await worker._fetch_step()
    await asyncio.wait_for(ack_round, 5)
    assert released_at_read == [True]
    assert worker._read_due is None

    async def ran() -> bool:  # the job read ran and waits for its ack
        return worker.finisher.backlog == 1

    await wait_for(ran, what="the job read to finish")
    assert len(await redis.lrange("log:default", 0, -1)) == 1
    assert await redis.xlen(keys.stream("default")) == 1  # not acked: no flush loop here


async def test_an_ack_round_does_not_wait_when_no_read_is_due(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the fetch loop not waiting for slots, or too few slots free for a read, when a
    round of acks starts, then it goes on at once and arms nothing."""
    monkeypatch.setattr(worker_module, "READ_FIRST_S", 30.0)
    worker = _worker(redis)

    worker._waiting_slots = False
    await asyncio.wait_for(worker._read_first(), 5)
    assert worker._read_due is None

    worker._waiting_slots = True
    worker._active = worker.concurrency - worker._refill_batch + 1  # fewer free than a refill
    await asyncio.wait_for(worker._read_first(), 5)
    assert worker._read_due is None


async def test_an_ack_round_waits_no_longer_than_its_bound(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given slots free but no read coming (the fetch loop stopped between its wait and its
    read), when a round of acks starts, then it goes on after READ_FIRST_S."""
    monkeypatch.setattr(worker_module, "READ_FIRST_S", 0.01)
    worker = _worker(redis)
    worker._waiting_slots = True
    ack_round = asyncio.ensure_future(worker._read_first())
    await asyncio.sleep(0)
    assert not ack_round.done()
    await asyncio.wait_for(ack_round, 5)
    assert worker._read_due is None
