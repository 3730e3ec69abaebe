"""``QRUNNER_REDIS_URL`` read into what to connect to: one server, a cluster or Sentinel.

- ``redis://[user:pass@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path/to.sock``: one
  server.
- ``redis+cluster://[user:pass@]host:port[,host:port...]`` (``rediss+cluster://`` for TLS): a
  Redis Cluster, given one or more seed nodes; the rest are discovered.
- ``redis+sentinel://[user:pass@]host:port[,host:port...]/<master name>[/db]``
  (``rediss+sentinel://``): the master Sentinel names, followed through failovers.

Pure parsing: a malformed URL is a :class:`~qrunner.errors.ConfigError` naming what is wrong,
never the password.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .errors import ConfigError

SCHEMES = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    kind: str  # single | cluster | sentinel
    tls: bool
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    db: int = 0
    path: str | None = None  # unix socket
    service: str | None = None  # Sentinel master name

    def shown(self) -> str:
        """Where, for messages: hosts and ports, never credentials."""
        if self.path:
            return self.path
        hosts = ",".join(f"{h}:{p}" for h, p in self.nodes)
        if self.kind == "sentinel":
            return f"{self.service} via sentinel {hosts}"
        return f"cluster {hosts}" if self.kind == "cluster" else hosts


def _port(text: str, default: int, url_kind: str) -> int:
    try:
        port = int(text) if text else default
    except ValueError:
        raise ConfigError(
            f"QRUNNER_REDIS_URL: port {text!r} of a {url_kind} URL is not a number"
        ) from None
    if not 0 < port < 65536:
        raise ConfigError(f"QRUNNER_REDIS_URL: port {port} is out of range (1-65535)")
    return port


def _hosts(netloc: str, default_port: int, url_kind: str) -> tuple[tuple[str, int], ...]:
    hosts = netloc.rsplit("@", 1)[-1]
    out = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            raise ConfigError(f"QRUNNER_REDIS_URL: empty host in the {url_kind} host list")
        if item.startswith("["):  # [ipv6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise ConfigError(f"QRUNNER_REDIS_URL: a {url_kind} URL needs a host")
        out.append((host, _port(port_text, default_port, url_kind)))
    return tuple(out)


def parse_redis_url(url: str) -> RedisTarget:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"QRUNNER_REDIS_URL is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ConfigError(
            f"QRUNNER_REDIS_URL: unknown scheme {scheme + '://'!r}; use one of {known}"
        )
    kind, tls = SCHEMES[scheme]
    userinfo = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else ""
    user, _, password = userinfo.partition(":")
    username = unquote(user) or None
    secret = unquote(password) or None
    if scheme == "unix":
        if not parts.path:
            raise ConfigError("QRUNNER_REDIS_URL: a unix:// URL needs a socket path")
        return RedisTarget("single", False, (), username, secret, _db(parts.query), parts.path)
    segments = [s for s in parts.path.split("/") if s]
    if kind == "sentinel":
        if not segments:
            raise ConfigError(
                "QRUNNER_REDIS_URL: a redis+sentinel:// URL names the master after the hosts: "
                "redis+sentinel://host:26379,host:26379/mymaster"
            )
        db = _db_segment(segments[1]) if len(segments) > 1 else 0
        nodes = _hosts(parts.netloc, 26379, "sentinel")
        return RedisTarget(kind, tls, nodes, username, secret, db, service=unquote(segments[0]))
    nodes = _hosts(parts.netloc, 6379, kind)
    if kind == "single" and len(nodes) > 1:
        raise ConfigError(
            "QRUNNER_REDIS_URL: several hosts need redis+cluster:// or redis+sentinel://"
        )
    db = _db_segment(segments[0]) if segments else 0
    if kind == "cluster" and db != 0:
        raise ConfigError("QRUNNER_REDIS_URL: Redis Cluster has only database 0")
    return RedisTarget(kind, tls, nodes, username, secret, db)


def _db_segment(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"QRUNNER_REDIS_URL: database {text!r} is not a number")
    return int(text)


def _db(query: str) -> int:
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == "db":
            return _db_segment(value)
    return 0
