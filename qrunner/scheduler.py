"""The cron loop: turns due ``schedules.yaml`` slots into jobs, once each, from any worker.

Every worker may run a :class:`Scheduler`; there is no leader to elect or lose. Exactly-once
enqueueing per (schedule, slot) rests on the enqueue itself: each slot is enqueued with the
idempotency key ``cron:<name>:<slot_ms>`` and the job id ``cron-<name>-<slot_ms>``, and the
queue's enqueue script checks the key and adds the job atomically, so two workers firing the
same slot leave one job.

Per schedule, ``qr:cron:{<name>}:last`` holds the newest slot handled (fired, or given up under
the catch-up policy). It only moves forward and only *after* the slot's enqueue returned, so a
worker killed between the two leaves the slot to the next tick of any worker, whose enqueue is
then deduplicated. The same key tells a restarted fleet how many slots an outage missed.

Counting is exact too: the script that advances ``last`` returns its previous value, and a
worker counts (and reports through its hooks) only the slots beyond it, so each fire and each
miss is counted by exactly one worker even when several handled the same slot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from redis.asyncio import Redis

from . import keys
from .clock import Clock, RedisClock
from .cron import Cron, catch_up, jitter_ms, to_datetime
from .errors import BackendUnavailable, EnqueueError, ServerFull
from .faults import classify
from .schedules import Schedule
from .scripts import Script

log = logging.getLogger(__name__)

#: Idempotency keys must outlive every moment a worker could still try the slot again.
MIN_KEY_TTL_S = 2 * 24 * 3600.0
#: Slots handled per round trip to ``last``; a long outage of a per-second schedule is worked
#: through in batches rather than enumerated into one list.
BATCH = 1000
_NEVER = 2**63


_ADVANCE = Script("cron_advance")

FireHook = Callable[[str, int], None]
"""Called as ``(schedule_name, count)`` with the slots this worker enqueued first."""
MissHook = Callable[[str, int], None]
"""Called as ``(schedule_name, count)`` with the slots this worker gave up (catch-up policy)."""


class Enqueuer(Protocol):
    """What the scheduler needs of the queue client (``qrunner.queue.Client`` fits)."""

    async def enqueue(
        self,
        task: str,
        payload: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        delay_s: float | None = None,
        at: datetime | None = None,
        key: str | None = None,
        key_ttl_s: float | None = None,
        job_id: str | None = None,
    ) -> str: ...


def slot_key(name: str, slot_ms: int) -> str:
    """Idempotency key of one slot: the same on every worker, so the enqueue dedups it."""
    return f"cron:{name}:{slot_ms}"


def slot_job_id(name: str, slot_ms: int) -> str:
    """Deterministic job id of one slot, so operators can find a slot's job by name and time."""
    return f"cron-{name}-{slot_ms}"


