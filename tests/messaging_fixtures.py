"""A running messaging stack for end-to-end tests: real Worker, Redis, PostgreSQL, the fake
Twilio and Resend servers, and the messaging HTTP routes on a local test server.

Tests wait on conditions (a row appears, the fake received N messages) with a deadline instead
of sleeping, and drive quiet hours through :class:`StepClock` instead of waiting for them. The
clock and the shortened waits are :class:`MessagingOptions` on the stack's
:class:`HandlerState` (``state.messaging``), which is where the handlers read them; the
module-level registry runs with its tasks' backoffs scaled the same way (:func:`scaled`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from notifyhub.db import create_pool
from notifyhub.fakeproviders import FakeResend, FakeTwilio
from notifyhub.messaging import Messaging, MessagingOptions
from notifyhub.messaging import registry as messaging_registry
from notifyhub.migrate import DEFAULT_MIGRATIONS_DIR, migrate
from notifyhub.providers.email import ResendEmail
from notifyhub.providers.sms import TwilioSms
from notifyhub.settings import AppSettings
from notifyhub.state import HandlerState
from redis.asyncio import Redis
from twilio.request_validator import RequestValidator

from qrunner import Client, JobNotFound, JobStatus, Registry, Settings, Worker

T = TypeVar("T")
MIGRATIONS = DEFAULT_MIGRATIONS_DIR
PUBLIC_URL = "https://hooks.example.test"
FROM_NUMBER = "+15005550006"


class StepClock:
    """The "now" of quiet hours, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def wait_for(
    probe: Callable[[], Awaitable[T]], *, timeout_s: float = 10.0, what: str = "condition"
) -> T:
    """Polls ``probe`` until it returns something truthy; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Env:
    settings: Settings
    pool: asyncpg.Pool
    redis: Redis
    client: Client
    state: HandlerState
    registry: Registry
    twilio: FakeTwilio
    resend: FakeResend
    http: TestClient[Any, Any]
    clock: StepClock

    async def user(
        self,
        name: str,
        *,
        email: str | None,
        phone: str | None,
        zone: str = "America/New_York",
        locale: str = "en-US",
        country: str | None = "US",
        sms: bool = True,
        email_opt_in: bool = True,
    ) -> int:
        user_id: int = await self.pool.fetchval(
            """
            INSERT INTO users (name, email, phone, time_zone, locale, country_code)
            VALUES ($1, $2, $3, $4, $5, $6) RETURNING id
            """,
            name,
            email,
            phone,
            zone,
            locale,
            country,
        )
        for channel, wanted in (("sms", sms), ("email", email_opt_in)):
            if wanted:
                await self.pool.execute(
                    """
                    INSERT INTO consents (user_id, channel, opted_in_at, opt_in_source)
                    VALUES ($1, $2, now() - interval '1 day', 'test')
                    """,
                    user_id,
                    channel,
                )
        return user_id

    async def enqueue(self, task: str, payload: Mapping[str, Any], **kw: Any) -> str:
        return await self.client.enqueue(task, payload, **kw)

    async def finished(self, job_id: str, timeout_s: float = 10.0) -> JobStatus:
        """The job's status once it succeeded or was dead-lettered."""

        async def probe() -> JobStatus | None:
            try:
                status = await self.client.status(job_id)
            except JobNotFound:
                return None
            return status if status.state in ("succeeded", "dead") else None

        return await wait_for(probe, timeout_s=timeout_s, what=f"job {job_id} to finish")

    async def log_rows(self, **where: Any) -> list[asyncpg.Record]:
        clauses = " AND ".join(f"{k} = ${i}" for i, k in enumerate(where, 1)) or "true"
        return list(
            await self.pool.fetch(
                f"SELECT * FROM delivery_log WHERE {clauses} ORDER BY id", *where.values()
            )
        )

    def signature(self, path: str, params: Mapping[str, str]) -> str:
        validator = RequestValidator(self.twilio.auth_token)
        return str(validator.compute_signature(PUBLIC_URL + path, dict(params)))

    async def inbound_sms(
        self, body: str, from_: str, sid: str, *, signature: str | None = None
    ) -> tuple[int, str]:
        """POSTs an inbound SMS as Twilio would; signed correctly unless ``signature`` is given."""
        form = {
            "MessageSid": sid,
            "AccountSid": self.twilio.account_sid,
            "From": from_,
            "To": FROM_NUMBER,
            "Body": body,
        }
        sig = self.signature("/hooks/twilio/sms", form) if signature is None else signature
        async with self.http.post(
            "/hooks/twilio/sms", data=form, headers={"X-Twilio-Signature": sig}
        ) as response:
            return response.status, await response.text()


