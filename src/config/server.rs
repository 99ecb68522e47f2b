//! `[server]` (the listener, TLS) and `[cache]` (the response cache).

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{positive, ConfigError, Millis, Seconds};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub bind: String,
    pub workers: usize,
    // Counts and durations that must be positive are typed so (`NonZero*`, `Millis`,
    // `Seconds`): a 0 is refused while the settings are read, the message naming the key
    // (`config_error_key`). `Seconds<u64>` is a duration where 0 means something.
    pub max_body_bytes: NonZeroUsize,
    pub keep_alive_secs: Seconds<u64>,
    /// Longest pause between two chunks of a request body before the request is answered
    /// 408 and its connection closed (a client that stops sending mid-body).
    pub body_read_timeout_ms: Millis,
    /// Connections one worker holds at once; past it new ones wait in the listen backlog.
    pub max_connections: NonZeroUsize,
    pub shutdown_grace_secs: Seconds<u64>,
    pub max_hops: NonZeroU32,
    /// gzip JSON answers of 1 KiB and more when the client accepts it (never SSE).
    pub gzip: bool,
    pub tls: Tls,
}

/// TLS on the listener (rustls, TLS 1.2 and 1.3 only). Both files empty: plain HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// `max-age` of the Strict-Transport-Security header sent when TLS is on.
    pub hsts_max_age_secs: Seconds<u64>,
}

impl Tls {
    pub fn enabled(&self) -> bool {
        self.cert_file != Path::new("") || self.key_file != Path::new("")
    }
}

/// The response cache for deterministic non-streaming requests (see `src/cache.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    pub enabled: bool,
    /// Checked positive only when the cache is enabled.
    pub ttl_secs: Seconds<u64>,
    pub max_entries: usize,
}

impl Server {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let tls = &self.tls;
        if tls.enabled() {
            for (key, path) in [
                ("server.tls.cert_file", &tls.cert_file),
                ("server.tls.key_file", &tls.key_file),
            ] {
                if path == Path::new("") {
                    return Err(ConfigError::new(
                        key,
                        "must be set when the other TLS file is (both or neither)",
                    ));
                }
                if !path.is_file() {
                    return Err(ConfigError::new(
                        key,
                        format!("{} is not a readable file", path.display()),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Cache {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled {
            positive("cache.ttl_secs", self.ttl_secs.get())?;
            positive("cache.max_entries", self.max_entries as u64)?;
        }
        Ok(())
    }
}
