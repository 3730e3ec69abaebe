"""Loading and calling the Lua scripts under ``qrunner/lua/``.

Each ``.lua`` file is one atomic operation. A :class:`Script` is loaded lazily, called by SHA,
and reloaded transparently when Redis answers NOSCRIPT (after a restart or SCRIPT FLUSH).
Typed wrappers around each script live next to the code that uses them, so callers never
build KEYS/ARGV lists by hand.

``lua/_prelude.lua`` (the Redis clock, error replies that keep the server's error code) is put
in front of every script. Failures come out as qrunner's typed faults (:mod:`qrunner.faults`).
"""

from __future__ import annotations

import hashlib
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


def source_for(body: str) -> str:
    """A script as sent to Redis: the shared prelude, then ``body`` run under ``pcall`` (see
    :data:`_BODY_TAIL`)."""
    return _read("_prelude") + "\n" + _BODY_HEAD + body + _BODY_TAIL


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
