-- The catalog as stored by the admin API / load-fixtures: each row is one fixture entry
-- (its JSON, as in endpoints.json / federated_endpoints.json), keyed by slug or name.
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
