-- Batches (issue #8): uploaded files, batches and their per-line results.
-- files: metadata of a file whose bytes live at {storage.data_dir}/files/{id}.
CREATE TABLE files (
    id         TEXT   NOT NULL PRIMARY KEY,
    owner      TEXT   NOT NULL,
    filename   TEXT   NOT NULL,
    purpose    TEXT   NOT NULL,
    bytes      BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX files_owner ON files (owner, id);

-- batches: one row per batch. Ids sort by creation time (listing pages by id).
-- identity is the owner's identity (JSON) the lines are routed as. lease_owner and
-- lease_until: the replica running the batch and until when its claim holds (renewed
-- while it runs; an expired lease is reclaimable). lease_owner is kept after the end
-- (who finished it).
CREATE TABLE batches (
    id                TEXT   NOT NULL PRIMARY KEY,
    owner             TEXT   NOT NULL,
    identity          TEXT   NOT NULL,
    endpoint          TEXT   NOT NULL,
    input_file_id     TEXT   NOT NULL,
    completion_window TEXT   NOT NULL,
    status            TEXT   NOT NULL,
    metadata          TEXT,
    model             TEXT,
    cluster           TEXT,
    framework         TEXT,
    output_folder     TEXT,
    output_file_id    TEXT,
    error_file_id     TEXT,
    errors            TEXT,
    total             BIGINT NOT NULL,
    completed         BIGINT NOT NULL,
    failed            BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    in_progress_at    BIGINT,
    finalizing_at     BIGINT,
    completed_at      BIGINT,
    failed_at         BIGINT,
    expires_at        BIGINT NOT NULL,
    expired_at        BIGINT,
    cancelling_at     BIGINT,
    cancelled_at      BIGINT,
    lease_owner       TEXT,
    lease_until       BIGINT
);
CREATE INDEX batches_owner ON batches (owner, id);
CREATE INDEX batches_status ON batches (status);

-- batch_items: the result of one input line, written once (the primary key makes a
-- replayed write a no-op). result is the whole output line (OpenAI's batch output
-- format); ok says whether it goes to the output file (2xx) or the error file.
CREATE TABLE batch_items (
    batch_id   TEXT    NOT NULL,
    line_index BIGINT  NOT NULL,
    custom_id  TEXT    NOT NULL,
    ok         BOOLEAN NOT NULL,
    result     TEXT    NOT NULL,
    PRIMARY KEY (batch_id, line_index)
);
