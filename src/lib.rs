//! inference-gateway: one authenticated, OpenAI-compatible API in front of many inference
//! servers. See `docs/ARCHITECTURE.md` for the map.

pub mod actors;
pub mod auth;
pub mod batch;
pub mod body_timeout;
pub mod cache;
pub mod clock;
pub mod compress;
pub mod config;
pub mod error;
pub mod fixtures;
pub mod json_body;
pub mod logging;
pub mod login;
pub mod metrics;
pub mod normalize_path;
pub mod nul_input;
pub mod openapi;
pub mod pbs_json;
pub mod probe;
pub mod proxy;
pub mod quota;
pub mod reload;
pub mod request_id;
pub mod routes;
pub mod routing;
pub mod scheduler;
pub mod security;
pub mod server;
pub mod state;
pub mod store;
pub mod streaming;
pub mod streaming_redis;
pub mod systemd;
pub mod ttl_cache;
