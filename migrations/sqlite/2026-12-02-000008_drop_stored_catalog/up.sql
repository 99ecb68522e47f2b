-- The stored catalog (backends, federated_models) was never read: targets and models
-- come from the fixture files, reloaded by /admin/reload. Its tables go.
DROP TABLE backends;
DROP TABLE federated_models;
