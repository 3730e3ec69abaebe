"""``qrunner demo``: a worker with the real handlers against fake SMS/email providers, plus a
script that enqueues a representative mix of work and shows what happened to it: processed,
retried, deferred by quiet hours, dead-lettered, and the messages the providers received."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import socket
import time
from typing import Any

from qrunner import (
    Client,
    ConfigError,
    JobNotFound,
    Settings,
    WorkerOptions,
    connect_redis,
    install_signal_handlers,
    load_registry,
    serve,
)

from .db import create_pool
from .demo_data import seed_demo_data
from .fakeproviders import FakeResend, FakeTwilio
from .migrate import DEFAULT_MIGRATIONS_DIR, migrate
from .providers.redact import mask_email, mask_phone, redact_text
from .settings import load_app_settings, reveal

APP = "notifyhub.app,notifyhub.demo"
TERMINAL = {"succeeded", "dead"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_demo(settings: Settings, seconds: float = 0) -> int:
    async with FakeTwilio() as twilio, FakeResend() as resend:
        port = _free_port()
        # The worker's lifespan reads the app's settings from the environment, like any worker.
        os.environ.update(
            {
                "TWILIO_ACCOUNT_SID": twilio.account_sid,
                "TWILIO_AUTH_TOKEN": twilio.auth_token,
                "TWILIO_FROM_NUMBER": "+15005550006",
                "NOTIFYHUB_TWILIO_BASE_URL": twilio.base_url,
                "RESEND_API_KEY": resend.api_key,
                "NOTIFYHUB_EMAIL_BASE_URL": resend.base_url,
                "NOTIFYHUB_PUBLIC_URL": f"http://127.0.0.1:{port}",
            }
        )
        print(f"fake Twilio at {twilio.base_url}, fake Resend at {resend.base_url}")
        registry = load_registry(APP)
        db_url = reveal(load_app_settings().database_url)
        if db_url is None:
            raise ConfigError("NOTIFYHUB_DATABASE_URL: not set (bin/qrunner demo starts one)")
        if settings.redis_url_value is None:
            raise ConfigError("QRUNNER_REDIS_URL: not set (bin/qrunner demo starts one)")
        await migrate(db_url, DEFAULT_MIGRATIONS_DIR)
        pool = await create_pool(db_url)
        redis = await connect_redis(settings.redis_url_value)
        stop = asyncio.Event()
        install_signal_handlers(stop)
        try:
            await seed_demo_data(pool)
            print("seeded demo users, orders, meetings and bills in PostgreSQL")
            worker = asyncio.create_task(
                serve(WorkerOptions(app=APP, metrics_port=port, cron=False), settings, stop)
            )
            print(f"worker started; metrics at http://127.0.0.1:{port}/metrics")
            client = Client(redis, registry)
            jobs = await _enqueue_mix(client, pool)
            await _watch(client, jobs, stop, seconds or 90.0, worker)
            stop.set()
            await worker
            await _report(client, jobs, twilio, resend)
        finally:
            stop.set()
            await redis.aclose()
            await pool.close()
    return 0


async def _enqueue_mix(client: Client, pool: Any) -> dict[str, str]:
    jobs: dict[str, str] = {}
    with contextlib.suppress(ImportError):
        from .messaging.demo import enqueue_demo_messages

        for i, job_id in enumerate(await enqueue_demo_messages(client, pool)):
            jobs[f"message {i + 1}"] = job_id
    jobs["generate daily outlooks"] = await client.enqueue("generate_daily_outlooks", {})
    business_id = await pool.fetchval("SELECT id FROM businesses ORDER BY id LIMIT 1")
    today = datetime.date.today()
    jobs["sales report (xlsx)"] = await client.enqueue(
        "generate_sales_report",
        {
            "business_id": business_id,
            "format": "xlsx",
            "start_date": str(today - datetime.timedelta(days=30)),
            "end_date": str(today),
        },
    )
    jobs["health check"] = await client.enqueue("health_check", {})
    jobs["flaky job (retries)"] = await client.enqueue("demo_flaky", {})
    jobs["broken job (dead letter)"] = await client.enqueue("demo_broken", {})
    print(f"enqueued {len(jobs)} jobs")
    return jobs


async def _watch(
    client: Client,
    jobs: dict[str, str],
    stop: asyncio.Event,
    limit_s: float,
    worker: asyncio.Task[int],
) -> None:
    """Print queue counters once a second until every job is finished or parked for later."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and not stop.is_set() and not worker.done():
        states = await _states(client, jobs)
        settled = all(s in TERMINAL or s == "scheduled" for s in states.values())
        counts = {s: list(states.values()).count(s) for s in sorted(set(states.values()))}
        print("  jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items()), flush=True)
        if settled:
            return
        await asyncio.sleep(1.0)


async def _states(client: Client, jobs: dict[str, str]) -> dict[str, str]:
    out = {}
    for label, job_id in jobs.items():
        try:
            out[label] = (await client.status(job_id)).state
        except JobNotFound:
            out[label] = "unknown"
    return out


async def _report(
    client: Client, jobs: dict[str, str], twilio: FakeTwilio, resend: FakeResend
) -> None:
    print("\n== jobs")
    for label, job_id in jobs.items():
        st = await client.status(job_id)
        extra = ""
        if st.state == "dead":
            extra = f"  reason: {redact_text(st.last_error or '')[:90]}"
        elif st.state == "scheduled":
            extra = "  (deferred: quiet hours or rate limit; it will run later)"
        elif isinstance(st.result, str | dict):
            extra = f"  -> {str(st.result)[:90]}"
        print(f"  {label:<34} {st.task:<34} {st.state:<10} attempts={st.attempt}{extra}")
    print(f"\n== SMS received by the fake Twilio ({len(twilio.messages)})")
    for m in twilio.messages:
        print(f"  to {mask_phone(m.to)}: {redact_text(m.body)[:100]}")
    print(f"\n== email received by the fake Resend ({len(resend.messages)})")
    for e in resend.messages:
        to = ", ".join(mask_email(a) for a in e.to)
        print(f"  to {to}: {e.subject}")
    stats = await client.stats()
    print("\n== queues")
    for s in stats:
        if s.depth or s.pending or s.delayed or s.dead:
            print(
                f"  {s.queue:<16} depth={s.depth} pending={s.pending} delayed={s.delayed} "
                f"dead={s.dead}"
            )
    print("\nInspect with: bin/qrunner stats | bin/qrunner dlq list | bin/qrunner status JOB_ID")
