"""The runtime's settings: a frozen pydantic-settings model read from ``QRUNNER_*`` variables.

Every value is validated, and a refusal names the variable (``QRUNNER_LOG_FORMAT: must be one
of text, json``) and never echoes a secret. An unknown ``QRUNNER_*`` variable is an error rather
than silence: a typo such as ``QRUNNER_REDIS_ULR`` would otherwise leave a worker without the
Redis it was meant to use. Two name spaces are left to tooling: ``QRUNNER_TEST_*`` (test
suites) and ``QRUNNER_DEV_*`` (development servers).

These are the runtime's settings only. An application keeps its own (database, providers,
secrets) in a model of its own with its own prefix.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .errors import ConfigError

PREFIX = "QRUNNER_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
ENVIRONMENTS = ("development", "production")
#: Shortest ``QRUNNER_HTTP_TOKEN``: it guards job results and queue contents on the network.
MIN_HTTP_TOKEN_CHARS = 32
#: Variables with these prefixes belong to tooling, not to the runtime.
TOOLING_PREFIXES = ("QRUNNER_TEST_", "QRUNNER_DEV_")
#: Tooling variables that predate the prefixes above.
_TOOLING = {"QRUNNER_BENCH", "QRUNNER_FAULT_REPORT"}


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


class SettingsModel(BaseSettings):
    """A frozen settings model that takes values as keywords and reads no environment by itself:
    :func:`build_settings` reads them from an environment mapping, so a test's settings are
    exactly what it passes. The runtime's :class:`Settings` and an application's settings
    (with a prefix of their own) derive from it."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", validate_default=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only keywords: the environment is read by build_settings, from the mapping it is given.
        return (init_settings,)


class Settings(SettingsModel):
    """Runtime settings. ``Settings(...)`` takes values as keywords and reads no environment;
    :func:`load_settings` reads them from an environment mapping."""

    model_config = SettingsConfigDict(env_prefix=PREFIX)

    #: ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``, ``redis+sentinel://``.
    redis_url: SecretStr | None = None
    #: The application: a module with a ``registry`` (``myapp.tasks``), or several, comma-separated.
    app: str | None = None
    #: ``production`` forbids conveniences meant for a laptop (tooling reads it; see README).
    env: Literal["development", "production"] = "development"
    concurrency: int = Field(100, ge=1)
    lease_ms: int = Field(30_000, ge=500)
    reclaim_interval_ms: int = Field(5_000, ge=1)
    grace_s: float = Field(30.0, ge=0, allow_inf_nan=False)
    status_ttl_s: int = Field(7 * 24 * 3600, ge=0)
    result_ttl_s: int = Field(24 * 3600, ge=0)
    max_payload_bytes: int = Field(512 * 1024, ge=1)
    #: A blocking read asks for at most this; a reply is awaited 5 s at most.
    block_ms: int = Field(1_000, ge=1, le=4_000)
    promote_interval_ms: int = Field(250, ge=1)
    #: The event-loop watchdog logs a stall longer than this (the blocking code's stack)...
    loop_stall_warn_s: float = Field(2.0, ge=0, allow_inf_nan=False)
    #: ...and past this ends the process so its jobs are redelivered (0 = never).
    loop_stall_limit_s: float = Field(60.0, ge=0, allow_inf_nan=False)
    #: While a worker runs, Python's young-generation GC threshold (700 by default) and
    #: start-up objects frozen out of collections (see qrunner.gctune); 0 = leave it.
    gc_young_threshold: int = Field(20_000, ge=0)
    #: The handlers' ``ctx.redis`` sends the commands issued in one turn of the event loop as
    #: one pipelined write (see qrunner.autopipe); ``QRUNNER_AUTOPIPELINE=0`` turns it off.
    autopipeline: bool = True
    log_level: str = "INFO"
    log_format: str = "text"
    uvloop: bool = True
    http_host: str = "127.0.0.1"
    http_token: SecretStr | None = None

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.strip().upper()
        level = "WARNING" if level == "WARN" else level
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        fmt = value.strip().lower()
        if fmt not in LOG_FORMATS:
            raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}")
        return fmt

    @field_validator("http_token", "redis_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("http_token")
    @classmethod
    def _token_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_HTTP_TOKEN_CHARS:
            raise ValueError(
                f"must be at least {MIN_HTTP_TOKEN_CHARS} characters (got "
                f"{len(value.get_secret_value())}); e.g. python3 -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'"
            )
        return value

    @model_validator(mode="after")
    def _redis_url_readable(self) -> Settings:
        if self.redis_url is not None:
            check_redis_url(self.redis_url.get_secret_value())
        return self

    @property
    def redis_url_value(self) -> str | None:
        return None if self.redis_url is None else self.redis_url.get_secret_value()

    @property
    def http_token_value(self) -> str | None:
        return None if self.http_token is None else self.http_token.get_secret_value()


class _MappingEnv(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._env.items()}


#: Settings whose value never appears in an error message.
_SECRET = ("redis_url", "http_token")


def is_tooling_variable(name: str) -> bool:
    return name in _TOOLING or name.startswith(TOOLING_PREFIXES)


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from ``env`` (default: ``os.environ``); keyword overrides win.

    Raises :class:`ConfigError` naming the first variable that is unknown or invalid.
    """
    env = os.environ if env is None else env
    return build_settings(Settings, PREFIX, env, overrides, secret_fields=_SECRET)


M = TypeVar("M", bound=BaseSettings)


def build_settings(
    model: type[M],
    prefix: str,
    env: Mapping[str, str],
    overrides: Mapping[str, Any],
    *,
    secret_fields: Collection[str] = (),
    aliases: Mapping[str, str] | None = None,
) -> M:
    """``model`` built from the ``prefix``-ed variables of ``env`` (and unprefixed ``aliases``:
    variable -> field) plus ``overrides``, with a :class:`ConfigError` naming the variable for an
    unknown name or an invalid value. Shared by the runtime's settings and an application's."""
    aliases = aliases or {}
    fields = set(model.model_fields)
    relevant: dict[str, str] = {}
    for var, raw in env.items():
        if var in aliases:
            relevant[prefix + aliases[var].upper()] = raw
            continue
        if not var.startswith(prefix) or is_tooling_variable(var):
            continue
        if var[len(prefix) :].lower() not in fields:
            known = ", ".join(sorted(f"{prefix}{n.upper()}" for n in fields))
            raise ConfigError(f"unknown setting {var}; known: {known}")
        relevant[var] = raw
    values = _MappingEnv(model, relevant)()
    values.update(overrides)
    try:
        return model(**values)
    except ValidationError as exc:
        raise ConfigError(_first_problem(exc, prefix, secret_fields, aliases)) from None


def _first_problem(
    exc: ValidationError, prefix: str, secret_fields: Collection[str], aliases: Mapping[str, str]
) -> str:
    err = exc.errors(include_url=False)[0]
    if not err["loc"]:  # a check across fields: its message names them; never echo values
        return str(err["msg"]).removeprefix("Value error, ")
    field = str(err["loc"][0])
    by_field = {f: v for v, f in aliases.items()}
    var = by_field.get(field, f"{prefix}{field.upper()}")
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"unknown setting {var}"
    if field in secret_fields or "input" not in err:
        return f"{var}: {message}"
    return f"{var}={err['input']!r}: {message}"
