"""A small, fictional data set that exercises every handler in a demo.

Each row is there to show one behaviour: users in three time zones and one unknown zone
(the sender must fall back, not crash), an SMS opt-out (the send is suppressed), a product
below its reorder level and one about to expire, a meeting starting within the hour, bills
due in a few days, a low credit balance, goal milestones due and reached, an onboarding
step that is due, and a chat message old enough for the retention cleanup.

Seeding is idempotent: rows are found by natural keys and never duplicated. Times that a
demo depends on ("starts in 30 minutes", "due in 2 days") are refreshed relative to now on
every run, so re-seeding before a demo makes it current again; anything a demo may have
changed on purpose (consents, balances, reminder stamps) is left alone. Contact details
use reserved ranges: example.com, +1 555 01xx and +44 7700 900xxx.
"""

from __future__ import annotations

from datetime import time, timedelta
from decimal import Decimal

import asyncpg  # type: ignore[import-untyped]

__all__ = ["DEMO_LOCK_KEY", "seed_demo_data"]

# Serialises concurrent seeders so the find-or-insert steps below cannot race.
DEMO_LOCK_KEY = 0x7164656D6F  # "qdemo"

_M = timedelta(minutes=1)
_H = timedelta(hours=1)
_D = timedelta(days=1)

# The data set. One row per line, so a reader sees each case at a glance.
# fmt: off

# (name, email, phone, zone, locale, country, region, quiet hours, last active this long ago)
_USERS: tuple[tuple[str, str, str | None, str, str, str, str | None, tuple[time, time] | None,
                    timedelta], ...] = (
    ("Ava Johnson", "ava@example.com", "+15555550101", "America/New_York", "en-US", "US", "US-NY",
     None, 3 * _H),
    ("Oliver Smith", "oliver@example.com", "+447700900123", "Europe/London", "en-GB", "GB", None,
     (time(21, 0), time(8, 0)), _D),
    ("Haruto Sato", "haruto@example.com", "+15555550103", "Asia/Tokyo", "ja-JP", "JP", None,
     None, 2 * _D),
    # An unknown zone, as a broken client might send: senders must fall back to UTC.
    ("Rover Tester", "rover@example.com", "+15555550104", "Mars/Olympus", "en", "US", None,
     None, 5 * _D),
    # Idle for 45 days: outside "active in the last 30 days".
    ("Grace Lee", "grace@example.com", None, "Europe/London", "en-GB", "GB", None, None, 45 * _D),
)

# (email, channel, opted in at, opt-in source, opted out at, opt-out source)
_CONSENTS: tuple[tuple[str, str, str, str, str | None, str | None], ...] = (
    ("ava@example.com", "sms", "2024-01-15T14:00:00Z", "signup_form", None, None),
    ("ava@example.com", "email", "2024-01-15T14:00:00Z", "signup_form", None, None),
    ("oliver@example.com", "email", "2024-02-01T09:30:00Z", "signup_form", None, None),
    # Opted in, then replied STOP: SMS to Oliver must be suppressed.
    ("oliver@example.com", "sms", "2024-02-01T09:30:00Z", "signup_form",
     "2024-03-10T18:05:00Z", "sms_stop"),
    ("haruto@example.com", "sms", "2024-04-20T01:00:00Z", "settings_page", None, None),
    ("haruto@example.com", "email", "2024-04-20T01:00:00Z", "settings_page", None, None),
    ("haruto@example.com", "push", "2024-04-20T01:00:00Z", "app_prompt", None, None),
    ("rover@example.com", "sms", "2024-05-01T12:00:00Z", "signup_form", None, None),
    ("rover@example.com", "email", "2024-05-01T12:00:00Z", "signup_form", None, None),
    ("grace@example.com", "email", "2023-11-02T10:00:00Z", "import", None, None),
)

# (sku, name, unit price, stock, reorder level, expires in N days)
_PRODUCTS: tuple[tuple[str, str, str, int, int, int | None], ...] = (
    ("MILK-1L", "Whole milk 1 l", "1.49", 4, 10, 9),  # below its reorder level
    ("BREAD-SD", "Sourdough loaf", "4.20", 30, 5, 2),  # expiring soon
    ("COFFEE-250", "Ground coffee 250 g", "7.95", 50, 10, None),
    ("EGGS-12", "Free-range eggs x12", "3.60", 20, 6, 21),
)

