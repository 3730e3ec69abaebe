-- Report files kept in PostgreSQL, so whichever worker answers a download link can serve
-- the file (workers share no disk). A file is split into chunks of at most 1 MiB: the
-- worker writes and serves it chunk by chunk, never holding a whole file in memory, and a
-- slow download never holds a connection for longer than one chunk.

CREATE TABLE report_files (
    id          bigserial PRIMARY KEY,
    business_id bigint REFERENCES businesses (id) ON DELETE CASCADE,
    -- The name the download carries (Content-Disposition), e.g. sales-deli-2024-03-01.pdf.
    filename    text NOT NULL CONSTRAINT report_files_filename
                    CHECK (filename ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$'),
    media_type  text NOT NULL,
    byte_size   bigint NOT NULL CONSTRAINT report_files_byte_size CHECK (byte_size >= 0),
    chunk_count integer NOT NULL CONSTRAINT report_files_chunk_count CHECK (chunk_count >= 0),
    sha256      bytea NOT NULL CONSTRAINT report_files_sha256 CHECK (length(sha256) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Download links stop working here; the retention task deletes the file after it.
    expires_at  timestamptz NOT NULL,
    CONSTRAINT report_files_expires_after_creation CHECK (expires_at > created_at)
);
CREATE INDEX report_files_expires_idx ON report_files (expires_at);
CREATE INDEX report_files_business_idx ON report_files (business_id);

CREATE TABLE report_file_chunks (
    file_id bigint NOT NULL REFERENCES report_files (id) ON DELETE CASCADE,
    seq     integer NOT NULL CONSTRAINT report_file_chunks_seq CHECK (seq >= 0),
    data    bytea NOT NULL,
    PRIMARY KEY (file_id, seq)
);
-- PDF and XLSX are compressed already; EXTERNAL stores chunks out of line uncompressed
-- instead of spending CPU on a second compression that gains nothing.
ALTER TABLE report_file_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- A run now points at its stored file instead of a local path. The file outlives the run's
-- usefulness only until it expires, so a succeeded run may lose its file later: the old
-- "succeeded means a path" rule no longer holds.
ALTER TABLE report_runs ADD COLUMN file_id bigint REFERENCES report_files (id) ON DELETE SET NULL;
ALTER TABLE report_runs DROP CONSTRAINT report_runs_success_has_file;
CREATE INDEX report_runs_file_idx ON report_runs (file_id) WHERE file_id IS NOT NULL;
