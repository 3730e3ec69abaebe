"""An email to a user in two PostgreSQL statements: the path the sender takes for every email
that has a ``user_id`` (welcome, receipts to signed-in users, reminders, the onboarding steps).

The generic pipeline (:meth:`.sender.Sender.deliver`) costs nine round trips per email: the
recipient read twice, the ledger claim, ``BEGIN``, the consent lock, ``COMMIT``, the ledger
settle, the log row and the pool's reset query. Here the same steps take two statements:

1. :func:`start_many`: ``email_send_start`` (migration 0800) takes the user's shared email
   consent lock as a *session* lock, then reads the recipient and claims the ledger key;
2. :func:`finish_many`, once the provider answered: settles the ledger, writes the delivery-log
   row (and the sandbox copy when there are no credentials) and releases the lock.

Both take a whole batch: the sends a worker runs at the same time share the two statements and
one connection (:mod:`.email_batch`), so a send costs two round trips alone and a fraction of
one in a crowd.

After (2) the connection goes back to the pool without the reset query
(:func:`notifyhub.db.keep_session`): the locks were the only session state the path made, and
(2) released them. When anything fails in between, nobody vouches for the connection, so the
pool runs its reset query, whose ``pg_advisory_unlock_all()`` releases the locks (a connection
that cannot run it is closed, which releases them as well).

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson

from .delivery_log import LogEntry, log_values
from .recipients import Recipient, consent_lock, recipient_from_row

__all__ = ["Ending", "Started", "finish_many", "start_many"]

#: Every request of a batch through ``email_send_start``, in the order given (``ord``).
_START_MANY = """
SELECT s.* FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::int[])
         WITH ORDINALITY AS a(user_id, job_id, template, lock_class, lock_key, ord)
CROSS JOIN LATERAL email_send_start(a.user_id, a.job_id, a.template, a.lock_class, a.lock_key) s
ORDER BY a.ord
"""

#: Settles the ledger keys, writes the log rows and the sandbox copies, and releases the locks
#: of a batch: one statement whatever its size. Each array is one column.
_FINISH_MANY = """
WITH settled AS (
    UPDATE effect_ledger AS l
       SET state = e.state, provider_message_id = coalesce(e.provider_id, l.provider_message_id),
           updated_at = clock_timestamp()
      FROM unnest($1::text[], $2::text[], $3::text[]) AS e(state, provider_id, key)
     WHERE l.idempotency_key = e.key
), logged AS (
    INSERT INTO delivery_log (job_id, user_id, channel, template, recipient_masked, provider,
                              provider_message_id, status, segments, cost, currency, error,
                              idempotency_key)
    SELECT * FROM unnest($4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[],
                         $9::text[], $10::text[], $11::text[], $12::int[], $13::numeric[],
                         $14::currency_code[], $15::text[], $16::text[])
), boxed AS (
    INSERT INTO sandbox_outbox (channel, recipient, subject, body, html, headers, job_id)
    SELECT 'email', b.recipient, b.subject, b.body, b.html, b.headers::jsonb, b.job_id
      FROM unnest($17::text[], $18::text[], $19::text[], $20::text[], $21::text[], $22::text[])
           AS b(recipient, subject, body, html, headers, job_id)
)
SELECT count(*) FILTER (WHERE pg_advisory_unlock_shared(u.lock_class, u.lock_key))
  FROM unnest($23::int[], $24::int[]) AS u(lock_class, lock_key)
"""


@dataclass(frozen=True, slots=True)
class Started:
    """What :func:`start_many` found for one send: the recipient, the ledger key and what
    claiming it found."""

    recipient: Recipient
    #: ``None`` when the user has no address, or one only the application can key.
    key: str | None
    #: ``owned`` (send), ``sent`` / ``maybe_sent`` (settled earlier: do not), or ``None``.
    claim: str | None

    @property
    def settled(self) -> bool:
        """An earlier attempt settled the key; the lock was already released."""
        return self.claim in ("sent", "maybe_sent")


@dataclass(frozen=True, slots=True)
class Ending:
    """How one started send ends in :func:`finish_many`: its lock is released; with an
    ``entry``, the log row is written, and the ledger ``key`` settled as ``ledger_state`` when
    both are given; ``outbox`` (``recipient``, ``subject``, ``body``, ``html``, ``headers``) is
    kept in the sandbox outbox when given."""

    user_id: int
    entry: LogEntry | None = None
    key: str | None = None
    ledger_state: str | None = None
    provider_id: str | None = None
    outbox: Mapping[str, Any] | None = None


async def start_many(
    conn: asyncpg.Connection, requests: Sequence[tuple[int, str, str]]
) -> list[Started | None]:
    """Locks, reads and claims for every ``(user_id, job_id, template)`` in one statement; one
    result per request, in order: ``None`` for an unknown user (no lock held).

    For every result that is neither ``None`` nor :attr:`Started.settled`, the connection holds
    the user's shared email consent lock, which an :class:`Ending` in :func:`finish_many`
    releases.
    """
    locks = [consent_lock(user_id, "email") for user_id, _, _ in requests]
    rows = await conn.fetch(
        _START_MANY,
        [user_id for user_id, _, _ in requests],
        [job_id for _, job_id, _ in requests],
        [template for _, _, template in requests],
        [lock_class for lock_class, _ in locks],
        [lock_key for _, lock_key in locks],
    )
    return [
        None
        if row["id"] is None
        else Started(recipient_from_row(row), row["idempotency_key"], row["claim"])
        for row in rows
    ]


async def finish_many(conn: asyncpg.Connection, endings: Sequence[Ending]) -> None:
    """Ends every send of a batch (:class:`Ending`) in one statement."""
    settle = [e for e in endings if e.entry is not None and e.key and e.ledger_state]
    logged = [log_values(e.entry) for e in endings if e.entry is not None]
    boxed = [(e, e.outbox) for e in endings if e.entry is not None and e.outbox is not None]
    locks = [consent_lock(e.user_id, "email") for e in endings]
    columns: list[list[Any]] = [list(c) for c in zip(*logged, strict=True)] or [[]] * 13
    await conn.execute(
        _FINISH_MANY,
        [e.ledger_state for e in settle],
        [e.provider_id for e in settle],
        [e.key for e in settle],
        *columns,
        [box["recipient"] for _, box in boxed],
        [box.get("subject") for _, box in boxed],
        [box.get("body") for _, box in boxed],
        [box.get("html") for _, box in boxed],
        [orjson.dumps(box.get("headers") or {}).decode() for _, box in boxed],
        [e.entry.job_id for e, _ in boxed if e.entry is not None],
        [lock_class for lock_class, _ in locks],
        [lock_key for _, lock_key in locks],
    )
