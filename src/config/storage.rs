//! `[logging]`, `[database]`, `[storage]` and `[redis]`.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Millis, Seconds};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    pub level: String,
    /// Write one request-log row per request to the database.
    pub request_log: bool,
    /// Store prompts and completions in the request log.
    pub store_payloads: bool,
    /// Largest prompt or completion stored, in bytes (longer ones are cut).
    pub payload_max_bytes: usize,
    /// Rows older than this many days are deleted (0 = keep forever).
    pub retention_days: u32,
    /// Rows per insert.
    pub batch_size: NonZeroUsize,
    /// Most time a row waits before its batch is written, in milliseconds.
    pub flush_interval_ms: Millis,
    /// Rows kept in memory while the database is slow or down; more go to the spill file.
    pub queue_capacity: usize,
    /// Seconds between attempts to replay the spill file while the database is down.
    pub retry_interval_secs: Seconds,
    /// Directory of the spill file ("" = `{storage.data_dir}/log-spill`).
    pub spill_dir: PathBuf,
}

/// `[database]`. `url` may carry a password: Debug prints it redacted.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    pub url: String,
    pub pool_size: NonZeroUsize,
    /// Most time one background database operation (a log batch, a prune) may take.
    pub timeout_secs: Seconds,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &crate::store::url::redact(&self.url))
            .field("pool_size", &self.pool_size)
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    pub data_dir: PathBuf,
}

/// Redis, shared by replicas ("" = none: each replica on its own).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    pub url: String,
    /// Prefix of every key and channel this gateway uses.
    pub key_prefix: String,
}

impl Logging {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        crate::logging::parse_level(&self.level).ok_or_else(|| {
            ConfigError::new(
                "logging.level",
                format!(
                    "unknown level {:?}; use one of trace, debug, info, warning, error, critical",
                    self.level
                ),
            )
        })?;
        if self.batch_size.get() > 1000 {
            // 24 columns per row: stays under SQLite's and PostgreSQL's bind limits.
            return Err(ConfigError::new("logging.batch_size", "at most 1000"));
        }
        if self.queue_capacity < self.batch_size.get() {
            return Err(ConfigError::new(
                "logging.queue_capacity",
                format!("must be at least logging.batch_size ({})", self.batch_size),
            ));
        }
        Ok(())
    }
}

impl Storage {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("storage.data_dir", "must not be empty"));
        }
        Ok(())
    }
}

impl Redis {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.url;
        if !(url.is_empty() || url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(ConfigError::new(
                "redis.url",
                "must start with redis:// or rediss:// (or be empty)",
            ));
        }
        Ok(())
    }
}
