//! `[fixtures]`, `[upstream]`, `[health]` and `[breaker]`: where targets come from and how
//! they are called, checked and cut off.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{positive, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixtures {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub connect_timeout_ms: u64,
    pub response_timeout_secs: u64,
    pub stream_idle_timeout_secs: u64,
    pub pool_limit_per_worker: usize,
    pub pool_idle_secs: u64,
    pub max_attempts: u32,
    pub retry_backoff_ms: u64,
}

impl Upstream {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn response_timeout(&self) -> Duration {
        Duration::from_secs(self.response_timeout_secs)
    }
    pub fn stream_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.stream_idle_timeout_secs)
    }
    pub fn retry_backoff(&self) -> Duration {
        Duration::from_millis(self.retry_backoff_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub path: String,
    pub interval_secs: u64,
    pub timeout_ms: u64,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Breaker {
    pub failure_threshold: u32,
    pub open_secs: u64,
}

impl Upstream {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        positive("upstream.connect_timeout_ms", self.connect_timeout_ms)?;
        positive("upstream.response_timeout_secs", self.response_timeout_secs)?;
        positive(
            "upstream.stream_idle_timeout_secs",
            self.stream_idle_timeout_secs,
        )?;
        positive("upstream.max_attempts", self.max_attempts as u64)?;
        if self.max_attempts > 10 {
            return Err(ConfigError::new("upstream.max_attempts", "at most 10"));
        }
        Ok(())
    }
}

impl Health {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        positive("health.interval_secs", self.interval_secs)?;
        positive("health.timeout_ms", self.timeout_ms)?;
        positive(
            "health.unhealthy_threshold",
            self.unhealthy_threshold as u64,
        )?;
        if !self.path.is_empty() && !self.path.starts_with('/') {
            return Err(ConfigError::new(
                "health.path",
                "must start with '/' or be empty",
            ));
        }
        Ok(())
    }
}

impl Breaker {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        positive("breaker.failure_threshold", self.failure_threshold as u64)?;
        positive("breaker.open_secs", self.open_secs)
    }
}
