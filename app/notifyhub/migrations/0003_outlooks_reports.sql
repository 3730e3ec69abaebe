-- Daily outlooks (pre-generated at night, delivered at each user's local morning) and
-- the record of report and export runs.

CREATE TABLE daily_outlooks (
    id           bigserial PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The user's local calendar date the outlook is for, not a UTC date.
    outlook_date date NOT NULL,
    content      jsonb NOT NULL,
    generated_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    viewed_at    timestamptz,
    rating       smallint CONSTRAINT daily_outlooks_rating CHECK (rating BETWEEN 1 AND 5),
    actions      jsonb NOT NULL DEFAULT '[]'::jsonb,
    -- Pre-generation is re-run on retry and on demand: the second run must find the
    -- first one's row (INSERT ... ON CONFLICT), never write a second outlook.
    CONSTRAINT daily_outlooks_user_date_key UNIQUE (user_id, outlook_date)
);
-- Content-performance analysis reads a window of dates across all users.
CREATE INDEX daily_outlooks_date_idx ON daily_outlooks (outlook_date);
-- The notifier looks for generated but undelivered outlooks for a date.
CREATE INDEX daily_outlooks_undelivered_idx
    ON daily_outlooks (outlook_date) WHERE delivered_at IS NULL;

CREATE TABLE report_runs (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL,
    params      jsonb NOT NULL DEFAULT '{}'::jsonb,
    status      text NOT NULL DEFAULT 'queued' CONSTRAINT report_runs_status
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    job_id      text,
    row_count   integer CONSTRAINT report_runs_row_count CHECK (row_count >= 0),
    file_path   text,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz,
    CONSTRAINT report_runs_finished_after_start
        CHECK (finished_at IS NULL OR started_at IS NULL OR finished_at >= started_at),
    CONSTRAINT report_runs_success_has_file
        CHECK (status <> 'succeeded' OR file_path IS NOT NULL)
);
CREATE INDEX report_runs_kind_created_idx ON report_runs (kind, created_at);
CREATE INDEX report_runs_job_idx ON report_runs (job_id) WHERE job_id IS NOT NULL;
