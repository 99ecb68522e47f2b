//! `[fixtures]`, `[upstream]`, `[health]` and `[breaker]`: where targets come from and how
//! they are called, checked and cut off.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use std::num::{NonZeroU32, NonZeroU64};

use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixtures {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub connect_timeout_ms: NonZeroU64,
    pub response_timeout_secs: NonZeroU64,
    pub stream_idle_timeout_secs: NonZeroU64,
    pub pool_limit_per_worker: usize,
    pub pool_idle_secs: u64,
    pub max_attempts: NonZeroU32,
    pub retry_backoff_ms: u64,
}

impl Upstream {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.get())
    }
    pub fn response_timeout(&self) -> Duration {
        Duration::from_secs(self.response_timeout_secs.get())
    }
    pub fn stream_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.stream_idle_timeout_secs.get())
    }
    pub fn retry_backoff(&self) -> Duration {
        Duration::from_millis(self.retry_backoff_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub path: String,
    pub interval_secs: NonZeroU64,
    pub timeout_ms: NonZeroU64,
    pub unhealthy_threshold: NonZeroU32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Breaker {
    pub failure_threshold: NonZeroU32,
    pub open_secs: NonZeroU64,
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
