//! inference-gateway: one authenticated, OpenAI-compatible API in front of many inference
//! servers. See `docs/ARCHITECTURE.md` for the map.

pub mod actors;
pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
pub mod fixtures;
pub mod logging;
pub mod login;
pub mod proxy;
pub mod quota;
pub mod routes;
pub mod server;
pub mod state;
pub mod store;
pub mod target;
