"""The notification app's settings: ``NOTIFYHUB_*`` variables plus the providers' own names
(``TWILIO_*``, ``RESEND_API_KEY``), as a frozen pydantic-settings model.

The runtime's settings (``QRUNNER_*``: Redis, concurrency, leases, logging) are separate; the
two share the loader, so an unknown ``NOTIFYHUB_*`` variable or an invalid value is refused
with an error naming the variable and never echoing a secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from qrunner import SettingsModel, build_settings

PREFIX = "NOTIFYHUB_"
#: A shorter master secret is refused at start-up (32 random characters carry ~190 bits).
MIN_MASTER_CHARS = 32
#: The largest pool a worker opens by itself (``NOTIFYHUB_DB_POOL_SIZE`` sets any size).
DEFAULT_MAX_POOL = 20

#: Provider credentials keep their vendors' conventional names.
ALIASES = {
    "TWILIO_ACCOUNT_SID": "twilio_account_sid",
    "TWILIO_AUTH_TOKEN": "twilio_auth_token",
    "TWILIO_FROM_NUMBER": "twilio_from_number",
    "RESEND_API_KEY": "resend_api_key",
    "RESEND_WEBHOOK_SECRET": "resend_webhook_secret",
}
_SECRET = (
    "database_url",
    "signing_secret",
    "twilio_auth_token",
    "resend_api_key",
    "resend_webhook_secret",
    "api_enqueue_token",
    "api_read_token",
    "api_admin_token",
    "fcm_access_token",
    "apns_auth_token",
)


def reveal(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


class AppSettings(SettingsModel):
    model_config = SettingsConfigDict(env_prefix=PREFIX)

    #: PostgreSQL (``postgresql://user:password@host:port/db``); required by the worker.
    database_url: SecretStr | None = None
    #: Connections in each worker process's pool; unset: the worker's concurrency, at most
    #: :data:`DEFAULT_MAX_POOL` (a batch job or a send holds one connection at a time, and
    #: PostgreSQL's own limit is shared by every process).
    db_pool_size: int | None = Field(default=None, ge=1, le=1000)
    #: Where the HTTP endpoint is reached from outside (unsubscribe links, webhook signatures).
    public_url: str = "http://127.0.0.1:8080"
    #: The master secret; each purpose derives its own key from it (:mod:`notifyhub.secrets`).
    signing_secret: SecretStr | None = None
    twilio_base_url: str | None = None
    email_base_url: str | None = None
    email_from: str = "qrunner <no-reply@example.com>"
    quiet_hours: str = "21:00-08:00"
    #: Scratch space for report files being written, before they are stored in PostgreSQL.
    exports_dir: Path = Path(".qrunner/exports")
    #: How long a stored report file and its download links last, in days.
    report_link_days: int = Field(default=7, ge=1, le=90)
    #: The job API's tokens, one per scope (:mod:`notifyhub.api`); unset turns a scope off.
    api_enqueue_token: SecretStr | None = None
    api_read_token: SecretStr | None = None
    api_admin_token: SecretStr | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from_number: str | None = None
    resend_api_key: SecretStr | None = None
    #: The ``whsec_...`` signing secret of the Resend webhook endpoint (``POST /hooks/resend``);
    #: unset, Resend's webhooks are answered 503 and Resend retries them.
    resend_webhook_secret: SecretStr | None = None
    #: Push (:mod:`notifyhub.providers.push`). FCM HTTP v1 takes an OAuth access token for the
    #: project; minting it from a service account is left to the deployment. APNs takes a
    #: provider token (a JWT signed with the team's key) and the app's bundle id as its topic.
    fcm_access_token: SecretStr | None = None
    fcm_project: str | None = None
    fcm_base_url: str | None = None
    apns_auth_token: SecretStr | None = None
    apns_topic: str | None = None
    apns_base_url: str | None = None

    @field_validator(
        "database_url",
        "signing_secret",
        "twilio_auth_token",
        "resend_api_key",
        "resend_webhook_secret",
        "twilio_account_sid",
        "twilio_from_number",
        "twilio_base_url",
        "email_base_url",
        "api_enqueue_token",
        "api_read_token",
        "api_admin_token",
        "fcm_access_token",
        "fcm_project",
        "fcm_base_url",
        "apns_auth_token",
        "apns_topic",
        "apns_base_url",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator(
        "public_url", "twilio_base_url", "email_base_url", "fcm_base_url", "apns_base_url"
    )
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours(cls, value: str) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError("must be HH:MM-HH:MM, e.g. 21:00-08:00")
        return value

    @field_validator("signing_secret")
    @classmethod
    def _master_secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_MASTER_CHARS:
            raise ValueError(
                f"is {len(value.get_secret_value())} characters; it needs at least "
                f"{MIN_MASTER_CHARS} (generate one with: python -c "
                "'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return value

    @field_validator("resend_webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("whsec_"):
            raise ValueError("must be the endpoint's signing secret (whsec_...)")
        return value

    @field_validator("api_enqueue_token", "api_read_token", "api_admin_token")
    @classmethod
    def _api_token_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_MASTER_CHARS:
            raise ValueError(f"must be at least {MIN_MASTER_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _one_token_per_scope(self) -> AppSettings:
        tokens = [
            t.get_secret_value()
            for t in (self.api_enqueue_token, self.api_read_token, self.api_admin_token)
            if t is not None
        ]
        if len(set(tokens)) != len(tokens):
            raise ValueError("NOTIFYHUB_API_*_TOKEN: each scope needs a token of its own")
        return self

    @property
    def has_twilio(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token and self.twilio_from_number)

    @property
    def has_email(self) -> bool:
        return bool(self.resend_api_key)

    @property
    def has_fcm(self) -> bool:
        return bool(self.fcm_access_token and self.fcm_project)

    @property
    def has_apns(self) -> bool:
        return bool(self.apns_auth_token and self.apns_topic)

    def pool_size(self, concurrency: int) -> int:
        """The pool size for a worker running ``concurrency`` jobs at once."""
        return self.db_pool_size or max(1, min(concurrency, DEFAULT_MAX_POOL))

    @property
    def signing_key(self) -> str | None:
        """The master secret's value."""
        return reveal(self.signing_secret)


def load_app_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> AppSettings:
    """The app's settings from ``env`` (default ``os.environ``); raises ``ConfigError``."""
    env = os.environ if env is None else env
    return build_settings(
        AppSettings, PREFIX, env, overrides, secret_fields=_SECRET, aliases=ALIASES
    )
