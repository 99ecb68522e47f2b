//! Types of settings values that carry their own rules, so a bad value is refused while the
//! settings are read (the error naming its key, see `config_error_key`) and callers never
//! convert by hand: durations ([`Millis`], [`Seconds`]) and URLs ([`HttpUrl`],
//! [`SecureUrl`], and [`empty_is_none`] for optional ones).
//!
//! A duration's count is `NonZeroU64` (the default: 0 is refused, "must be greater than
//! 0") or `u64` where 0 means something (off, no wait, no grace).

use std::fmt;
use std::num::NonZeroU64;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

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

/// A URL credentials or tokens are sent to: https://, or plain http:// only to a loopback
/// host (`127.0.0.0/8`, `[::1]`, `localhost`), for tests and local identity providers.
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
        let uri = url.parse::<actix_web::http::Uri>().ok();
        let host = uri
            .as_ref()
            .and_then(|u| u.host())
            .filter(|h| !h.is_empty());
        let secure = match (uri.as_ref().and_then(|u| u.scheme_str()), host) {
            (Some("https"), Some(_)) => true,
            (Some("http"), Some(host)) => on_loopback(host),
            _ => false,
        };
        if secure {
            Ok(SecureUrl(url))
        } else {
            Err(format!(
                "{url:?} must be an https:// URL (plain http only on loopback)"
            ))
        }
    }
}

