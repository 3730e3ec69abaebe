-- Failed deliveries that process_failed_messages has already dealt with. One row per
-- delivery_log row makes "re-drive a transient failure once" durable: a Redis dedup key
-- expires and can be flushed, this row cannot.
CREATE TABLE delivery_redrives (
    delivery_log_id bigint PRIMARY KEY REFERENCES delivery_log (id) ON DELETE CASCADE,
    job_id          text NOT NULL,
    -- replayed: the dead-lettered job went back on its queue; no_envelope: the job is gone
    -- (finished or expired) so there is nothing to re-drive; not_transient: the error says a
    -- retry cannot help (bad number, refused). The last two are tombstones that stop
    -- re-examination.
    outcome         text NOT NULL CONSTRAINT delivery_redrives_outcome
                        CHECK (outcome IN ('replayed', 'no_envelope', 'not_transient')),
    created_at      timestamptz NOT NULL DEFAULT now()
);
