"""An email to a user in two PostgreSQL statements: the path the sender takes for every email
that has a ``user_id`` (welcome, receipts to signed-in users, reminders, the onboarding steps).

The generic pipeline (:meth:`.sender.Sender.deliver`) costs nine round trips per email: the
recipient read twice, the ledger claim, ``BEGIN``, the consent lock, ``COMMIT``, the ledger
settle, the log row and the pool's reset query. Here the same steps take two statements:

1. :func:`start`: ``email_send_start`` (migration 0800) takes the user's shared email consent
   lock as a *session* lock, then reads the recipient and claims the ledger key;
2. :func:`finish`, once the provider answered: settles the ledger, writes the delivery-log row
   (and the sandbox copy when there are no credentials) and releases the lock.

After (2) the connection goes back to the pool without the reset query
(:func:`notifyhub.db.keep_session`): the lock was the only session state the path made, and (2)
released it. When anything fails in between, nobody vouches for the connection, so the pool runs
its reset query, whose ``pg_advisory_unlock_all()`` releases the lock (a connection that cannot
run it is closed, which releases it as well).

What the generic pipeline guarantees holds here:

- consent (G8): the recipient is read after the lock was granted, by a statement of its own, so
  an opt-out committed while the send waited is seen; the lock is held until the provider
  answered, so an opt-out waits for a send in flight instead of slipping past its check;
- no duplicate (G3): the ledger key is the one :func:`.ledger.idempotency_key` derives (job,
  channel, template, sha256 of the address) and the claim follows :meth:`.ledger.Ledger.claim`'s
  email rules: a settled key is not sent again, a pending or failed one is taken again and the
  provider drops a repeat of the same Idempotency-Key;
- outcomes: provider answers become job outcomes exactly as in the generic pipeline (the sender
  shares that code).

Two differences: a recipient refused by the consent rules leaves a ``failed`` ledger row (the
generic pipeline judges before it claims; a ``failed`` row is claimed again by a re-run, so
nothing changes for it), and the Redis copy of the ledger is neither read nor written (a re-run
costs one statement here, as much as the Redis look-up it would save). An address that is not
printable ASCII goes through the generic pipeline: its key depends on Python's ``str.lower``,
which PostgreSQL's ``lower()`` need not match.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from .delivery_log import LogEntry, log_values
from .recipients import Recipient, consent_lock, recipient_from_row

__all__ = ["Started", "finish", "start", "unlock"]

_START = "SELECT * FROM email_send_start($1, $2, $3, $4, $5)"

_FINISH = """
WITH settled AS (
    UPDATE effect_ledger
       SET state = $1, provider_message_id = coalesce($2, provider_message_id),
           updated_at = clock_timestamp()
     WHERE idempotency_key = $3
), logged AS (
    INSERT INTO delivery_log (job_id, user_id, channel, template, recipient_masked, provider,
                              provider_message_id, status, segments, cost, currency, error,
                              idempotency_key)
    VALUES ($4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
), boxed AS (
    INSERT INTO sandbox_outbox (channel, recipient, subject, body, html, headers, job_id)
    SELECT $6, $17::text, $18::text, $19::text, $20::text, $21::jsonb, $4
    WHERE $17::text IS NOT NULL
)
SELECT pg_advisory_unlock_shared($22, $23)
"""


@dataclass(frozen=True, slots=True)
class Started:
    """What :func:`start` found: the recipient, the ledger key and what claiming it found."""

    recipient: Recipient
    #: ``None`` when the user has no address, or one only the application can key.
    key: str | None
    #: ``owned`` (send), ``sent`` / ``maybe_sent`` (settled earlier: do not), or ``None``.
    claim: str | None

    @property
    def settled(self) -> bool:
        """An earlier attempt settled the key; the lock was already released."""
        return self.claim in ("sent", "maybe_sent")


async def start(
    conn: asyncpg.Connection, user_id: int, job_id: str, template: str
) -> Started | None:
    """Locks, reads and claims in one statement; ``None`` for an unknown user (unlocked).

    Unless the result is ``None`` or :attr:`Started.settled`, the caller holds the user's shared
    email consent lock and must end with :func:`finish` or :func:`unlock`.
    """
    row = await conn.fetchrow(_START, user_id, job_id, template, *consent_lock(user_id, "email"))
    if row is None or row["id"] is None:
        return None
    return Started(recipient_from_row(row), row["idempotency_key"], row["claim"])


async def finish(
    conn: asyncpg.Connection,
    entry: LogEntry,
    *,
    key: str | None,
    ledger_state: str | None,
    provider_id: str | None = None,
    outbox: Mapping[str, Any] | None = None,
) -> None:
    """Settles ``key`` as ``ledger_state`` (when both are given), records ``entry``, keeps
    ``outbox`` (``recipient``, ``subject``, ``body``, ``html``, ``headers``) in the sandbox
    outbox when given, and releases the consent lock: one statement."""
    assert entry.user_id is not None
    box = outbox or {}
    await conn.execute(
        _FINISH,
        ledger_state,
        provider_id,
        key if ledger_state is not None else None,
        *log_values(entry),
        box.get("recipient"),
        box.get("subject"),
        box.get("body"),
        box.get("html"),
        box.get("headers"),
        *consent_lock(entry.user_id, entry.channel),
    )


async def unlock(conn: asyncpg.Connection, user_id: int) -> None:
    """Releases the lock :func:`start` took, when the path ends without :func:`finish`."""
    await conn.execute(
        "SELECT pg_advisory_unlock_shared($1::int, $2::int)", *consent_lock(user_id, "email")
    )
