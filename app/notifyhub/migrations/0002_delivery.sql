-- What was sent, what it cost, and the guards against sending it twice (DESIGN G3).

-- One row per attempt to deliver one message, whatever the outcome: the audit trail,
-- the cost record and the source of delivery-rate metrics.
CREATE TABLE delivery_log (
    id                  bigserial PRIMARY KEY,
    job_id              text NOT NULL,
    user_id             bigint REFERENCES users (id) ON DELETE SET NULL,
    channel             text NOT NULL CONSTRAINT delivery_log_channel CHECK (channel IN ('sms', 'email', 'push')),
    template            text NOT NULL,
    -- Masked ('+1555***0101', 'a***@example.com'): the log outlives consent and is read
    -- by people who should not see contact details.
    recipient_masked    text NOT NULL,
    provider            text NOT NULL,
    provider_message_id text,
    status              text NOT NULL CONSTRAINT delivery_log_status
                            CHECK (status IN ('sent', 'maybe_sent', 'failed', 'suppressed', 'deferred', 'sandbox')),
    segments            integer CONSTRAINT delivery_log_segments CHECK (segments >= 0),
    cost                numeric(10, 5) CONSTRAINT delivery_log_cost CHECK (cost >= 0),
    currency            currency_code,
    error               text,
    idempotency_key     text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT delivery_log_cost_has_currency CHECK (cost IS NULL OR currency IS NOT NULL)
);

-- Per-user-per-day cost and "what did we send this user today" (frequency caps). The
-- INCLUDE columns let the daily rollup below run as an index-only scan.
CREATE INDEX delivery_log_user_day_idx
    ON delivery_log (user_id, created_at) INCLUDE (channel, cost, currency, status);
-- Delivery-rate and cost reports over a time window across all users.
CREATE INDEX delivery_log_created_idx ON delivery_log (created_at);
-- Provider status callbacks arrive with the provider's id only.
CREATE INDEX delivery_log_provider_msg_idx
    ON delivery_log (provider, provider_message_id) WHERE provider_message_id IS NOT NULL;
CREATE INDEX delivery_log_job_idx ON delivery_log (job_id);

-- Cost per user per UTC day and channel. A view, not a table the sender updates: one
-- fewer write on the hot path, and it can never drift from the log it summarises.
-- Days are UTC so totals match provider invoices; rows without a cost (sandbox,
-- suppressed) count as messages but add nothing.
CREATE VIEW daily_user_costs AS
SELECT user_id,
       (created_at AT TIME ZONE 'UTC')::date AS day,
       channel,
       currency,
       count(*)                                            AS messages,
       count(*) FILTER (WHERE status IN ('sent', 'maybe_sent')) AS billable_messages,
       coalesce(sum(segments), 0)                          AS segments,
       coalesce(sum(cost), 0)::numeric(12, 5)              AS cost
FROM delivery_log
WHERE user_id IS NOT NULL
GROUP BY user_id, (created_at AT TIME ZONE 'UTC')::date, channel, currency;

-- The guard against duplicate sends. A sender claims the key (INSERT ... ON CONFLICT DO
-- NOTHING, state 'pending') before calling the provider and records the outcome after.
-- A re-run that finds 'sent' or 'maybe_sent' must not call the provider again; a
-- 'pending' row older than the provider timeout means a crash mid-call and is treated as
-- maybe_sent.
CREATE TABLE effect_ledger (
    idempotency_key     text PRIMARY KEY,
    job_id              text NOT NULL,
    channel             text NOT NULL CONSTRAINT effect_ledger_channel CHECK (channel IN ('sms', 'email', 'push')),
    -- sha256 of the normalised recipient: enough to tell recipients apart, useless to
    -- anyone reading the table.
    recipient_hash      text NOT NULL,
    template            text NOT NULL,
    state               text NOT NULL DEFAULT 'pending' CONSTRAINT effect_ledger_state
                            CHECK (state IN ('pending', 'sent', 'maybe_sent', 'failed')),
    provider_message_id text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX effect_ledger_job_idx ON effect_ledger (job_id);
-- Finding claims abandoned by a crashed worker.
CREATE INDEX effect_ledger_pending_idx ON effect_ledger (updated_at) WHERE state = 'pending';

-- Messages captured instead of sent when no provider credentials are configured, so a
-- developer or a test can read exactly what would have gone out.
CREATE TABLE sandbox_outbox (
    id         bigserial PRIMARY KEY,
    channel    text NOT NULL CONSTRAINT sandbox_outbox_channel CHECK (channel IN ('sms', 'email', 'push')),
    recipient  text NOT NULL,
    subject    text,
    body       text NOT NULL,
    html       text,
    headers    jsonb NOT NULL DEFAULT '{}'::jsonb,
    job_id     text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sandbox_outbox_created_idx ON sandbox_outbox (created_at);
CREATE INDEX sandbox_outbox_job_idx ON sandbox_outbox (job_id);

-- Webhooks and inbound SMS. Providers redeliver, so the (provider, event id) pair is
-- unique: the receiver inserts with ON CONFLICT DO NOTHING and only the insert that wins
-- enqueues processing, which is how a payment changes state once per event (G3).
CREATE TABLE inbound_events (
    id                bigserial PRIMARY KEY,
    provider          text NOT NULL,
    provider_event_id text NOT NULL,
    type              text NOT NULL,
    payload           jsonb NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now(),
    processed_at      timestamptz,
    error             text,
    CONSTRAINT inbound_events_provider_event_key UNIQUE (provider, provider_event_id)
);
-- The backlog of events received but not yet processed (a sweeper re-enqueues these).
CREATE INDEX inbound_events_unprocessed_idx ON inbound_events (received_at) WHERE processed_at IS NULL;
