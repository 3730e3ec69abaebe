"""The reports registry, the queue its tasks share, and what every report task needs: the
clock, the business a report is for, and the download link of a stored file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg  # type: ignore[import-untyped]

from notifyhub.settings import AppSettings
from qrunner import Permanent, Registry

from .files import StoredFile
from .links import signer_for

registry = Registry()

QUEUE = "reports"


def utc_now(override: datetime | None = None) -> datetime:
    """The current time, or a payload's ``now`` (tests and re-runs); naive means UTC."""
    if override is None:
        return datetime.now(UTC)
    return override if override.tzinfo else override.replace(tzinfo=UTC)


async def fetch_business(conn: asyncpg.Connection, business_id: int) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT id, slug, name, time_zone, owner_user_id, currency FROM businesses WHERE id = $1",
        business_id,
    )
    if row is None:
        raise Permanent(f"business {business_id} does not exist")
    return row


def keep_files_for(settings: AppSettings) -> timedelta:
    return timedelta(days=settings.report_link_days)


def download_url(settings: AppSettings, file: StoredFile) -> str | None:
    """The signed link to ``file``, or ``None`` without a master secret to sign it with."""
    signer = signer_for(settings.signing_key)
    if signer is None:
        return None
    return signer.url(settings.public_url, file.id, file.expires_at)
