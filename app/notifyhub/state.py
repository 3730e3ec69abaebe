"""What every handler gets through ``ctx.state``: the database pool, the provider clients, the
payment providers' webhook secrets and the messaging services (sender, unsubscribe-link signer,
messaging options; see :mod:`notifyhub.messaging.services`).

Built once per worker process by :func:`lifespan`; without provider credentials the clients are
``None`` and messages go to the sandbox outbox table instead (the log says so once). Secrets are
checked first (:func:`notifyhub.secrets.load_provider_secrets`): a master secret that is too
short, or a malformed provider secret, stops the worker with an error naming the variable.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg  # type: ignore[import-untyped]
from redis.asyncio import Redis

from qrunner import Client, ConfigError, LifespanArgs

from .db import create_pool
from .messaging.email_batch import MAX_BATCH, EmailBatches, batch_size
from .messaging.services import Messaging
from .migrate import DEFAULT_MIGRATIONS_DIR, migrate
from .providers.email import ResendEmail
from .providers.push import APNS_BASE_URL, FCM_BASE_URL, ApnsPush, FcmPush, PushClients
from .providers.sms import TwilioSms
from .secrets import ProviderSecrets, load_provider_secrets
from .settings import AppSettings, load_app_settings, reveal

log = logging.getLogger(__name__)


@dataclass(slots=True)
class HandlerState:
    settings: AppSettings
    db: asyncpg.Pool
    redis: Redis
    client: Client
    sms: TwilioSms | None
    email: ResendEmail | None
    providers: ProviderSecrets = field(default_factory=ProviderSecrets)
    messaging: Messaging = field(default_factory=Messaging)
    #: FCM / APNs clients; ``None`` (or a platform left ``None``) sends push to the sandbox.
    push: PushClients | None = None
    #: At most this many emails to users share their statements (:mod:`.email_batch`).
    email_batch_size: int = MAX_BATCH
    email_batches: EmailBatches = field(init=False)

    def __post_init__(self) -> None:
        self.email_batches = EmailBatches(self.db, max_size=self.email_batch_size)


def _push_clients(s: AppSettings) -> PushClients:
    # httpx logs every request URL at INFO, and an APNs URL ends in the device token.
    logging.getLogger("httpx").setLevel(max(logging.getLogger().level, logging.WARNING))
    push = PushClients()
    if s.has_fcm:
        assert s.fcm_access_token and s.fcm_project
        push.fcm = FcmPush(
            s.fcm_access_token.get_secret_value(),
            s.fcm_project,
            base_url=s.fcm_base_url or FCM_BASE_URL,
        )
    else:
        log.warning("no FCM credentials: Android push goes to the sandbox outbox table")
    if s.has_apns:
        assert s.apns_auth_token and s.apns_topic
        push.apns = ApnsPush(
            s.apns_auth_token.get_secret_value(),
            s.apns_topic,
            base_url=s.apns_base_url or APNS_BASE_URL,
        )
    else:
        log.warning("no APNs credentials: iOS push goes to the sandbox outbox table")
    return push


async def lifespan(args: LifespanArgs) -> AsyncIterator[HandlerState]:
    s = load_app_settings()
    # The twilio SDK logs every request at INFO, headers and account path included.
    logging.getLogger("twilio").setLevel(max(logging.getLogger().level, logging.WARNING))
    database_url = reveal(s.database_url)
    if database_url is None:
        raise ConfigError("NOTIFYHUB_DATABASE_URL: not set; the app keeps its data in PostgreSQL")
    providers = load_provider_secrets(s)
    applied = await migrate(database_url, DEFAULT_MIGRATIONS_DIR)
    if applied:
        log.info("applied %d migration(s): %s", len(applied), ", ".join(applied))
    if not s.signing_secret:
        log.warning(
            "NOTIFYHUB_SIGNING_SECRET is not set: unsubscribe links last only as long as this "
            "process and qrunner-signed payment webhooks are refused"
        )
    # Sized to the jobs that may want a connection at once (a send holds its connection until
    # the provider answers); a smaller pool leaves jobs queueing for connections.
    pool = await create_pool(
        database_url, min_size=1, max_size=s.pool_size(args.settings.concurrency)
    )
    sms: TwilioSms | None = None
    email: ResendEmail | None = None
    if s.has_twilio:
        assert s.twilio_account_sid and s.twilio_auth_token
        sms = TwilioSms(
            s.twilio_account_sid,
            s.twilio_auth_token.get_secret_value(),
            base_url=s.twilio_base_url or "https://api.twilio.com",
        )
    else:
        log.warning("no Twilio credentials: SMS go to the sandbox outbox table, not to phones")
    if s.has_email:
        assert s.resend_api_key
        email = ResendEmail(
            s.resend_api_key.get_secret_value(),
            base_url=s.email_base_url or "https://api.resend.com",
        )
    else:
        log.warning("no RESEND_API_KEY: email goes to the sandbox outbox table, not to inboxes")
    push = _push_clients(s)
    try:
        yield HandlerState(
            s,
            pool,
            args.redis,
            args.client,
            sms,
            email,
            providers,
            messaging=Messaging(),
            push=push,
            email_batch_size=batch_size(args.settings.concurrency),
        )
    finally:
        await push.close()
        if sms is not None:
            await sms.close()
        if email is not None:
            await email.close()
        await pool.close()
