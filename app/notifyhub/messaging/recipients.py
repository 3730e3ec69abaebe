"""Loading who a message goes to, and recording opt-outs and opt-ins.

Opt-out writers and senders meet on a per-(user, channel) advisory lock: a sender holds it
*shared* from its last consent check until the provider answers, a writer takes it *exclusive*
before changing consent. So an opt-out commits either before a send's check (the send sees it)
or after that send finished: no message can leave after an opt-out was committed. The lock is
an advisory one rather than a row lock because an email opt-out may create the consent row.
An email to a user holds it as a session lock rather than a transaction one (:mod:`.user_email`:
no transaction to open and close), which conflicts with the writers' lock all the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from .consent import ChannelConsent

#: Advisory-lock class per channel (two-int4 form, so it cannot collide with the one-bigint
#: locks the migrator and the demo seeder take).
_LOCK_CLASS = {"sms": 0x716D0001, "email": 0x716D0002, "push": 0x716D0003}
_INT4_MAX = 2_147_483_647


@dataclass(frozen=True, slots=True)
class PushDevice:
    """A registered app install: ``platform`` is ``fcm`` or ``apns``."""

    platform: str
    token: str


@dataclass(frozen=True, slots=True)
class Recipient:
    user_id: int | None
    name: str
    email: str | None
    phone: str | None
    time_zone: str | None
    locale: str | None
    country: str | None
    quiet_start: time | None
    quiet_end: time | None
    sms: ChannelConsent
    email_consent: ChannelConsent
    sms_suppressed: bool
    email_suppressed: bool
    push_consent: ChannelConsent = field(default_factory=ChannelConsent)
    #: Oldest registration first (``push_devices``, migration 0500).
    push_devices: tuple[PushDevice, ...] = ()

    @property
    def first_name(self) -> str:
        return self.name.split()[0] if self.name.strip() else self.name


_USER_SQL = """
SELECT u.id, u.name, u.email, u.phone, u.time_zone, u.locale, u.country_code,
       u.quiet_hours_start, u.quiet_hours_end,
       sc.opted_in_at AS sms_in, sc.opted_out_at AS sms_out,
       ec.opted_in_at AS email_in, ec.opted_out_at AS email_out,
       EXISTS (SELECT 1 FROM suppressions s
               WHERE s.channel = 'sms' AND s.recipient = u.phone) AS sms_suppressed,
       EXISTS (SELECT 1 FROM suppressions s
               WHERE s.channel = 'email' AND s.recipient = lower(u.email)) AS email_suppressed,
       pc.opted_in_at AS push_in, pc.opted_out_at AS push_out,
       ARRAY(SELECT ARRAY[d.platform, d.token] FROM push_devices d
             WHERE d.user_id = u.id ORDER BY d.id) AS push_devices
FROM users u
LEFT JOIN consents sc ON sc.user_id = u.id AND sc.channel = 'sms'
LEFT JOIN consents ec ON ec.user_id = u.id AND ec.channel = 'email'
LEFT JOIN consents pc ON pc.user_id = u.id AND pc.channel = 'push'
WHERE {where}
"""


def recipient_from_row(row: Any) -> Recipient:
    """The recipient in a row with the columns of :data:`_USER_SQL` (``email_send_start``,
    migration 0800, returns the same ones)."""
    return Recipient(
        user_id=row["id"],
        name=row["name"],
        email=row["email"],
        phone=row["phone"],
        time_zone=row["time_zone"],
        locale=row["locale"],
        country=row["country_code"],
        quiet_start=row["quiet_hours_start"],
        quiet_end=row["quiet_hours_end"],
        sms=ChannelConsent(row["sms_in"], row["sms_out"]),
        email_consent=ChannelConsent(row["email_in"], row["email_out"]),
        sms_suppressed=row["sms_suppressed"],
        email_suppressed=row["email_suppressed"],
        push_consent=ChannelConsent(row["push_in"], row["push_out"]),
        push_devices=tuple(PushDevice(p, t) for p, t in row["push_devices"]),
    )


async def load_user(conn: asyncpg.Connection, user_id: int) -> Recipient | None:
    row = await conn.fetchrow(_USER_SQL.format(where="u.id = $1"), user_id)
    return None if row is None else recipient_from_row(row)


async def load_address(conn: asyncpg.Connection, address: str, name: str = "") -> Recipient:
    """The user owning ``address``, or a guest recipient (a guest order's receipt)."""
    row = await conn.fetchrow(_USER_SQL.format(where="lower(u.email) = lower($1)"), address)
    if row is not None:
        return recipient_from_row(row)
    suppressed = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM suppressions "
        "WHERE channel = 'email' AND recipient = lower($1))",
        address,
    )
    return Recipient(
        None,
        name or address.split("@")[0],
        address,
        None,
        None,
        None,
        None,
        None,
        None,
        ChannelConsent(),
        ChannelConsent(),
        False,
        bool(suppressed),
    )