/// `localhost`, or a loopback address (`127.0.0.0/8`, `[::1]`): the host part as parsed,
/// so `localhost.example.org` or `localhost@example.org` is not.
fn on_loopback(host: &str) -> bool {
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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

/// For `#[serde(deserialize_with = "empty_is_none")]` on an optional URL: "" (in a file
/// or the environment) is `None`, anything else must be a valid `T`.
pub(super) fn empty_is_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<String>,
    T::Error: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    if text.is_empty() {
        return Ok(None);
    }
    T::try_from(text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::super::Settings;
    use super::*;

    type Env<'a> = &'a [(&'a str, &'a str)];

    fn load(pairs: Env<'_>) -> Result<Settings, super::super::ConfigError> {
        let env = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(None, None, env)
    }

    #[test]
    fn durations_are_read_in_their_unit() {
        let s = load(&[]).unwrap();
        assert_eq!(s.upstream.connect_timeout_ms.get(), 5000);
        assert_eq!(
            s.upstream.connect_timeout_ms.duration(),
            Duration::from_secs(5)
        );
        assert_eq!(
            s.upstream.response_timeout_secs.duration(),
            Duration::from_secs(600)
        );
        assert_eq!(
            s.upstream.retry_backoff_ms.duration(),
            Duration::from_millis(25)
        );
        assert_eq!(s.batches.lease_secs.duration(), Duration::from_secs(30));
        assert_eq!(Millis::new(nz(7)).duration(), Duration::from_millis(7));
        assert_eq!(Seconds::new(0).duration(), Duration::ZERO);
    }

    /// Where the defaults' comments give 0 a meaning (off, no wait, no grace), it is kept.
    #[test]
    fn a_zero_that_means_something_is_accepted() {
        let s = load(&[
            ("GATEWAY__SERVER__KEEP_ALIVE_SECS", "0"),
            ("GATEWAY__SERVER__SHUTDOWN_GRACE_SECS", "0"),
            ("GATEWAY__SERVER__TLS__HSTS_MAX_AGE_SECS", "0"),
            ("GATEWAY__UPSTREAM__POOL_IDLE_SECS", "0"),
            ("GATEWAY__UPSTREAM__RETRY_BACKOFF_MS", "0"),
            ("GATEWAY__QUOTAS__QUEUE_TIMEOUT_MS", "0"),
            ("GATEWAY__COLD_START__DEBOUNCE_SECS", "0"),
            ("GATEWAY__GLOBUS_COMPUTE__STATUS_CACHE_SECS", "0"),
            ("GATEWAY__GLOBUS_COMPUTE__START_WINDOW_SECS", "0"),
            ("GATEWAY__STREAMING__DONE_GRACE_MS", "0"),
            ("GATEWAY__AUTH__OIDC__LEEWAY_SECS", "0"),
            ("GATEWAY__AUTH__GLOBUS__FAILURE_CACHE_SECS", "0"),
            // Checked positive only when their section is on.
            ("GATEWAY__CACHE__ENABLED", "false"),
            ("GATEWAY__CACHE__TTL_SECS", "0"),
            ("GATEWAY__AUTH__OIDC__JWKS_REFRESH_SECS", "0"),
            ("GATEWAY__AUTH__GLOBUS__CACHE_SECS", "0"),
            ("GATEWAY__AUTH__GLOBUS__TIMEOUT_MS", "0"),
        ])
        .unwrap();
        assert_eq!(s.quotas.queue_timeout_ms.duration(), Duration::ZERO);
        assert_eq!(s.server.shutdown_grace_secs.get(), 0);
        assert_eq!(s.streaming.done_grace_ms.get(), 0);
    }

    /// ...and refused, naming the key, where the section using it is on.
    #[test]
    fn a_zero_in_a_section_that_is_on_names_its_key() {
        let globus = [
            ("GATEWAY__AUTH__GLOBUS__ENABLED", "true"),
            ("GATEWAY__AUTH__GLOBUS__CLIENT_ID", "client"),
        ];
        let oidc = [
            ("GATEWAY__AUTH__OIDC__ENABLED", "true"),
            (
                "GATEWAY__AUTH__OIDC__JWKS_URL",
                "https://idp.example.org/jwks",
            ),
            ("GATEWAY__AUTH__OIDC__ISSUER", "https://idp.example.org"),
        ];
        for (section, var, key) in [
            (
                &globus[..],
                "GATEWAY__AUTH__GLOBUS__CACHE_SECS",
                "auth.globus.cache_secs",
            ),
            (
                &globus[..],
                "GATEWAY__AUTH__GLOBUS__TIMEOUT_MS",
                "auth.globus.timeout_ms",
            ),
            (
                &oidc[..],
                "GATEWAY__AUTH__OIDC__JWKS_REFRESH_SECS",
                "auth.oidc.jwks_refresh_secs",
            ),
            (&[][..], "GATEWAY__CACHE__TTL_SECS", "cache.ttl_secs"),
        ] {
            let mut pairs = section.to_vec();
            pairs.push((var, "0"));
            let err = load(&pairs).unwrap_err();
            assert_eq!(err.key, key, "{var}: {err}");
            assert_eq!(err.message, "must be greater than 0");
        }
    }

    #[test]
    fn a_bad_url_is_refused_naming_its_key() {
        let globus_on = [
            ("GATEWAY__AUTH__GLOBUS__ENABLED", "true"),
            ("GATEWAY__AUTH__GLOBUS__CLIENT_ID", "client"),
        ];
        let cases: &[(Env<'_>, &str, &str)] = &[
            (
                &[("GATEWAY__GLOBUS_COMPUTE__AUTH_BASE", "ftp://x")],
                "globus_compute.auth_base",
                "\"ftp://x\" must be an http:// or https:// URL",
            ),
            (
                &[("GATEWAY__GLOBUS_COMPUTE__COMPUTE_BASE", "http:///v2")],
                "globus_compute.compute_base",
                "\"http:///v2\" must be an http:// or https:// URL",
            ),
            (
                &[("GATEWAY__STREAMING__CALLBACK_BASE_URL", "gw.example.org")],
                "streaming.callback_base_url",
                "\"gw.example.org\" must be an http:// or https:// URL",
            ),
            (
                &[
                    ("GATEWAY__CLUSTERS__X__SCHEDULER", "http"),
                    ("GATEWAY__CLUSTERS__X__URL", "ftp://x"),
                ],
                "clusters.x.url",
                "\"ftp://x\" must be an http:// or https:// URL",
            ),
            (
                &[
                    globus_on[0],
                    globus_on[1],
                    ("GATEWAY__AUTH__GLOBUS__AUTH_BASE", "http://example.org"),
                ],
                "auth.globus.auth_base",
                "\"http://example.org\" must be an https:// URL (plain http only on loopback)",
            ),
            (
                &[
                    globus_on[0],
                    globus_on[1],
                    ("GATEWAY__AUTH__GLOBUS__GROUPS_BASE", "groups.example.org"),
                ],
                "auth.globus.groups_base",
                "\"groups.example.org\" must be an https:// URL (plain http only on loopback)",
            ),
            (
                &[
                    ("GATEWAY__AUTH__OIDC__ENABLED", "true"),
                    ("GATEWAY__AUTH__OIDC__JWKS_URL", "http://idp.example.org/jwks"),
                ],
                "auth.oidc.jwks_url",
                "\"http://idp.example.org/jwks\" must be an https:// URL (plain http only on loopback)",
            ),
            // The key is the config crate's, whatever the refused value holds.
            (
                &[("GATEWAY__GLOBUS_COMPUTE__AUTH_BASE", "ftp://x for key `y`")],
                "globus_compute.auth_base",
                "\"ftp://x for key `y`\" must be an http:// or https:// URL",
            ),
        ];
        for (pairs, key, message) in cases {
            let err = load(pairs).unwrap_err();
            assert_eq!(err.key, *key, "{pairs:?}: {err}");
            assert_eq!(err.message, *message, "{pairs:?}");
        }
    }

    /// A required URL left "" is refused by the check of its section.
    #[test]
    fn a_required_url_left_empty_names_its_key() {
        for (pairs, key) in [
            (
                &[
                    ("GATEWAY__AUTH__OIDC__ENABLED", "true"),
                    ("GATEWAY__AUTH__OIDC__ISSUER", "https://idp.example.org"),
                ][..],
                "auth.oidc.jwks_url",
            ),
            (
                &[("GATEWAY__CLUSTERS__X__SCHEDULER", "http")][..],
                "clusters.x.url",
            ),
            (
                &[
                    ("GATEWAY__CLUSTERS__X__SCHEDULER", "http"),
                    ("GATEWAY__CLUSTERS__X__URL", ""),
                ][..],
                "clusters.x.url",
            ),
        ] {
            let err = load(pairs).unwrap_err();
            assert_eq!(err.key, key, "{pairs:?}: {err}");
        }
    }

    #[test]
    fn secure_urls_are_https_or_plain_http_on_loopback() {
        for ok in [
            "https://auth.globus.org",
            "http://127.0.0.1:9000",
            "http://127.0.0.1:9000/jwks",
            "http://localhost:8080/.well-known/jwks.json",
            "http://localhost",
            "http://[::1]:80/keys",
            "http://127.1.2.3",
        ] {
            assert_eq!(ok.parse::<SecureUrl>().unwrap().as_str(), ok);
        }
        // Plain http to a host whose name only starts like a loopback one would send
        // credentials across the network in clear.
        for bad in [
            "http://example.org",
            "http://10.0.0.1",
            "http://localhost.example.org/jwks",
            "http://127.0.0.1.nip.io/jwks",
            "http://localhost@example.org/",
            "http://127.0.0.1:9000@example.org/",
            "https://",
            "ftp://h",
            "",
        ] {
            assert!(bad.parse::<SecureUrl>().is_err(), "{bad}");
        }
        let s = load(&[
            ("GATEWAY__AUTH__GLOBUS__ENABLED", "true"),
            ("GATEWAY__AUTH__GLOBUS__CLIENT_ID", "client"),
            ("GATEWAY__AUTH__GLOBUS__AUTH_BASE", "http://127.0.0.1:9000"),
            (
                "GATEWAY__AUTH__GLOBUS__GROUPS_BASE",
                "http://localhost:9001/",
            ),
            (
                "GATEWAY__AUTH__OIDC__JWKS_URL",
                "http://127.0.0.1:9002/jwks",
            ),
        ])
        .unwrap();
        assert_eq!(s.auth.globus.auth_base.as_str(), "http://127.0.0.1:9000");
        assert_eq!(
            s.auth.globus.groups_base.to_string(),
            "http://localhost:9001/"
        );
        assert_eq!(
            s.auth.oidc.jwks_url.map(|u| u.to_string()).as_deref(),
            Some("http://127.0.0.1:9002/jwks")
        );
    }

    #[test]
    fn an_empty_optional_url_is_none() {
        let s = load(&[]).unwrap();
        assert_eq!(s.streaming.callback_base_url, None);
        assert_eq!(s.auth.oidc.jwks_url, None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        std::fs::write(
            &path,
            "[streaming]\ncallback_base_url = \"https://gw.example.org:8443/\"\n\
             [clusters.sophia]\nscheduler = \"http\"\nurl = \"https://first/resource_server/sophia/jobs\"\n\
             [clusters.polaris]\nurl = \"\"\n",
        )
        .unwrap();
        let s = Settings::load_from(Some(&path), None, Vec::new()).unwrap();
        // Kept as written: callers add their paths to a base, and request a full URL as is.
        assert_eq!(
            s.streaming.callback_base_url.as_ref().map(HttpUrl::as_str),
            Some("https://gw.example.org:8443/")
        );
        assert_eq!(
            s.clusters["sophia"].url.as_ref().map(HttpUrl::as_str),
            Some("https://first/resource_server/sophia/jobs")
        );
        assert_eq!(s.clusters["polaris"].url, None);
        // The environment's "" turns the file's URL off.
        let s = Settings::load_from(
            Some(&path),
            None,
            vec![(
                "GATEWAY__STREAMING__CALLBACK_BASE_URL".into(),
                String::new(),
            )],
        )
        .unwrap();
        assert_eq!(s.streaming.callback_base_url, None);
    }

    #[test]
    fn http_urls_are_kept_as_written() {
        let url: HttpUrl = "http://h:1/api/v1/jobs".parse().unwrap();
        assert_eq!(url.as_str(), "http://h:1/api/v1/jobs");
        assert_eq!(url.to_string(), "http://h:1/api/v1/jobs");
        assert!("h:1".parse::<HttpUrl>().is_err());
        assert!("https://".parse::<HttpUrl>().is_err());
    }
}
