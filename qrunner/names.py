"""The grammar of what callers name: queues, idempotency keys, task names, delays.

Each of these ends up in a Redis key, a log line or a metric label, so each has a documented
shape and anything else is refused before it is written anywhere:

- **queue name**: ``^[a-z0-9][a-z0-9_.-]{0,63}$``: lowercase letters, digits, ``_``, ``.`` and
  ``-``, starting with a letter or digit, at most 64 characters. No braces (they are the Redis
  Cluster hash tag of every key of a queue), no spaces, no upper case (``Default`` and
  ``default`` would be two queues).
- **idempotency key**, **job id**: 1 to 200 bytes (UTF-8) of printable characters: no
  newlines, tabs or other control characters.
- **task name**: as an idempotency key (the registry decides which names exist).
- **delay**: a finite number of seconds from 0 to 366 days; an ``at`` time at most 366 days
  ahead.

Every refusal is an :class:`InvalidJobOption` (an :class:`~qrunner.errors.EnqueueError`) whose
``field`` names the offending option and whose message reads ``<field>: <reason>``.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

from .errors import EnqueueError

QUEUE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
QUEUE_NAME_MAX = 64
_QUEUE_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
QUEUE_NAME_RULE = (
    "lowercase letters, digits, '_', '.' and '-', starting with a letter or digit, "
    f"at most {QUEUE_NAME_MAX} characters"
)

#: Longest idempotency key, job id or task name, in UTF-8 bytes.
MAX_KEY_BYTES = 200
#: Longest delay, and furthest ``at`` time ahead: a job scheduled further out is almost always
#: a unit mistake (milliseconds given as seconds), and would sit in the delayed set for good.
MAX_DELAY_S = 366 * 24 * 3600


_NUMBER = (int, float)


class InvalidJobOption(EnqueueError):
    """A queue name, key, task name, job id or delay outside its grammar; nothing was written."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class InvalidQueueName(InvalidJobOption):
    """A queue name outside ``^[a-z0-9][a-z0-9_.-]{0,63}$``."""


class InvalidKey(InvalidJobOption):
    """An idempotency key, job id or task name that is empty, too long or not printable."""


class InvalidDelay(InvalidJobOption):
    """A delay that is not a finite number of seconds from 0 to 366 days."""


def shown(value: str, limit: int = 40) -> str:
    """A value for an error message: quoted, escaped, and cut short when long."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


@functools.lru_cache(maxsize=1024)
def _valid_queue(name: str) -> bool:
    return _QUEUE_RE.fullmatch(name) is not None


def check_queue_name(name: Any, field: str = "queue") -> str:
    """``name`` when it is a valid queue name; raises :class:`InvalidQueueName` otherwise."""
    if not isinstance(name, str):
        raise InvalidQueueName(field, f"must be a string, got {type(name).__name__}")
    if _valid_queue(name):
        return name
    if not name:
        raise InvalidQueueName(field, "must not be empty")
    if len(name) > QUEUE_NAME_MAX:
        raise InvalidQueueName(
            field, f"{shown(name)} is over the {QUEUE_NAME_MAX}-character limit of a queue name"
        )
    raise InvalidQueueName(field, f"{shown(name)} is not a valid queue name ({QUEUE_NAME_RULE})")


def check_key(value: Any, field: str = "key") -> str:
    """``value`` when it is 1..200 bytes of printable text; raises :class:`InvalidKey`."""
    if not isinstance(value, str):
        raise InvalidKey(field, f"must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidKey(field, "must not be empty")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise InvalidKey(field, "is not valid Unicode (lone surrogate)") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKey(field, f"is {size} bytes long, over the {MAX_KEY_BYTES}-byte limit")
    if not value.isprintable():
        at = next(i for i, ch in enumerate(value) if not ch.isprintable())
        raise InvalidKey(
            field,
            f"must be printable text; found {value[at]!r} at position {at} "
            "(no newlines, tabs or other control characters)",
        )
    return value


def check_delay(value: Any, field: str = "delay_s") -> float:
    """``value`` as a float when it is a finite number of seconds from 0 to 366 days."""
    if isinstance(value, bool) or not isinstance(value, _NUMBER):
        raise InvalidDelay(field, f"must be a number of seconds, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidDelay(field, f"must be a finite number of seconds, got {value}")
    if value < 0:
        raise InvalidDelay(field, f"must not be negative, got {_number(value)}")
    if value > MAX_DELAY_S:
        raise InvalidDelay(
            field, f"must be at most {MAX_DELAY_S} seconds (366 days), got {_number(value)}"
        )
    return float(value)


def _number(value: float) -> str:
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 24 else f"{text[:20]}... ({len(text)} digits)"


def parse_delay(text: str, field: str = "--delay") -> float:
    """A delay given as text (command line)."""
    try:
        value = float(text)
    except ValueError:
        raise InvalidDelay(field, f"must be a number of seconds, got {shown(text)}") from None
    return check_delay(value, field)