def scaled(registry: Registry, backoff_scale: float) -> Registry:
    """``registry`` with every task's backoff multiplied by ``backoff_scale``: the runtime's own
    retry wait (a handler that crashed) shrinks like the sender's ``Retry`` waits do. Tasks and
    routes are copied; the messaging registry has no lifespans (the test builds the state)."""
    copy = Registry(
        [
            replace(
                t,
                backoff_base_s=t.backoff_base_s * backoff_scale,
                backoff_cap_s=t.backoff_cap_s * backoff_scale,
            )
            for t in registry
        ],
        queue_order=registry.queue_order,
        weights=registry.weights,
        schedules=registry.schedules,
    )
    for setup in registry.http_setups:
        copy.http_setup(setup, public_prefixes=registry.public_prefixes)
    return copy


@asynccontextmanager
async def messaging_env(
    redis_url: str,
    database_url: str,
    *,
    providers: bool = True,
    concurrency: int = 4,
    options: MessagingOptions | None = None,
    pool_size: int = 6,
    on_connect: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> AsyncIterator[Env]:
    """The stack; ``pool_size`` and ``on_connect`` go to the handlers' pool (a test counting
    statements adds a query logger to every connection with ``on_connect``)."""
    await migrate(database_url, MIGRATIONS)
    clock = StepClock(datetime.fromisoformat("2025-03-05T17:00:00+00:00"))  # noon in New York
    opts = replace(
        options or MessagingOptions(), clock=clock, backoff_scale=0.001, quiet_defer_cap_s=0.2
    )
    registry = scaled(messaging_registry, opts.backoff_scale)
    async with AsyncExitStack() as stack:
        twilio = await stack.enter_async_context(FakeTwilio())
        resend = await stack.enter_async_context(FakeResend())
        settings = Settings(
            lease_ms=3000,
            reclaim_interval_ms=500,
            block_ms=100,
            promote_interval_ms=20,
            grace_s=3.0,
            concurrency=concurrency,
        )
        app_settings = AppSettings(
            public_url=PUBLIC_URL,
            signing_secret="test-signing-secret-0123456789abcdef",
            twilio_base_url=twilio.base_url,
            email_base_url=resend.base_url,
            twilio_account_sid=twilio.account_sid if providers else None,
            twilio_auth_token=twilio.auth_token,
            twilio_from_number=FROM_NUMBER,
            resend_api_key=resend.api_key if providers else None,
        )
        redis = Redis.from_url(redis_url)
        stack.push_async_callback(redis.aclose)
        pool = await create_pool(database_url, max_size=pool_size, on_connect=on_connect)
        stack.push_async_callback(pool.close)
        sms = email = None
        if providers:
            sms = TwilioSms(twilio.account_sid, twilio.auth_token, base_url=twilio.base_url)
            email = ResendEmail(resend.api_key, base_url=resend.base_url)
            stack.push_async_callback(sms.close)
            stack.push_async_callback(email.close)
        client = Client(redis, registry)
        state = HandlerState(
            app_settings, pool, redis, client, sms, email, messaging=Messaging(opts)
        )
        app = web.Application()
        for setup in registry.http_setups:
            setup(app, state)
        http: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await http.start_server()
        stack.push_async_callback(http.close)
        worker = Worker(redis, registry, settings=settings, state=state, concurrency=concurrency)
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))

        async def halt() -> None:
            stop.set()
            await asyncio.wait_for(running, timeout=15)

        stack.push_async_callback(halt)
        yield Env(settings, pool, redis, client, state, registry, twilio, resend, http, clock)
