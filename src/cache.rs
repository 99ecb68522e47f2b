//! The response cache for identical deterministic non-streaming requests: a request is
//! cacheable when it does not stream and either asks for `temperature: 0` explicitly or
//! carries `x-cache: on` (`x-cache: off` always bypasses). Only whole 2xx JSON answers are
//! stored, by the relay once the body is complete and valid.
//!
//! Keys are SHA-256 over (tenant, route, pinned cluster/framework, model, exact body
//! bytes), so tenants never see each other's answers. Entries live `cache.ttl_secs` (on
//! the gateway's clock) and there are at most `cache.max_entries`, in a [`TtlCache`]
//! every worker shares without a cross-thread message.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::ttl_cache::TtlCache;

/// Request header (`on`/`off`) and response header (`hit`/`miss`).
pub const HEADER: &str = "x-cache";
/// [`HEADER`] as a name built once.
pub static HEADER_NAME: actix_web::http::header::HeaderName =
    actix_web::http::header::HeaderName::from_static(HEADER);

pub type CacheKey = [u8; 32];

/// A stored answer: its status, content type and body bytes, returned as they were.
#[derive(Debug)]
pub struct Cached {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
}

pub struct ResponseCache {
    entries: TtlCache<CacheKey, Arc<Cached>>,
    ttl: Duration,
    enabled: bool,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// `gateway_cache_requests_total{result}` handles, looked up once.
    hits: prometheus::IntCounter,
    misses: prometheus::IntCounter,
    bypasses: prometheus::IntCounter,
}

/// What the request asked of the cache (from `x-cache` and the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// `x-cache: on`: cache whatever the sampling settings.
    On,
    /// `x-cache: off`: never.
    Off,
    /// No header: cache only when `temperature` is explicitly 0.
    Auto,
}

impl CacheMode {
    pub fn from_header(value: Option<&[u8]>) -> CacheMode {
        match value.map(|v| v.trim_ascii()) {
            Some(v) if v.eq_ignore_ascii_case(b"on") => CacheMode::On,
            Some(v) if v.eq_ignore_ascii_case(b"off") => CacheMode::Off,
            _ => CacheMode::Auto,
        }
    }

    /// Whether a request is cacheable at all.
    pub fn cacheable(self, stream: bool, temperature: Option<f64>) -> bool {
        !stream
            && match self {
                CacheMode::On => true,
                CacheMode::Off => false,
                CacheMode::Auto => temperature == Some(0.0),
            }
    }
}

