"""PostgreSQL connections: the pool handlers use, and the error mapping every caller shares.

Connection failures surface as :class:`~qrunner.errors.BackendUnavailable` naming host and
port only, because the URL usually carries a password and error messages end up in logs,
terminals and bug reports. json/jsonb columns are decoded with orjson on every pooled
connection so handlers get Python objects, not strings, without thinking about it.

A connection going back to the pool normally costs one more round trip: asyncpg's reset query
(``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``). A code path that
knows it left no session state behind (no session lock still held, no ``SET``, ``LISTEN`` or
open cursor) says so with :func:`keep_session`, and that one release skips the query. Every
other release still runs it, so a path that fails half-way is cleaned up as before.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import asyncpg  # type: ignore[import-untyped]
import orjson

from qrunner import BackendUnavailable, ConfigError

__all__ = ["PooledConnection", "connect", "create_pool", "endpoint", "keep_session", "redact_url"]

_T = TypeVar("_T")

_DEFAULT_PORT = 5432
# Query parameters libpq and asyncpg accept that carry secrets.
_SECRET_PARAMS = frozenset({"password", "sslpassword"})
# jsonb's binary wire format is a one-byte version prefix followed by the JSON text.
_JSONB_VERSION = b"\x01"


def redact_url(url: str) -> str:
    """Return ``url`` without its password, safe to log or print.

    Both places a password can hide are cleared: the userinfo (``user:secret@``) and
    ``password=`` query parameters. A string that does not parse as a URL is replaced
    entirely rather than echoed, since we cannot tell where the secret is.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable database URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hosts = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}@{hosts}" if user else hosts
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key in _SECRET_PARAMS for key, _ in pairs):
        query = urlencode([(k, v) for k, v in pairs if k not in _SECRET_PARAMS])
    # Assembled by hand: urlunsplit drops an empty authority ("postgresql:///db" would
    # come back as "postgresql:/db", a different URL).
    redacted = f"{parts.scheme}://{netloc}{parts.path}"
    if query:
        redacted += f"?{query}"
    if parts.fragment:
        redacted += f"#{parts.fragment}"
    return redacted


def endpoint(url: str) -> str:
    """Return ``host:port`` of a PostgreSQL URL for error messages.

    Follows libpq's defaults (localhost, 5432) and its ``?host=``/``?port=`` overrides,
    which is how Unix-socket URLs name their directory. Multi-host URLs are shown as
    written (``h1:5432,h2:5433``).
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable database URL>"
    hosts = parts.netloc.rsplit("@", 1)[-1]
    params = dict(parse_qsl(parts.query))
    if "host" in params:
        hosts = params["host"]
    if not hosts:
        hosts = "localhost"
    port = params.get("port")
    shown = []
    for host in hosts.split(","):
        host = unquote(host)
        # "[::1]:5432" and "h:5432" carry their port; bare hosts take the default.
        has_port = "]:" in host if host.startswith("[") else ":" in host
        shown.append(host if has_port else f"{host}:{port or _DEFAULT_PORT}")
    return ",".join(shown)


def _unavailable(url: str, exc: BaseException) -> BackendUnavailable:
    """Build the error for a failed connection, naming where and why but no secret."""
    if isinstance(exc, TimeoutError):
        reason = "timed out connecting"
    elif isinstance(exc, socket.gaierror):
        reason = f"cannot resolve host ({exc.strerror})"
    elif isinstance(exc, OSError):
        # Several addresses (::1 and 127.0.0.1) fail as one OSError without strerror;
        # its text lists the addresses tried, which is useful and holds no secret.
        reason = exc.strerror or str(exc) or type(exc).__name__
    elif isinstance(exc, asyncpg.PostgresError):
        # Server-side refusals: bad credentials, missing database, too many clients.
        # Their text names the user or database, never the password.
        reason = f"server refused the connection: {exc}"
    else:
        reason = type(exc).__name__
    return BackendUnavailable(f"PostgreSQL unavailable at {endpoint(url)}: {reason}")


async def _guarded(url: str, attempt: Callable[[], Awaitable[_T]]) -> _T:
    """Run a connection attempt, translating every way it can fail."""
    try:
        return await attempt()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        if isinstance(exc, asyncpg.ClientConfigurationError):
            raise ConfigError(f"invalid database URL {redact_url(url)}: {exc}") from None
        # `from None`: the chained original may render the full DSN in a traceback.
        raise _unavailable(url, exc) from None
    except ValueError as exc:
        # asyncpg's DSN parser raises ValueError for malformed URLs.
        raise ConfigError(f"invalid database URL {redact_url(url)}: {exc}") from None


async def connect(database_url: str, *, timeout_s: float = 10.0) -> asyncpg.Connection:
    """Open one connection (no codecs), for tools like the migrator that need a session."""
    conn: asyncpg.Connection = await _guarded(
        database_url, lambda: asyncpg.connect(database_url, timeout=timeout_s)
    )
    return conn


def _encode_jsonb(value: Any) -> bytes:
    return _JSONB_VERSION + orjson.dumps(value)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    """Register orjson for json and jsonb in binary format (no text round trip)."""
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        format="binary",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
    )
    await conn.set_type_codec(
        "json",
        schema="pg_catalog",
        format="binary",
        encoder=orjson.dumps,
        decoder=orjson.loads,
    )


class PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """The connections :func:`create_pool` makes: they remember whether the code that used them
    vouched for a clean session (:func:`keep_session`) until they are released."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._session_kept = False

    def keep_session(self) -> None:
        self._session_kept = True

    def take_kept(self) -> bool:
        """Whether this release may skip the reset query; the promise covers one release."""
        kept, self._session_kept = self._session_kept, False
        return kept


def keep_session(conn: Any) -> None:
    """Vouch that ``conn`` (a pooled connection or the pool's proxy of one) holds no session
    state now, so releasing it skips the reset query. Call it only after the last statement
    of the checkout; a connection that is not from :func:`create_pool` is left alone."""
    mark = getattr(conn, "keep_session", None)
    if mark is not None:
        mark()


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """The pool's reset: asyncpg's query unless the checkout vouched for the session. (The pool
    rolls back a transaction left open before it calls this, whatever this does.)"""
    if isinstance(conn, PooledConnection) and conn.take_kept():
        return
    query = conn.get_reset_query()
    if query:
        await conn.execute(query)


async def create_pool(
    database_url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    command_timeout: float = 30,
    connect_timeout_s: float = 10.0,
    on_connect: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> asyncpg.Pool:
    """Open a connection pool with orjson json/jsonb codecs on every connection.

    The first ``min_size`` connections are opened here, so an unreachable server fails
    now with :class:`BackendUnavailable` instead of at the first query. ``on_connect`` runs on
    every new connection after the codecs are set (to add a query logger, say).
    """

    async def init(conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        if on_connect is not None:
            await on_connect(conn)

    pool: asyncpg.Pool = await _guarded(
        database_url,
        lambda: asyncpg.create_pool(
            database_url,
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            timeout=connect_timeout_s,
            init=init,
            reset=_reset_connection,
            connection_class=PooledConnection,
        ),
    )
    return pool
