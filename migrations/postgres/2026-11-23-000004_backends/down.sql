DROP TABLE federated_models;
DROP TABLE backends;
