-- The request log keyed by (created_at, id) in one B-tree: WITHOUT ROWID stores each row
-- in its primary key's tree, so an insert touches one tree instead of three (the rowid
-- table, the id index and the created_at index). Rows arrive in time order, so inserts
-- append at the tree's right edge, and usage reports and retention, which select by time,
-- read a key range. (created_at, id) is still unique per row, so a replayed row is skipped.
-- Rows are small (a few hundred bytes) unless logging.store_payloads adds the texts.
CREATE TABLE request_log_new (
    id                TEXT             NOT NULL,
    request_id        TEXT             NOT NULL,
    created_at        BIGINT           NOT NULL,
    user_id           TEXT             NOT NULL,
    org_id            TEXT             NOT NULL,
    model             TEXT             NOT NULL,
    cluster           TEXT             NOT NULL,
    framework         TEXT             NOT NULL,
    target            TEXT             NOT NULL,
    route             TEXT             NOT NULL,
    status            INTEGER          NOT NULL,
    error_code        TEXT,
    prompt_tokens     BIGINT           NOT NULL,
    completion_tokens BIGINT           NOT NULL,
    total_tokens      BIGINT           NOT NULL,
    tokens_estimated  BOOLEAN          NOT NULL,
    latency_ms        DOUBLE PRECISION NOT NULL,
    ttft_ms           DOUBLE PRECISION,
    client_ip         TEXT,
    stream            BOOLEAN          NOT NULL,
    attempts          INTEGER          NOT NULL,
    ending            TEXT             NOT NULL,
    prompt            TEXT,
    completion        TEXT,
    PRIMARY KEY (created_at, id)
) WITHOUT ROWID;
INSERT INTO request_log_new (id, request_id, created_at, user_id, org_id, model, cluster, framework, target, route, status, error_code, prompt_tokens, completion_tokens, total_tokens, tokens_estimated, latency_ms, ttft_ms, client_ip, stream, attempts, ending, prompt, completion)
    SELECT id, request_id, created_at, user_id, org_id, model, cluster, framework, target, route, status, error_code, prompt_tokens, completion_tokens, total_tokens, tokens_estimated, latency_ms, ttft_ms, client_ip, stream, attempts, ending, prompt, completion FROM request_log;
DROP TABLE request_log;
ALTER TABLE request_log_new RENAME TO request_log;
