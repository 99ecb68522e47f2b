//! One target's live state, shared between its `BackendActor` (the only writer of health,
//! breaker and latency) and the request handlers (which read it and count in-flight
//! requests). Handlers never send a message to learn a target's state; they read atomics.
//! A [`Lease`] is the RAII handle of one request on one target: it counts the request in
//! flight and, when dropped, reports the outcome to the target's actor.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::{Message, Recipient};
use actix_web::http::header::HeaderValue;
use actix_web::http::uri::{InvalidUri, Uri};
use arc_swap::{ArcSwap, ArcSwapOption};

use crate::fixtures::TargetSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    Unknown = 0,
    Healthy = 1,
    Unhealthy = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerView {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl Health {
    pub fn name(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

impl BreakerView {
    pub fn name(self) -> &'static str {
        match self {
            BreakerView::Closed => "closed",
            BreakerView::Open => "open",
            BreakerView::HalfOpen => "half_open",
        }
    }
}

/// Routing preference from health and breaker: lower is better, `None` is not routable.
/// Healthy targets first, then not yet checked ones, then a half-open probe, and last the
/// ones whose health check fails but whose breaker still lets requests through (the check
/// may be wrong; requests decide).
pub fn tier(health: Health, breaker: BreakerView) -> Option<u8> {
    match (breaker, health) {
        (BreakerView::Open, _) => None,
        (BreakerView::Closed, Health::Healthy) => Some(0),
        (BreakerView::Closed, Health::Unknown) => Some(1),
        (BreakerView::HalfOpen, _) => Some(2),
        (BreakerView::Closed, Health::Unhealthy) => Some(3),
    }
}

/// What the cluster's scheduler says about a target (written by its `SchedulerProbe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SchedStatus {
    /// The cluster has no scheduler source: route on health alone.
    None = 0,
    /// The probe failed or has not answered yet.
    Unknown = 1,
    Running = 2,
    Starting = 3,
    Queued = 4,
    /// No job, and the cluster has free nodes (a start would run soon).
    StoppedFreeNodes = 5,
    /// No job.
    Stopped = 6,
}

impl SchedStatus {
    fn from_u8(v: u8) -> SchedStatus {
        match v {
            1 => SchedStatus::Unknown,
            2 => SchedStatus::Running,
            3 => SchedStatus::Starting,
            4 => SchedStatus::Queued,
            5 => SchedStatus::StoppedFreeNodes,
            6 => SchedStatus::Stopped,
            _ => SchedStatus::None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SchedStatus::None => "none",
            SchedStatus::Unknown => "unknown",
            SchedStatus::Running => "running",
            SchedStatus::Starting => "starting",
            SchedStatus::Queued => "queued",
            SchedStatus::StoppedFreeNodes | SchedStatus::Stopped => "stopped",
        }
    }

    /// FIRST's order: running (and targets the scheduler knows nothing about), then
    /// starting or queued, then stopped on a cluster with free nodes, then stopped.
    pub fn rank(self) -> u8 {
        match self {
            SchedStatus::None | SchedStatus::Unknown | SchedStatus::Running => 0,
            SchedStatus::Starting | SchedStatus::Queued => 1,
            SchedStatus::StoppedFreeNodes => 2,
            SchedStatus::Stopped => 3,
        }
    }

    /// Not serving, per the scheduler: a request needs a cold start or must wait.
    pub fn is_cold(self) -> bool {
        self.rank() > 0
    }
}

/// The routing tier of a target: health and breaker first ([`tier`]), then the scheduler
/// rank within; `None` (not routable) when the breaker is open or the cluster is in
/// maintenance. Targets without a scheduler keep `tier * 4`, so their order is unchanged.
pub fn routing_tier(
    health: Health,
    breaker: BreakerView,
    sched: SchedStatus,
    maintenance: bool,
) -> Option<u8> {
    if maintenance {
        return None;
    }
    tier(health, breaker).map(|t| t * 4 + sched.rank())
}

pub struct Target {
    pub spec: Arc<TargetSpec>,
    /// Upstream bearer key, read from the environment variable the fixture names. Secret:
    /// never logged, never shown.
    pub api_key: Option<String>,
    pub response_timeout: Duration,
    state: AtomicU8,
    /// `SchedStatus`, written by the cluster's `SchedulerProbe` only.
    sched: AtomicU8,
    /// Cluster in maintenance, written through `ClusterState::set_maintenance` only.
    maintenance: AtomicBool,
    probe_free: AtomicBool,
    /// A half-open breaker is probed by the next request (the target has no active health
    /// check, which would otherwise be the probe). Written by the BackendActor only.
    request_probes: AtomicBool,
    in_flight: AtomicU32,
    ewma_ttfb_us: AtomicU64,
    /// Successes the actor has not seen yet (count, summed TTFB in µs): a success on a
    /// closed breaker changes nothing urgent, so it is not worth a message per request.
    pending_successes: AtomicU64,
    pending_ttfb_us: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) restarts: AtomicU32,
    last_error: Mutex<Option<String>>,
    actor: ArcSwapOption<Recipient<Report>>,
    /// `Authorization: Bearer <api_key>`, built once (marked sensitive).
    authorization: Option<HeaderValue>,
    /// `base_url` + each upstream path asked for so far, parsed once ([`Target::uri`]).
    uris: ArcSwap<Vec<(&'static str, Uri)>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("slug", &self.spec.slug)
            .field("health", &self.health())
            .field("breaker", &self.breaker())
            .finish()
    }
}

