"""``qrunner demo``: a worker with the real handlers against fake SMS/email providers, plus a
script that enqueues a representative mix of work and shows what happened to it: processed,
retried, deferred by quiet hours, dead-lettered, and the messages the providers received."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import secrets
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
from .experiments import create_experiment, variant_for
from .fakeproviders import FakeResend, FakeTwilio
from .fakeproviders.fcm import FakeFcm
from .messaging.push_devices import register_device
from .migrate import DEFAULT_MIGRATIONS_DIR, migrate
from .outlook.content import CONTENT_EXPERIMENT, CONTENT_VARIANTS
from .providers.redact import mask_email, mask_phone, redact_text
from .settings import load_app_settings, reveal

APP = "notifyhub.app,notifyhub.demo"
TERMINAL = {"succeeded", "dead"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_demo(settings: Settings, seconds: float = 0) -> int:
    async with FakeTwilio() as twilio, FakeResend() as resend, FakeFcm() as fcm:
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
                "NOTIFYHUB_FCM_ACCESS_TOKEN": fcm.access_token,
                "NOTIFYHUB_FCM_PROJECT": fcm.project,
                "NOTIFYHUB_FCM_BASE_URL": fcm.base_url,
            }
        )
        # Report download links are signed: a secret for this demo when none is configured.
        os.environ.setdefault("NOTIFYHUB_SIGNING_SECRET", secrets.token_urlsafe(32))
        print(
            f"fake Twilio at {twilio.base_url}, fake Resend at {resend.base_url}, "
            f"fake FCM at {fcm.base_url}"
        )
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
            variants = await _seed_push_and_experiment(pool)
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
            _report_push_and_experiment(fcm, variants)
            print(
                "\nInspect with: bin/qrunner stats | bin/qrunner dlq list | bin/qrunner status "
                "JOB_ID | bin/qrunner worker --metrics-port 8080, then the dashboard at "
                "http://127.0.0.1:8080/dashboard/"
            )
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
    owner = await pool.fetchval("SELECT id FROM users WHERE email = 'ava@example.com'")
    jobs["outlook by push (preferred channel)"] = await client.enqueue(
        "send_preferred",
        {
            "user_id": owner,
            "title": "Your outlook for today",
            "body": "Two bills this week and your savings goal is 62% there.",
            "email_context": {
                "email_subject": "Your outlook for today",
                "paragraphs": ["Two bills this week and your savings goal is 62% there."],
            },
            "sms_text": "Your outlook: two bills this week; savings goal 62% there.",
            "template": "daily_outlook",
            "collapse_key": "daily-outlook",
        },
    )
    jobs["sales report (pdf, link)"] = await client.enqueue(
        "generate_sales_report",
        {
            "business_id": business_id,
            "user_id": owner,
            "format": "pdf",
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
        elif isinstance(st.result, dict) and st.result.get("download_url"):
            extra = f"  -> PDF {st.result.get('row_count')} row(s): {st.result['download_url']}"
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


DEMO_DEVICE = "demo-fcm-registration-token-0123456789abcdef"


async def _seed_push_and_experiment(pool: Any) -> dict[str, str]:
    """Ava's phone app for push (with her push consent), and the outlook content A/B test
    with each demo user's variant."""
    async with pool.acquire() as conn:
        ava = await conn.fetchval("SELECT id FROM users WHERE email = 'ava@example.com'")
        await register_device(conn, ava, "fcm", DEMO_DEVICE)
        await conn.execute(
            "INSERT INTO consents (user_id, channel, opted_in_at, opt_in_source)"
            " SELECT $1, 'push', now(), 'demo' WHERE NOT EXISTS (SELECT 1 FROM current_consents"
            " WHERE user_id = $1 AND channel = 'push' AND consented)",
            ava,
        )
        await create_experiment(conn, CONTENT_EXPERIMENT, CONTENT_VARIANTS, min_sample=50)
        users = await conn.fetch("SELECT id, email FROM users ORDER BY id")
        return {
            mask_email(u["email"] or f"user {u['id']}"): await variant_for(
                conn, CONTENT_EXPERIMENT, u["id"]
            )
            for u in users
        }


def _report_push_and_experiment(fcm: FakeFcm, variants: dict[str, str]) -> None:
    print(f"\n== push received by the fake FCM ({len(fcm.messages)})")
    for m in fcm.messages:
        print(f"  to device ...{m.token[-6:]}: {m.title}: {m.body}")
    print(f"\n== A/B test {CONTENT_EXPERIMENT!r}: each user's outlook variant (deterministic)")
    for who, variant in variants.items():
        print(f"  {who:<28} {variant}")
