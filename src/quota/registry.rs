//! `QuotaRegistry`: the subjects' live states, shared by every worker. A handler asks it
//! for a subject's `Arc<SubjectState>` (a sharded map lookup) and decides admission on that
//! state itself; no message is sent per request. A state is created on first use: the
//! handlers of that first moment await its load (persisted counters and override, once per
//! subject and process), and the `QuotaSupervisor` is told (fire-and-forget) to start the
//! subject's `QuotaActor`, which owns the rest of its life.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix::Addr;
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

use super::actor::{QuotaSupervisor, Spawn};
use super::limits::{Defaults, Kind, Limits, Subject};
use super::math::{format_reset, retry_after_secs, Window, WindowCount};
use super::shared::{QuotaRedis, Verdict};
use super::state::{Denial, Permit, Route, SharedPolicy, SubjectState};
use crate::error::ApiError;
use crate::store::{now_ms, Store};

const SHARDS: usize = 16;

pub struct QuotaRegistry {
    /// Looked up two or three times per request: foldhash, seeded per process (its
    /// `RandomState`), not SipHash.
    shards: Vec<Mutex<foldhash::HashMap<Subject, Arc<SubjectState>>>>,
    /// Picks a subject's shard.
    shard_hasher: foldhash::fast::RandomState,
    defaults: Defaults,
    pub(super) store: Arc<dyn Store>,
    supervisor: OnceLock<Addr<QuotaSupervisor>>,
    queue_timeout: Duration,
    pub enabled: bool,
    pub(super) log: slog::Logger,
    /// Redis mode: the shared counters (set once, before the first request).
    shared: OnceLock<Arc<QuotaRedis>>,
    policy: SharedPolicy,
}

/// An admitted request: one in-flight slot per subject, which also names the subject to
/// charge tokens to when the request ends. Dropping it frees the slots.
#[derive(Debug)]
pub struct Admission {
    permits: Vec<Permit>,
}

impl Admission {
    /// Charges the request's tokens to every subject.
    pub fn charge(&self, tokens: u64) {
        let now = now_ms();
        for p in &self.permits {
            p.state().charge_tokens(now, tokens);
        }
    }
}

impl QuotaRegistry {
    pub fn new(
        settings: &crate::config::Quotas,
        store: Arc<dyn Store>,
        log: slog::Logger,
    ) -> QuotaRegistry {
        QuotaRegistry {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_hasher: foldhash::fast::RandomState::default(),
            defaults: Defaults::from_settings(settings),
            store,
            supervisor: OnceLock::new(),
            queue_timeout: settings.queue_timeout_ms.duration(),
            enabled: settings.enabled,
            log,
            shared: OnceLock::new(),
            policy: SharedPolicy {
                near_fraction: settings.redis_near_fraction,
                // Ten sync rounds without news (at least a second): decide in Redis.
                stale_ms: i64::try_from(settings.redis_sync_ms.get().saturating_mul(10).max(1000))
                    .unwrap_or(i64::MAX),
            },
        }
    }

    /// Redis mode: states created from now on share their counters through `redis`.
    pub fn set_redis(&self, redis: Arc<QuotaRedis>) {
        let _ = self.shared.set(redis);
    }

    /// Redis mode: how long a view is trusted for local decisions.
    pub fn stale_ms(&self) -> i64 {
        self.policy.stale_ms
    }

    /// The Redis side, in Redis mode.
    pub fn redis(&self) -> Option<&Arc<QuotaRedis>> {
        self.shared.get()
    }

    /// Re-reads a live subject's override from the database (another replica changed it).
    pub async fn reload_override(&self, subject: &Subject) {
        if self.get(subject).is_none() {
            return;
        }
        match self.store.get_override(subject.key().to_string()).await {
            Ok(o) => self.apply_override(subject, o.as_ref()),
            Err(e) => slog::warn!(self.log, "quota override not reloaded";
                "subject" => subject.key(), "error" => e.to_string()),
        }
    }

    /// Re-reads every live subject's override (after missed change messages).
    pub async fn reload_overrides(&self) {
        for s in self.live() {
            self.reload_override(&s.subject).await;
        }
    }

