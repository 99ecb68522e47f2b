//! The actor tree. Actors own and change state; handlers read what they publish.
//!
//! ```text
//! Gateway (root supervisor: builds the tree from the catalog, rebuilds dead children)
//! ├── BackendActor          one per target: health checks, circuit breaker, latency
//! ├── FederatedRouterActor  one per model: ranks the model's targets, publishes the ranking
//! ├── SchedulerProbe        one per cluster: scheduler state into the targets, cold starts
//! └── LogWriter             request-log rows to the database in batches, spill file when down
//! ```

pub mod backend;
pub mod breaker;
pub mod gateway;
pub mod log_writer;
pub mod router;
pub mod scheduler;