/// The key of one request.
pub fn key(
    tenant: &str,
    route: &str,
    pin: Option<(&str, &str)>,
    model: &str,
    body: &[u8],
) -> CacheKey {
    let mut h = Sha256::new();
    for part in [
        tenant,
        route,
        pin.map_or("", |p| p.0),
        pin.map_or("", |p| p.1),
        model,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update(body);
    h.finalize().into()
}

impl ResponseCache {
    pub fn new(
        settings: &crate::config::Cache,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> ResponseCache {
        ResponseCache {
            entries: TtlCache::new(if settings.enabled {
                settings.max_entries
            } else {
                1
            }),
            ttl: settings.ttl_secs.duration(),
            enabled: settings.enabled && settings.max_entries > 0,
            clock,
            hits: metrics.cache.with_label_values(&["hit"]),
            misses: metrics.cache.with_label_values(&["miss"]),
            bypasses: metrics.cache.with_label_values(&["bypass"]),
            metrics,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The live entry for `key`, counting a hit or a miss.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<Cached>> {
        let found = self.entries.get(key, self.clock.now());
        if found.is_some() {
            self.hits.inc()
        } else {
            self.misses.inc();
            self.publish_len();
        }
        found
    }

    /// Counts a request that could not use the cache.
    pub fn bypass(&self) {
        self.bypasses.inc();
    }

    /// Stores an answer (the cache evicts beyond its bound).
    pub fn insert(&self, key: CacheKey, status: u16, content_type: String, body: Bytes) {
        let entry = Arc::new(Cached {
            status,
            content_type,
            body,
        });
        self.entries.insert(key, entry, self.clock.now() + self.ttl);
        self.publish_len();
    }

    fn publish_len(&self) {
        self.metrics
            .cache_entries
            .set(i64::try_from(self.entries.len()).unwrap_or(i64::MAX));
    }

    /// Entries stored now (expired ones included until they are read or evicted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn cache(max: usize, clock: Arc<ManualClock>) -> (ResponseCache, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let settings = crate::config::Cache {
            enabled: true,
            ttl_secs: crate::config::Seconds::new(60),
            max_entries: max,
        };
        (
            ResponseCache::new(&settings, clock, Arc::clone(&metrics)),
            metrics,
        )
    }

    #[test]
    fn modes_decide_what_is_cacheable() {
        assert!(CacheMode::Auto.cacheable(false, Some(0.0)));
        assert!(!CacheMode::Auto.cacheable(false, None), "absent is not 0");
        assert!(!CacheMode::Auto.cacheable(false, Some(0.7)));
        assert!(!CacheMode::Auto.cacheable(true, Some(0.0)), "never streams");
        assert!(CacheMode::On.cacheable(false, Some(1.0)));
        assert!(!CacheMode::Off.cacheable(false, Some(0.0)));
        assert_eq!(CacheMode::from_header(Some(b" ON ")), CacheMode::On);
        assert_eq!(CacheMode::from_header(Some(b"off")), CacheMode::Off);
        assert_eq!(CacheMode::from_header(None), CacheMode::Auto);
    }

    #[test]
    fn keys_separate_tenants_routes_pins_and_bodies() {
        let k = key("a", "chat", None, "m", b"{}");
        assert_eq!(k, key("a", "chat", None, "m", b"{}"));
        assert_ne!(k, key("b", "chat", None, "m", b"{}"));
        assert_ne!(k, key("a", "completions", None, "m", b"{}"));
        assert_ne!(k, key("a", "chat", Some(("c", "f")), "m", b"{}"));
        assert_ne!(k, key("a", "chat", None, "m", b"{ }"));
        // Length-prefixed parts: moving a byte between fields changes the key.
        assert_ne!(
            key("ab", "c", None, "m", b""),
            key("a", "bc", None, "m", b"")
        );
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let clock = Arc::new(ManualClock::default());
        let (c, metrics) = cache(100, Arc::clone(&clock));
        let k = key("t", "chat", None, "m", b"x");
        assert!(c.get(&k).is_none());
        c.insert(k, 200, "application/json".into(), Bytes::from_static(b"{}"));
        assert_eq!(&c.get(&k).unwrap().body[..], b"{}");
        clock.advance(Duration::from_secs(59));
        assert!(c.get(&k).is_some());
        clock.advance(Duration::from_secs(1));
        assert!(c.get(&k).is_none(), "expired at 60 s");
        assert_eq!(metrics.cache.with_label_values(&["hit"]).get(), 2);
        assert_eq!(metrics.cache.with_label_values(&["miss"]).get(), 2);
        assert_eq!(metrics.cache_entries.get(), 0);
    }

    #[test]
    fn size_is_bounded_and_the_newest_is_kept() {
        let clock = Arc::new(ManualClock::default());
        let (c, metrics) = cache(32, Arc::clone(&clock));
        let keys: Vec<CacheKey> = (0..500u32)
            .map(|i| key("t", "chat", None, "m", &i.to_le_bytes()))
            .collect();
        for k in &keys {
            c.insert(*k, 200, "application/json".into(), Bytes::new());
            clock.advance(Duration::from_millis(1));
        }
        assert!(c.len() <= 32, "{} entries", c.len());
        assert_eq!(metrics.cache_entries.get() as usize, c.len());
        // The newest key is kept; most of the first ones are gone.
        assert!(c.get(keys.last().unwrap()).is_some());
        assert!(keys[..100].iter().filter(|k| c.get(k).is_some()).count() < 32);
    }
}
