-- API keys: only the SHA-256 of a key is stored, with a short prefix to recognise it.
-- Times are unix milliseconds. allowed_models is a JSON array of model names ([] = all).
CREATE TABLE api_keys (
    id             TEXT    NOT NULL PRIMARY KEY,
    user_id        TEXT    NOT NULL,
    org_id         TEXT    NOT NULL,
    role           TEXT    NOT NULL,
    hash           TEXT    NOT NULL UNIQUE,
    prefix         TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL,
    expires_at     BIGINT,
    revoked_at     BIGINT,
    allowed_models TEXT    NOT NULL
);
CREATE INDEX api_keys_user_id ON api_keys (user_id);
