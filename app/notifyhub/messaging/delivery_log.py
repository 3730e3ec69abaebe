"""The delivery log (one row per attempt, with its cost) and the sandbox outbox.

Rows carry masked recipients only: the log outlives consent and is read by people who have no
business seeing contact details. Cost per user per day is the ``daily_user_costs`` view over
these rows, so there is no counter to drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from notifyhub.providers.redact import mask_email, mask_phone, redact_text


def mask(channel: str, recipient: str | None) -> str:
    if not recipient:
        return "-"
    return mask_phone(recipient) if channel == "sms" else mask_email(recipient)


@dataclass(frozen=True, slots=True)
class LogEntry:
    job_id: str
    user_id: int | None
    channel: str
    template: str
    recipient: str | None
    provider: str
    status: str
    provider_message_id: str | None = None
    segments: int | None = None
    cost: Decimal | None = None
    currency: str | None = None
    error: str | None = None
    idempotency_key: str | None = None


def log_values(entry: LogEntry) -> tuple[Any, ...]:
    """The row's values in the column order of :func:`record`'s INSERT: the recipient masked,
    the error redacted and cut to 1,000 characters."""
    return (
        entry.job_id,
        entry.user_id,
        entry.channel,
        entry.template,
        mask(entry.channel, entry.recipient),
        entry.provider,
        entry.provider_message_id,
        entry.status,
        entry.segments,
        entry.cost,
        entry.currency if entry.cost is not None else None,
        redact_text(entry.error)[:1000] if entry.error else None,
        entry.idempotency_key,
    )


async def record(conn: asyncpg.Connection, entry: LogEntry) -> None:
    await conn.execute(
        """
        INSERT INTO delivery_log (job_id, user_id, channel, template, recipient_masked, provider,
                                  provider_message_id, status, segments, cost, currency, error,
                                  idempotency_key)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
        """,
        *log_values(entry),
    )


async def to_sandbox(
    conn: asyncpg.Connection,
    *,
    channel: str,
    recipient: str,
    body: str,
    job_id: str,
    subject: str | None = None,
    html: str | None = None,
    headers: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        """
        INSERT INTO sandbox_outbox (channel, recipient, subject, body, html, headers, job_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        """,
        channel,
        recipient,
        subject,
        body,
        html,
        headers or {},
        job_id,
    )
