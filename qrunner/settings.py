"""One frozen settings object, built from an explicit environment mapping.

An unknown ``QRUNNER_*`` variable is an error rather than silence: a typo such as
``QRUNNER_REDIS_ULR`` would otherwise send a worker to the embedded server unnoticed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError


def _int(v: str) -> int:
    return int(v)


def _float(v: str) -> float:
    value = float(v)
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
#: Shortest ``QRUNNER_HTTP_TOKEN``: it guards job results and queue contents on the network.
MIN_HTTP_TOKEN_CHARS = 32


def _log_level(v: str) -> str:
    level = v.strip().upper()
    if level == "WARN":
        level = "WARNING"
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return level


def _log_format(v: str) -> str:
    fmt = v.strip().lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}")
    return fmt


def check_redis_url(url: str) -> None:
    """Refuse a ``QRUNNER_REDIS_URL`` that cannot be connected to as meant, with a
    :class:`ConfigError` naming the problem and never the password: the grammar of
    :mod:`qrunner.redis_url` (one server, a cluster, Sentinel), and for a single server the URL
    options (``?socket_timeout=...``) as redis-py reads them."""
    from .redis_url import parse_redis_url

    try:
        target = parse_redis_url(url)
    except ValueError:  # e.g. a non-ASCII digit as the database: never echo the URL
        raise ConfigError("QRUNNER_REDIS_URL: not a URL qrunner can read") from None
    if target.kind == "single" and "?" in url:
        from redis.asyncio.connection import parse_url

        try:
            parse_url(url)
        except ValueError as exc:  # redis-py names the option, not the URL
            raise ConfigError(f"QRUNNER_REDIS_URL: {exc}") from None


def _bool(v: str) -> bool:
    low = v.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean, got {v!r}")


def _str(v: str) -> str:
    return v


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str | None = None
    database_url: str | None = None
    state_dir: Path = Path(".qrunner")
    concurrency: int = 100
    lease_ms: int = 30_000
    reclaim_interval_ms: int = 5_000
    grace_s: float = 30.0
    status_ttl_s: int = 7 * 24 * 3600
    result_ttl_s: int = 24 * 3600
    max_payload_bytes: int = 512 * 1024
    block_ms: int = 1_000
    promote_interval_ms: int = 250
    #: The event-loop watchdog logs a stall longer than this (the blocking code's stack)...
    loop_stall_warn_s: float = 2.0
    #: ...and past this ends the process so its jobs are redelivered (0 = never).
    loop_stall_limit_s: float = 60.0
    log_level: str = "INFO"
    log_format: str = "text"
    uvloop: bool = True
    http_host: str = "127.0.0.1"
    http_token: str | None = None
    public_url: str = "http://127.0.0.1:8080"
    signing_secret: str | None = None
    twilio_base_url: str | None = None
    email_base_url: str | None = None
    email_from: str = "qrunner <no-reply@example.com>"
    quiet_hours: str = "21:00-08:00"
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_from_number: str | None = None
    resend_api_key: str | None = None

    @property
    def has_twilio(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token and self.twilio_from_number)

    @property
    def has_email(self) -> bool:
        return bool(self.resend_api_key)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "concurrency": _int,
    "lease_ms": _int,
    "reclaim_interval_ms": _int,
    "grace_s": _float,
    "status_ttl_s": _int,
    "result_ttl_s": _int,
    "max_payload_bytes": _int,
    "block_ms": _int,
    "promote_interval_ms": _int,
    "loop_stall_warn_s": _float,
    "loop_stall_limit_s": _float,
    "uvloop": _bool,
    "state_dir": Path,
    "log_level": _log_level,
    "log_format": _log_format,
    "http_token": lambda v: v or None,
}

#: Settings whose value must never appear in an error message.
_SECRET = {"redis_url", "http_token"}

#: Provider credentials keep their vendors' conventional names.
_UNPREFIXED = {
    "TWILIO_ACCOUNT_SID": "twilio_account_sid",
    "TWILIO_AUTH_TOKEN": "twilio_auth_token",
    "TWILIO_FROM_NUMBER": "twilio_from_number",
    "RESEND_API_KEY": "resend_api_key",
}

#: Variables read by test tooling, not by the runtime, that share the prefix.
_IGNORED = {
    "QRUNNER_TEST_REDIS_URL",
    "QRUNNER_TEST_REDIS_SERVER",
    "QRUNNER_TEST_DATABASE_URL",
    "QRUNNER_BENCH",
    "QRUNNER_FAULT_REPORT",
    "QRUNNER_TEST_ACL",
}


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from ``env`` (default: ``os.environ``); keyword overrides win."""
    env = os.environ if env is None else env
    names = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}
    for var, raw in env.items():
        if var in _UNPREFIXED:
            values[_UNPREFIXED[var]] = raw or None
            continue
        if not var.startswith("QRUNNER_") or var in _IGNORED:
            continue
        name = var[len("QRUNNER_") :].lower()
        if name not in names or name in _UNPREFIXED.values():
            known = ", ".join(
                sorted(f"QRUNNER_{n.upper()}" for n in names - set(_UNPREFIXED.values()))
            )
            raise ConfigError(f"unknown setting {var}; known: {known}")
        parse = _PARSERS.get(name, _str)
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            shown = "" if name in _SECRET else f"={raw!r}"
            raise ConfigError(f"{var}{shown} is invalid: {exc}") from exc
    values.update(overrides)
    settings = Settings(**values)
    _check_values(settings)
    return settings


def _check_values(settings: Settings) -> None:
    if settings.concurrency < 1:
        raise ConfigError("QRUNNER_CONCURRENCY must be at least 1")
    if not 1 <= settings.block_ms <= 4_000:
        raise ConfigError(
            "QRUNNER_BLOCK_MS must be from 1 to 4000 (a reply is awaited 5 s at most)"
        )
    if settings.lease_ms < 500:
        raise ConfigError("QRUNNER_LEASE_MS must be at least 500")
    for name in ("reclaim_interval_ms", "promote_interval_ms", "max_payload_bytes"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"QRUNNER_{name.upper()}: must be at least 1")
    for name in ("status_ttl_s", "result_ttl_s", "grace_s", "loop_stall_warn_s"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"QRUNNER_{name.upper()}: must not be negative")
    if settings.loop_stall_limit_s < 0:
        raise ConfigError("QRUNNER_LOOP_STALL_LIMIT_S: must not be negative (0: never)")
    if settings.log_level.upper() not in LOG_LEVELS:
        raise ConfigError(f"QRUNNER_LOG_LEVEL: must be one of {', '.join(LOG_LEVELS)}")
    if settings.log_format not in LOG_FORMATS:
        raise ConfigError(f"QRUNNER_LOG_FORMAT: must be one of {', '.join(LOG_FORMATS)}")
    if settings.redis_url:
        check_redis_url(settings.redis_url)
    if settings.http_token is not None and len(settings.http_token) < MIN_HTTP_TOKEN_CHARS:
        raise ConfigError(
            f"QRUNNER_HTTP_TOKEN: must be at least {MIN_HTTP_TOKEN_CHARS} characters "
            f"(got {len(settings.http_token)}); e.g. python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'"
        )
