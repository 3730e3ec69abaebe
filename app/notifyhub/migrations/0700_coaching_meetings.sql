-- Coaching phases and the meeting series of users in the tracking phase (seed 002): when a
-- tracking user's latest meeting completes, update_meeting_statuses books the next one and
-- invites its attendees.

-- The user's coaching phase ('discovery', 'setup', 'tracking', ...); NULL when not coached.
-- Left open like send_phase_transition's phase names: only 'tracking' has a meaning here.
ALTER TABLE users
    ADD COLUMN coaching_phase text,
    -- How far apart a tracking user's meetings are: weekly unless set otherwise.
    ADD COLUMN meeting_interval_days smallint NOT NULL DEFAULT 7
        CONSTRAINT users_meeting_interval CHECK (meeting_interval_days BETWEEN 1 AND 90);
CREATE INDEX users_tracking_idx ON users (id) WHERE coaching_phase = 'tracking';

-- The meeting this one was booked to follow. Unique: a meeting has at most one successor, so
-- repeated or concurrent runs of the status task cannot book the same follow-up twice.
ALTER TABLE meetings
    ADD COLUMN follows_meeting_id bigint
        CONSTRAINT meetings_follows_meeting_key UNIQUE
        REFERENCES meetings (id) ON DELETE SET NULL;

-- When the invitation to a booked meeting was enqueued; NULL until then. Stamped after the
-- enqueue, whose job key drops the duplicate if a crash in between makes a run enqueue again.
ALTER TABLE meeting_participants ADD COLUMN invited_at timestamptz;
