"""Progress reports (ctx.progress) and fan-out counters, against a real Redis and as pure
throttle logic. Given / When / Then in each test."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from qrunner import Client
from qrunner.http import build_app
from qrunner.metrics import Metrics
from qrunner.progress import Throttled, encode_progress
from qrunner.testing import drain
from tests.helpers.waiting import wait_for
from tests.helpers.workflow_tasks import registry
from tests.worker_fixtures import running_worker

pytestmark = pytest.mark.both_topologies


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_throttle_writes_first_then_once_per_window_and_flushes_the_last() -> None:
    # Given a throttle of 0.5 s on a fake clock
    clock = FakeClock()
    written: list[tuple[str, bytes]] = []

    async def write(value: str, meta: bytes) -> None:
        written.append((value, meta))

    t = Throttled(write, interval_s=0.5, clock=clock)
    # When a tight loop reports 100 times inside one window
    for i in range(1, 101):
        await t.report(i / 200, {"i": i})
        clock.now += 0.001
    # Then only the first report was written
    assert [v for v, _ in written] == ["0.005"]
    # And the next report after the window is written, and the last one at the end
    clock.now += 0.5
    await t.report(0.6, None)
    await t.report(0.7, {"stage": "x"})
    assert [v for v, _ in written] == ["0.005", "0.6"]
    await t.flush()
    assert written[-1] == ("0.7", b'{"stage":"x"}')
    await t.flush()  # nothing held back: nothing written
    assert len(written) == 3


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf")])
def test_progress_outside_zero_to_one_is_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        encode_progress(bad, None)


@pytest.mark.parametrize(("value", "meta"), [(True, None), ("0.5", None), (0.5, ["not", "map"])])
def test_progress_of_the_wrong_type_is_refused(value: object, meta: object) -> None:
    with pytest.raises(TypeError):
        encode_progress(value, meta)  # type: ignore[arg-type]


async def test_progress_shows_in_status_and_http_while_running_and_at_the_end(
    redis: Redis,
) -> None:
    async with running_worker(redis, registry, queues=["flows"]) as worker:
        client = Client(redis, registry)
        # Given a running job that reported 0.4 and waits
        job = await client.enqueue("progressing", {})

        async def reported() -> bool:
            st = await client.status(job)
            return st.state == "running" and st.progress == 0.4

        await wait_for(reported, timeout_s=30, what="progress 0.4")
        # When its status is read, directly and over HTTP
        st = await client.status(job)
        app = build_app(client=client, metrics=Metrics(), redis=redis, token=None)
        async with TestClient(TestServer(app)) as http:
            resp = await http.get(f"/api/jobs/{job}")
            body = await resp.json()
        # Then both show the progress and its meta
        assert st.progress_meta == {"stage": "download"}
        assert (body["progress"], body["progress_meta"]) == (0.4, {"stage": "download"})
        # When it reports 100 times in a tight loop and ends
        await redis.rpush("go", 1)  # type: ignore[misc]

        async def finished() -> bool:
            return (await client.status(job)).state == "succeeded"

        await wait_for(finished, timeout_s=30, what="the job to succeed")
        # Then its last report was written before the job's outcome
        final = await client.status(job)
        assert final.progress == 1.0
        assert final.progress_meta == {"stage": "upload", "i": 100}
        assert worker.processed == 1


async def test_fan_out_parent_status_counts_children(redis: Redis) -> None:
    client = Client(redis, registry)
    # Given a parent that enqueues 3 children that succeed and 2 that are dead-lettered
    parent = await client.enqueue("fan_out", {"ok": 3, "bad": 2})
    # When only the parent has run
    await drain(redis, registry, queues=["flows"])
    # Then its status counts 5 children, all remaining
    st = await client.status(parent)
    assert st.state == "succeeded"
    assert st.children == {"total": 5, "succeeded": 0, "failed": 0, "remaining": 5}
    # When the children run
    ran = await drain(redis, registry, queues=["kids"])
    assert len(ran) == 5
    # Then the counters say how they ended
    st = await client.status(parent)
    assert st.children == {"total": 5, "succeeded": 3, "failed": 2, "remaining": 0}
    assert st.to_dict()["children"]["failed"] == 2
    # And a job without children shows none
    plain = await client.enqueue("report", {})
    assert (await client.status(plain)).children is None
