-- Back to the rowid table keyed by id with a created_at index (migration 000003).
CREATE TABLE request_log_old (
    id                TEXT             NOT NULL PRIMARY KEY,
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
    completion        TEXT
);
INSERT OR IGNORE INTO request_log_old (id, request_id, created_at, user_id, org_id, model, cluster, framework, target, route, status, error_code, prompt_tokens, completion_tokens, total_tokens, tokens_estimated, latency_ms, ttft_ms, client_ip, stream, attempts, ending, prompt, completion)
    SELECT id, request_id, created_at, user_id, org_id, model, cluster, framework, target, route, status, error_code, prompt_tokens, completion_tokens, total_tokens, tokens_estimated, latency_ms, ttft_ms, client_ip, stream, attempts, ending, prompt, completion FROM request_log;
DROP TABLE request_log;
ALTER TABLE request_log_old RENAME TO request_log;
CREATE INDEX request_log_created_at ON request_log (created_at);
