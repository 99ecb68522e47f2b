-- Usage counters per subject (user or org) and window (e.g. "day", "month"); window_start
-- is the window's start in unix milliseconds.
CREATE TABLE usage_counters (
    subject      TEXT   NOT NULL,
    window_kind  TEXT   NOT NULL,
    window_start BIGINT NOT NULL,
    requests     BIGINT NOT NULL,
    tokens       BIGINT NOT NULL,
    PRIMARY KEY (subject, window_kind, window_start)
);
-- Per-subject limits set by an admin; NULL = the configured default.
CREATE TABLE quota_overrides (
    subject        TEXT             NOT NULL PRIMARY KEY,
    rps            DOUBLE PRECISION,
    burst          BIGINT,
    max_in_flight  BIGINT,
    daily_requests BIGINT,
    daily_tokens   BIGINT,
    monthly_tokens BIGINT,
    updated_at     BIGINT           NOT NULL
);
