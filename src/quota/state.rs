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

/// Redis mode: this replica's counts not yet pushed to Redis (the current windows), and
/// the requests it took from the shared bucket locally.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unsynced {
    pub minute: WindowCount,
    pub day: WindowCount,
    pub month: WindowCount,
    pub bucket_takes: u64,
}

impl Unsynced {
    pub fn is_empty(&self) -> bool {
        self.bucket_takes == 0
            && [self.minute, self.day, self.month]
                .iter()
                .all(|w| w.requests == 0 && w.tokens == 0)
    }
}

/// Redis mode: the shared totals a sync or a Redis admission read back (they include what
/// was pushed with it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Totals {
    pub minute: WindowCount,
    pub day: WindowCount,
    pub month: WindowCount,
    /// Requests left in the shared bucket (meaningless when requests_per_second is 0).
    pub bucket: f64,
    /// Replicas that synced recently, read by the periodic sync (`None` from a Redis
    /// admission: the last count stays, and so does the growth estimate).
    pub replicas: Option<u64>,
    /// Requests of the day's budget newly leased to this replica (its local allowance).
    pub grant: u64,
}

/// One push to Redis: the counts to add and, for a key Redis lost (restarted empty), the
/// value to start it from (what this replica last knew of the shared total).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Push {
    pub delta: Unsynced,
    pub seed: [WindowCount; 3],
    /// Leased requests used since the last push (counted in `delta` now, so released
    /// from the lease in Redis).
    pub lease_release: u64,
    /// Leased requests still unused after this push.
    pub lease_unused: u64,
    /// Replicas sharing the limits, as last heard; 0 asks for no new lease.
    pub replicas: u64,
}

/// How a subject's admission is decided in Redis mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// On this replica's view (embedded mode, far from the limits, or Redis down).
    Local,
    /// Near a limit (or not synced yet): one awaited script call decides and counts.
    Remote,
}

/// Redis-mode tuning, from `[quotas]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharedPolicy {
    pub near_fraction: f64,
    /// A view older than this is not trusted for local decisions.
    pub stale_ms: i64,
}

/// Redis mode: what the last sync said and what this replica may still decide alone.
#[derive(Debug, Clone, Copy, Default)]
struct Shared {
    unsynced: Unsynced,
    synced_at_ms: Option<i64>,
    /// Local admissions left against requests_per_day: the unused part of this replica's
    /// lease of the day's budget (granted by Redis, 1/2N of what was free, counted there
    /// so no other replica can spend it).
    allowance_requests: u64,
    /// The lease held in Redis (used and unused), and the day it belongs to.
    lease: u64,
    lease_day: i64,
    /// The same for the shared token bucket (a share of its level).
    allowance_bucket: u64,
    /// Tokens the whole cluster used in the last sync interval (day window).
    token_growth: u64,
    last_day_tokens: (i64, u64),
    replicas: u64,
}

#[derive(Debug)]
struct Inner {
    limits: Limits,
    bucket: TokenBucket,
    minute: WindowCount,
    day: WindowCount,
    month: WindowCount,
    pending: Pending,
    /// `Some` in Redis mode: then minute/day/month above are the view (last shared totals
    /// plus this replica's unsynced counts).
    shared: Option<Shared>,
}