impl Target {
    pub fn new(spec: TargetSpec, api_key: Option<String>, default_timeout: Duration) -> Self {
        let response_timeout = spec.request_timeout.unwrap_or(default_timeout);
        let authorization = api_key.as_deref().and_then(|key| {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        Target {
            spec: Arc::new(spec),
            api_key,
            authorization,
            uris: ArcSwap::default(),
            response_timeout,
            state: AtomicU8::new(0),
            sched: AtomicU8::new(SchedStatus::None as u8),
            maintenance: AtomicBool::new(false),
            probe_free: AtomicBool::new(false),
            request_probes: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            ewma_ttfb_us: AtomicU64::new(0),
            pending_successes: AtomicU64::new(0),
            pending_ttfb_us: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            restarts: AtomicU32::new(0),
            last_error: Mutex::new(None),
            actor: ArcSwapOption::empty(),
        }
    }

    pub fn slug(&self) -> &str {
        &self.spec.slug
    }

    /// The `Authorization` header for the target's API key, if it has one (`None` too
    /// for a key that cannot be a header value; the backend then answers 401).
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.authorization.as_ref()
    }

    /// `base_url` + `path`, parsed on first use and then cloned (reference counts): a
    /// request's URI costs no formatting, parsing or allocation.
    pub fn uri(&self, path: &'static str) -> Result<Uri, InvalidUri> {
        if let Some((_, uri)) = self.uris.load().iter().find(|(p, _)| *p == path) {
            return Ok(uri.clone());
        }
        let uri: Uri = format!("{}{path}", self.spec.base_url).parse()?;
        self.uris.rcu(|known| {
            let mut known = Vec::clone(known);
            if !known.iter().any(|(p, _)| *p == path) {
                known.push((path, uri.clone()));
            }
            known
        });
        Ok(uri)
    }

    pub fn health(&self) -> Health {
        match self.state.load(Ordering::Acquire) & 0b11 {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }

    pub fn breaker(&self) -> BreakerView {
        match (self.state.load(Ordering::Acquire) >> 2) & 0b11 {
            1 => BreakerView::Open,
            2 => BreakerView::HalfOpen,
            _ => BreakerView::Closed,
        }
    }

    pub fn sched(&self) -> SchedStatus {
        SchedStatus::from_u8(self.sched.load(Ordering::Acquire))
    }

    pub fn in_maintenance(&self) -> bool {
        self.maintenance.load(Ordering::Acquire)
    }

    pub fn tier(&self) -> Option<u8> {
        routing_tier(
            self.health(),
            self.breaker(),
            self.sched(),
            self.in_maintenance(),
        )
    }

    /// Called by the cluster's SchedulerProbe only.
    pub(crate) fn set_sched(&self, status: SchedStatus) {
        self.sched.store(status as u8, Ordering::Release);
    }

    /// Called by `ClusterState::set_maintenance` only.
    pub(crate) fn set_maintenance(&self, on: bool) {
        self.maintenance.store(on, Ordering::Release);
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Exponentially weighted time to first byte, in microseconds (0 = no sample yet).
    pub fn ewma_ttfb_us(&self) -> u64 {
        self.ewma_ttfb_us.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }

    pub fn requests_total(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn failures_total(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Called by the BackendActor only.
    pub(crate) fn publish(&self, health: Health, breaker: BreakerView, ewma_us: u64) {
        let was_half_open = self.breaker() == BreakerView::HalfOpen;
        self.ewma_ttfb_us.store(ewma_us, Ordering::Relaxed);
        self.state
            .store(health as u8 | ((breaker as u8) << 2), Ordering::Release);
        if breaker == BreakerView::HalfOpen && !was_half_open {
            self.probe_free.store(true, Ordering::Release);
        }
    }

    /// True when a half-open breaker waits for a request to probe it (no active health
    /// checks): such a target takes the next request before any other ([`crate::routing::ranking::pick`]).
    pub fn request_probes(&self) -> bool {
        self.request_probes.load(Ordering::Relaxed)
    }

    /// Called by the BackendActor only.
    pub(crate) fn set_request_probes(&self, on: bool) {
        self.request_probes.store(on, Ordering::Relaxed);
    }

    /// Called by the BackendActor only: a probe ended without a verdict (cancelled), so
    /// the next request may probe.
    pub(crate) fn free_probe(&self) {
        if self.breaker() == BreakerView::HalfOpen {
            self.probe_free.store(true, Ordering::Release);
        }
    }

    /// Called by the BackendActor only: the successes reported since the last call, as
    /// (count, summed TTFB in µs).
    pub(crate) fn take_successes(&self) -> (u64, u64) {
        let count = self.pending_successes.swap(0, Ordering::AcqRel);
        let ttfb = self.pending_ttfb_us.swap(0, Ordering::AcqRel);
        (count, ttfb)
    }

    pub(crate) fn set_last_error(&self, error: Option<String>) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = error;
        }
    }

    /// Where this target's leases report their verdicts (its `BackendActor`).
    pub fn set_actor(&self, actor: Recipient<Report>) {
        self.actor.store(Some(Arc::new(actor)));
    }

    pub fn actor(&self) -> Option<Arc<Recipient<Report>>> {
        self.actor.load_full()
    }

    /// Takes a lease if the target can take a request now. A half-open target admits
    /// exactly one probe at a time; a target whose cluster is in maintenance none.
    pub fn try_lease(self: &Arc<Self>) -> Option<Lease> {
        if self.in_maintenance() {
            return None;
        }
        let probe = match self.breaker() {
            BreakerView::Open => return None,
            BreakerView::Closed => false,
            BreakerView::HalfOpen => {
                if self
                    .probe_free
                    .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    return None;
                }
                true
            }
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            target: Arc::clone(self),
            started: Instant::now(),
            probe,
            verdict: None,
            pool_slot: None,
        })
    }
}

/// What one request found out about its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The target answered (2xx or a client error that is the client's fault).
    Success { ttfb: Duration },
    /// Connection error, 5xx, timeout, or a stream cut off: counts against the breaker.
    Failure { error: String },
    /// Neither: the client went away, or the target said 429 (busy, not broken).
    Neutral,
}

