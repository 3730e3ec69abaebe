-- Shop and point-of-sale data read by the order, inventory, report and payment handlers.
-- Money is numeric(12, 2) in the row's own currency; nothing converts between currencies.

-- A shop or till operator. Inventory alerts and reports go to its owner, in its zone.
CREATE TABLE businesses (
    id            bigserial PRIMARY KEY,
    slug          text NOT NULL UNIQUE CONSTRAINT businesses_slug_shape CHECK (slug ~ '^[a-z0-9][a-z0-9-]*$'),
    name          text NOT NULL,
    owner_user_id bigint REFERENCES users (id) ON DELETE SET NULL,
    time_zone     text NOT NULL DEFAULT 'UTC',
    currency      currency_code NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX businesses_owner_idx ON businesses (owner_user_id);

-- A business's customers (the customer export). Not users: most never sign in.
CREATE TABLE customers (
    id           bigserial PRIMARY KEY,
    business_id  bigint NOT NULL REFERENCES businesses (id) ON DELETE CASCADE,
    -- The business's own customer number, shown on receipts; optional.
    code         text,
    name         text NOT NULL,
    email        text,
    phone        e164_phone,
    credit_limit numeric(12, 2) NOT NULL DEFAULT 0 CONSTRAINT customers_credit_limit CHECK (credit_limit >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT customers_business_code_key UNIQUE (business_id, code)
);

CREATE TABLE products (
    id            bigserial PRIMARY KEY,
    business_id   bigint NOT NULL REFERENCES businesses (id) ON DELETE CASCADE,
    sku           text NOT NULL,
    name          text NOT NULL,
    unit_price    numeric(12, 2) NOT NULL CONSTRAINT products_unit_price CHECK (unit_price >= 0),
    currency      currency_code NOT NULL,
    stock         integer NOT NULL DEFAULT 0 CONSTRAINT products_stock CHECK (stock >= 0),
    -- Alert when stock falls to or below this level; 0 means "only when sold out".
    reorder_level integer NOT NULL DEFAULT 0 CONSTRAINT products_reorder_level CHECK (reorder_level >= 0),
    expiry_date   date,
    active        boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT products_business_sku_key UNIQUE (business_id, sku)
);
-- The low-stock alert: "active products at or below their reorder level". A partial
-- index on the comparison keeps the scan to the few rows that qualify.
CREATE INDEX products_low_stock_idx ON products (business_id) WHERE active AND stock <= reorder_level;
-- The expiry check: "active products expiring within N days".
CREATE INDEX products_expiry_idx ON products (expiry_date) WHERE active AND expiry_date IS NOT NULL;

-- Every change to stock, signed (+ restock, - sale): the weekly movement report and
-- top sellers are computed from here.
CREATE TABLE stock_movements (
    id         bigserial PRIMARY KEY,
    product_id bigint NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    quantity   integer NOT NULL CONSTRAINT stock_movements_nonzero CHECK (quantity <> 0),
    reason     text NOT NULL CONSTRAINT stock_movements_reason
                   CHECK (reason IN ('sale', 'restock', 'adjustment', 'return', 'expired')),
    -- Receipt, order or delivery note number the movement came from.
    reference  text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stock_movements_product_idx ON stock_movements (product_id, created_at);
CREATE INDEX stock_movements_created_idx ON stock_movements (created_at);

-- Online orders (order confirmation emails). user_id is set when a signed-in user
-- ordered; customer_email is always set because guests order too.
CREATE TABLE orders (
    id             bigserial PRIMARY KEY,
    business_id    bigint NOT NULL REFERENCES businesses (id) ON DELETE CASCADE,
    number         text NOT NULL,
    user_id        bigint REFERENCES users (id) ON DELETE SET NULL,
    customer_id    bigint REFERENCES customers (id) ON DELETE SET NULL,
    customer_email text NOT NULL,
    status         text NOT NULL DEFAULT 'pending' CONSTRAINT orders_status
                       CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled', 'refunded')),
    total          numeric(12, 2) NOT NULL CONSTRAINT orders_total CHECK (total >= 0),
    currency       currency_code NOT NULL,
    placed_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orders_business_number_key UNIQUE (business_id, number)
);
CREATE INDEX orders_user_idx ON orders (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX orders_business_placed_idx ON orders (business_id, placed_at);

CREATE TABLE order_items (
    order_id    bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no     smallint NOT NULL,
    -- Kept (RESTRICT) so an order's history survives; retire a product with active = false.
    product_id  bigint NOT NULL REFERENCES products (id),
    quantity    integer NOT NULL CONSTRAINT order_items_quantity CHECK (quantity > 0),
    unit_price  numeric(12, 2) NOT NULL CONSTRAINT order_items_unit_price CHECK (unit_price >= 0),
    PRIMARY KEY (order_id, line_no)
);
CREATE INDEX order_items_product_idx ON order_items (product_id);

-- Till sales (sales reports, transaction exports).
CREATE TABLE sales (
    id             bigserial PRIMARY KEY,
    business_id    bigint NOT NULL REFERENCES businesses (id) ON DELETE CASCADE,
    receipt_no     text NOT NULL,
    customer_id    bigint REFERENCES customers (id) ON DELETE SET NULL,
    total          numeric(12, 2) NOT NULL CONSTRAINT sales_total CHECK (total >= 0),
    amount_paid    numeric(12, 2) NOT NULL CONSTRAINT sales_amount_paid CHECK (amount_paid >= 0),
    currency       currency_code NOT NULL,
    payment_method text NOT NULL CONSTRAINT sales_payment_method
                       CHECK (payment_method IN ('cash', 'card', 'mobile_money', 'bank_transfer', 'credit')),
    sold_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sales_business_receipt_key UNIQUE (business_id, receipt_no)
);
-- Every sales report and export is "one business, a date range".
CREATE INDEX sales_business_sold_idx ON sales (business_id, sold_at);
CREATE INDEX sales_customer_idx ON sales (customer_id) WHERE customer_id IS NOT NULL;

CREATE TABLE sale_items (
    sale_id    bigint NOT NULL REFERENCES sales (id) ON DELETE CASCADE,
    line_no    smallint NOT NULL,
    product_id bigint NOT NULL REFERENCES products (id),
    quantity   integer NOT NULL CONSTRAINT sale_items_quantity CHECK (quantity > 0),
    unit_price numeric(12, 2) NOT NULL CONSTRAINT sale_items_unit_price CHECK (unit_price >= 0),
    PRIMARY KEY (sale_id, line_no)
);
CREATE INDEX sale_items_product_idx ON sale_items (product_id);

-- Credit top-ups paid through a payment provider. A row is created 'pending' at checkout;
-- the provider's webhook completes it. Completing is a guarded transition
-- (UPDATE ... WHERE status = 'pending'), so a redelivered webhook credits nothing twice.
CREATE TABLE credit_purchases (
    id                bigserial PRIMARY KEY,
    user_id           bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credits           numeric(12, 2) NOT NULL CONSTRAINT credit_purchases_credits CHECK (credits > 0),
    amount            numeric(12, 2) NOT NULL CONSTRAINT credit_purchases_amount CHECK (amount >= 0),
    currency          currency_code NOT NULL,
    provider          text NOT NULL,
    payment_reference text NOT NULL,
    status            text NOT NULL DEFAULT 'pending' CONSTRAINT credit_purchases_status
                          CHECK (status IN ('pending', 'completed', 'failed', 'refunded')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    purchased_at      timestamptz,
    CONSTRAINT credit_purchases_reference_key UNIQUE (provider, payment_reference),
    CONSTRAINT credit_purchases_completed_dated CHECK (status <> 'completed' OR purchased_at IS NOT NULL)
);
CREATE INDEX credit_purchases_user_idx ON credit_purchases (user_id, created_at);

-- The spendable balance, one row per user, changed in the same transaction as the
-- purchase it reflects. low_balance_alerted_at stops the low-credit alert repeating
-- until the balance has been topped up (the handler clears it on credit).
CREATE TABLE user_credits (
    user_id                bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    balance                numeric(12, 2) NOT NULL DEFAULT 0 CONSTRAINT user_credits_balance CHECK (balance >= 0),
    low_balance_alerted_at timestamptz,
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX user_credits_balance_idx ON user_credits (balance);