/// Which limit a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    DayRequests,
    DayTokens,
    MonthTokens,
    MinuteTokens,
    Rate { retry_after_ms: i64 },
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
                shared: None,
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
        if let Some(shared) = inner.shared.as_mut() {
            // Allowances were sized for the old limits: decide in Redis until the next
            // sync, and give the whole lease back with the next push.
            shared.allowance_requests = 0;
            shared.allowance_bucket = 0;
        }
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
        if inner.shared.is_some() {
            inner.shared = Some(Shared::default());
        }
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

    /// Redis mode: the views of this state are shared totals from now on.
    pub fn enable_shared(&self) {
        let mut inner = self.lock();
        if inner.shared.is_none() {
            inner.shared = Some(Shared::default());
        }
    }

    pub fn is_shared(&self) -> bool {
        self.lock().shared.is_some()
    }

    /// The refusal for an exceeded limit.
    pub fn denial(&self, e: Exceeded, l: &Limits, now_ms: i64) -> Denial {
        let who = &self.subject;
        match e {
            Exceeded::DayRequests => Denial {
                quota: true,
                retry_after_ms: Window::Day.remaining_ms(now_ms),
                message: format!(
                    "Daily request quota of {} for {who} is used up; it resets at 00:00 UTC.",
                    l.requests_per_day
                ),
            },
            Exceeded::DayTokens => Denial {
                quota: true,
                retry_after_ms: Window::Day.remaining_ms(now_ms),
                message: format!(
                    "Daily token quota of {} for {who} is used up; it resets at 00:00 UTC.",
                    l.tokens_per_day
                ),
            },
            Exceeded::MonthTokens => Denial {
                quota: true,
                retry_after_ms: Window::Month.remaining_ms(now_ms),
                message: format!(
                    "Monthly token quota of {} for {who} is used up; it resets on the 1st (UTC).",
                    l.tokens_per_month
                ),
            },
            Exceeded::MinuteTokens => Denial {
                quota: false,
                retry_after_ms: Window::Minute.remaining_ms(now_ms),
                message: format!(
                    "Rate limit of {} tokens per minute for {who} reached; try again shortly.",
                    l.tokens_per_minute
                ),
            },
            Exceeded::Rate { retry_after_ms } => Denial {
                quota: false,
                retry_after_ms,
                message: format!(
                    "Rate limit of {} requests per second for {who} reached; try again shortly.",
                    l.requests_per_second
                ),
            },
        }
    }

    /// The budgets (minute, day, month) and the token bucket: takes one request from the
    /// bucket, or refuses. Nothing is counted yet ([`SubjectState::count_request`]).
    pub fn check(&self, now_ms: i64) -> Result<(), Denial> {
        self.check_shared(now_ms, None).map(|_| ())
    }

    /// [`SubjectState::check`], and in Redis mode (`policy` given while Redis is up) the
    /// route of the decision: local while this replica's allowances and margins last,
    /// remote (decided in Redis) near a limit. A local admission uses up allowance.
    pub fn check_shared(
        &self,
        now_ms: i64,
        policy: Option<&SharedPolicy>,
    ) -> Result<Route, Denial> {
        self.last_used_ms.store(now_ms, Ordering::Relaxed);
        let mut guard = self.lock();
        let inner = &mut *guard;
        Self::roll(inner, now_ms);
        let l = inner.limits;
        let exceeded = if l.requests_per_day > 0 && inner.day.requests >= l.requests_per_day {
            Some(Exceeded::DayRequests)
        } else if l.tokens_per_day > 0 && inner.day.tokens >= l.tokens_per_day {
            Some(Exceeded::DayTokens)
        } else if l.tokens_per_month > 0 && inner.month.tokens >= l.tokens_per_month {
            Some(Exceeded::MonthTokens)
        } else if l.tokens_per_minute > 0 && inner.minute.tokens >= l.tokens_per_minute {
            Some(Exceeded::MinuteTokens)
        } else {
            None
        };
        if let Some(e) = exceeded {
            drop(guard);
            return Err(self.denial(e, &l, now_ms));
        }
        // This replica alone never goes over the rate: its own bucket applies in every mode.
        if let Err(retry_after_ms) = inner.bucket.take(now_ms, l.requests_per_second, l.burst) {
            drop(guard);
            return Err(self.denial(Exceeded::Rate { retry_after_ms }, &l, now_ms));
        }
        let (Some(policy), Some(shared)) = (policy, inner.shared.as_mut()) else {
            return Ok(Route::Local);
        };
        let view = [inner.minute, inner.day, inner.month];
        if needs_remote(shared, &l, &view, policy, now_ms) {
            return Ok(Route::Remote);
        }
        if l.requests_per_day > 0 {
            shared.allowance_requests -= 1;
        }
        if l.requests_per_second > 0.0 {
            shared.allowance_bucket -= 1;
            shared.unsynced.bucket_takes += 1;
        }
        Ok(Route::Local)
    }

    /// Gives back the bucket's request after a later check refused the request (and, for
    /// a local decision in Redis mode, the allowance it used).
    pub fn refund(&self, route: Route) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let l = inner.limits;
        if l.requests_per_second > 0.0 {
            inner.bucket.refund(l.burst);
        }
        if let (Route::Local, Some(shared)) = (route, inner.shared.as_mut()) {
            if l.requests_per_day > 0 {
                shared.allowance_requests += 1;
            }
            if l.requests_per_second > 0.0 && shared.unsynced.bucket_takes > 0 {
                shared.allowance_bucket += 1;
                shared.unsynced.bucket_takes -= 1;
            }
        }
    }

    /// Counts one admitted request in every window. `in_redis`: Redis counted it already
    /// (a remote admission), so it is not pushed again.
    pub fn count_request(&self, now_ms: i64) {
        self.add(now_ms, 1, 0, false);
    }

    /// [`SubjectState::count_request`] after a remote admission.
    pub fn count_request_remote(&self, now_ms: i64, in_redis: bool) {
        self.add(now_ms, 1, 0, in_redis);
    }

    /// Charges tokens of a finished request.
    pub fn charge_tokens(&self, now_ms: i64, tokens: u64) {
        if tokens > 0 {
            self.add(now_ms, 0, tokens, false);
        }
    }

    fn add(&self, now_ms: i64, requests: u64, tokens: u64, in_redis: bool) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        Self::roll(inner, now_ms);
        for w in [&mut inner.minute, &mut inner.day, &mut inner.month] {
            w.requests += requests;
            w.tokens += tokens;
        }
        if let (Some(shared), false) = (inner.shared.as_mut(), in_redis) {
            let u = &mut shared.unsynced;
            for (d, v, window) in [
                (&mut u.minute, inner.minute.start, Window::Minute),
                (&mut u.day, inner.day.start, Window::Day),
                (&mut u.month, inner.month.start, Window::Month),
            ] {
                // Counts of a window that ended before they were pushed are dropped for
                // Redis (that window is over); the database still gets them.
                d.roll(window, v);
                d.requests += requests;
                d.tokens += tokens;
            }
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

    /// Redis mode: takes the counts to push now (current windows only) with the seeds for
    /// keys Redis lost; [`SubjectState::apply_totals`] or, when the push failed,
    /// [`SubjectState::restore_unsynced`] follows.
    pub fn take_push(&self, now_ms: i64, admitting: bool) -> Option<Push> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        Self::roll(inner, now_ms);
        let view = [inner.minute, inner.day, inner.month];
        let shared = inner.shared.as_mut()?;
        if shared.lease_day != view[1].start {
            // A lease of a past day: that key expires; nothing to release.
            shared.lease = 0;
            shared.allowance_requests = 0;
            shared.lease_day = view[1].start;
        }
        let used = shared.lease.saturating_sub(shared.allowance_requests);
        if shared.lease > 0 && used == 0 {
            // Unused since the last push: give it all back (others may need it).
            shared.allowance_requests = 0;
        }
        let lease_release = shared.lease.saturating_sub(shared.allowance_requests);
        shared.lease -= lease_release;
        let lease_unused = shared.allowance_requests;
        // A new share only for a subject that is spending its lease (or being admitted
        // in Redis): an idle one keeps none.
        let replicas = if admitting || used > 0 {
            shared.replicas.max(1)
        } else {
            0
        };
        let taken = shared.unsynced;
        let mut delta = Unsynced {
            bucket_takes: taken.bucket_takes,
            ..Unsynced::default()
        };
        let mut seed = view;
        for (i, (d, t)) in [
            (&mut delta.minute, taken.minute),
            (&mut delta.day, taken.day),
            (&mut delta.month, taken.month),
        ]
        .into_iter()
        .enumerate()
        {
            d.start = view[i].start;
            if t.start == view[i].start {
                d.requests = t.requests;
                d.tokens = t.tokens;
            }
            seed[i].requests = seed[i].requests.saturating_sub(d.requests);
            seed[i].tokens = seed[i].tokens.saturating_sub(d.tokens);
        }
        shared.unsynced = Unsynced {
            minute: WindowCount {
                requests: 0,
                tokens: 0,
                ..view[0]
            },
            day: WindowCount {
                requests: 0,
                tokens: 0,
                ..view[1]
            },
            month: WindowCount {
                requests: 0,
                tokens: 0,
                ..view[2]
            },
            bucket_takes: 0,
        };
        Some(Push {
            delta,
            seed,
            lease_release,
            lease_unused,
            replicas,
        })
    }

    /// Puts back counts whose push failed (Redis down): they go with the next one.
    pub fn restore_unsynced(&self, p: &Push) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(shared) = inner.shared.as_mut() else {
            return;
        };
        let u = &mut shared.unsynced;
        for (mine, theirs) in [
            (&mut u.minute, p.delta.minute),
            (&mut u.day, p.delta.day),
            (&mut u.month, p.delta.month),
        ] {
            if mine.start == theirs.start {
                mine.requests += theirs.requests;
                mine.tokens += theirs.tokens;
            } else if mine.requests == 0 && mine.tokens == 0 && mine.start < theirs.start {
                *mine = theirs;
            }
        }
        u.bucket_takes += p.delta.bucket_takes;
        if shared.lease_day == p.delta.day.start {
            // Redis still holds the whole lease.
            shared.lease += p.lease_release;
        }
    }

    /// Redis mode: the shared totals read back; the view becomes them plus what was counted
    /// here since, and the local allowances are recomputed.
    pub fn apply_totals(&self, t: &Totals, now_ms: i64) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        Self::roll(inner, now_ms);
        let l = inner.limits;
        let Some(shared) = inner.shared.as_mut() else {
            return;
        };
        let u = shared.unsynced;
        for (view, total, mine) in [
            (&mut inner.minute, t.minute, u.minute),
            (&mut inner.day, t.day, u.day),
            (&mut inner.month, t.month, u.month),
        ] {
            if total.start != view.start {
                continue;
            }
            let (r, k) = if mine.start == view.start {
                (mine.requests, mine.tokens)
            } else {
                (0, 0)
            };
            view.requests = total.requests + r;
            view.tokens = total.tokens + k;
        }
        if let Some(n) = t.replicas {
            shared.replicas = n.max(1);
            shared.token_growth = if shared.last_day_tokens.0 == t.day.start {
                t.day.tokens.saturating_sub(shared.last_day_tokens.1)
            } else {
                0
            };
            shared.last_day_tokens = (t.day.start, t.day.tokens);
        }
        let n = shared.replicas.max(1);
        shared.synced_at_ms = Some(now_ms);
        if l.requests_per_day > 0 && t.day.start == shared.lease_day {
            shared.lease += t.grant;
            shared.allowance_requests += t.grant;
        }
        shared.allowance_bucket = allowance(t.bucket, n).saturating_sub(u.bucket_takes);
    }

    /// Redis mode: when this replica last heard the shared totals.
    pub fn synced_at_ms(&self) -> Option<i64> {
        self.lock().shared.and_then(|s| s.synced_at_ms)
    }

    /// Redis mode: whether the sync task should push and read this subject now: it was
    /// used within `recent_ms` (its view must stay fresh, an idle lease must go back), or
    /// it has counts or a lease to push. Others wait: their next request goes to Redis
    /// (their view is stale by then).
    pub fn wants_sync(&self, now_ms: i64, recent_ms: i64) -> bool {
        let inner = self.lock();
        let Some(shared) = inner.shared.as_ref() else {
            return false;
        };
        now_ms - self.last_used_ms() <= recent_ms || !shared.unsynced.is_empty() || shared.lease > 0
    }

    /// Redis mode: counts not pushed yet.
    pub fn unsynced(&self) -> Unsynced {
        self.lock().shared.map(|s| s.unsynced).unwrap_or_default()
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

/// What one replica of `replicas` may take alone from `left` before the next sync: a
/// 1/(2N) share, so all replicas together use at most half of what was left.
fn allowance(left: f64, replicas: u64) -> u64 {
    if !left.is_finite() || left <= 0.0 {
        return 0;
    }
    (left / (2 * replicas.max(1)) as f64)
        .floor()
        .min(u64::MAX as f64) as u64
}

/// Redis mode: whether a request must be decided in Redis (one awaited script call) rather
/// than on this replica's view.
fn needs_remote(
    shared: &Shared,
    l: &Limits,
    view: &[WindowCount; 3],
    policy: &SharedPolicy,
    now_ms: i64,
) -> bool {
    let shared_limits = l.requests_per_day > 0
        || l.requests_per_second > 0.0
        || l.tokens_per_minute > 0
        || l.tokens_per_day > 0
        || l.tokens_per_month > 0;
    if !shared_limits {
        // Nothing shared to hold: counting (pushed by the sync) is all Redis needs.
        return false;
    }
    let Some(at) = shared.synced_at_ms else {
        return true;
    };
    if now_ms - at > policy.stale_ms {
        return true;
    }
    if l.requests_per_day > 0
        && (shared.allowance_requests == 0 || shared.lease_day != view[1].start)
    {
        return true;
    }
    if l.requests_per_second > 0.0 && shared.allowance_bucket == 0 {
        return true;
    }
    [
        (l.tokens_per_minute, view[0].tokens),
        (l.tokens_per_day, view[1].tokens),
        (l.tokens_per_month, view[2].tokens),
    ]
    .into_iter()
    .any(|(limit, used)| {
        let margin = ((limit as f64 * policy.near_fraction).ceil() as u64)
            .max(shared.token_growth.saturating_mul(2));
        limit > 0 && limit.saturating_sub(used) <= margin
    })
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

    fn totals(s: &SubjectState, now: i64, day_requests: u64, bucket: f64, grant: u64) -> Totals {
        let snap = s.snapshot(now);
        Totals {
            minute: WindowCount {
                requests: day_requests,
                ..snap.minute
            },
            day: WindowCount {
                requests: day_requests,
                ..snap.day
            },
            month: WindowCount {
                requests: day_requests,
                ..snap.month
            },
            bucket,
            replicas: Some(2),
            grant,
        }
    }

    const POLICY: SharedPolicy = SharedPolicy {
        near_fraction: 0.1,
        stale_ms: 1000,
    };

    #[test]
    fn shared_mode_decides_in_redis_until_synced_then_on_its_lease() {
        let s = state(Limits {
            requests_per_day: 100,
            ..limits()
        });
        s.enable_shared();
        // Never synced: Redis decides.
        assert_eq!(s.check_shared(NOW, Some(&POLICY)), Ok(Route::Remote));
        // Redis down (no policy): local, as in embedded mode.
        assert_eq!(s.check_shared(NOW, None), Ok(Route::Local));
        let push = s.take_push(NOW, false).unwrap();
        assert_eq!((push.lease_release, push.lease_unused), (0, 0));
        // Redis leased 3 requests to this replica: three local admissions, then Redis.
        s.apply_totals(&totals(&s, NOW, 40, 0.0, 3), NOW);
        assert_eq!(
            s.snapshot(NOW).day.requests,
            40,
            "the shared total is the view"
        );
        for _ in 0..3 {
            assert_eq!(s.check_shared(NOW, Some(&POLICY)), Ok(Route::Local));
            s.count_request(NOW);
        }
        assert_eq!(s.check_shared(NOW, Some(&POLICY)), Ok(Route::Remote));
        assert_eq!(s.snapshot(NOW).day.requests, 43);
        // The push carries the three, and releases their lease.
        let push = s.take_push(NOW, false).unwrap();
        assert_eq!(push.delta.day.requests, 3);
        assert_eq!((push.lease_release, push.lease_unused), (3, 0));
        assert_eq!(
            push.seed[1].requests, 40,
            "seed: what the replica knew before"
        );
        // A view too old is not trusted.
        s.apply_totals(&totals(&s, NOW, 43, 0.0, 5), NOW);
        assert_eq!(s.check_shared(NOW, Some(&POLICY)), Ok(Route::Local));
        assert_eq!(s.check_shared(NOW + 1001, Some(&POLICY)), Ok(Route::Remote));
    }

    #[test]
    fn a_failed_push_comes_back_whole_and_an_idle_lease_is_given_back() {
        let s = state(Limits {
            requests_per_day: 100,
            ..limits()
        });
        s.enable_shared();
        let _ = s.take_push(NOW, false);
        s.apply_totals(&totals(&s, NOW, 0, 0.0, 10), NOW);
        s.check_shared(NOW, Some(&POLICY)).unwrap();
        s.count_request(NOW);
        s.charge_tokens(NOW, 25);
        let push = s.take_push(NOW, false).unwrap();
        assert_eq!((push.delta.day.requests, push.delta.day.tokens), (1, 25));
        assert_eq!(push.lease_release, 1);
        // Redis down: everything is pushed again next time, the lease release too.
        s.restore_unsynced(&push);
        s.count_request(NOW);
        let again = s.take_push(NOW, false).unwrap();
        assert_eq!((again.delta.day.requests, again.delta.day.tokens), (2, 25));
        assert_eq!(again.lease_release, 1, "the fallback request is not leased");
        // Nothing used since the last push: the whole unused lease goes back.
        let idle = s.take_push(NOW, false).unwrap();
        assert_eq!((idle.lease_release, idle.lease_unused), (9, 0));
        assert_eq!(idle.replicas, 0, "an idle subject asks for no new lease");
        assert_eq!(s.check_shared(NOW, Some(&POLICY)), Ok(Route::Remote));
        // Synced while used lately or while holding something to push; not once idle.
        assert!(s.wants_sync(NOW + 500, 1000));
        let _ = s.take_push(NOW, false);
        assert!(!s.wants_sync(NOW + 5000, 1000));
        s.charge_tokens(NOW + 5000, 1);
        assert!(s.wants_sync(NOW + 5000, 1000), "tokens to push");
    }

    #[test]
    fn the_shared_bucket_allowance_is_a_share_of_its_level() {
        let s = state(Limits {
            requests_per_second: 10.0,
            burst: 100,
            ..limits()
        });
        s.enable_shared();
        let _ = s.take_push(NOW, false);
        // 40 left in the shared bucket, 2 replicas: 10 each before going to Redis.
        s.apply_totals(&totals(&s, NOW, 0, 40.0, 0), NOW);
        for _ in 0..10 {
            assert_eq!(s.check_shared(NOW, Some(&POLICY)), Ok(Route::Local));
        }
        assert_eq!(s.check_shared(NOW, Some(&POLICY)), Ok(Route::Remote));
        s.refund(Route::Remote);
        assert_eq!(s.take_push(NOW, false).unwrap().delta.bucket_takes, 10);
        // New limits: the allowances were sized for the old ones.
        s.apply_totals(&totals(&s, NOW, 0, 40.0, 0), NOW);
        s.set_limits(Limits {
            requests_per_second: 1.0,
            burst: 1,
            ..limits()
        });
        assert_eq!(
            s.check_shared(NOW + 10_000, Some(&POLICY)),
            Ok(Route::Remote)
        );
    }

    #[test]
    fn token_budgets_near_their_limit_go_to_redis() {
        let s = state(Limits {
            tokens_per_day: 1000,
            ..limits()
        });
        s.enable_shared();
        let _ = s.take_push(NOW, false);
        s.apply_totals(&totals(&s, NOW, 0, 0.0, 0), NOW);
        assert_eq!(s.check_shared(NOW, Some(&POLICY)), Ok(Route::Local));
        // 10% of the limit left (the near fraction): Redis decides.
        s.charge_tokens(NOW, 900);
        assert_eq!(s.check_shared(NOW, Some(&POLICY)), Ok(Route::Remote));
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