/// One request in flight on one target. Dropping it gives the slot back and reports the
/// verdict to the target's actor, also when the client disconnected or a task panicked.
pub struct Lease {
    target: Arc<Target>,
    started: Instant,
    probe: bool,
    verdict: Option<Verdict>,
    /// The worker's upstream connection slot, held until the response has ended.
    pool_slot: Option<crate::proxy::upstream_pool::PoolSlot>,
}

impl Lease {
    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn is_probe(&self) -> bool {
        self.probe
    }

    pub fn set_verdict(&mut self, verdict: Verdict) {
        self.verdict = Some(verdict);
    }

    /// Keeps the request's upstream connection slot until the lease drops (the end of a
    /// relayed response).
    pub fn hold_pool_slot(&mut self, slot: Option<crate::proxy::upstream_pool::PoolSlot>) {
        self.pool_slot = slot;
    }
}

/// The verdict of one request (sent by a dropped [`Lease`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Report {
    pub verdict: Verdict,
    pub probe: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.target.in_flight.fetch_sub(1, Ordering::Relaxed);
        let verdict = self.verdict.take().unwrap_or(Verdict::Neutral);
        match &verdict {
            Verdict::Failure { .. } => {
                self.target.failures.fetch_add(1, Ordering::Relaxed);
            }
            // The common case: no message; the actor drains these on its tick.
            Verdict::Success { ttfb }
                if !self.probe && self.target.breaker() == BreakerView::Closed =>
            {
                let us = u64::try_from(ttfb.as_micros()).unwrap_or(u64::MAX);
                self.target.pending_ttfb_us.fetch_add(us, Ordering::AcqRel);
                self.target.pending_successes.fetch_add(1, Ordering::AcqRel);
                return;
            }
            _ => {}
        }
        match self.target.actor() {
            Some(actor) => actor.do_send(Report {
                verdict,
                probe: self.probe,
            }),
            None => {
                if self.probe {
                    self.target.free_probe();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Arc<Target> {
        let spec = TargetSpec::for_test("t", "c");
        Arc::new(Target::new(spec, None, Duration::from_secs(1)))
    }

    #[test]
    fn a_uri_is_parsed_once_per_path_and_keys_become_a_sensitive_header() {
        let mut spec = TargetSpec::for_test("t", "c");
        spec.base_url = "http://127.0.0.1:9/base".into();
        let t = Target::new(spec, Some("sk-secret".into()), Duration::from_secs(1));
        let chat = t.uri("/v1/chat/completions").unwrap();
        assert_eq!(
            chat.to_string(),
            "http://127.0.0.1:9/base/v1/chat/completions"
        );
        assert_eq!(
            t.uri("/v1/embeddings").unwrap().path(),
            "/base/v1/embeddings"
        );
        assert_eq!(t.uri("/v1/chat/completions").unwrap(), chat);
        assert_eq!(t.uris.load().len(), 2, "one entry per path");
        let auth = t.authorization().unwrap();
        assert_eq!(auth, "Bearer sk-secret");
        assert!(auth.is_sensitive());
        assert!(target().authorization().is_none());
        let spec = TargetSpec::for_test("k", "c");
        let unsendable = Target::new(spec, Some("bad\nkey".into()), Duration::from_secs(1));
        assert!(
            unsendable.authorization().is_none(),
            "no header from a key with a newline"
        );
        let mut bad = TargetSpec::for_test("b", "c");
        bad.base_url = "not a url".into();
        let bad = Target::new(bad, None, Duration::from_secs(1));
        assert!(bad.uri("/v1/chat/completions").is_err());
        assert!(bad.uris.load().is_empty());
    }

    #[test]
    fn tiers_rank_healthy_first_and_exclude_open() {
        assert_eq!(tier(Health::Healthy, BreakerView::Closed), Some(0));
        assert_eq!(tier(Health::Unknown, BreakerView::Closed), Some(1));
        assert_eq!(tier(Health::Healthy, BreakerView::HalfOpen), Some(2));
        assert_eq!(tier(Health::Unhealthy, BreakerView::Closed), Some(3));
        assert_eq!(tier(Health::Healthy, BreakerView::Open), None);
    }

    #[test]
    fn scheduler_rank_orders_within_a_health_tier_and_maintenance_excludes() {
        use SchedStatus::*;
        let h = |s| routing_tier(Health::Healthy, BreakerView::Closed, s, false);
        assert_eq!(h(None), Some(0));
        assert_eq!(h(Unknown), Some(0));
        assert_eq!(h(Running), Some(0));
        assert_eq!(h(Starting), Some(1));
        assert_eq!(h(Queued), Some(1));
        assert_eq!(h(StoppedFreeNodes), Some(2));
        assert_eq!(h(Stopped), Some(3));
        // Health still comes first: an unchecked running target after a healthy stopped one.
        assert!(routing_tier(Health::Unknown, BreakerView::Closed, Running, false) > h(Stopped));
        assert_eq!(
            routing_tier(Health::Healthy, BreakerView::Closed, Running, true),
            Option::None
        );
        let t = target();
        t.set_maintenance(true);
        assert!(t.try_lease().is_none());
        t.set_maintenance(false);
        assert!(t.try_lease().is_some());
    }

    #[test]
    fn lease_counts_in_flight_until_dropped() {
        let t = target();
        let a = t.try_lease().unwrap();
        let b = t.try_lease().unwrap();
        assert_eq!(t.in_flight(), 2);
        drop(a);
        assert_eq!(t.in_flight(), 1);
        drop(b);
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.requests_total(), 2);
    }

    #[test]
    fn open_breaker_gives_no_lease_and_half_open_gives_one_probe() {
        let t = target();
        t.publish(Health::Healthy, BreakerView::Open, 0);
        assert!(t.try_lease().is_none());
        t.publish(Health::Healthy, BreakerView::HalfOpen, 0);
        let probe = t.try_lease().unwrap();
        assert!(probe.is_probe());
        assert!(t.try_lease().is_none(), "only one probe at a time");
        // No actor: a probe dropped without verdict frees the slot for the next one.
        drop(probe);
        assert!(t.try_lease().is_some());
    }

    #[test]
    fn successes_on_a_closed_breaker_are_counted_without_a_message() {
        let t = target();
        for ms in [10, 30] {
            let mut l = t.try_lease().unwrap();
            l.set_verdict(Verdict::Success {
                ttfb: Duration::from_millis(ms),
            });
        }
        assert_eq!(t.take_successes(), (2, 40_000));
        assert_eq!(t.take_successes(), (0, 0));
    }

    #[test]
    fn failures_are_counted() {
        let t = target();
        let mut l = t.try_lease().unwrap();
        l.set_verdict(Verdict::Failure { error: "x".into() });
        drop(l);
        assert_eq!(t.failures_total(), 1);
    }
}
