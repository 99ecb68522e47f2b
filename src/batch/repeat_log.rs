//! Repeated errors logged at most once per interval, with how many were left out: a batch
//! that fails the same way in a loop must not flood the log.

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct RepeatLog {
    every: Duration,
    seen: HashMap<String, (Instant, u64)>,
}

impl RepeatLog {
    pub fn new(every: Duration) -> RepeatLog {
        RepeatLog {
            every,
            seen: HashMap::new(),
        }
    }

    /// `Some(n)`: log `key` now, `n` occurrences were left out since it was last logged.
    /// `None`: it was logged less than an interval ago (this one is counted).
    pub fn check(&mut self, key: &str, now: Instant) -> Option<u64> {
        if self.seen.len() > 10_000 {
            let every = self.every;
            self.seen
                .retain(|_, (at, _)| now.duration_since(*at) < every);
        }
        match self.seen.get_mut(key) {
            Some((at, left_out)) if now.duration_since(*at) < self.every => {
                *left_out += 1;
                None
            }
            Some((at, left_out)) => {
                let n = *left_out;
                *at = now;
                *left_out = 0;
                Some(n)
            }
            None => {
                self.seen.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_interval_with_a_count() {
        let mut log = RepeatLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.check("a", t0), Some(0));
        for i in 1..=1400 {
            assert_eq!(log.check("a", t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.check("b", t0), Some(0), "another error is its own");
        assert_eq!(log.check("a", t0 + Duration::from_secs(10)), Some(1400));
        assert_eq!(log.check("a", t0 + Duration::from_secs(11)), None);
    }
}
