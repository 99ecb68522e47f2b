//! One subject's live quota state, shared by the handlers (which decide with it under a
//! short lock, never a message) and its `QuotaActor` (which loads, flushes and retires
//! it). The in-flight cap is an atomic with a `Notify` for waiters; the [`Permit`] gives
//! its slot back on drop (response end, client gone, panic alike).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, OnceCell};

use super::limits::{Limits, Subject};
use super::math::{TokenBucket, Window, WindowCount};

/// Why a subject refuses a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    /// `insufficient_quota` (a day or month budget) rather than `rate_limit_exceeded`.
    pub quota: bool,
    pub retry_after_ms: i64,
    pub message: String,
}

/// Usage counted but not yet written to the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    pub day: WindowCount,
    pub month: WindowCount,
}

#[derive(Debug)]
struct Inner {
    limits: Limits,
    bucket: TokenBucket,
    minute: WindowCount,
    day: WindowCount,
    month: WindowCount,
    pending: Pending,
}

#[derive(Debug)]
pub struct SubjectState {
    pub subject: Subject,
    inner: Mutex<Inner>,
    in_flight: AtomicU64,
    released: Notify,
    batches: AtomicU64,
    last_used_ms: AtomicI64,
    /// Set once persisted counters and the override were loaded.
    pub(super) loaded: OnceCell<()>,
}

/// What `/admin/quotas` and the rate-limit headers show of a subject.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub limits: Limits,
    pub in_flight: u64,
    pub batches: u64,
    pub minute: WindowCount,
    pub day: WindowCount,
    pub month: WindowCount,
    pub bucket_available: f64,
}

impl SubjectState {
    pub fn new(subject: Subject, limits: Limits, now_ms: i64) -> SubjectState {
        let mut minute = WindowCount::default();
        let mut day = WindowCount::default();
        let mut month = WindowCount::default();
        minute.roll(Window::Minute, now_ms);
        day.roll(Window::Day, now_ms);
        month.roll(Window::Month, now_ms);
        SubjectState {
            subject,
            inner: Mutex::new(Inner {
                limits,
                bucket: TokenBucket::full(limits.burst, now_ms),
                minute,
                day,
                month,
                pending: Pending { day, month },
            }),
            in_flight: AtomicU64::new(0),
            released: Notify::new(),
            batches: AtomicU64::new(0),
            last_used_ms: AtomicI64::new(now_ms),
            loaded: OnceCell::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves consistent numbers (plain counters), so a
        // poisoned lock is used as it is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn roll(inner: &mut Inner, now_ms: i64) {
        inner.minute.roll(Window::Minute, now_ms);
        inner.day.roll(Window::Day, now_ms);
        inner.month.roll(Window::Month, now_ms);
    }

    pub fn limits(&self) -> Limits {
        self.lock().limits
    }

    /// Applies new limits at once (an admin override). A shrunk burst trims the bucket.
    pub fn set_limits(&self, limits: Limits) {
        let mut inner = self.lock();
        inner.limits = limits;
        inner.bucket.tokens = inner.bucket.tokens.min(limits.burst as f64);
        drop(inner);
        // A raised in-flight cap may free waiters.
        self.released.notify_waiters();
    }

    /// Adds counters loaded from the database (or Redis) for the current windows.
    pub fn add_loaded(&self, day: WindowCount, month: WindowCount, now_ms: i64) {
        let mut inner = self.lock();
        Self::roll(&mut inner, now_ms);
        if day.start == inner.day.start {
            inner.day.requests += day.requests;
            inner.day.tokens += day.tokens;
        }
        if month.start == inner.month.start {
            inner.month.requests += month.requests;
            inner.month.tokens += month.tokens;
        }
    }

    /// Forgets every count (an admin reset); the bucket is full again.
    pub fn reset(&self, now_ms: i64) {
        let mut inner = self.lock();
        let burst = inner.limits.burst;
        inner.bucket = TokenBucket::full(burst, now_ms);
        inner.minute = WindowCount::default();
        inner.day = WindowCount::default();
        inner.month = WindowCount::default();
        Self::roll(&mut inner, now_ms);
        inner.pending = Pending {
            day: inner.day,
            month: inner.month,
        };
    }

    /// The budgets (minute, day, month) and the token bucket: takes one request from the
    /// bucket, or refuses. Nothing is counted yet ([`SubjectState::count_request`]).
    pub fn check(&self, now_ms: i64) -> Result<(), Denial> {
        self.last_used_ms.store(now_ms, Ordering::Relaxed);
        let mut inner = self.lock();
        Self::roll(&mut inner, now_ms);
        let l = inner.limits;
        let who = &self.subject;
        if l.requests_per_day > 0 && inner.day.requests >= l.requests_per_day {
            return Err(Denial {
                quota: true,
                retry_after_ms: Window::Day.remaining_ms(now_ms),
                message: format!(
                    "Daily request quota of {} for {who} is used up; it resets at 00:00 UTC.",
                    l.requests_per_day
                ),
            });
        }
        if l.tokens_per_day > 0 && inner.day.tokens >= l.tokens_per_day {
            return Err(Denial {
                quota: true,
                retry_after_ms: Window::Day.remaining_ms(now_ms),
                message: format!(
                    "Daily token quota of {} for {who} is used up; it resets at 00:00 UTC.",
                    l.tokens_per_day
                ),
            });
        }
        if l.tokens_per_month > 0 && inner.month.tokens >= l.tokens_per_month {
            return Err(Denial {
                quota: true,
                retry_after_ms: Window::Month.remaining_ms(now_ms),
                message: format!(
                    "Monthly token quota of {} for {who} is used up; it resets on the 1st (UTC).",
                    l.tokens_per_month
                ),
            });
        }
        if l.tokens_per_minute > 0 && inner.minute.tokens >= l.tokens_per_minute {
            return Err(Denial {
                quota: false,
                retry_after_ms: Window::Minute.remaining_ms(now_ms),
                message: format!(
                    "Rate limit of {} tokens per minute for {who} reached; try again shortly.",
                    l.tokens_per_minute
                ),
            });
        }
        inner
            .bucket
            .take(now_ms, l.requests_per_second, l.burst)
            .map_err(|retry_after_ms| Denial {
                quota: false,
                retry_after_ms,
                message: format!(
                    "Rate limit of {} requests per second for {who} reached; try again shortly.",
                    l.requests_per_second
                ),
            })
    }

    /// Gives back the bucket's request after a later check refused the request.
    pub fn refund(&self) {
        let mut inner = self.lock();
        let burst = inner.limits.burst;
        if inner.limits.requests_per_second > 0.0 {
            inner.bucket.refund(burst);
        }
    }

    /// Counts one admitted request in every window.
    pub fn count_request(&self, now_ms: i64) {
        self.add(now_ms, 1, 0);
    }

    /// Charges tokens of a finished request.
    pub fn charge_tokens(&self, now_ms: i64, tokens: u64) {
        if tokens > 0 {
            self.add(now_ms, 0, tokens);
        }
    }

    fn add(&self, now_ms: i64, requests: u64, tokens: u64) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        Self::roll(inner, now_ms);
        for w in [&mut inner.minute, &mut inner.day, &mut inner.month] {
            w.requests += requests;
            w.tokens += tokens;
        }
        let (day, month) = (inner.day.start, inner.month.start);
        for (p, start, window) in [
            (&mut inner.pending.day, day, Window::Day),
            (&mut inner.pending.month, month, Window::Month),
        ] {
            // Unflushed counts of a past window are dropped here only if a flush never
            // came for a whole window (flushes run every second or so).
            p.roll(window, start);
            p.requests += requests;
            p.tokens += tokens;
        }
    }

