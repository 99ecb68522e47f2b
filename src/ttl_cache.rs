//! A bounded concurrent cache whose entries expire: `quick_cache` keeps the bound (it
//! evicts by its own policy, S3-FIFO, when full) and the concurrency (sharded locks);
//! this adds a deadline per entry, checked against a `now` the caller passes, so an
//! injected clock (tests, the response cache) decides what has expired. An expired entry
//! is dropped when it is read, or evicted like any other when the cache is full.

use std::hash::Hash;
use std::time::Instant;

#[derive(Clone)]
struct Entry<V> {
    value: V,
    expires: Instant,
}

pub struct TtlCache<K, V> {
    inner: quick_cache::sync::Cache<K, Entry<V>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// At most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        TtlCache {
            inner: quick_cache::sync::Cache::new(capacity.max(1)),
        }
    }

    /// The value for `key` unless it has expired at `now`.
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        let entry = self.inner.get(key)?;
        if entry.expires > now {
            Some(entry.value)
        } else {
            self.inner.remove(key);
            None
        }
    }

    /// Stores `value` until `expires`, replacing any entry for `key`.
    pub fn insert(&self, key: K, value: V, expires: Instant) {
        self.inner.insert(key, Entry { value, expires });
    }

    pub fn clear(&self) {
        self.inner.clear();
    }

    /// Entries held, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_entry_lives_until_its_deadline_and_is_dropped_when_read_after() {
        let cache = TtlCache::new(8);
        let t0 = Instant::now();
        cache.insert("a", 1, t0 + Duration::from_secs(30));
        assert_eq!(cache.get(&"a", t0), Some(1));
        assert_eq!(cache.get(&"a", t0 + Duration::from_secs(29)), Some(1));
        assert_eq!(cache.get(&"a", t0 + Duration::from_secs(30)), None);
        assert!(cache.is_empty(), "the expired entry is gone once read");
    }

    #[test]
    fn the_bound_holds_whatever_is_inserted() {
        let cache = TtlCache::new(100);
        let later = Instant::now() + Duration::from_secs(60);
        for i in 0..10_000u32 {
            cache.insert(i, i, later);
        }
        assert!(cache.len() <= 100, "{}", cache.len());
        // The newest entries survive somewhere in the cache.
        assert!((9_900..10_000).any(|i| cache.get(&i, Instant::now()).is_some()));
    }
}
