"""A client remembers what a plain enqueue of a task looks like (due now, no key, id or
follow-up) once one has gone through, and sends the next ones without checking again what came
out the same: they write what the first wrote, validate the payload as before, and every
failure reaches the same handling as any enqueue."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from qrunner import Client, Context, Registry, keys
from qrunner.errors import InvalidPayload, KeyConflict, PayloadTooLarge
from tests.helpers.script_sends import count_enqueue_sends

registry = Registry()


class Reminder(BaseModel):
    user_id: int


@registry.task(queue="plans")
async def ping(ctx: Context[Any], payload: dict[str, Any]) -> None:
    return None


@registry.task(queue="plans", payload=Reminder)
async def remind(ctx: Context[Any], payload: Reminder) -> None:
    return None


@registry.task(queue="plans", fair_key=lambda p: str(p["tenant"]))
async def fair(ctx: Context[Any], payload: dict[str, Any]) -> None:
    return None


async def envelopes(redis: Redis, queue: str) -> list[Any]:
    return [orjson.loads(fields[b"j"]) for _, fields in await redis.xrange(keys.stream(queue))]


def counting_preparations(client: Client) -> list[str]:
    """Note each call of the client's full preparation of a job (its checks and look-ups)."""
    calls: list[str] = []
    original = client._prepare_parts

    def counted(task: str, *args: Any) -> Any:
        calls.append(task)
        return original(task, *args)

    client._prepare_parts = counted  # type: ignore[method-assign]
    return calls


async def test_a_repeated_enqueue_skips_the_preparation_and_writes_what_the_first_wrote(
    redis: Redis,
) -> None:
    # Given a client that enqueued a task once, due now
    client = Client(redis, registry)
    prepared = counting_preparations(client)
    first = await client.enqueue("ping", {"n": 1})
    # When it enqueues the same task again, with and without a payload
    second = await client.enqueue("ping", {"n": 2})
    third = await client.enqueue("ping")
    # Then only the first went through the full preparation
    assert prepared == ["ping"]
    # And the stream holds the three jobs in the same compact form, each with its own id
    assert await envelopes(redis, "plans") == [
        [first, "ping", {"n": 1}],
        [second, "ping", {"n": 2}],
        [third, "ping", {}],
    ]
    assert len({first, second, third}) == 3
    for job_id in (first, second, third):
        assert (await client.status(job_id)).state == "queued"


async def test_enqueues_that_need_more_than_the_plan_take_the_full_path(redis: Redis) -> None:
    # Given a client that enqueued a task once
    client = Client(redis, registry)
    await client.enqueue("ping", {"n": 1})
    prepared = counting_preparations(client)
    # When it enqueues the task with a delay, a key, its own id, another queue, and a
    # fairness-keyed task twice
    ids = [
        await client.enqueue("ping", {"n": 2}, delay_s=60),
        await client.enqueue("ping", {"n": 3}, key="once"),
        await client.enqueue("ping", {"n": 4}, job_id="given-id"),
        await client.enqueue("ping", {"n": 5}, queue="elsewhere"),
        await client.enqueue("fair", {"tenant": 1}),
        await client.enqueue("fair", {"tenant": 2}),
    ]
    # Then each went through the full preparation (a fairness key is never planned)
    assert prepared == ["ping", "ping", "ping", "ping", "fair", "fair"]
    # And each job is where the full path puts it
    assert ids[2] == "given-id"
    assert await redis.zcard(keys.delayed("plans")) == 1
    assert await redis.xlen(keys.stream("elsewhere")) == 1
    states = [(await client.status(job_id)).state for job_id in ids]
    assert states == ["scheduled", "queued", "queued", "queued", "queued", "queued"]


async def test_a_repeated_enqueue_still_validates_against_the_payload_model(
    redis: Redis,
) -> None:
    client = Client(redis, registry)
    await client.enqueue("remind", {"user_id": 1})
    with pytest.raises(InvalidPayload, match="user_id"):
        await client.enqueue("remind", {"user_id": "not a number"})
    assert await redis.xlen(keys.stream("plans")) == 1


async def test_a_repeated_enqueue_refuses_a_payload_too_large_or_not_json(redis: Redis) -> None:
    client = Client(redis, registry, max_payload_bytes=200)
    await client.enqueue("ping", {"n": 1})
    with pytest.raises(PayloadTooLarge):
        await client.enqueue("ping", {"text": "x" * 500})
    with pytest.raises(InvalidPayload, match="not JSON-serialisable"):
        await client.enqueue("ping", {"when": object()})
    assert await redis.xlen(keys.stream("plans")) == 1


async def test_a_repeated_enqueue_loads_the_script_again_after_a_script_flush(
    redis: Redis,
) -> None:
    client = Client(redis, registry)
    await client.enqueue("ping", {"n": 1})
    await redis.script_flush()
    second = await client.enqueue("ping", {"n": 2})
    assert [e[0] for e in await envelopes(redis, "plans")][1:] == [second]
    assert await redis.xlen(keys.stream("plans")) == 2


async def test_a_repeated_enqueue_onto_a_conflicting_key_raises_once_naming_the_queue(
    redis: Redis,
) -> None:
    # Given a client that enqueued a task once, and then its queue's stream key replaced by a
    # string (something else writing under qr:)
    client = Client(redis, registry)
    await client.enqueue("ping", {"n": 1})
    await redis.delete(keys.stream("plans"))
    await redis.set(keys.stream("plans"), "not a stream")
    sends = count_enqueue_sends(client)
    # When it enqueues the task again
    with pytest.raises(KeyConflict) as raised:
        await client.enqueue("ping", {"n": 2})
    # Then the conflict names the queue, and the call was not sent again
    assert raised.value.queue == "plans"
    assert sends == [1]
    assert await redis.get(keys.stream("plans")) == b"not a stream"