# Sale R-0001's lines (line, sku, quantity, unit price) and the stock movements it and a
# delivery caused (sku, signed quantity, reason, reference).
_SALE_LINES = ((1, "MILK-1L", 2, "1.49"), (2, "BREAD-SD", 1, "4.20"))
_MOVEMENTS = (("MILK-1L", 24, "restock", "PO-0077"), ("MILK-1L", -2, "sale", "R-0001"),
              ("BREAD-SD", -1, "sale", "R-0001"))

# (calendar id, title, starts in, lasts, url, participant emails, organiser first)
_MEETINGS: tuple[tuple[str, str, timedelta, timedelta, str, tuple[str, ...]], ...] = (
    ("demo-weekly-checkin", "Weekly coaching check-in", 30 * _M, 45 * _M,
     "https://meet.example.com/weekly", ("ava@example.com", "oliver@example.com")),
    ("demo-quarterly-review", "Quarterly goals review", 24 * _H, _H,
     "https://meet.example.com/quarterly",
     ("ava@example.com", "haruto@example.com", "rover@example.com")),
)

# Chat messages (age in days, body): one past a 90-day retention period, one inside it.
_MESSAGES = ((120, "See you at the kickoff!"), (1, "Notes from today attached."))

# (email, payee, amount, currency, due in N days)
_BILLS = (
    ("ava@example.com", "City Power & Light", "84.20", "USD", 2),
    ("oliver@example.com", "Council tax", "150.00", "GBP", 5),
    ("haruto@example.com", "Mobile phone plan", "3980.00", "JPY", 1),
)

# (email, credits, amount, currency, provider, payment reference, completed)
_PURCHASES = (
    ("ava@example.com", "100", "10.00", "USD", "stripe", "pi_demo_0001", True),
    ("haruto@example.com", "20", "300.00", "JPY", "paystack", "demo-ref-0002", True),
    ("haruto@example.com", "50", "750.00", "JPY", "paystack", "demo-ref-0003", False),
)
# Haruto's balance is low enough for the low-credit alert.
_BALANCES = (("ava@example.com", Decimal("92.50")), ("haruto@example.com", Decimal("4.00")))

# (email, goal, target, saved, currency, ((milestone, due in, reached this long ago), ...))
_GOALS: tuple[tuple[str, str, str, str, str,
                    tuple[tuple[str, timedelta | None, timedelta | None], ...]], ...] = (
    ("ava@example.com", "Emergency fund", "5000", "2600", "USD",
     (("Halfway there", None, 2 * _D), ("Three quarters saved", 14 * _D, None))),
    ("oliver@example.com", "Summer holiday", "1200", "250", "GBP",
     (("First 300 saved", _D, None),)),
)

# (email, step, next email in): Haruto's next welcome email is due; Rover's comes later.
_ONBOARDING = (("haruto@example.com", 1, -5 * _M), ("rover@example.com", 0, _H))

# fmt: on