    pub(super) fn set_supervisor(&self, addr: Addr<QuotaSupervisor>) {
        let _ = self.supervisor.set(addr);
    }

    pub fn defaults(&self, kind: Kind) -> Limits {
        self.defaults.of(kind)
    }

    fn shard(&self, subject: &Subject) -> &Mutex<foldhash::HashMap<Subject, Arc<SubjectState>>> {
        let h = self.shard_hasher.hash_one(subject);
        &self.shards[(h as usize) % SHARDS]
    }

    /// The live state of a subject, if it has one now.
    pub fn get(&self, subject: &Subject) -> Option<Arc<SubjectState>> {
        let shard = self
            .shard(subject)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        shard.get(subject).cloned()
    }

    /// Every live state.
    pub fn live(&self) -> Vec<Arc<SubjectState>> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The subject's state, created (and its actor started) on first use, loaded before it
    /// is handed out.
    pub async fn state(&self, subject: Subject) -> Arc<SubjectState> {
        let state = {
            let mut shard = self
                .shard(&subject)
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(s) = shard.get(&subject) {
                Arc::clone(s)
            } else {
                let limits = self.defaults.of(subject.kind);
                let s = Arc::new(SubjectState::new(subject.clone(), limits, now_ms()));
                if self.shared.get().is_some() {
                    s.enable_shared();
                }
                shard.insert(subject, Arc::clone(&s));
                if let Some(sup) = self.supervisor.get() {
                    sup.do_send(Spawn(Arc::clone(&s)));
                }
                s
            }
        };
        if state.loaded.initialized() {
            return state;
        }
        // Boxed: the load (database and Redis futures, about 14 KB) runs once per subject;
        // inline, it would make every request's future that large.
        state
            .loaded
            .get_or_init(|| Box::pin(self.load(&state)))
            .await;
        state
    }

    /// Reads a subject's persisted day and month counters and its override. A database
    /// that fails leaves the subject on its defaults from zero (logged): limits keep
    /// working, with what this process counts.
    async fn load(&self, state: &Arc<SubjectState>) {
        let now = now_ms();
        let key = state.subject.key().to_string();
        let day_start = Window::Day.start(now);
        let month_start = Window::Month.start(now);
        // Side by side, so a slow database costs one query timeout, not three.
        let result = futures_util::future::try_join3(
            self.store.get_override(key.clone()),
            self.store.get_usage(key.clone(), "day".into(), day_start),
            self.store
                .get_usage(key.clone(), "month".into(), month_start),
        )
        .await;
        match result {
            Ok((o, day, month)) => {
                state.set_limits(self.defaults.of(state.subject.kind).with(o.as_ref()));
                let count = |start, r: crate::store::CounterRow| WindowCount {
                    start,
                    requests: u64::try_from(r.requests).unwrap_or(0),
                    tokens: u64::try_from(r.tokens).unwrap_or(0),
                };
                state.add_loaded(count(day_start, day), count(month_start, month), now);
            }
            Err(e) => slog::warn!(self.log, "quota state not loaded; counting from zero";
                "subject" => key, "error" => e.to_string()),
        }
        // Redis mode: the shared totals replace the database's (which seed keys Redis
        // does not have).
        if let Some(redis) = self.shared.get() {
            let _ = redis.sync(&[Arc::clone(state)]).await;
        }
    }

    /// Removes a subject's state if it is this one and nobody else holds it (the actor
    /// holds one reference, the map another). Decided under the shard lock, through which
    /// alone new references are handed out, so no request can be counted on a retired state.
    pub(super) fn retire(&self, state: &Arc<SubjectState>) -> bool {
        let mut shard = self
            .shard(&state.subject)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mine = shard
            .get(&state.subject)
            .is_some_and(|s| Arc::ptr_eq(s, state));
        if mine && Arc::strong_count(state) <= 2 && !state.busy() {
            shard.remove(&state.subject);
            true
        } else {
            false
        }
    }

    pub(super) fn holds(&self, state: &Arc<SubjectState>) -> bool {
        self.get(&state.subject)
            .is_some_and(|s| Arc::ptr_eq(&s, state))
    }

