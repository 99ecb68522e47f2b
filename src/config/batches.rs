//! `[batches]`: the Files and Batch APIs.

use std::num::NonZeroU64;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Millis, Seconds};

/// `[batches]`: the Files and Batch APIs and the `BatchActor` that runs batches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batches {
    /// Run batches in this process (a replica may serve the API only).
    pub enabled: bool,
    /// Largest file `POST /v1/files` (and FIRST's path form) accepts.
    pub max_file_bytes: NonZeroU64,
    /// Uploads (`POST /v1/files`) received at once by this process; more are 429.
    pub max_concurrent_uploads: NonZeroU64,
    /// Lines of one batch in flight at once.
    pub concurrency_per_batch: NonZeroU64,
    /// Lines of all batches in flight at once in this process.
    pub max_concurrency: NonZeroU64,
    /// Batches this process runs at once.
    pub max_running: NonZeroU64,
    /// Of those, at most this many of one user's (0 = all but one of `max_running`, so
    /// another user's batch always finds a slot).
    pub max_running_per_user: u64,
    /// A line starts only while fewer interactive requests than this are in flight on
    /// the model's targets (0 = batches never yield).
    pub yield_above_interactive: u64,
    /// Seconds a claim on a batch holds; renewed every third of it while it runs.
    pub lease_secs: Seconds,
    /// Milliseconds between looks for runnable batches.
    pub poll_interval_ms: Millis,
    /// Finished lines are written in transactions of at most this many lines...
    pub flush_lines: NonZeroU64,
    /// ...or after this many milliseconds, whichever comes first.
    pub flush_interval_ms: Millis,
    /// Tries per line when every target failed or none was available.
    pub line_attempts: NonZeroU64,
    /// Directories FIRST's path form may read from and write to (empty = path form off).
    pub allowed_roots: Vec<PathBuf>,
}

impl Batches {
    /// Slots one user's batches may hold in this process.
    pub fn per_user_running(&self) -> u64 {
        match self.max_running_per_user {
            0 => self.max_running.get().saturating_sub(1).max(1),
            n => n,
        }
    }
}

impl Batches {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.lease_secs.get() < 3 {
            return Err(ConfigError::new("batches.lease_secs", "at least 3"));
        }
        if self.flush_lines.get() > 1000 {
            return Err(ConfigError::new("batches.flush_lines", "at most 1000"));
        }
        for root in &self.allowed_roots {
            if !root.is_absolute() {
                return Err(ConfigError::new(
                    "batches.allowed_roots",
                    format!("{} is not an absolute path", root.display()),
                ));
            }
        }
        Ok(())
    }
}
