"""A representative mix of messages for the README demo, addressed to the demo data set
(:mod:`notifyhub.demo_data`): sends, a suppressed SMS (Oliver replied STOP), an unknown time zone
(Rover), a guest-free order receipt, a low-credit alert and the start of an onboarding sequence.
Each job carries a key, so running the demo twice enqueues nothing new within a day."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from qrunner import Client


async def _user_ids(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT id, email FROM users WHERE email LIKE '%@example.com'")
    return {r["email"].split("@")[0]: r["id"] for r in rows}


async def enqueue_demo_messages(client: Client, pool: asyncpg.Pool) -> list[str]:
    """Enqueue the demo mix; returns the job ids in enqueue order."""
    users = await _user_ids(pool)
    order_id = await pool.fetchval("SELECT id FROM orders ORDER BY id LIMIT 1")
    meeting_id = await pool.fetchval("SELECT id FROM meetings ORDER BY starts_at LIMIT 1")
    today = date.today()
    jobs: list[tuple[str, dict[str, Any]]] = []
    if "ava" in users:
        ava = users["ava"]
        jobs += [
            (
                "send_critical_financial_alert",
                {
                    "user_id": ava,
                    "alert_type": "overdraft",
                    "account_last4": "1234",
                    "message": "Your checking account is overdrawn.",
                    "amount": "-42.17",
                    "currency": "USD",
                },
            ),
            (
                "send_payment_reminder",
                {
                    "user_id": ava,
                    "payee": "City Power",
                    "amount": "84.20",
                    "currency": "USD",
                    "due_date": (today + timedelta(days=3)).isoformat(),
                },
            ),
            (
                "send_monthly_report",
                {
                    "user_id": ava,
                    "month": today.replace(day=1).isoformat(),
                    "income": "5200",
                    "spending": "3890.55",
                    "savings": "1309.45",
                    "currency": "USD",
                    "categories": [
                        {"name": "Rent", "amount": "1800"},
                        {"name": "Groceries", "amount": "612.40"},
                    ],
                },
            ),
            ("send_low_credit_alert", {"user_id": ava, "balance": "3", "threshold": "10"}),
        ]
    if "oliver" in users:
        jobs.append(
            (
                "send_weekly_checkin",
                {"user_id": users["oliver"], "week_of": today.isoformat(), "score": 72},
            )
        )
    if "haruto" in users:
        jobs += [
            (
                "send_milestone_reminder",
                {
                    "user_id": users["haruto"],
                    "milestone": "Emergency fund 50%",
                    "goal": "Emergency fund",
                    "saved": "250000",
                    "target": "500000",
                    "currency": "JPY",
                },
            ),
            ("send_onboarding_sequence", {"user_id": users["haruto"]}),
        ]
    if "rover" in users:
        jobs.append(("send_welcome_email", {"user_id": users["rover"]}))
    if order_id is not None:
        jobs.append(("send_order_confirmation", {"order_id": order_id}))
    if meeting_id is not None and "ava" in users:
        jobs.append(
            (
                "send_meeting_reminder",
                {"user_id": users["ava"], "meeting_id": meeting_id, "window": "1h"},
            )
        )
    ids = []
    for task, payload in jobs:
        key = f"demo-{today.isoformat()}-{task}-{payload.get('user_id', payload.get('order_id'))}"
        ids.append(await client.enqueue(task, payload, key=key))
    return ids
