//! Types of settings values that carry their own rules, so a bad value is refused while the
//! settings are read (the error naming its key, see `config_error_key`) and callers never
//! convert by hand: durations ([`Millis`], [`Seconds`]) and URLs ([`HttpUrl`],
//! [`SecureUrl`]).
//!
//! A duration's count is `NonZeroU64` (the default: 0 is refused, "must be greater than
//! 0") or `u64` where 0 means something (off, no wait, no grace).

use std::fmt;
use std::num::NonZeroU64;
use std::time::Duration;

use serde::Deserialize;

/// The count of a [`Millis`] or [`Seconds`]: `NonZeroU64` or `u64`.
pub trait Count: Copy {
    fn count(self) -> u64;
}

impl Count for u64 {
    fn count(self) -> u64 {
        self
    }
}

impl Count for NonZeroU64 {
    fn count(self) -> u64 {
        self.get()
    }
}

/// A positive count for constants and tests: `Seconds::new(nz(30))`. Panics on 0 (at
/// compile time in a `const`).
pub const fn nz(n: u64) -> NonZeroU64 {
    match NonZeroU64::new(n) {
        Some(n) => n,
        None => panic!("nz(0): the count must be greater than 0"),
    }
}

/// A `*_ms` setting: milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Millis<N = NonZeroU64>(N);

/// A `*_secs` setting: seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Seconds<N = NonZeroU64>(N);

impl<N> Millis<N> {
    pub const fn new(count: N) -> Self {
        Millis(count)
    }
}

impl<N: Count> Millis<N> {
    /// The number of milliseconds.
    pub fn get(self) -> u64 {
        self.0.count()
    }

    pub fn duration(self) -> Duration {
        Duration::from_millis(self.get())
    }
}

impl<N> Seconds<N> {
    pub const fn new(count: N) -> Self {
        Seconds(count)
    }
}

impl<N: Count> Seconds<N> {
    /// The number of seconds.
    pub fn get(self) -> u64 {
        self.0.count()
    }

    pub fn duration(self) -> Duration {
        Duration::from_secs(self.get())
    }
}

/// An http:// or https:// URL with a host ([`crate::fixtures::normalize_base_url`]'s
/// rule), kept as written: a base URL's callers append their paths to it, and a full URL
/// (a cluster's status URL) is requested as it is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HttpUrl(String);

impl HttpUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HttpUrl {
    type Error = String;

    fn try_from(url: String) -> Result<Self, String> {
        match crate::fixtures::normalize_base_url(&url) {
            Ok(_) => Ok(HttpUrl(url)),
            Err(_) => Err(format!("{url:?} must be an http:// or https:// URL")),
        }
    }
}

impl std::str::FromStr for HttpUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        HttpUrl::try_from(url.to_string())
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A URL credentials or tokens are sent to: https://, or plain http:// only on loopback
/// (`http://127.…`, `http://localhost…`), for tests and local identity providers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct SecureUrl(String);

impl SecureUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SecureUrl {
    type Error = String;

    fn try_from(url: String) -> Result<Self, String> {
        if url.starts_with("https://")
            || url.starts_with("http://127.")
            || url.starts_with("http://localhost")
        {
            Ok(SecureUrl(url))
        } else {
            Err(format!(
                "{url:?} must be an https:// URL (plain http only on loopback)"
            ))
        }
    }
}

impl std::str::FromStr for SecureUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        SecureUrl::try_from(url.to_string())
    }
}

impl fmt::Display for SecureUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_are_kept_as_written() {
        let url: HttpUrl = "http://h:1/api/v1/jobs".parse().unwrap();
        assert_eq!(url.as_str(), "http://h:1/api/v1/jobs");
        assert_eq!(url.to_string(), "http://h:1/api/v1/jobs");
        assert!("h:1".parse::<HttpUrl>().is_err());
        assert!("https://".parse::<HttpUrl>().is_err());
    }
}
