"""Loading and calling the Lua scripts under ``qrunner/lua/``.

Each ``.lua`` file is one atomic operation. A :class:`Script` is loaded lazily, called by SHA,
and reloaded transparently when Redis answers NOSCRIPT (after a restart or SCRIPT FLUSH).
Typed wrappers around each script live next to the code that uses them, so callers never
build KEYS/ARGV lists by hand.

The functions of ``lua/_prelude.lua`` (the Redis clock, error replies that keep the server's
error code) that a script uses are put in front of it (see :func:`source_for`). Failures come
out as qrunner's typed faults (:mod:`qrunner.faults`).
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from .faults import classify

_LUA_PACKAGE = "qrunner.lua"


def _read(name: str) -> str:
    return resources.files(_LUA_PACKAGE).joinpath(f"{name}.lua").read_text(encoding="utf-8")


def _expand(text: str) -> str:
    """Replace each ``--- @include "name"`` line with ``lua/name.lua`` (one level deep)."""
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith('--- @include "') and stripped.endswith('"'):
            lines.append(_read(stripped[len('--- @include "') : -1]))
        else:
            lines.append(line)
    return "\n".join(lines)


#: Around every script's body: a command that fails inside it (``redis.call``) is returned as
#: an error reply that starts with the command's own error code. Redis 6.2 otherwise wraps such
#: an error in ``ERR Error running script``, and a WRONGTYPE, a NOGROUP or an OOM on a command
#: the script did not ``redis.pcall`` became an unknown error (the worker's loops would take
#: it for a bug and stop); Redis 7 and Valkey keep the code either way. Error tables a script
#: raises itself (``error({err = ...})``) pass unchanged.
_BODY_HEAD = "local function qr_body()\n"
_BODY_TAIL = """
end
local ok, res = pcall(qr_body)
if ok or type(res) == 'table' then return res end
return qr_error(res)
"""


_PRELUDE_FUNCTION = re.compile(r"^local function (qr_\w+)\(", re.MULTILINE)
#: A call of a prelude function (its mention in a comment is not one).
_CALL = re.compile(r"\bqr_\w+(?=\()")


@cache
def _prelude_parts() -> tuple[tuple[str, str], ...]:
    """The prelude as (function name, its text with the comment above it), in file order."""
    text = _read("_prelude")
    starts = [m.start() for m in _PRELUDE_FUNCTION.finditer(text)]
    parts: list[tuple[str, str]] = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        chunk = text[start:end]
        # The comment lines at the end of a chunk belong to the next function.
        lines = chunk.rstrip("\n").split("\n")
        while lines and lines[-1].startswith("--"):
            lines.pop()
        head = text[:start].rstrip("\n").split("\n")
        comment: list[str] = []
        while head and head[-1].startswith("--"):
            comment.insert(0, head.pop())
        name = _PRELUDE_FUNCTION.match(chunk)
        assert name is not None
        parts.append((name.group(1), "\n".join([*comment, *lines]) + "\n"))
    return tuple(parts)


def prelude_for(body: str) -> str:
    """The prelude functions ``body`` calls, with those they call, in the prelude's order.

    Every ``local function`` of a script runs each time the script does (it makes a closure),
    so a script carries only what it uses: a whole prelude cost each call about a microsecond
    of Redis time on a 2-core host, a fair share of the single enqueue's."""
    parts = _prelude_parts()
    used = set(_CALL.findall(body))
    for name, text in reversed(parts):  # a function calls only those defined above it
        if name in used:
            used.update(_CALL.findall(text))
    return "".join(text for name, text in parts if name in used)


def source_for(body: str) -> str:
    """A script as sent to Redis: the prelude functions it uses (:func:`prelude_for`), then
    ``body`` run under ``pcall`` (see :data:`_BODY_TAIL`, which calls ``qr_error``)."""
    return prelude_for(body + _BODY_TAIL) + "\n" + _BODY_HEAD + body + _BODY_TAIL


def read_source(name: str) -> str:
    """The script ``lua/<name>.lua`` as sent to Redis (:func:`source_for`), its
    ``--- @include "name"`` lines replaced by the shared parts they name."""
    return source_for(_expand(_read(name)))


class Script:
    """One Lua script, called with EVALSHA and reloaded on NOSCRIPT."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = read_source(name)
        self.sha = hashlib.sha1(self.source.encode("utf-8")).hexdigest()

    async def __call__(
        self, redis: Redis, keys: list[str] | tuple[str, ...], args: list[Any] | tuple[Any, ...]
    ) -> Any:
        try:
            try:
                return await redis.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError:
                await redis.script_load(self.source)
                return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except Exception as exc:
            fault = classify(exc)
            if fault is None:
                raise
            raise fault from exc

    def call_sync(self, redis: Any, keys: list[str] | tuple[str, ...], args: list[Any]) -> Any:
        """Call with a synchronous redis-py client (qrunner.SyncClient), loading the script on
        NOSCRIPT; errors are left as redis-py raised them."""
        try:
            return redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            redis.script_load(self.source)
            return redis.evalsha(self.sha, len(keys), *keys, *args)

    def queue_in(self, pipe: Any, keys: list[str] | tuple[str, ...], args: list[Any]) -> None:
        """Add a call to a pipeline; :meth:`ensure_loaded` must have run on that server first."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    async def ensure_loaded(self, redis: Redis) -> None:
        await redis.script_load(self.source)
