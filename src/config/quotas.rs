//! `[quotas]`: rate limits and usage quotas.

use serde::Deserialize;

use super::{ConfigError, Millis, Seconds};

/// `[quotas]`: rate limits and usage quotas (see `quota/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    pub enabled: bool,
    /// How long a request waits for an in-flight slot before it gets 429.
    pub queue_timeout_ms: Millis<u64>,
    /// A subject unused this long has its `QuotaActor` stopped (counters flushed first).
    pub idle_secs: Seconds,
    /// How often day and month counters are written to the database.
    pub flush_interval_ms: Millis,
    /// Active batches per user (`MAX_BATCHES_PER_USER`; 0 = no limit).
    pub max_batches_per_user: u64,
    /// Redis mode (`redis.url` set): how often each replica pushes its counts to Redis and
    /// reads back the shared totals (at most 10 s).
    pub redis_sync_ms: Millis,
    /// Redis mode: a token budget closer to its limit than this fraction of it (or than
    /// twice what the cluster used in one sync interval) is checked in Redis per request.
    pub redis_near_fraction: f64,
    /// Redis mode: longest wait for one Redis round trip before the replica falls back to
    /// its local limits (at most 60 s).
    pub redis_timeout_ms: Millis,
    pub user: LimitSettings,
    pub org: LimitSettings,
    pub model: LimitSettings,
}

/// The default limits of one kind of subject; 0 disables a limit.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub requests_per_second: f64,
    pub burst: u64,
    pub max_in_flight: u64,
    pub tokens_per_minute: u64,
    pub requests_per_day: u64,
    pub tokens_per_day: u64,
    pub tokens_per_month: u64,
}

impl Quotas {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.redis_sync_ms.get() > 10_000 {
            return Err(ConfigError::new(
                "quotas.redis_sync_ms",
                "must be between 1 and 10000 (milliseconds)",
            ));
        }
        if self.redis_timeout_ms.get() > 60_000 {
            return Err(ConfigError::new(
                "quotas.redis_timeout_ms",
                "must be between 1 and 60000 (milliseconds)",
            ));
        }
        let near = self.redis_near_fraction;
        if !near.is_finite() || !(0.0..1.0).contains(&near) {
            return Err(ConfigError::new(
                "quotas.redis_near_fraction",
                "must be a number >= 0 and < 1",
            ));
        }
        for (kind, l) in [
            ("user", &self.user),
            ("org", &self.org),
            ("model", &self.model),
        ] {
            let rps = l.requests_per_second;
            if !rps.is_finite() || rps < 0.0 {
                return Err(ConfigError::new(
                    format!("quotas.{kind}.requests_per_second"),
                    "must be a number >= 0 (0 = no limit)",
                ));
            }
            if rps > 0.0 && l.burst == 0 {
                return Err(ConfigError::new(
                    format!("quotas.{kind}.burst"),
                    "must be at least 1 when requests_per_second is set",
                ));
            }
        }
        Ok(())
    }
}
