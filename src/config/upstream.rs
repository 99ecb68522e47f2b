//! `[fixtures]`, `[upstream]`, `[health]` and `[breaker]`: where targets come from and how
//! they are called, checked and cut off.

use std::num::NonZeroU32;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Millis, Seconds};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixtures {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub connect_timeout_ms: Millis,
    pub response_timeout_secs: Seconds,
    pub stream_idle_timeout_secs: Seconds,
    pub pool_limit_per_worker: usize,
    pub pool_idle_secs: Seconds<u64>,
    pub max_attempts: NonZeroU32,
    pub retry_backoff_ms: Millis<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub path: String,
    pub interval_secs: Seconds,
    pub timeout_ms: Millis,
    pub unhealthy_threshold: NonZeroU32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Breaker {
    pub failure_threshold: NonZeroU32,
    pub open_secs: Seconds,
}

impl Upstream {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts.get() > 10 {
            return Err(ConfigError::new("upstream.max_attempts", "at most 10"));
        }
        Ok(())
    }
}

impl Health {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.path.is_empty() && !self.path.starts_with('/') {
            return Err(ConfigError::new(
                "health.path",
                "must start with '/' or be empty",
            ));
        }
        Ok(())
    }
}
