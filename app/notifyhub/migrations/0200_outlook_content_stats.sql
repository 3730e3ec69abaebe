-- Weekly engagement of daily outlooks per content type, written by optimize_outlook_content.
-- report_runs is for runs that produce a file; these are numbers that later runs and the
-- content team compare week over week, so they get a table keyed by the analysed period.
CREATE TABLE outlook_content_stats (
    period_start     date NOT NULL,
    period_end       date NOT NULL,
    content_type     text NOT NULL,
    outlooks         integer NOT NULL CONSTRAINT outlook_content_stats_outlooks CHECK (outlooks >= 0),
    delivered        integer NOT NULL DEFAULT 0,
    viewed           integer NOT NULL DEFAULT 0,
    rated            integer NOT NULL DEFAULT 0,
    average_rating   numeric(3, 2),
    with_actions     integer NOT NULL DEFAULT 0,
    view_rate        numeric(5, 4),
    low_performing   boolean NOT NULL DEFAULT false,
    computed_at      timestamptz NOT NULL DEFAULT now(),
    -- A re-run for the same period replaces its numbers instead of adding a second row.
    PRIMARY KEY (period_end, period_start, content_type),
    CONSTRAINT outlook_content_stats_period CHECK (period_end >= period_start)
);