    /// Admits a request against every subject (the user first), or refuses it with the
    /// tightest refusal. Budgets and buckets are checked without waiting; then an in-flight
    /// slot is taken on each subject, waiting up to `quotas.queue_timeout_ms` in all.
    ///
    /// Redis mode: far from every limit the decision is local (as in embedded mode, on the
    /// shared view); a subject near a limit is decided in Redis after the in-flight slot
    /// is taken, one awaited script call. With Redis down every decision is local.
    pub async fn admit(&self, states: &[Arc<SubjectState>]) -> Result<Admission, ApiError> {
        let now = now_ms();
        let redis = self.shared.get();
        let policy = redis.filter(|r| r.is_up()).map(|_| &self.policy);
        let mut denial: Option<Denial> = None;
        let mut taken = Vec::with_capacity(states.len());
        for s in states {
            match s.check_shared(now, policy) {
                Ok(route) => taken.push((s, route)),
                Err(d) => {
                    // The tightest refusal: the one that lasts longest.
                    if denial
                        .as_ref()
                        .is_none_or(|cur| d.retry_after_ms > cur.retry_after_ms)
                    {
                        denial = Some(d);
                    }
                }
            }
        }
        if let Some(d) = denial {
            taken.iter().for_each(|(s, route)| s.refund(*route));
            return Err(refusal(d));
        }
        let deadline = tokio::time::Instant::now() + self.queue_timeout;
        let mut permits = Vec::with_capacity(states.len());
        for s in states {
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            match s.acquire(wait).await {
                Some(p) => permits.push(p),
                None => {
                    drop(permits);
                    taken.iter().for_each(|(s, route)| s.refund(*route));
                    return Err(ApiError::RateLimited {
                        message: format!(
                            "Too many requests in flight for {} (limit {}); try again shortly.",
                            s.subject,
                            s.limits().max_in_flight
                        ),
                        retry_after: Some(Duration::from_secs(1)),
                    });
                }
            }
        }
        // Bit i: subject i was counted in Redis (a request has at most three subjects:
        // user, org, model).
        let bit = |i: usize| u32::try_from(i).ok().and_then(|i| 1u64.checked_shl(i));
        let mut in_redis = 0u64;
        if let Some(redis) = redis {
            let mut fell_back = policy.is_none();
            for (i, (s, route)) in taken.iter().enumerate() {
                if *route != Route::Remote {
                    continue;
                }
                // Boxed for the same reason as the load: only requests near a limit go here.
                match Box::pin(redis.admit(s)).await {
                    Ok(Verdict::Admitted) => in_redis |= bit(i).unwrap_or(0),
                    Ok(Verdict::Refused(d)) => {
                        drop(permits);
                        taken.iter().for_each(|(s, route)| s.refund(*route));
                        return Err(refusal(d));
                    }
                    // Redis just went away: this replica's view decided (it passed).
                    Err(_) => fell_back = true,
                }
            }
            if fell_back {
                redis.count_fallback();
            }
        }
        let now = now_ms();
        for (i, (s, _)) in taken.iter().enumerate() {
            s.count_request_remote(now, bit(i).is_some_and(|b| in_redis & b != 0));
        }
        Ok(Admission { permits })
    }

    /// Applies an override (or its removal) to the live state at once.
    pub fn apply_override(&self, subject: &Subject, o: Option<&crate::store::QuotaOverrideRow>) {
        if let Some(s) = self.get(subject) {
            s.set_limits(self.defaults.of(subject.kind).with(o));
        }
    }
}

/// The 429 of a refusal.
fn refusal(d: Denial) -> ApiError {
    let retry_after = Some(Duration::from_secs(retry_after_secs(d.retry_after_ms)));
    if d.quota {
        ApiError::QuotaExceeded {
            message: d.message,
            retry_after,
        }
    } else {
        ApiError::RateLimited {
            message: d.message,
            retry_after,
        }
    }
}

/// The quota state of the user a request is for, kept in the request's extensions: the
/// edge (`server::edges`) puts its limits in the answer's `x-ratelimit-*` headers.
#[derive(Clone)]
pub struct RateLimited(pub Arc<SubjectState>);

