"""Count the calls a client sends of its enqueue script (for tests of how often it retries)."""

from __future__ import annotations

from typing import Any

from qrunner import Client


def count_enqueue_sends(client: Client) -> list[int]:
    """Wrap ``client``'s script for jobs due now: each call appends 1 to the list returned."""
    sends: list[int] = []
    original = client._enqueue_now.__call__

    async def counted(r: Any, ks: Any, args: Any) -> Any:
        sends.append(1)
        return await original(r, ks, args)

    client._enqueue_now = counted  # type: ignore[assignment, method-assign]
    return sends
