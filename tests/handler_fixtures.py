"""A handler module's registry running against real PostgreSQL and Redis, for end-to-end tests.

:func:`handler_stack` migrates the test's database, opens a pool and merges the handler
registry with stand-ins for the tasks it hands work to (see :func:`standin_registry`); tests
wrap the result in a :class:`HandlerEnv` subclass holding whatever their stand-ins record, and
run tasks to completion with burst workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg  # type: ignore[import-untyped]
from notifyhub.db import create_pool
from notifyhub.migrate import DEFAULT_MIGRATIONS_DIR, migrate
from notifyhub.settings import AppSettings
from notifyhub.state import HandlerState
from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from qrunner import Client, Context, Registry, Settings, Worker

MIGRATIONS = DEFAULT_MIGRATIONS_DIR

#: What a stand-in does with each job: given the task name, the job's context and its payload.
Record = Callable[[str, Context[Any], BaseModel], Awaitable[None]]


class EmailIn(BaseModel):
    """The agreed payload of messaging's ``send_email``; like it, refuses unknown fields."""

    model_config = ConfigDict(extra="forbid")
    user_id: int
    subject: str
    body: str
    template: str = "message"


class PreferredIn(BaseModel):
    """The agreed payload of messaging's ``send_preferred`` (push, else email, else SMS)."""

    model_config = ConfigDict(extra="forbid")
    user_id: int
    title: str
    body: str
    email_template: str = "message"
    email_context: dict[str, Any] = {}
    sms_text: str
    template: str = "message"
    category: str = "transactional"
    data: dict[str, str] = {}
    collapse_key: str | None = None
    quiet_hours_exempt: bool = False


class SmsIn(BaseModel):
    """The agreed payload of messaging's ``send_sms``."""

    model_config = ConfigDict(extra="forbid")
    user_id: int
    body: str
    template: str = "message"


def standin_registry(
    queue: str, payloads: Mapping[str, type[BaseModel]], record: Record, **options: Any
) -> Registry:
    """A registry declaring each of ``payloads``' tasks on ``queue``, every one calling ``record``.

    ``options`` go to each task declaration (``max_retries=0``, say).
    """
    standins = Registry()
    for name, model in payloads.items():

        async def standin(ctx: Context[Any], payload: BaseModel, name: str = name) -> None:
            await record(name, ctx, payload)

        standins.task(name, queue=queue, payload=model, **options)(standin)
    return standins


class HandlerStack(NamedTuple):
    """The pieces a handler test works with, in :class:`HandlerEnv`'s field order."""

    db: asyncpg.Pool
    redis: Redis
    registry: Registry
    client: Client
    state: HandlerState


@asynccontextmanager
async def handler_stack(
    database_url: str,
    redis: Redis,
    tmp_path: Path,
    handlers: Registry,
    standins: Registry,
    **settings: Any,
) -> AsyncIterator[HandlerStack]:
    """The migrated database's pool and ``handlers`` merged with ``standins``; the pool closes
    on exit. ``settings`` are added to the fast polling settings every handler test uses."""
    await migrate(database_url, MIGRATIONS)
    pool = await create_pool(database_url, max_size=4)
    registry = handlers.merge(standins)
    config = AppSettings(exports_dir=tmp_path / "exports", **settings)
    client = Client(redis, registry)
    try:
        yield HandlerStack(
            pool, redis, registry, client, HandlerState(config, pool, redis, client, None, None)
        )
    finally:
        await pool.close()


@dataclass
class HandlerEnv:
    """A test's handle on a :class:`HandlerStack`; subclasses add what their stand-ins record."""

    db: asyncpg.Pool
    redis: Redis
    registry: Registry
    client: Client
    state: HandlerState

    async def drain(self) -> None:
        """Run a burst worker until every queue is empty."""
        worker = Worker(
            self.redis,
            self.registry,
            burst=True,
            concurrency=4,
            settings=Settings(block_ms=100, promote_interval_ms=20),
            state=self.state,
        )
        await asyncio.wait_for(worker.run(), 30)

    async def run(self, task: str, payload: dict[str, Any], expect: str = "succeeded") -> Any:
        """Enqueue ``task`` and drain; asserts the job ended ``expect`` and returns its result."""
        job_id = await self.client.enqueue(task, payload)
        await self.drain()
        status = await self.client.status(job_id)
        assert status.state == expect, status
        return status.result
