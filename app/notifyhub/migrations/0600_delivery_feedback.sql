-- What providers tell us after a send: Twilio status callbacks and Resend webhooks.
--
-- provider_status is the latest status the provider reported for the message (Twilio:
-- sent, delivered, undelivered, failed; Resend: delivered, bounced, complained). status
-- keeps meaning "what the send attempt achieved", except that a maybe_sent row is resolved
-- to sent or failed once the provider says which; resolved_from then records that it was
-- maybe_sent, so nothing treats it as an ordinary failure that may be sent again.
ALTER TABLE delivery_log
    ADD COLUMN provider_status     text,
    ADD COLUMN provider_status_at  timestamptz,
    ADD COLUMN provider_error_code text,
    ADD COLUMN resolved_from       text CONSTRAINT delivery_log_resolved_from
                                       CHECK (resolved_from IN ('maybe_sent'));
-- The operator's list and the gauge of messages still maybe-sent.
CREATE INDEX delivery_log_maybe_sent_idx ON delivery_log (created_at) WHERE status = 'maybe_sent';
-- Status callbacks carry the idempotency key in their URL when the sender asked for one.
CREATE INDEX delivery_log_idempotency_idx
    ON delivery_log (idempotency_key) WHERE idempotency_key IS NOT NULL;

-- One row per open, click or reply. Webhook events are stored once in inbound_events
-- already; the reference keeps each engagement event single as well.
CREATE TABLE engagement_events (
    id               bigserial PRIMARY KEY,
    user_id          bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel          text NOT NULL CONSTRAINT engagement_events_channel CHECK (channel IN ('sms', 'email', 'push')),
    kind             text NOT NULL CONSTRAINT engagement_events_kind CHECK (kind IN ('open', 'click', 'reply')),
    delivery_log_id  bigint REFERENCES delivery_log (id) ON DELETE SET NULL,
    inbound_event_id bigint UNIQUE REFERENCES inbound_events (id) ON DELETE SET NULL,
    occurred_at      timestamptz NOT NULL
);
CREATE INDEX engagement_events_user_idx ON engagement_events (user_id, occurred_at);
CREATE INDEX engagement_events_occurred_idx ON engagement_events (occurred_at);

-- Per user and channel over the trailing window, rewritten by analyze_user_engagement.
CREATE TABLE user_engagement (
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel      text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    sent         integer NOT NULL DEFAULT 0,
    opens        integer NOT NULL DEFAULT 0,
    clicks       integer NOT NULL DEFAULT 0,
    replies      integer NOT NULL DEFAULT 0,
    -- Distinct messages opened, clicked or replied to, over messages sent.
    engagement_rate numeric(5, 4),
    computed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, channel)
);

-- Each user's best local hour to receive messages, written by optimize_send_timing.
CREATE TABLE user_send_hours (
    user_id     bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    best_hour   smallint NOT NULL CONSTRAINT user_send_hours_hour CHECK (best_hour BETWEEN 0 AND 23),
    events      integer NOT NULL CONSTRAINT user_send_hours_events CHECK (events > 0),
    time_zone   text NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now()
);

-- Redrives are bounded per job: a replayed job that fails again is examined again, and
-- 'exhausted' marks a failure left alone because its job has had its replays.
ALTER TABLE delivery_redrives DROP CONSTRAINT delivery_redrives_outcome;
ALTER TABLE delivery_redrives ADD CONSTRAINT delivery_redrives_outcome
    CHECK (outcome IN ('replayed', 'no_envelope', 'not_transient', 'exhausted', 'maybe_sent'));
CREATE INDEX delivery_redrives_job_idx ON delivery_redrives (job_id) WHERE outcome = 'replayed';
