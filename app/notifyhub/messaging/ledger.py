"""The effect ledger: at most one provider call per (job, recipient, template) that may have
reached the recipient (G3).

A redelivered job (crashed worker, lost lease) and a replayed dead-letter job keep their job id,
so they derive the same key and find the earlier claim. Two layers:

- Redis ``SET NX`` is the fast path: a re-run of a job that already sent finds ``sent`` without
  touching PostgreSQL.
- The PostgreSQL ``effect_ledger`` row is the truth (it survives a Redis flush): claimed with
  ``INSERT ... ON CONFLICT DO NOTHING`` in state ``pending``, then settled as ``sent``,
  ``maybe_sent`` or ``failed`` (nothing went out, a retry may claim it again).

An email to a user claims and settles the same row, by the same rules, inside the two
statements of :mod:`.user_email`, and skips the Redis layer: there a re-run costs one statement,
as much as the look-up would.

What a re-run does with a claim it finds depends on the channel, because a repeated email with
the same Idempotency-Key is dropped by the provider while a repeated SMS reaches a phone:

=============  ===============================  =======================================
found          email                            sms
=============  ===============================  =======================================
sent           skip                             skip
maybe_sent     (never recorded for email)       skip: never re-sent automatically
failed         claim again and send             claim again and send
pending        claim again, same key            older than the stale limit: settle as
                                                maybe_sent and skip; younger: another
                                                attempt is in flight, look again later
=============  ===============================  =======================================
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum

import asyncpg  # type: ignore[import-untyped]
from redis.asyncio import Redis

FINAL = ("sent", "maybe_sent")


def recipient_hash(recipient: str) -> str:
    return hashlib.sha256(recipient.strip().lower().encode()).hexdigest()


def idempotency_key(job_id: str, channel: str, template: str, recipient: str) -> str:
    """Deterministic per (job, recipient, template); also the email Idempotency-Key."""
    return f"qr-{job_id}-{channel}-{template}-{recipient_hash(recipient)[:20]}"


def redis_key(key: str) -> str:
    return f"qr:msg:ledger:{key}"


class ClaimState(Enum):
    OWNED = "owned"  # this run may call the provider
    DONE = "done"  # an earlier run settled it; do not call the provider
    BUSY = "busy"  # another run is calling the provider right now


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    found: str | None = None  # ledger state found, for DONE
    retry_after_s: float = 0.0  # for BUSY


@dataclass(frozen=True, slots=True)
class Ledger:
    redis: Redis
    ttl_s: int
    sms_pending_stale_s: float

    async def claim(
        self,
        conn: asyncpg.Connection,
        key: str,
        *,
        job_id: str,
        channel: str,
        recipient: str,
        template: str,
    ) -> Claim:
        fresh = await self.redis.set(redis_key(key), b"pending", nx=True, ex=self.ttl_s)
        if not fresh:
            cached = await self.redis.get(redis_key(key))
            found = cached.decode() if isinstance(cached, bytes) else cached
            if found in FINAL:
                return Claim(ClaimState.DONE, found)
        inserted = await conn.fetchval(
            """
            INSERT INTO effect_ledger (idempotency_key, job_id, channel, recipient_hash, template)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING true
            """,
            key,
            job_id,
            channel,
            recipient_hash(recipient),
            template,
        )
        if inserted:
            return Claim(ClaimState.OWNED)
        return await self._reclaim(conn, key, channel)

    async def _reclaim(self, conn: asyncpg.Connection, key: str, channel: str) -> Claim:
        row = await conn.fetchrow(
            """
            SELECT state, extract(epoch FROM clock_timestamp() - updated_at)::float8 AS age_s
            FROM effect_ledger WHERE idempotency_key = $1
            """,
            key,
        )
        state, age_s = row["state"], row["age_s"]
        if state in FINAL:
            await self._cache(key, state)
            return Claim(ClaimState.DONE, state)
        if state == "failed" or channel == "email":
            taken = await conn.fetchval(
                """
                UPDATE effect_ledger SET state = 'pending', updated_at = clock_timestamp()
                WHERE idempotency_key = $1 AND state = $2
                RETURNING true
                """,
                key,
                state,
            )
            return Claim(ClaimState.OWNED) if taken else Claim(ClaimState.BUSY, retry_after_s=1.0)
        if age_s >= self.sms_pending_stale_s:
            settled = await conn.fetchval(
                """
                UPDATE effect_ledger SET state = 'maybe_sent', updated_at = clock_timestamp()
                WHERE idempotency_key = $1 AND state = 'pending'
                RETURNING true
                """,
                key,
            )
            if settled:
                await self._cache(key, "maybe_sent")
                return Claim(ClaimState.DONE, "maybe_sent")
            return Claim(ClaimState.BUSY, retry_after_s=1.0)
        return Claim(ClaimState.BUSY, retry_after_s=max(1.0, self.sms_pending_stale_s - age_s))

    async def settle(
        self, conn: asyncpg.Connection, key: str, state: str, provider_id: str | None = None
    ) -> None:
        await conn.execute(
            """
            UPDATE effect_ledger
               SET state = $2, provider_message_id = coalesce($3, provider_message_id),
                   updated_at = clock_timestamp()
             WHERE idempotency_key = $1
            """,
            key,
            state,
            provider_id,
        )
        await self._cache(key, state)

    async def _cache(self, key: str, state: str) -> None:
        await self.redis.set(redis_key(key), state.encode(), ex=self.ttl_s)
