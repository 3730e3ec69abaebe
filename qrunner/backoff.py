"""Retry delays: exponential backoff with full jitter (AWS architecture blog's "Full Jitter").

Pure functions of their inputs, the random draw included, so tables of cases test them.
"""

from __future__ import annotations

import random


def backoff_ceiling_s(attempt: int, base_s: float, cap_s: float) -> float:
    """Upper bound of the delay after failed attempt ``attempt`` (1-based):
    base * 2^(attempt-1), capped."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    exponent = min(attempt - 1, 63)
    return min(cap_s, base_s * (2.0**exponent))


def backoff_delay_s(
    attempt: int, base_s: float, cap_s: float, *, jitter: bool = True, draw: float | None = None
) -> float:
    """Delay before the next attempt. With full jitter it is uniform in [0, ceiling]; ``draw`` in
    [0, 1) replaces the random draw (tests)."""
    ceiling = backoff_ceiling_s(attempt, base_s, cap_s)
    if not jitter:
        return ceiling
    u = random.random() if draw is None else draw
    return ceiling * u
