"""Emails to users that a worker runs at the same time share their statements: a *batch*.

A worker runs many email jobs at once, and they start together (each refill of its slots starts
several). :meth:`EmailBatches.start` puts a send in the open batch, which runs when the event
loop comes back to it (``call_soon``: every send started in the same loop turn joins) or when
it is full. It takes one connection from the pool and runs :func:`.user_email.start_many` for
all its members: one statement locks, reads and claims for each of them, in order.

Each member then renders and calls the provider on its own, and ends with :meth:`Member.finish`
(settle the ledger, log, unlock) or :meth:`Member.unlock`. A member that fails half-way (an
exception, a timeout, a cancelled job) is ended by :meth:`Member.abandon`: its lock is released
and its claim stays ``pending``, so a retry takes it again, and the provider drops a repeat of
the same Idempotency-Key. Once every member has ended, one :func:`.user_email.finish_many`
ends them all, and the connection goes back to the pool without the reset query.

The guarantees are :mod:`.user_email`'s, member by member. Each recipient is read by a
statement of its own, after that member's lock was granted. Every lock is held until that
member's provider call has answered.

What a member gives up: its job ends when the batch's slowest provider call has answered, not
when its own did (at most the provider client's timeout later, 10 s against the task's 60), and
an opt-out of one member waits for the whole batch instead of one send. A batch statement that
fails fails every member still waiting on it; their jobs retry, as they would have after their
own statement failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from notifyhub.db import keep_session

from . import user_email
from .delivery_log import LogEntry
from .user_email import Ending, Started

__all__ = ["MAX_BATCH", "EmailBatches", "Member", "batch_size"]

log = logging.getLogger(__name__)

#: Sends per batch at most: the arrays of one statement.
MAX_BATCH = 100


def batch_size(concurrency: int) -> int:
    """The batch size for a worker running ``concurrency`` jobs: half of them, so at least two
    batches overlap (one starts while the other waits for its slowest provider call). With
    100 jobs, one batch of 100 sent 1.1k emails/s; two of 50, 1.5k-1.9k/s on 2 cores."""
    return max(1, min(MAX_BATCH, concurrency // 2))


_Joined = tuple[Started | None, "Member | None"]


class Member:
    """A started send that holds its user's consent lock on the batch's connection until it
    ends: once, by :meth:`finish`, :meth:`unlock` or :meth:`abandon`."""

    __slots__ = ("_batch", "_ended", "user_id")

    def __init__(self, batch: _Batch, user_id: int) -> None:
        self._batch = batch
        self.user_id = user_id
        self._ended = False

    async def finish(
        self,
        entry: LogEntry,
        *,
        key: str | None,
        ledger_state: str | None,
        provider_id: str | None = None,
        outbox: Mapping[str, Any] | None = None,
    ) -> None:
        """Settles ``key`` as ``ledger_state`` (when both are given), logs ``entry``, keeps
        ``outbox`` when given, and releases the lock; returns once that is committed."""
        ending = Ending(self.user_id, entry, key, ledger_state, provider_id, outbox)
        await self._end(ending, wait=True)

    def unlock(self) -> None:
        """Releases the lock with nothing written (the send goes another way)."""
        self._end(ending=Ending(self.user_id), wait=False)

    def abandon(self) -> None:
        """Releases the lock when the send has not ended (a no-op when it has): for a
        ``finally`` clause."""
        if not self._ended:
            self._end(Ending(self.user_id), wait=False)

    def _end(self, ending: Ending, *, wait: bool) -> asyncio.Future[None]:
        if self._ended:
            raise RuntimeError(f"the send to user {self.user_id} has already ended")
        self._ended = True
        return self._batch.end(ending, wait=wait)


class _Batch:
    """The sends started together, the connection they share, and how each one ended."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.requests: list[tuple[int, str, str]] = []
        self.joined: list[asyncio.Future[_Joined]] = []
        self.endings: list[Ending] = []
        self.waiting: list[asyncio.Future[None]] = []
        self.live = 0
        self.all_ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error: BaseException | None = None

    def join(self, user_id: int, job_id: str, template: str) -> asyncio.Future[_Joined]:
        joined: asyncio.Future[_Joined] = asyncio.get_running_loop().create_future()
        self.requests.append((user_id, job_id, template))
        self.joined.append(joined)
        return joined

    def end(self, ending: Ending, *, wait: bool) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.error is not None:
            # The batch's connection was given up, which released every lock it held.
            if wait:
                done.set_exception(self.error)
            else:
                done.set_result(None)
            return done
        self.endings.append(ending)
        if wait:
            self.waiting.append(done)
        else:
            done.set_result(None)
        self.live -= 1
        if self.live == 0 and not self.all_ended.done():
            self.all_ended.set_result(None)
        return done

    async def run(self) -> None:
        try:
            async with self.pool.acquire() as conn:
                await self._run(conn)
        except Exception as exc:
            self._fail(exc)
            log.warning(
                "an email batch of %d sends failed: %s", len(self.requests), type(exc).__name__
            )
        except BaseException as exc:
            self._fail(exc)
            raise

    async def _run(self, conn: asyncpg.Connection) -> None:
        results = await user_email.start_many(conn, self.requests)
        for joined, (user_id, _, _), started in zip(
            self.joined, self.requests, results, strict=True
        ):
            holds_lock = started is not None and not started.settled
            if joined.done():
                # Its job was cancelled while the batch started: release what it took.
                if holds_lock:
                    self.endings.append(Ending(user_id))
                continue
            if holds_lock:
                self.live += 1
                joined.set_result((started, Member(self, user_id)))
            else:
                joined.set_result((started, None))
        if self.live:
            await self.all_ended
        if self.endings:
            await user_email.finish_many(conn, self.endings)
        keep_session(conn)  # every lock the batch took is released
        for done in self.waiting:
            if not done.done():
                done.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        for joined in self.joined:
            if not joined.done():
                joined.set_exception(exc)
        for done in self.waiting:
            if not done.done():
                done.set_exception(exc)


class EmailBatches:
    """The open batch of one pool; one per :class:`~notifyhub.state.HandlerState`."""

    def __init__(self, pool: asyncpg.Pool, *, max_size: int = MAX_BATCH) -> None:
        self._pool = pool
        self.max_size = max_size
        self._open: _Batch | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def start(self, user_id: int, job_id: str, template: str) -> _Joined:
        """Locks, reads and claims with the other sends started in this loop turn.

        Returns what :func:`.user_email.start_many` found and, when the send holds its lock, the
        :class:`Member` that must end it (``None`` for an unknown user or a settled key).
        """
        batch = self._open
        if batch is None:
            batch = self._open = _Batch(self._pool)
            asyncio.get_running_loop().call_soon(self._launch, batch)
        joined = batch.join(user_id, job_id, template)
        if len(batch.requests) >= self.max_size:
            self._launch(batch)
        try:
            return await joined
        except asyncio.CancelledError:
            # Cancelled after the batch handed over the lock, before this task took it.
            if joined.done() and not joined.cancelled() and joined.exception() is None:
                member = joined.result()[1]
                if member is not None:
                    member.abandon()
            raise

    def _launch(self, batch: _Batch) -> None:
        if self._open is not batch:
            return  # launched already, when it filled up
        self._open = None
        task = asyncio.create_task(batch.run(), name="email-batch")
        self._running.add(task)
        task.add_done_callback(self._running.discard)
