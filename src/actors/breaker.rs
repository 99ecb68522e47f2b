//! The circuit breaker as a pure state machine: every transition takes `now`, so tests pass
//! time in instead of sleeping. Owned by one `BackendActor`; nothing else mutates it.
//!
//! closed --(K consecutive failures)--> open --(open_for elapsed)--> half-open
//! half-open --(probe succeeds)--> closed;  half-open --(probe fails)--> open

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open { until: Instant },
    HalfOpen,
}

impl BreakerState {
    pub fn name(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Breaker {
    state: BreakerState,
    consecutive_failures: u32,
    failure_threshold: u32,
    open_for: Duration,
}

impl Breaker {
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        Breaker {
            state: BreakerState::Closed,
            consecutive_failures: 0,
            failure_threshold: failure_threshold.max(1),
            open_for,
        }
    }

    /// A breaker rebuilt after a crash starts half-open: it knows nothing, so it lets one
    /// probe decide.
    pub fn restarted(failure_threshold: u32, open_for: Duration) -> Self {
        Breaker {
            state: BreakerState::HalfOpen,
            ..Breaker::new(failure_threshold, open_for)
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Moves open → half-open once the open period is over. Returns true if it changed.
    pub fn poll(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                true
            }
            _ => false,
        }
    }

    /// A request to the target succeeded. Returns true if the state changed.
    pub fn on_success(&mut self, now: Instant) -> bool {
        self.poll(now);
        self.consecutive_failures = 0;
        match self.state {
            BreakerState::Closed => false,
            // A late success from before the breaker opened does not close it; only the
            // half-open probe does.
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen => {
                self.state = BreakerState::Closed;
                true
            }
        }
    }

    /// A request to the target failed (connection error, 5xx, timeout). Returns true if the
    /// state changed.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        self.poll(now);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        match self.state {
            BreakerState::Closed if self.consecutive_failures >= self.failure_threshold => {
                self.state = BreakerState::Open {
                    until: now + self.open_for,
                };
                true
            }
            BreakerState::HalfOpen => {
                self.state = BreakerState::Open {
                    until: now + self.open_for,
                };
                true
            }
            _ => false,
        }
    }

    /// When the breaker next needs `poll` (the end of the open period).
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            BreakerState::Open { until } => Some(until),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Duration = Duration::from_secs(30);

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::new(5, OPEN);
        for i in 0..4 {
            assert!(!b.on_failure(t0), "failure {i} must not open it");
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.on_failure(t0));
        assert_eq!(b.state(), BreakerState::Open { until: t0 + OPEN });
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, OPEN);
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_success(t0);
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure(t0);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
    }

    #[test]
    fn half_open_after_the_open_period_then_probe_decides() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, OPEN);
        b.on_failure(t0);
        assert!(!b.poll(t0 + OPEN - Duration::from_millis(1)));
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        assert!(b.poll(t0 + OPEN));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // The probe fails: open again for a full period from now.
        let t1 = t0 + OPEN + Duration::from_secs(1);
        assert!(b.on_failure(t1));
        assert_eq!(b.state(), BreakerState::Open { until: t1 + OPEN });
        // Next probe succeeds: closed.
        assert!(b.poll(t1 + OPEN));
        assert!(b.on_success(t1 + OPEN));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn late_success_does_not_close_an_open_breaker() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, OPEN);
        b.on_failure(t0);
        assert!(!b.on_success(t0 + Duration::from_secs(1)));
        assert!(matches!(b.state(), BreakerState::Open { .. }));
    }

    #[test]
    fn restarted_breaker_is_half_open() {
        let b = Breaker::restarted(5, OPEN);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.next_deadline(), None);
    }
}
