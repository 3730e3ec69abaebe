"""The point-of-sale periodic checks end to end: a real worker against PostgreSQL and Redis,
alerts sent through messaging to the fake Resend.

Given balances, stock, subscriptions, sign-ups and reservations, when the scheduled checks run
(as often as the cron would), then each alert goes out once per occasion, one low-stock digest
per business, and the cleanups touch only what they are meant to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from notifyhub.upkeep import registry as upkeep_registry
from redis.asyncio import Redis

from tests.test_report_files import ShopEnv, shop_stack

pytestmark = pytest.mark.timeout(90)

NOW = datetime(2024, 3, 11, 12, 0, tzinfo=UTC)


@pytest.fixture
async def env(database_url: str, redis: Redis, tmp_path: Path) -> AsyncIterator[ShopEnv]:
    async with shop_stack(database_url, redis, tmp_path, upkeep_registry) as e:
        yield e


async def set_balance(env: ShopEnv, user: int, balance: str) -> None:
    await env.db.execute(
        "INSERT INTO user_credits (user_id, balance) VALUES ($1, $2::numeric)"
        " ON CONFLICT (user_id) DO UPDATE SET balance = EXCLUDED.balance, updated_at = now()",
        user,
        balance,
    )


async def test_low_credit_alerts_once_per_fall_below_the_threshold(env: ShopEnv) -> None:
    # Given one user below the threshold and one above it
    low = await env.owner("low")
    rich = await env.owner("rich")
    await set_balance(env, low, "3.50")
    await set_balance(env, rich, "50.00")

    # When the hourly check runs three times
    first = await env.run("check_low_credits", {"threshold": "10"})
    for _ in range(2):
        await env.run("check_low_credits", {"threshold": "10"})

    # Then the low user got one alert naming the balance, and nobody else got one
    assert first == {"alerted": 1, "rearmed": 0}
    [mail] = env.resend.messages
    assert mail.to == ("low@example.com",) and "3.50" in (mail.text or "")

    # When the balance goes back above the threshold and later falls below it again
    await set_balance(env, low, "25.00")
    assert await env.run("check_low_credits", {"threshold": "10"}) == {"alerted": 0, "rearmed": 1}
    await set_balance(env, low, "1.00")
    await env.run("check_low_credits", {"threshold": "10"})

    # Then that second crossing alerts once more
    assert [m.to for m in env.resend.messages] == [("low@example.com",)] * 2
    assert "1.00" in (env.resend.messages[1].text or "")


async def test_low_stock_digest_reaches_the_owner_as_one_email(env: ShopEnv) -> None:
    # Given two shops, one with 23 low products
    owner = await env.owner("owner")
    other_owner = await env.owner("other")
    shop = await env.business("deli", owner, "The Deli")
    other = await env.business("bakery", other_owner)
    await env.db.executemany(
        "INSERT INTO products (business_id, sku, name, unit_price, currency, stock, reorder_level)"
        " VALUES ($1, $2, $3, 1, 'GBP', $4, 5)",
        [(shop, f"S{i:02d}", f"Item {i:02d}", i % 4) for i in range(23)]
        + [(other, "BREAD", "Bread", 1)],
    )

    # When the 6-hourly check runs twice in a day
    for hours in (0, 6):
        await env.run("check_low_stock", {"now": (NOW + timedelta(hours=hours)).isoformat()})

    # Then each owner got exactly one digest, the big one listing 20 items and counting 3 more
    by_owner = {m.to: m for m in env.resend.messages}
    assert len(env.resend.messages) == 2 and set(by_owner) == {
        ("owner@example.com",),
        ("other@example.com",),
    }
    text = by_owner[("owner@example.com",)].text or ""
    assert sum(f"Item {i:02d}" in text for i in range(23)) == 20
    assert "and 3 more" in text and "SOLD OUT" in text


async def test_subscription_reminder_past_due_and_expiry_each_notify_once(env: ShopEnv) -> None:
    # Given a plan renewing in two days, one not renewing that ended an hour ago, and one
    # whose renewal is overdue past the grace period
    owner = await env.owner("owner")
    renewing = await env.business("renewing", owner, "Renewing Shop")
    ending = await env.business("ending", owner, "Ending Shop")
    overdue = await env.business("overdue", owner, "Overdue Shop")
    await env.db.executemany(
        "INSERT INTO business_subscriptions (business_id, plan, status, auto_renew,"
        " current_period_end) VALUES ($1, 'pro', $2, $3, $4)",
        [
            (renewing, "active", True, NOW + timedelta(days=2)),
            (ending, "active", False, NOW - timedelta(hours=1)),
            (overdue, "past_due", True, NOW - timedelta(days=8)),
        ],
    )

    # When the hourly check runs twice
    first = await env.run("check_subscription_renewals", {"now": NOW.isoformat()})
    again = await env.run(
        "check_subscription_renewals", {"now": (NOW + timedelta(hours=1)).isoformat()}
    )

    # Then one reminder and two expiry notices went out, and the second run changed nothing
    assert first == {"reminded": 1, "past_due": 0, "expired": 2}
    assert again == {"reminded": 0, "past_due": 0, "expired": 0}
    subjects = sorted(m.subject for m in env.resend.messages)
    assert subjects == [
        "Your pro plan has expired: Ending Shop",
        "Your pro plan has expired: Overdue Shop",
        "Your pro plan renews soon: Renewing Shop",
    ]

    # When the renewing plan's period passes without a renewal
    later = await env.run(
        "check_subscription_renewals", {"now": (NOW + timedelta(days=2, hours=1)).isoformat()}
    )

    # Then it is past due, and the owner is told
    assert later == {"reminded": 0, "past_due": 1, "expired": 0}
    status = await env.db.fetchval(
        "SELECT status FROM business_subscriptions WHERE business_id = $1", renewing
    )
    assert status == "past_due"
    assert env.resend.messages[-1].subject == "Renewal of your pro plan is overdue: Renewing Shop"


async def test_expired_reservations_return_their_stock_once(env: ShopEnv) -> None:
    # Given a product with 10 on the shelf and 5 held: 3 by an expired hold, 2 by a live one
    shop = await env.business("deli", None)
    milk: int = await env.db.fetchval(
        "INSERT INTO products (business_id, sku, name, unit_price, currency, stock)"
        " VALUES ($1, 'MILK', 'Milk', 1, 'GBP', 10) RETURNING id",
        shop,
    )
    await env.db.executemany(
        "INSERT INTO stock_reservations (product_id, quantity, reference, expires_at)"
        " VALUES ($1, $2, $3, $4)",
        [
            (milk, 3, "cart-1", NOW - timedelta(minutes=1)),
            (milk, 2, "cart-2", NOW + timedelta(minutes=30)),
        ],
    )

    # When the release runs twice
    first = await env.run("release_expired_reservations", {"now": NOW.isoformat()})
    again = await env.run("release_expired_reservations", {"now": NOW.isoformat()})

    # Then the expired hold's 3 are back on the shelf, recorded as a movement, only once
    assert first == {"released": 1} and again == {"released": 0}
    assert await env.db.fetchval("SELECT stock FROM products WHERE id = $1", milk) == 13
    moves = await env.db.fetch("SELECT quantity, reason, reference FROM stock_movements")
    assert [tuple(m) for m in moves] == [(3, "adjustment", "reservation 1 expired")]
    held = await env.db.fetch("SELECT reference, status FROM stock_reservations ORDER BY id")
    assert [tuple(r) for r in held] == [("cart-1", "released"), ("cart-2", "held")]


async def test_inactive_user_cleanup_removes_only_stale_unactivated_signups(
    env: ShopEnv,
) -> None:
    # Given sign-ups: stale and never activated, recent, activated, and one owning a shop;
    # and a user of another app who never signed up here
    ids = {}
    for name in ("stale", "recent", "activated", "owner", "other_app"):
        ids[name] = await env.db.fetchval("INSERT INTO users (name) VALUES ($1) RETURNING id", name)
    await env.db.executemany(
        "INSERT INTO account_signups (user_id, created_at, activated_at) VALUES ($1, $2, $3)",
        [
            (ids["stale"], NOW - timedelta(days=40), None),
            (ids["recent"], NOW - timedelta(days=5), None),
            (ids["activated"], NOW - timedelta(days=40), NOW - timedelta(days=39)),
            (ids["owner"], NOW - timedelta(days=40), None),
        ],
    )
    await env.business("shop", ids["owner"])

    # When the daily cleanup runs
    result = await env.run("cleanup_inactive_users", {"now": NOW.isoformat()})

    # Then only the stale, unactivated sign-up is gone
    assert result["deleted"] == 1
    left = {r["name"] for r in await env.db.fetch("SELECT name FROM users")}
    assert left == {"recent", "activated", "owner", "other_app"}
