-- Restores the stored catalog's tables (empty).
CREATE TABLE backends (
    id         TEXT   NOT NULL PRIMARY KEY,
    spec       TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE federated_models (
    name       TEXT   NOT NULL PRIMARY KEY,
    spec       TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);