    /// Takes the counts not yet written (the flush); [`SubjectState::restore_pending`]
    /// puts them back when the write failed.
    pub fn take_pending(&self) -> Pending {
        let mut inner = self.lock();
        let taken = inner.pending;
        inner.pending.day.requests = 0;
        inner.pending.day.tokens = 0;
        inner.pending.month.requests = 0;
        inner.pending.month.tokens = 0;
        taken
    }

    pub fn restore_pending(&self, p: Pending) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        for (mine, theirs) in [
            (&mut inner.pending.day, p.day),
            (&mut inner.pending.month, p.month),
        ] {
            if mine.start == theirs.start {
                mine.requests += theirs.requests;
                mine.tokens += theirs.tokens;
            }
        }
    }

    pub fn snapshot(&self, now_ms: i64) -> Snapshot {
        let mut inner = self.lock();
        Self::roll(&mut inner, now_ms);
        let l = inner.limits;
        Snapshot {
            limits: l,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            minute: inner.minute,
            day: inner.day,
            month: inner.month,
            bucket_available: inner
                .bucket
                .available(now_ms, l.requests_per_second, l.burst),
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn last_used_ms(&self) -> i64 {
        self.last_used_ms.load(Ordering::Relaxed)
    }

    /// Something still holds a slot or a batch (the subject is not idle).
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0 || self.batches.load(Ordering::Acquire) > 0
    }

    fn try_slot(&self, cap: u64) -> bool {
        if cap == 0 {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    /// An in-flight slot, waiting up to `wait` for one to free up.
    pub async fn acquire(self: &Arc<Self>, wait: Duration) -> Option<Permit> {
        let cap = self.lock().limits.max_in_flight;
        if self.try_slot(cap) {
            return Some(Permit(Arc::clone(self)));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            // Registered before the re-check, so a release in between is not missed.
            notified.as_mut().enable();
            let cap = self.lock().limits.max_in_flight;
            if self.try_slot(cap) {
                return Some(Permit(Arc::clone(self)));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Starts a batch if the subject has fewer than `max_batches` active (0 = no limit).
    /// The guard ends it on drop.
    pub fn try_start_batch(self: &Arc<Self>) -> Option<BatchGuard> {
        let cap = self.lock().limits.max_batches;
        let ok = self
            .batches
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (cap == 0 || n < cap).then_some(n + 1)
            })
            .is_ok();
        ok.then(|| BatchGuard(Arc::clone(self)))
    }

    pub fn active_batches(&self) -> u64 {
        self.batches.load(Ordering::Acquire)
    }
}

/// An in-flight slot of one subject, given back on drop.
#[derive(Debug)]
pub struct Permit(Arc<SubjectState>);

impl Permit {
    pub fn state(&self) -> &Arc<SubjectState> {
        &self.0
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.released.notify_one();
    }
}

/// One active batch of a subject (`MAX_BATCHES_PER_USER`); ends it on drop.
#[derive(Debug)]
pub struct BatchGuard(Arc<SubjectState>);

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.0.batches.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::super::limits::Kind;
    use super::*;

    const NOW: i64 = 1_795_441_530_250;

    fn limits() -> Limits {
        Limits {
            requests_per_second: 0.0,
            burst: 0,
            max_in_flight: 0,
            tokens_per_minute: 0,
            requests_per_day: 0,
            tokens_per_day: 0,
            tokens_per_month: 0,
            max_batches: 0,
        }
    }

    fn state(l: Limits) -> Arc<SubjectState> {
        Arc::new(SubjectState::new(Subject::new(Kind::User, "u"), l, NOW))
    }

    #[test]
    fn day_budget_refuses_until_midnight_utc() {
        let s = state(Limits {
            requests_per_day: 2,
            ..limits()
        });
        for _ in 0..2 {
            s.check(NOW).unwrap();
            s.count_request(NOW);
        }
        let d = s.check(NOW).unwrap_err();
        assert!(d.quota);
        assert_eq!(d.retry_after_ms, Window::Day.remaining_ms(NOW));
        // Next day: open again.
        s.check(Window::Day.end(NOW)).unwrap();
    }

    #[test]
    fn tokens_are_charged_after_and_checked_before() {
        let s = state(Limits {
            tokens_per_minute: 100,
            tokens_per_month: 1000,
            ..limits()
        });
        s.check(NOW).unwrap();
        s.charge_tokens(NOW, 100);
        let d = s.check(NOW).unwrap_err();
        assert!(!d.quota, "per-minute is a rate limit");
        assert_eq!(d.retry_after_ms, Window::Minute.remaining_ms(NOW));
        let next_minute = Window::Minute.end(NOW);
        s.check(next_minute).unwrap();
        s.charge_tokens(next_minute, 950);
        let d = s.check(next_minute + 60_000).unwrap_err();
        assert!(d.quota, "the month budget is a quota");
    }

    #[test]
    fn pending_counts_flush_once_and_come_back_on_failure() {
        let s = state(limits());
        s.count_request(NOW);
        s.charge_tokens(NOW, 40);
        let p = s.take_pending();
        assert_eq!((p.day.requests, p.day.tokens), (1, 40));
        assert_eq!((p.month.requests, p.month.tokens), (1, 40));
        assert_eq!(s.take_pending().day.tokens, 0);
        s.restore_pending(p);
        assert_eq!(s.take_pending().day.tokens, 40);
        // Loaded counts add to the live ones but are not written again.
        s.add_loaded(
            WindowCount {
                start: Window::Day.start(NOW),
                requests: 10,
                tokens: 500,
            },
            WindowCount::default(),
            NOW,
        );
        let snap = s.snapshot(NOW);
        assert_eq!((snap.day.requests, snap.day.tokens), (11, 540));
        assert_eq!(s.take_pending().day.tokens, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_cap_waits_then_gives_up() {
        let s = state(Limits {
            max_in_flight: 1,
            ..limits()
        });
        let first = s.acquire(Duration::ZERO).await.unwrap();
        let t0 = tokio::time::Instant::now();
        assert!(s.acquire(Duration::from_secs(2)).await.is_none());
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        // A waiter gets the slot as soon as it is released.
        let s2 = Arc::clone(&s);
        let waiter = tokio::spawn(async move { s2.acquire(Duration::from_secs(2)).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(first);
        let second = waiter.await.unwrap().unwrap();
        assert_eq!(s.in_flight(), 1);
        drop(second);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn batches_are_capped_and_released_on_drop() {
        let s = state(Limits {
            max_batches: 2,
            ..limits()
        });
        let a = s.try_start_batch().unwrap();
        let _b = s.try_start_batch().unwrap();
        assert!(s.try_start_batch().is_none());
        assert!(s.busy());
        drop(a);
        assert!(s.try_start_batch().is_some());
        let open = state(limits());
        let guards: Vec<_> = (0..50).filter_map(|_| open.try_start_batch()).collect();
        assert_eq!(guards.len(), 50);
    }
}
