"""The collector's pace while a worker runs (qrunner.gctune): a raised young-generation
threshold and frozen start-up objects, restored when the last worker of the process stops."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from qrunner import Client, Context, Registry
from qrunner.gctune import tuned
from qrunner.worker import Worker
from tests.worker_fixtures import FAST


@pytest.fixture(autouse=True)
def default_collector() -> Iterator[None]:
    """Each test starts from Python's own settings and leaves them as it found them."""
    before = gc.get_threshold()
    gc.unfreeze()
    yield
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_tuned_raises_the_young_threshold_and_freezes_what_exists() -> None:
    before = gc.get_threshold()
    with tuned(25_000):
        assert gc.get_threshold() == (25_000, *before[1:])
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_zero_leaves_the_collector_alone() -> None:
    before = gc.get_threshold()
    with tuned(0):
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0


def test_overlapping_users_restore_only_when_the_last_one_ends() -> None:
    before = gc.get_threshold()
    first, second = tuned(25_000), tuned(30_000)
    first.__enter__()
    second.__enter__()  # the second finds it tuned already and leaves it
    assert gc.get_threshold()[0] == 25_000
    first.__exit__(None, None, None)  # not the last: still tuned for the second
    assert gc.get_threshold()[0] == 25_000
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before


def test_restored_when_the_body_raises() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), tuned(25_000):
        raise RuntimeError("boom")
    assert gc.get_threshold() == before


async def test_a_worker_runs_its_jobs_tuned_and_restores_the_collector(redis: Redis) -> None:
    registry = Registry()
    seen: list[tuple[int, ...]] = []

    @registry.task(queue="gc")
    async def look(ctx: Context[Any], payload: dict[str, Any]) -> None:
        seen.append(gc.get_threshold())

    before = gc.get_threshold()
    await Client(redis, registry).enqueue("look", {})
    settings = FAST.model_copy(update={"gc_young_threshold": 12_345})
    await Worker(redis, registry, burst=True, settings=settings, queues=["gc"]).run()
    assert seen == [(12_345, *before[1:])]
    assert gc.get_threshold() == before
