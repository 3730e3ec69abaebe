-- A/B tests of outlook content (notifyhub/experiments.py).

CREATE TABLE experiments (
    name         text PRIMARY KEY CONSTRAINT experiments_name CHECK (name ~ '^[a-z0-9_.-]{1,64}$'),
    variants     text[] NOT NULL CONSTRAINT experiments_variants CHECK (cardinality(variants) >= 2),
    -- Delivered outlooks every variant needs before a winner may be promoted.
    min_sample   integer NOT NULL DEFAULT 100 CONSTRAINT experiments_min_sample CHECK (min_sample >= 1),
    -- Significance level of the one-sided two-proportion z-test.
    alpha        numeric(4, 3) NOT NULL DEFAULT 0.05 CONSTRAINT experiments_alpha CHECK (alpha > 0 AND alpha < 0.5),
    status       text NOT NULL DEFAULT 'running' CONSTRAINT experiments_status
                     CHECK (status IN ('running', 'concluded')),
    winner       text,
    decision     text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    concluded_at timestamptz,
    CONSTRAINT experiments_winner CHECK ((status = 'concluded') = (winner IS NOT NULL)),
    CONSTRAINT experiments_winner_is_variant CHECK (winner IS NULL OR winner = ANY (variants))
);

-- Who saw which variant; written the first time the outlook generation asks.
CREATE TABLE experiment_assignments (
    experiment  text NOT NULL REFERENCES experiments (name) ON DELETE CASCADE,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    variant     text NOT NULL,
    assigned_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment, user_id)
);
CREATE INDEX experiment_assignments_user_idx ON experiment_assignments (user_id);

-- Each weekly evaluation's numbers per variant, kept for the content team's history.
CREATE TABLE experiment_results (
    experiment   text NOT NULL REFERENCES experiments (name) ON DELETE CASCADE,
    variant      text NOT NULL,
    evaluated_at timestamptz NOT NULL,
    delivered    integer NOT NULL,
    viewed       integer NOT NULL,
    engaged      integer NOT NULL,
    PRIMARY KEY (experiment, variant, evaluated_at)
);