class Scheduler:
    """Fires due slots of ``entries`` through ``enqueuer``; see the module docstring."""

    def __init__(
        self,
        redis: Redis,
        enqueuer: Enqueuer,
        entries: Iterable[Schedule],
        clock: Clock,
        *,
        tick_s: float = 1.0,
        grace_s: float = 60.0,
        key_ttl_s: float = MIN_KEY_TTL_S,
        on_fire: FireHook | None = None,
        on_miss: MissHook | None = None,
    ) -> None:
        self._redis = redis
        self._enqueuer = enqueuer
        self._entries = [e for e in entries if e.enabled]
        self._crons = {e.name: e.compiled() for e in self._entries}
        self._clock = clock
        self.tick_s = tick_s
        self.grace_s = grace_s
        self.key_ttl_s = key_ttl_s
        self._on_fire = on_fire
        self._on_miss = on_miss
        self._redis = redis
        # Earliest time each entry can have work: a lower bound (other workers only ever move
        # ``last`` forward), so skipping Redis until then loses nothing.
        self._next_due: dict[str, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every ``tick_s`` until ``stop`` is set; a failed tick is logged and retried."""
        if not self._entries:  # nothing enabled: do not poll the Redis clock every second
            await stop.wait()
            return
        failing = False
        while not stop.is_set():
            try:
                await self.tick()
                failing = False
            except Exception as exc:
                # Redis faults are waited out; anything else is a bug and ends the loop (the
                # worker then stops, loudly, instead of a cron that silently never fires).
                fault = exc if isinstance(exc, BackendUnavailable | ServerFull) else classify(exc)
                if fault is None:
                    raise
                if not failing:
                    log.warning("cron tick failed (%s); retrying every %.1fs", fault, self.tick_s)
                failing = True
            await _sleep_or_stop(self._clock, self.tick_s, stop)

    async def tick(self) -> int:
        """Fire every due slot once; returns how many jobs this worker enqueued first."""
        now = await self._clock.now_ms()
        due = [e for e in self._entries if self._next_due.get(e.name, now) <= now]
        if not due:
            return 0
        # Schedules an operator paused (qrunner schedules pause) are skipped; on resume the
        # usual catch-up policy applies (slots older than the grace period count as missed).
        paused = {
            m.decode() if isinstance(m, bytes) else str(m)
            for m in await self._redis.smembers(keys.paused_schedules())
        }
        due = [e for e in due if e.name not in paused]
        if not due:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for entry in due:
            pipe.get(keys.cron_last(entry.name))
        lasts = await pipe.execute()
        fired = 0
        for entry, raw in zip(due, lasts, strict=True):
            fired += await self._run_entry(entry, None if raw is None else int(raw), now)
        return fired

    async def _run_entry(self, entry: Schedule, last: int | None, now: int) -> int:
        cron = self._crons[entry.name]
        # Never fired (new schedule, or Redis lost its data): nothing can be called missed, but
        # the newest slot inside the grace period still fires, so a deploy at 05:00:10 keeps
        # 05:00, and a flushed Redis does not replay a minute of a per-second schedule.
        fresh = last is None
        lower = last if last is not None else now - round(self.grace_s * 1000)
        fired = 0
        while True:
            batch, newer_follow, next_due = self._due_slots(entry, cron, lower, now)
            if not batch:
                self._next_due[entry.name] = next_due
                return fired
            if fresh:
                fire = [] if newer_follow else batch[-1:]
            else:
                fire, _ = catch_up(
                    batch,
                    now,
                    entry.catchup,
                    window_s=entry.catchup_window_s,
                    grace_s=self.grace_s + entry.jitter_s,
                    newer_follow=newer_follow,
                )
            fired += await self._handle(entry, batch, fire, now, count_missed=not fresh)
            # Only now, with the batch recorded: after a failed tick the entry stays due, so the
            # next tick retries it instead of waiting for the following slot.
            self._next_due[entry.name] = next_due
            lower = batch[-1]
            if not newer_follow:
                return fired

    def _due_slots(
        self, entry: Schedule, cron: Cron, lower: int, now: int
    ) -> tuple[list[int], bool, int]:
        """Slots after ``lower`` whose (jittered) time has come, in order, at most one batch;
        whether more follow; and when this entry next has work once the batch is handled.

        A slot waits for its jitter, and later slots wait behind it, so ``last`` never jumps
        over a slot that has not fired yet.
        """
        slots = cron.slots(lower, now, limit=BATCH + 1)
        batch: list[int] = []
        for slot in slots[:BATCH]:
            if slot + jitter_ms(entry.name, slot, entry.jitter_s) > now:
                break
            batch.append(slot)
        if len(batch) == BATCH and len(slots) > BATCH:
            return batch, True, now
        pending = slots[len(batch)] if len(slots) > len(batch) else None
        if pending is None:
            pending = cron.next_after(max(now, batch[-1] if batch else lower))
        if pending is None:
            return batch, False, _NEVER
        return batch, False, pending + jitter_ms(entry.name, pending, entry.jitter_s)

    async def _handle(
        self,
        entry: Schedule,
        batch: Sequence[int],
        fire: Sequence[int],
        now: int,
        *,
        count_missed: bool = True,
    ) -> int:
        """Enqueue ``fire``, then advance ``last`` past the batch and count what is ours."""
        ttl = max(self.key_ttl_s, entry.catchup_window_s + self.grace_s + entry.jitter_s)
        refused: set[int] = set()
        for slot in fire:
            payload = dict(entry.payload)
            if entry.add_scheduled_for:
                payload["scheduled_for"] = to_datetime(slot).isoformat()
            try:
                await self._enqueuer.enqueue(
                    entry.task,
                    payload,
                    queue=entry.queue,
                    key=slot_key(entry.name, slot),
                    key_ttl_s=ttl,
                    job_id=slot_job_id(entry.name, slot),
                )
            except ServerFull:
                raise  # out of memory for now: the slot stays due and is tried next tick
            except EnqueueError as exc:
                # Refused for good (unknown task, invalid payload): retrying each tick would stall
                # the schedule forever, so the slot counts as missed and the error is loud.
                log.error("cron %s: slot %s refused by the queue: %s", entry.name, slot, exc)
                refused.add(slot)
        prev_raw = await _ADVANCE(self._redis, [keys.cron_last(entry.name)], [batch[-1]])
        prev = None if prev_raw is None else int(prev_raw)
        ours = [s for s in batch if prev is None or s > prev]
        enqueued = set(fire) - refused
        fired = [s for s in ours if s in enqueued]
        # A fresh schedule's older slots were never due, but a refused slot is a miss.
        missed = len(ours) - len(fired) if count_missed else len(refused.intersection(ours))
        for slot in fired:
            log.debug("cron %s: enqueued slot %s (%d ms late)", entry.name, slot, now - slot)
        if fired:
            _call_hook(self._on_fire, entry.name, len(fired))
        if missed:
            log.warning(
                "cron %s: %d slot(s) missed (catchup=%s, window=%gs)",
                entry.name,
                missed,
                entry.catchup,
                entry.catchup_window_s,
            )
            _call_hook(self._on_miss, entry.name, missed)
        return len(fired)


def _call_hook(hook: Callable[..., None] | None, *args: Any) -> None:
    """Metrics must never stop the cron loop."""
    if hook is None:
        return
    try:
        hook(*args)
    except Exception:
        log.exception("cron metrics hook failed")


async def _sleep_or_stop(clock: Clock, seconds: float, stop: asyncio.Event) -> None:
    """Sleep on ``clock``, returning early when ``stop`` is set."""
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, stopper):
            task.cancel()
        await asyncio.gather(sleeper, stopper, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """One line of ``bin/qrunner schedules``; times are in the entry's zone."""

    name: str
    task: str
    cron: str
    timezone: str
    enabled: bool
    last_fire: datetime | None
    next_fire: datetime | None


def describe(
    entries: Iterable[Schedule], last_fired: Mapping[str, int | None], now_ms: int
) -> list[ScheduleRow]:
    """Rows for ``bin/qrunner schedules``: last slot handled and next slot, per entry."""
    rows = []
    for entry in entries:
        cron = entry.compiled()
        last = last_fired.get(entry.name)
        upcoming = cron.next_after(now_ms) if entry.enabled else None
        rows.append(
            ScheduleRow(
                name=entry.name,
                task=entry.task,
                cron=entry.cron,
                timezone=entry.timezone,
                enabled=entry.enabled,
                last_fire=None if last is None else to_datetime(last, cron.tz),
                next_fire=None if upcoming is None else to_datetime(upcoming, cron.tz),
            )
        )
    return rows


async def describe_live(redis: Redis, entries: Iterable[Schedule]) -> list[ScheduleRow]:
    """:func:`describe` with ``last`` read from Redis and "now" from the Redis clock."""
    listed = list(entries)
    now = await RedisClock(redis).now_ms()
    return describe(listed, await read_last_fired(redis, listed), now)


async def read_last_fired(redis: Redis, entries: Iterable[Schedule]) -> dict[str, int | None]:
    """The ``last`` slot of each entry, as :func:`describe` wants it."""
    names = [e.name for e in entries]
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.get(keys.cron_last(name))
    values = await pipe.execute()
    return {n: None if v is None else int(v) for n, v in zip(names, values, strict=True)}


__all__ = [
    "Enqueuer",
    "FireHook",
    "MissHook",
    "ScheduleRow",
    "Scheduler",
    "describe",
    "describe_live",
    "read_last_fired",
    "slot_job_id",
    "slot_key",
]
