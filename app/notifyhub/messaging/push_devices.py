"""Registering and forgetting push device tokens (table ``push_devices``, migration 0500).

A token belongs to one app install, so registering it again (the app does on every launch)
refreshes ``last_seen_at``, and registering it for another user moves it: whoever is signed in
on the device now gets its notifications. Consent is separate: registering a device does not
opt the user in to push (:func:`.recipients.record_opt_in` with channel ``push`` does).
"""

from __future__ import annotations

import logging

import asyncpg  # type: ignore[import-untyped]

from notifyhub.providers.push import PLATFORMS, mask_token

from .recipients import PushDevice

log = logging.getLogger(__name__)


async def register_device(
    conn: asyncpg.Connection, user_id: int, platform: str, token: str
) -> None:
    """Adds ``token`` to ``user_id``'s devices, or refreshes (and if need be moves) it."""
    if platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {', '.join(PLATFORMS)}")
    previous = await conn.fetchval(
        """
        WITH old AS (SELECT user_id FROM push_devices WHERE token = $3)
        INSERT INTO push_devices (user_id, platform, token) VALUES ($1, $2, $3)
        ON CONFLICT (token) DO UPDATE
           SET user_id = EXCLUDED.user_id, platform = EXCLUDED.platform, last_seen_at = now()
        RETURNING (SELECT user_id FROM old)
        """,
        user_id,
        platform,
        token,
    )
    if previous is not None and previous != user_id:
        log.info(
            "push device %s moved from user %d to user %d", mask_token(token), previous, user_id
        )


async def remove_device(conn: asyncpg.Connection, token: str, reason: str) -> bool:
    """Forgets ``token`` (the provider reported it gone); True when it was registered."""
    removed = await conn.fetchval(
        "DELETE FROM push_devices WHERE token = $1 RETURNING user_id", token
    )
    if removed is not None:
        log.info("removed push device %s of user %d: %s", mask_token(token), removed, reason)
    return removed is not None


async def user_devices(conn: asyncpg.Connection, user_id: int) -> list[PushDevice]:
    rows = await conn.fetch(
        "SELECT platform, token FROM push_devices WHERE user_id = $1 ORDER BY id", user_id
    )
    return [PushDevice(r["platform"], r["token"]) for r in rows]
