-- People we message, how to reach them, and what they agreed to.
--
-- Consent is checked in the worker right before each provider call (DESIGN G8), so the
-- "currently consented" rule lives here, in one view, instead of in every handler.

-- Shared value types, so every phone and currency column enforces the same format.
-- E.164: '+', a non-zero leading digit, at most 15 digits in all. Formatting ('555-1234',
-- spaces, dashes) is rejected so a provider never has to guess what a number means.
CREATE DOMAIN e164_phone AS text
    CONSTRAINT e164_phone_format CHECK (VALUE ~ '^\+[1-9][0-9]{1,14}$');
-- ISO 4217 alphabetic code.
CREATE DOMAIN currency_code AS text
    CONSTRAINT currency_code_iso4217 CHECK (VALUE ~ '^[A-Z]{3}$');

CREATE TABLE users (
    id                bigserial PRIMARY KEY,
    name              text NOT NULL,
    email             text,
    phone             e164_phone,
    -- IANA zone name. Deliberately not validated against pg_timezone_names: zone data
    -- changes between PostgreSQL builds, and the sender must cope with an unknown zone
    -- (fall back to UTC and say so) rather than lose the user.
    time_zone         text NOT NULL DEFAULT 'UTC',
    locale            text NOT NULL DEFAULT 'en',
    -- ISO 3166-1 alpha-2 country and optional ISO 3166-2 subdivision ('US-CA'): email
    -- consent rules differ by jurisdiction (opt-in in the EU/UK, opt-out in the US).
    country_code      text CONSTRAINT users_country_iso CHECK (country_code ~ '^[A-Z]{2}$'),
    region            text CONSTRAINT users_region_iso CHECK (region ~ '^[A-Z]{2}-[A-Z0-9]{1,3}$'),
    -- Per-user quiet hours in the user's local time; NULL means "use the default".
    -- A window may wrap midnight (22:00-07:00), so start > end is allowed.
    quiet_hours_start time,
    quiet_hours_end   time,
    -- Preferred local delivery times for the daily outlook; NULL means the defaults.
    outlook_weekday_at time,
    outlook_weekend_at time,
    last_active_at    timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_shape CHECK (email ~ '^[^@\s]+@[^@\s]+$'),
    CONSTRAINT users_quiet_hours_pair
        CHECK ((quiet_hours_start IS NULL) = (quiet_hours_end IS NULL))
);

-- One account per address, whatever its capitalisation.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
-- Inbound SMS (STOP, replies) is matched to a user by phone number.
CREATE INDEX users_phone_idx ON users (phone) WHERE phone IS NOT NULL;
-- "Users active in the last N days" (daily outlook pre-generation, engagement jobs).
CREATE INDEX users_last_active_idx ON users (last_active_at);

-- One row per (user, channel): the latest opt-in and the latest opt-out. A re-opt-in after
-- an opt-out moves opted_in_at past opted_out_at, so the pair alone says the current state.
-- Every change is also appended to consent_events for the audit trail (TCPA, GDPR).
CREATE TABLE consents (
    user_id        bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel        text NOT NULL CONSTRAINT consents_channel CHECK (channel IN ('sms', 'email', 'push')),
    opted_in_at    timestamptz,
    opt_in_source  text,
    opted_out_at   timestamptz,
    opt_out_source text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, channel),
    CONSTRAINT consents_opt_in_sourced CHECK (opted_in_at IS NULL OR opt_in_source IS NOT NULL),
    CONSTRAINT consents_opt_out_sourced CHECK (opted_out_at IS NULL OR opt_out_source IS NOT NULL)
);

-- The rule: consented iff there is an opt-in and no opt-out at or after it. An opt-out
-- recorded at the same instant as an opt-in wins (when in doubt, do not send).
CREATE VIEW current_consents AS
SELECT user_id,
       channel,
       opted_in_at,
       opt_in_source,
       opted_out_at,
       opt_out_source,
       (opted_in_at IS NOT NULL
        AND (opted_out_at IS NULL OR opted_out_at < opted_in_at)) AS consented
FROM consents;

CREATE TABLE consent_events (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel     text NOT NULL,
    action      text NOT NULL CONSTRAINT consent_events_action CHECK (action IN ('opt_in', 'opt_out')),
    source      text NOT NULL,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_events_user_idx ON consent_events (user_id, channel, occurred_at);

-- Append an audit row whenever an opt-in or opt-out timestamp changes, so no code path
-- (handler, admin script, manual UPDATE) can change consent without leaving a trace.
CREATE FUNCTION consents_audit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.opted_in_at IS NOT NULL
       AND (TG_OP = 'INSERT' OR NEW.opted_in_at IS DISTINCT FROM OLD.opted_in_at) THEN
        INSERT INTO consent_events (user_id, channel, action, source, occurred_at)
        VALUES (NEW.user_id, NEW.channel, 'opt_in', NEW.opt_in_source, NEW.opted_in_at);
    END IF;
    IF NEW.opted_out_at IS NOT NULL
       AND (TG_OP = 'INSERT' OR NEW.opted_out_at IS DISTINCT FROM OLD.opted_out_at) THEN
        INSERT INTO consent_events (user_id, channel, action, source, occurred_at)
        VALUES (NEW.user_id, NEW.channel, 'opt_out', NEW.opt_out_source, NEW.opted_out_at);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER consents_audit
AFTER INSERT OR UPDATE ON consents
FOR EACH ROW EXECUTE FUNCTION consents_audit();

-- Addresses we must not message whatever the consent table says: hard bounces, spam
-- complaints, carrier-level STOP. Keyed by the normalised address (lower-case email,
-- E.164 phone) because a bounce arrives without a user id.
CREATE TABLE suppressions (
    channel    text NOT NULL CONSTRAINT suppressions_channel CHECK (channel IN ('sms', 'email', 'push')),
    recipient  text NOT NULL,
    reason     text NOT NULL CONSTRAINT suppressions_reason
                   CHECK (reason IN ('bounce', 'complaint', 'stop', 'invalid', 'manual')),
    source     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, recipient)
);
