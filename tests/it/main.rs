//! The integration tests, one binary (one link, one `tests/it/common` build): a module
//! per area. Real HTTP on 127.0.0.1:0, real databases and Redis where configured
//! (`DATABASE_TEST_URL`, `REDIS_TEST_URL`; tests that need one say so when it is unset).
//! Run one area with `cargo test --test it <area>::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod audit;
mod auth;
mod batches;
mod cli_migrate;
mod console;
mod errors;
mod exposure;
mod failover;
mod first_run;
mod globus_compute;
mod hostile_nul;
mod hpc;
mod keys;
mod login;
mod oidc;
mod ops;
mod process;
mod quotas;
mod quotas_redis;
mod real_backends;
mod relay;
mod request_log;
mod request_log_outage;
mod routes;
mod slow_clients;
mod startup;
mod store;
mod target_faults;
mod upstream_pool;
