-- What the point-of-sale periodic checks read: pending sign-ups (inactive-account cleanup),
-- businesses' subscriptions (renewal check) and stock held for carts (reservation release).

-- An account registered through the point-of-sale sign-up and not yet activated. Only users
-- with a row here that stayed unactivated are ever removed by the cleanup: users of the other
-- apps, who share the users table, never are.
CREATE TABLE account_signups (
    user_id      bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz
);
CREATE INDEX account_signups_pending_idx ON account_signups (created_at) WHERE activated_at IS NULL;

-- A business's plan. Renewal is charged elsewhere and moves current_period_end forward;
-- the check reminds the owner before the end and marks what was not renewed by then.
CREATE TABLE business_subscriptions (
    id                 bigserial PRIMARY KEY,
    business_id        bigint NOT NULL REFERENCES businesses (id) ON DELETE CASCADE,
    plan               text NOT NULL,
    status             text NOT NULL DEFAULT 'active' CONSTRAINT business_subscriptions_status
                           CHECK (status IN ('active', 'past_due', 'expired', 'cancelled')),
    auto_renew         boolean NOT NULL DEFAULT true,
    current_period_end timestamptz NOT NULL,
    -- The period end the last reminder was about: one reminder per period, however often
    -- the check runs; a renewal moves the period end and so re-arms it.
    reminded_for       timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX business_subscriptions_current_key
    ON business_subscriptions (business_id) WHERE status IN ('active', 'past_due');
CREATE INDEX business_subscriptions_period_end_idx
    ON business_subscriptions (current_period_end) WHERE status IN ('active', 'past_due');

-- Stock held for a cart or an unpaid order. Holding takes the quantity out of
-- products.stock; an expired hold gives it back (with a stock_movements row).
CREATE TABLE stock_reservations (
    id          bigserial PRIMARY KEY,
    product_id  bigint NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    quantity    integer NOT NULL CONSTRAINT stock_reservations_quantity CHECK (quantity > 0),
    -- The cart or order the stock is held for.
    reference   text,
    status      text NOT NULL DEFAULT 'held' CONSTRAINT stock_reservations_status
                    CHECK (status IN ('held', 'committed', 'released')),
    expires_at  timestamptz NOT NULL,
    released_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stock_reservations_released_dated CHECK ((status = 'released') = (released_at IS NOT NULL))
);
CREATE INDEX stock_reservations_held_idx ON stock_reservations (expires_at) WHERE status = 'held';
CREATE INDEX stock_reservations_product_idx ON stock_reservations (product_id);