/// Sets the `x-ratelimit-*` headers from a user's state: the `-requests` trio describes
/// the requests-per-day window, the `-tokens` trio the tokens-per-day window. A disabled
/// limit (0) sends no trio.
pub fn rate_limit_headers(headers: &mut HeaderMap, state: &SubjectState) {
    /// Built once: a name made from a string is parsed and allocated every time.
    static NAMES: [[HeaderName; 3]; 2] = [
        [
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderName::from_static("x-ratelimit-reset-requests"),
        ],
        [
            HeaderName::from_static("x-ratelimit-limit-tokens"),
            HeaderName::from_static("x-ratelimit-remaining-tokens"),
            HeaderName::from_static("x-ratelimit-reset-tokens"),
        ],
    ];
    let now = now_ms();
    let snap = state.snapshot(now);
    if snap.limits.requests_per_day == 0 && snap.limits.tokens_per_day == 0 {
        return;
    }
    let reset = HeaderValue::try_from(format_reset(Window::Day.remaining_ms(now))).ok();
    for ([limit_name, remaining_name, reset_name], limit, used) in [
        (&NAMES[0], snap.limits.requests_per_day, snap.day.requests),
        (&NAMES[1], snap.limits.tokens_per_day, snap.day.tokens),
    ] {
        if limit == 0 {
            continue;
        }
        headers.insert(limit_name.clone(), HeaderValue::from(limit));
        headers.insert(
            remaining_name.clone(),
            HeaderValue::from(limit.saturating_sub(used)),
        );
        if let Some(reset) = &reset {
            headers.insert(reset_name.clone(), reset.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::QuotaOverrideRow;

    async fn registry(dir: &std::path::Path) -> QuotaRegistry {
        let env = vec![
            (
                "GATEWAY__STORAGE__DATA_DIR".to_string(),
                dir.display().to_string(),
            ),
            (
                "GATEWAY__QUOTAS__USER__REQUESTS_PER_SECOND".to_string(),
                "1".to_string(),
            ),
            ("GATEWAY__QUOTAS__USER__BURST".to_string(), "1".to_string()),
        ];
        let settings = crate::config::Settings::load_from(None, None, env).unwrap();
        let url = crate::store::DatabaseUrl::from_settings(&settings).unwrap();
        crate::store::migrate::run(&url).unwrap();
        let store = crate::store::open(&url, 1, Duration::from_secs(5)).unwrap();
        QuotaRegistry::new(&settings.quotas, store, crate::logging::discard())
    }

    #[tokio::test]
    async fn the_longest_refusal_wins_and_nothing_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(dir.path()).await;
        let org = Subject::new(Kind::Org, "anl");
        reg.store
            .put_override(QuotaOverrideRow {
                subject: org.key().to_string(),
                rps: None,
                burst: None,
                max_in_flight: None,
                daily_requests: Some(1),
                daily_tokens: None,
                monthly_tokens: None,
                updated_at: 0,
                tokens_per_minute: None,
                max_batches: None,
            })
            .await
            .unwrap();
        let user = reg.state(Subject::new(Kind::User, "alice")).await;
        let org_state = reg.state(org.clone()).await;
        assert_eq!(org_state.limits().requests_per_day, 1, "override loaded");
        let both = [Arc::clone(&user), Arc::clone(&org_state)];
        let first = reg.admit(&both).await.unwrap();
        drop(first);
        // Now the user's bucket is empty (retry in 1 s) and the org's day is used up
        // (retry at midnight UTC): the org's refusal is the one reported.
        let err = reg.admit(&both).await.unwrap_err();
        assert_eq!(err.code(), "insufficient_quota", "{err}");
        assert!(err.to_string().contains("org:anl"), "{err}");
        // Another user of another org is not affected by alice's empty bucket...
        let bob = reg.state(Subject::new(Kind::User, "bob")).await;
        reg.admit(&[bob]).await.unwrap();
        // ...and alice alone is refused by her bucket only, not charged twice.
        let err = reg.admit(&[Arc::clone(&user)]).await.unwrap_err();
        assert_eq!(err.code(), "rate_limit_exceeded");
        assert_eq!(user.snapshot(now_ms()).day.requests, 1);
        assert_eq!(user.in_flight(), 0);
    }
}