def consent_lock(user_id: int, channel: str) -> tuple[int, int]:
    """The two int4 keys of the (user, channel) consent lock. A sender may also hold it as a
    session lock (:mod:`.user_email`): the two kinds conflict with each other all the same."""
    return _LOCK_CLASS[channel], user_id % _INT4_MAX


async def lock_consent_shared(conn: asyncpg.Connection, user_id: int, channel: str) -> None:
    """Inside a transaction: hold off opt-out writers until the transaction ends."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock_shared($1::int, $2::int)", *consent_lock(user_id, channel)
    )


async def lock_consent_exclusive(conn: asyncpg.Connection, user_id: int, channel: str) -> None:
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1::int, $2::int)", *consent_lock(user_id, channel)
    )


async def record_opt_out(conn: asyncpg.Connection, user_id: int, channel: str, source: str) -> None:
    """Inside a transaction. ``clock_timestamp()`` rather than ``now()``: the lock wait may be
    long, and the recorded instant must not predate sends that finished before it."""
    await lock_consent_exclusive(conn, user_id, channel)
    await conn.execute(
        """
        INSERT INTO consents (user_id, channel, opted_out_at, opt_out_source, updated_at)
        VALUES ($1, $2, clock_timestamp(), $3, clock_timestamp())
        ON CONFLICT (user_id, channel) DO UPDATE
           SET opted_out_at = EXCLUDED.opted_out_at, opt_out_source = EXCLUDED.opt_out_source,
               updated_at = EXCLUDED.updated_at
        """,
        user_id,
        channel,
        source,
    )


async def record_opt_in(conn: asyncpg.Connection, user_id: int, channel: str, source: str) -> None:
    await lock_consent_exclusive(conn, user_id, channel)
    await conn.execute(
        """
        INSERT INTO consents (user_id, channel, opted_in_at, opt_in_source, updated_at)
        VALUES ($1, $2, clock_timestamp(), $3, clock_timestamp())
        ON CONFLICT (user_id, channel) DO UPDATE
           SET opted_in_at = EXCLUDED.opted_in_at, opt_in_source = EXCLUDED.opt_in_source,
               updated_at = EXCLUDED.updated_at
        """,
        user_id,
        channel,
        source,
    )


async def users_with_phone(conn: asyncpg.Connection, phone: str) -> list[int]:
    rows = await conn.fetch("SELECT id FROM users WHERE phone = $1 ORDER BY id", phone)
    return [r["id"] for r in rows]


async def opted_out_now(conn: asyncpg.Connection, user_id: int, channel: str) -> datetime | None:
    """The opt-out instant when the user is currently opted out of ``channel``."""
    row = await conn.fetchrow(
        "SELECT opted_in_at, opted_out_at FROM consents WHERE user_id = $1 AND channel = $2",
        user_id,
        channel,
    )
    if row is None:
        return None
    consent = ChannelConsent(row["opted_in_at"], row["opted_out_at"])
    return consent.opted_out_at if consent.opted_out else None
