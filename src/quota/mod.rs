//! Quotas and rate limits (`[quotas]`): per user, org and model, a token bucket (requests
//! per second with a burst), an in-flight cap, tokens per minute, requests per day, tokens
//! per day and per month.
//!
//! ```text
//! QuotaSupervisor (starts a QuotaActor per new subject, rebuilds crashed ones)
//! └── QuotaActor   one per live subject: flushes counters, retires the subject when idle
//! QuotaRegistry    the live SubjectStates, read by handlers without a message
//! ```
//!
//! The decision is made by the handler on the subject's shared state (`state.rs`) under a
//! short lock; the arithmetic is pure functions of `now` (`math.rs`). In Redis mode
//! (`shared.rs`) that state is a view of the counters all replicas share, kept fresh by a
//! sync task; only a subject near a limit is decided in Redis, one script call.

pub mod actor;
pub mod limits;
pub mod math;
pub mod registry;
pub mod shared;
pub mod state;

pub use limits::{Kind, Limits, Subject};
pub use registry::{rate_limit_headers, Admission, QuotaRegistry, RateLimited};
pub use shared::QuotaRedis;
pub use state::{BatchGuard, Permit, SubjectState};
