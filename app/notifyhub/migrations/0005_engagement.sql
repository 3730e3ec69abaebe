-- Meetings, chat messages, goals, bills and onboarding: what the reminder, milestone,
-- payment-reminder, onboarding and cleanup handlers read.

CREATE TABLE meetings (
    id                bigserial PRIMARY KEY,
    title             text NOT NULL,
    organiser_user_id bigint REFERENCES users (id) ON DELETE SET NULL,
    starts_at         timestamptz NOT NULL,
    ends_at           timestamptz NOT NULL,
    -- scheduled -> active (window open) -> completed; cancelled from scheduled or active.
    status            text NOT NULL DEFAULT 'scheduled' CONSTRAINT meetings_status
                          CHECK (status IN ('scheduled', 'active', 'completed', 'cancelled')),
    location          text,
    url               text,
    -- The id of the same event in an external calendar, when synced from one.
    calendar_event_id text UNIQUE,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT meetings_ends_after_start CHECK (ends_at > starts_at)
);
-- Reminders ("scheduled meetings starting in the next hour / 23-25 hours") and the
-- scheduled -> active transition both scan scheduled meetings by start time.
CREATE INDEX meetings_scheduled_start_idx ON meetings (starts_at) WHERE status = 'scheduled';
-- The active -> completed transition scans active meetings by end time.
CREATE INDEX meetings_active_end_idx ON meetings (ends_at) WHERE status = 'active';
CREATE INDEX meetings_organiser_idx ON meetings (organiser_user_id);

-- Who attends, and which reminders each attendee has had. The timestamps let a rerun of
-- the hourly reminder job skip people already reminded; the effect ledger still guards
-- the send itself.
CREATE TABLE meeting_participants (
    meeting_id     bigint NOT NULL REFERENCES meetings (id) ON DELETE CASCADE,
    user_id        bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role           text NOT NULL DEFAULT 'attendee' CONSTRAINT meeting_participants_role
                       CHECK (role IN ('organiser', 'attendee')),
    response       text NOT NULL DEFAULT 'pending' CONSTRAINT meeting_participants_response
                       CHECK (response IN ('pending', 'accepted', 'declined')),
    reminded_24h_at timestamptz,
    reminded_1h_at  timestamptz,
    PRIMARY KEY (meeting_id, user_id)
);
CREATE INDEX meeting_participants_user_idx ON meeting_participants (user_id);

-- Chat messages; the cleanup job deletes those older than the retention period.
CREATE TABLE messages (
    id                bigserial PRIMARY KEY,
    sender_user_id    bigint REFERENCES users (id) ON DELETE SET NULL,
    recipient_user_id bigint REFERENCES users (id) ON DELETE CASCADE,
    meeting_id        bigint REFERENCES meetings (id) ON DELETE SET NULL,
    body              text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
-- Retention cleanup deletes by age in batches, oldest first.
CREATE INDEX messages_created_idx ON messages (created_at);
CREATE INDEX messages_recipient_idx ON messages (recipient_user_id, created_at);

CREATE TABLE goals (
    id             bigserial PRIMARY KEY,
    user_id        bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title          text NOT NULL,
    target_amount  numeric(12, 2) CONSTRAINT goals_target_amount CHECK (target_amount > 0),
    current_amount numeric(12, 2) NOT NULL DEFAULT 0,
    currency       currency_code,
    target_date    date,
    status         text NOT NULL DEFAULT 'active' CONSTRAINT goals_status
                       CHECK (status IN ('active', 'achieved', 'abandoned')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    achieved_at    timestamptz,
    CONSTRAINT goals_amount_has_currency CHECK (target_amount IS NULL OR currency IS NOT NULL)
);
CREATE INDEX goals_user_idx ON goals (user_id) WHERE status = 'active';

-- Steps towards a goal. due_at drives the SMS milestone reminder; reached_at drives the
-- celebration email. The *_at stamps record that each message went out.
CREATE TABLE goal_milestones (
    id               bigserial PRIMARY KEY,
    goal_id          bigint NOT NULL REFERENCES goals (id) ON DELETE CASCADE,
    title            text NOT NULL,
    due_at           timestamptz,
    reached_at       timestamptz,
    sms_reminded_at  timestamptz,
    email_sent_at    timestamptz
);
CREATE INDEX goal_milestones_goal_idx ON goal_milestones (goal_id);
-- "Milestones due soon, not reached, not yet reminded."
CREATE INDEX goal_milestones_due_idx ON goal_milestones (due_at)
    WHERE reached_at IS NULL AND sms_reminded_at IS NULL;
-- "Milestones reached whose celebration email has not gone out."
CREATE INDEX goal_milestones_reached_idx ON goal_milestones (reached_at)
    WHERE reached_at IS NOT NULL AND email_sent_at IS NULL;

-- Bills and subscriptions for payment-reminder SMS. due_date is the user's local date.
CREATE TABLE bills (
    id                 bigserial PRIMARY KEY,
    user_id            bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    payee              text NOT NULL,
    amount             numeric(12, 2) NOT NULL CONSTRAINT bills_amount CHECK (amount > 0),
    currency           currency_code NOT NULL,
    due_date           date NOT NULL,
    remind_days_before smallint NOT NULL DEFAULT 3 CONSTRAINT bills_remind_days CHECK (remind_days_before BETWEEN 0 AND 60),
    status             text NOT NULL DEFAULT 'due' CONSTRAINT bills_status CHECK (status IN ('due', 'paid', 'cancelled')),
    reminded_at        timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now()
);
-- "Unpaid bills due within the next N days."
CREATE INDEX bills_due_idx ON bills (due_date) WHERE status = 'due';
CREATE INDEX bills_user_idx ON bills (user_id);

-- Where each user is in the onboarding email sequence. One row per user and sequence;
-- the sequence job picks rows whose next_at has passed and that are neither finished nor
-- stopped (unsubscribed, or the user completed the steps by themselves).
CREATE TABLE onboarding_progress (
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    sequence     text NOT NULL DEFAULT 'welcome',
    step         smallint NOT NULL DEFAULT 0 CONSTRAINT onboarding_progress_step CHECK (step >= 0),
    next_at      timestamptz,
    started_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    stopped_at   timestamptz,
    stop_reason  text,
    PRIMARY KEY (user_id, sequence)
);
CREATE INDEX onboarding_progress_due_idx ON onboarding_progress (next_at)
    WHERE completed_at IS NULL AND stopped_at IS NULL;
