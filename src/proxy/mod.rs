//! Moving requests and responses: choosing a target, failing over, and relaying bytes.
//! No actor sees a response chunk; handlers move bytes.

pub mod cold_start;
pub mod demo;
pub mod forward;
pub mod globus_compute;
pub mod pickled;
pub mod record;
pub mod relay;
pub mod shutdown_cut;
pub mod sse;
pub mod upstream_pool;
pub mod usage;