async def seed_demo_data(pool: asyncpg.Pool) -> None:
    """Insert (or refresh) the demo data set in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", DEMO_LOCK_KEY)
        users = await _seed_users(conn)
        business_id = await _seed_shop(conn, owner_id=users["ava@example.com"])
        await _seed_orders_and_sales(conn, business_id, users)
        await _seed_meetings(conn, users)
        await _seed_money(conn, users)
        await _seed_goals(conn, users)
        await _seed_onboarding(conn, users)


async def _find_or_insert(
    conn: asyncpg.Connection,
    find_sql: str,
    insert_sql: str,
    key: tuple[object, ...],
    rest: tuple[object, ...] = (),
) -> int:
    """Return the id of the row whose natural ``key`` ``find_sql`` matches, inserting it
    (with ``key`` then ``rest`` as arguments) if absent.

    For tables without a unique constraint on that key; safe because the caller holds
    the demo lock.
    """
    found: int | None = await conn.fetchval(find_sql, *key)
    if found is not None:
        return found
    inserted: int = await conn.fetchval(insert_sql, *key, *rest)
    return inserted


async def _seed_users(conn: asyncpg.Connection) -> dict[str, int]:
    ids: dict[str, int] = {}
    for name, email, phone, zone, locale, country, region, quiet, idle in _USERS:
        ids[email] = await conn.fetchval(
            """
            INSERT INTO users (name, email, phone, time_zone, locale, country_code, region,
                               quiet_hours_start, quiet_hours_end, last_active_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() - $10::interval)
            ON CONFLICT ((lower(email))) DO UPDATE SET last_active_at = EXCLUDED.last_active_at
            RETURNING id
            """,
            *(name, email, phone, zone, locale, country, region),
            quiet[0] if quiet else None,
            quiet[1] if quiet else None,
            idle,
        )
    for email, channel, in_at, in_src, out_at, out_src in _CONSENTS:
        # DO NOTHING: a STOP or opt-in received during a demo must survive a re-seed.
        await conn.execute(
            """
            INSERT INTO consents (user_id, channel, opted_in_at, opt_in_source,
                                  opted_out_at, opt_out_source)
            VALUES ($1, $2, $3::text::timestamptz, $4, $5::text::timestamptz, $6)
            ON CONFLICT (user_id, channel) DO NOTHING
            """,
            *(ids[email], channel, in_at, in_src, out_at, out_src),
        )
    return ids


async def _seed_shop(conn: asyncpg.Connection, owner_id: int) -> int:
    business_id: int = await conn.fetchval(
        """
        INSERT INTO businesses (slug, name, owner_user_id, time_zone, currency)
        VALUES ('corner-grocer', 'Corner Grocer', $1, 'America/New_York', 'USD')
        ON CONFLICT (slug) DO UPDATE SET owner_user_id = EXCLUDED.owner_user_id
        RETURNING id
        """,
        owner_id,
    )
    for product in _PRODUCTS:
        # Stock and expiry are reset so the low-stock and expiry alerts fire in every demo.
        await conn.execute(
            """
            INSERT INTO products (business_id, sku, name, unit_price, currency, stock,
                                  reorder_level, expiry_date)
            VALUES ($1, $2, $3, $4::numeric, 'USD', $5, $6, current_date + $7::int)
            ON CONFLICT (business_id, sku) DO UPDATE
               SET stock = EXCLUDED.stock, reorder_level = EXCLUDED.reorder_level,
                   expiry_date = EXCLUDED.expiry_date, active = true, updated_at = now()
            """,
            business_id,
            *product,
        )
    return business_id


async def _product_ids(conn: asyncpg.Connection, business_id: int) -> dict[str, int]:
    rows = await conn.fetch("SELECT sku, id FROM products WHERE business_id = $1", business_id)
    return {r["sku"]: r["id"] for r in rows}


async def _seed_orders_and_sales(
    conn: asyncpg.Connection, business_id: int, users: dict[str, int]
) -> None:
    products = await _product_ids(conn, business_id)
    customer_id: int = await conn.fetchval(
        """
        INSERT INTO customers (business_id, code, name, email, phone, credit_limit)
        VALUES ($1, 'C-0001', 'Maya Patel', 'maya.patel@example.com', '+15555550150', 200)
        ON CONFLICT (business_id, code) DO UPDATE SET name = EXCLUDED.name
        RETURNING id
        """,
        business_id,
    )
    order_id: int = await conn.fetchval(
        """
        INSERT INTO orders (business_id, number, user_id, customer_email, status, total,
                            currency, placed_at)
        VALUES ($1, 'ORD-1001', $2, 'oliver@example.com', 'paid', 15.90, 'USD',
                now() - interval '20 minutes')
        ON CONFLICT (business_id, number) DO UPDATE SET status = orders.status
        RETURNING id
        """,
        business_id,
        users["oliver@example.com"],
    )
    await conn.execute(
        """
        INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price)
        VALUES ($1, 1, $2, 2, 7.95)
        ON CONFLICT (order_id, line_no) DO NOTHING
        """,
        order_id,
        products["COFFEE-250"],
    )
    sale_id: int = await conn.fetchval(
        """
        INSERT INTO sales (business_id, receipt_no, customer_id, total, amount_paid, currency,
                           payment_method, sold_at)
        VALUES ($1, 'R-0001', $2, 7.18, 7.18, 'USD', 'cash', now() - interval '2 days')
        ON CONFLICT (business_id, receipt_no) DO UPDATE SET total = sales.total
        RETURNING id
        """,
        business_id,
        customer_id,
    )
    for line_no, sku, quantity, price in _SALE_LINES:
        await conn.execute(
            """
            INSERT INTO sale_items (sale_id, line_no, product_id, quantity, unit_price)
            VALUES ($1, $2, $3, $4, $5::numeric)
            ON CONFLICT (sale_id, line_no) DO NOTHING
            """,
            sale_id,
            line_no,
            products[sku],
            quantity,
            price,
        )
    for sku, quantity, reason, reference in _MOVEMENTS:
        await _find_or_insert(
            conn,
            "SELECT id FROM stock_movements"
            " WHERE product_id = $1 AND quantity = $2 AND reason = $3 AND reference = $4",
            "INSERT INTO stock_movements (product_id, quantity, reason, reference)"
            " VALUES ($1, $2, $3, $4) RETURNING id",
            (products[sku], quantity, reason, reference),
        )


async def _seed_meetings(conn: asyncpg.Connection, users: dict[str, int]) -> None:
    for calendar_id, title, starts_in, length, url, emails in _MEETINGS:
        meeting_id: int = await conn.fetchval(
            """
            INSERT INTO meetings (calendar_event_id, title, organiser_user_id, starts_at,
                                  ends_at, url)
            VALUES ($1, $2, $3, now() + $4::interval, now() + $4::interval + $5::interval, $6)
            ON CONFLICT (calendar_event_id) DO UPDATE
               SET starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at,
                   status = 'scheduled', updated_at = now()
            RETURNING id
            """,
            calendar_id,
            title,
            users[emails[0]],
            starts_in,
            length,
            url,
        )
        for position, email in enumerate(emails):
            await conn.execute(
                """
                INSERT INTO meeting_participants (meeting_id, user_id, role, response)
                VALUES ($1, $2, $3, 'accepted')
                ON CONFLICT (meeting_id, user_id) DO NOTHING
                """,
                meeting_id,
                users[email],
                "organiser" if position == 0 else "attendee",
            )
    for age_days, body in _MESSAGES:
        await _find_or_insert(
            conn,
            "SELECT id FROM messages WHERE sender_user_id = $1 AND body = $2",
            "INSERT INTO messages (sender_user_id, recipient_user_id, body, created_at)"
            " VALUES ($1, $3, $2, now() - make_interval(days => $4)) RETURNING id",
            (users["ava@example.com"], body),
            (users["oliver@example.com"], age_days),
        )


async def _seed_money(conn: asyncpg.Connection, users: dict[str, int]) -> None:
    for email, payee, amount, currency, due_in in _BILLS:
        bill_id = await _find_or_insert(
            conn,
            "SELECT id FROM bills WHERE user_id = $1 AND payee = $2",
            "INSERT INTO bills (user_id, payee, amount, currency, due_date)"
            " VALUES ($1, $2, $3::numeric, $4, current_date + $5::int) RETURNING id",
            (users[email], payee),
            (amount, currency, due_in),
        )
        await conn.execute(
            "UPDATE bills SET due_date = current_date + $2::int, status = 'due' WHERE id = $1",
            bill_id,
            due_in,
        )
    for email, *purchase in _PURCHASES:
        await conn.execute(
            """
            INSERT INTO credit_purchases (user_id, credits, amount, currency, provider,
                                          payment_reference, status, purchased_at)
            VALUES ($1, $2::numeric, $3::numeric, $4, $5, $6,
                    CASE WHEN $7 THEN 'completed' ELSE 'pending' END,
                    CASE WHEN $7 THEN now() - interval '3 days' END)
            ON CONFLICT (provider, payment_reference) DO NOTHING
            """,
            users[email],
            *purchase,
        )
    for email, balance in _BALANCES:
        await conn.execute(
            "INSERT INTO user_credits (user_id, balance) VALUES ($1, $2)"
            " ON CONFLICT (user_id) DO NOTHING",
            users[email],
            balance,
        )


async def _seed_goals(conn: asyncpg.Connection, users: dict[str, int]) -> None:
    for email, title, target, saved, currency, milestones in _GOALS:
        goal_id = await _find_or_insert(
            conn,
            "SELECT id FROM goals WHERE user_id = $1 AND title = $2",
            "INSERT INTO goals (user_id, title, target_amount, current_amount, currency)"
            " VALUES ($1, $2, $3::numeric, $4::numeric, $5) RETURNING id",
            (users[email], title),
            (target, saved, currency),
        )
        for name, due_in, reached_ago in milestones:
            milestone_id = await _find_or_insert(
                conn,
                "SELECT id FROM goal_milestones WHERE goal_id = $1 AND title = $2",
                "INSERT INTO goal_milestones (goal_id, title) VALUES ($1, $2) RETURNING id",
                (goal_id, name),
            )
            await conn.execute(
                """
                UPDATE goal_milestones
                   SET due_at = now() + $2::interval, reached_at = now() - $3::interval
                 WHERE id = $1
                """,
                milestone_id,
                due_in,
                reached_ago,
            )


async def _seed_onboarding(conn: asyncpg.Connection, users: dict[str, int]) -> None:
    for email, step, next_in in _ONBOARDING:
        await conn.execute(
            """
            INSERT INTO onboarding_progress (user_id, sequence, step, next_at, started_at)
            VALUES ($1, 'welcome', $2, now() + $3::interval, now() - interval '2 days')
            ON CONFLICT (user_id, sequence) DO UPDATE SET next_at = EXCLUDED.next_at
            """,
            users[email],
            step,
            next_in,
        )
