//! `BackendActor`: one per target. Owns the target's health checks, circuit breaker and
//! latency average; publishes them into the target's shared state (read by handlers without
//! messages) and pushes routing-relevant changes to the routers of the target's models.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::actors::breaker::{Breaker, BreakerState};
use crate::actors::router::{FederatedRouterActor, TargetChanged};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::proxy::upstream_pool::is_fd_exhaustion;
use crate::routing::target::{BreakerView, Health, Report, Target, Verdict};

/// Weight of the newest sample in the latency average.
const EWMA_ALPHA: f64 = 0.2;
/// How often successes reported through the target's counters are folded in.
const SUCCESS_DRAIN_INTERVAL: Duration = Duration::from_millis(100);
/// A latency average with no new sample for this long is forgotten: the target gets the
/// next request the router would give to either it or an equally loaded one, and is
/// measured again (it may have become faster since it lost its share).
const LATENCY_FORGET_AFTER: Duration = Duration::from_secs(30);
/// Largest health-check body read (and thrown away, so the connection can be reused).
const HEALTH_BODY_LIMIT: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct BackendSettings {
    /// Health-check path; `None` disables active checks.
    pub health_path: Option<String>,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub unhealthy_threshold: u32,
    pub failure_threshold: u32,
    pub open_for: Duration,
    pub connect_timeout: Duration,
}

pub struct BackendActor {
    target: Arc<Target>,
    settings: BackendSettings,
    clock: Arc<dyn Clock>,
    routers: Vec<Addr<FederatedRouterActor>>,
    breaker: Breaker,
    health: Health,
    failed_checks: u32,
    checking: bool,
    ewma_us: f64,
    /// When `ewma_us` last took a sample (the gateway clock).
    sampled_at: Instant,
    client: Option<awc::Client>,
    reopen_timer: Option<SpawnHandle>,
    /// `gateway_health_check_duration_seconds{target, result="ok"|"failed"}`, looked up once.
    check_ok: prometheus::Histogram,
    check_failed: prometheus::Histogram,
}

impl BackendActor {
    /// A fresh actor; `restarted` is true when it replaces one that crashed, in which case
    /// the breaker starts half-open and the health is re-learned.
    pub fn new(
        target: Arc<Target>,
        settings: BackendSettings,
        clock: Arc<dyn Clock>,
        routers: Vec<Addr<FederatedRouterActor>>,
        restarted: bool,
        metrics: &Metrics,
    ) -> Self {
        let check_ok = metrics
            .health_check_duration
            .with_label_values(&[target.slug(), "ok"]);
        let check_failed = metrics
            .health_check_duration
            .with_label_values(&[target.slug(), "failed"]);
        let clock_now = clock.now();
        let breaker = if restarted {
            Breaker::restarted(settings.failure_threshold, settings.open_for)
        } else {
            Breaker::new(settings.failure_threshold, settings.open_for)
        };
        let ewma_us = target.ewma_ttfb_us() as f64;
        // Without active checks, a target is presumed healthy until requests say otherwise.
        let health = if settings.health_path.is_none() {
            Health::Healthy
        } else {
            Health::Unknown
        };
        BackendActor {
            target,
            settings,
            clock,
            routers,
            breaker,
            health,
            failed_checks: 0,
            checking: false,
            ewma_us,
            sampled_at: clock_now,
            client: None,
            reopen_timer: None,
            check_ok,
            check_failed,
        }
    }

    pub(crate) fn set_routers(&mut self, routers: Vec<Addr<FederatedRouterActor>>) {
        self.routers = routers;
    }

    fn breaker_view(&self) -> BreakerView {
        match self.breaker.state() {
            BreakerState::Closed => BreakerView::Closed,
            BreakerState::Open { .. } => BreakerView::Open,
            BreakerState::HalfOpen => BreakerView::HalfOpen,
        }
    }

    /// Writes the state handlers read, and tells the routers when the routing tier changed.
    fn publish(&mut self, ctx: &mut Context<Self>) {
        let before = self.target.tier();
        self.target
            .publish(self.health, self.breaker_view(), self.ewma_us as u64);
        if self.target.tier() != before {
            for router in &self.routers {
                router.do_send(TargetChanged);
            }
        }
        self.arm_reopen_timer(ctx);
    }

    /// While the breaker is open, wake up when the open period ends to let a probe through.
    fn arm_reopen_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.reopen_timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(deadline) = self.breaker.next_deadline() {
            let wait = deadline.saturating_duration_since(self.clock.now());
            self.reopen_timer = Some(ctx.run_later(wait, |act, ctx| {
                act.reopen_timer = None;
                act.tick(ctx);
            }));
        }
    }

    /// Folds in the successes handlers counted since the last drain: the latency average
    /// takes their mean (weighted as that many samples) and the breaker hears one success.
    fn drain_successes(&mut self) -> bool {
        let (count, ttfb_us) = self.target.take_successes();
        if count == 0 {
            return false;
        }
        let now = self.clock.now();
        if self.breaker.on_success(now) {
            self.forget_latency();
        }
        let mean = ttfb_us as f64 / count as f64;
        self.ewma_us = if self.ewma_us == 0.0 {
            mean
        } else {
            let weight = 1.0 - (1.0 - EWMA_ALPHA).powi(count.min(64) as i32);
            weight * mean + (1.0 - weight) * self.ewma_us
        };
        self.sampled_at = now;
        true
    }

    /// The latency average no longer describes the target (it recovered from an outage, or
    /// has not been measured for [`LATENCY_FORGET_AFTER`]): drop it, so the router tries
    /// the target and measures it again instead of ranking it by a stale number.
    fn forget_latency(&mut self) {
        self.ewma_us = 0.0;
    }

    /// Called every [`SUCCESS_DRAIN_INTERVAL`]: true when something handlers read changed.
    fn refresh_latency(&mut self) -> bool {
        let drained = self.drain_successes();
        let stale = self.ewma_us > 0.0
            && self.clock.now().saturating_duration_since(self.sampled_at) >= LATENCY_FORGET_AFTER;
        if stale {
            self.forget_latency();
        }
        drained || stale
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.breaker.poll(self.clock.now()) {
            self.publish(ctx);
            // Half-open: with active checks, the health check is the probe; run it now
            // rather than up to one interval later.
            self.check_health(ctx);
        }
    }

    fn check_health(&mut self, ctx: &mut Context<Self>) {
        let Some(path) = self.settings.health_path.clone() else {
            return;
        };
        if self.checking {
            return;
        }
        if matches!(self.target.spec.transport, crate::fixtures::Transport::Demo) {
            // The built-in demo answers in this process: its check is that the actor runs.
            self.check_ok.observe(0.0);
            self.on_health(Ok(()), ctx);
            return;
        }
        let Some(client) = self.client.as_ref() else {
            return;
        };
        self.checking = true;
        let url = format!("{}{}", self.target.spec.base_url, path);
        let mut req = client.get(url).timeout(self.settings.health_timeout);
        if let Some(authorization) = self.target.authorization() {
            req = req.insert_header((
                actix_web::http::header::AUTHORIZATION,
                authorization.clone(),
            ));
        }
        let (ok, failed) = (self.check_ok.clone(), self.check_failed.clone());
        let check = async move {
            let started = std::time::Instant::now();
            let result = match req.send().await {
                Ok(mut res) => {
                    let status = res.status();
                    let _ = res.body().limit(HEALTH_BODY_LIMIT).await;
                    if status.is_success() {
                        Ok(())
                    } else {
                        Err(CheckFailure {
                            error: format!("health check answered HTTP {}", status.as_u16()),
                            timed_out: false,
                            ours: false,
                        })
                    }
                }
                Err(e) => Err(CheckFailure {
                    timed_out: matches!(e, awc::error::SendRequestError::Timeout),
                    ours: matches!(&e, awc::error::SendRequestError::Connect(
                        awc::error::ConnectError::Io(io)) if is_fd_exhaustion(io)),
                    error: format!("health check failed: {e}"),
                }),
            };
            let took = started.elapsed().as_secs_f64();
            if result.is_ok() {
                ok.observe(took)
            } else {
                failed.observe(took)
            }
            result
        };
        ctx.spawn(check.into_actor(self).map(|result, act, ctx| {
            act.checking = false;
            act.on_health(result, ctx);
        }));
    }

    /// A check's outcome. With active checks the check is also the half-open probe: a
    /// passing one closes a half-open breaker, a failing one opens it again. A check that
    /// times out marks the target unhealthy at once (requests sent to it would hang, maybe
    /// for the whole response timeout), and so does any failed check of a target whose
    /// health is still unknown; other failures need `unhealthy_threshold` in a row.
    fn on_health(&mut self, result: Result<(), CheckFailure>, ctx: &mut Context<Self>) {
        let now = self.clock.now();
        self.breaker.poll(now);
        let half_open = self.breaker.state() == BreakerState::HalfOpen;
        match result {
            Ok(()) => {
                self.failed_checks = 0;
                let closed = half_open && self.breaker.on_success(now);
                if closed || self.health == Health::Unhealthy {
                    self.forget_latency();
                }
                self.health = Health::Healthy;
            }
            // The gateway is out of file descriptors: that says nothing about the target.
            Err(failure) if failure.ours => {}
            Err(failure) => {
                self.failed_checks = self.failed_checks.saturating_add(1);
                // A target not seen healthy yet (just started or rebuilt) has no good record
                // to keep: its first failed check says it is down (`/v1/models`: offline,
                // not unknown until a second check). A healthy one gets the threshold's
                // benefit of the doubt.
                if failure.timed_out
                    || self.health == Health::Unknown
                    || self.failed_checks >= self.settings.unhealthy_threshold
                {
                    self.health = Health::Unhealthy;
                }
                if half_open {
                    self.breaker.on_failure(now);
                }
                self.target.set_last_error(Some(failure.error));
            }
        }
        self.publish(ctx);
    }
}

/// Why a health check failed.
struct CheckFailure {
    error: String,
    /// No answer within `health.timeout_ms`.
    timed_out: bool,
    /// The gateway's own fault (out of file descriptors): not counted against the target.
    ours: bool,
}

impl Actor for BackendActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.target.set_actor(ctx.address().recipient());
        // Without active checks, a request has to be the half-open probe.
        self.target
            .set_request_probes(self.settings.health_path.is_none());
        self.client = Some(
            awc::Client::builder()
                .connector(awc::Connector::new().timeout(self.settings.connect_timeout))
                .disable_redirects()
                .finish(),
        );
        self.publish(ctx);
        ctx.run_interval(SUCCESS_DRAIN_INTERVAL, |act, ctx| {
            if act.refresh_latency() {
                act.publish(ctx);
            }
        });
        if self.settings.health_path.is_some() {
            self.check_health(ctx);
            ctx.run_interval(self.settings.health_interval, |act, ctx| {
                act.check_health(ctx)
            });
        }
    }
}

impl Handler<Report> for BackendActor {
    type Result = ();

    fn handle(&mut self, msg: Report, ctx: &mut Context<Self>) {
        // Successes counted before this report come first (a success between two failures
        // breaks the run of consecutive failures).
        self.drain_successes();
        let now: Instant = self.clock.now();
        match msg.verdict {
            Verdict::Success { ttfb } => {
                // The half-open probe closed the breaker: latencies from before the outage
                // say nothing about the target now.
                if self.breaker.on_success(now) {
                    self.forget_latency();
                }
                let sample = ttfb.as_micros() as f64;
                self.ewma_us = if self.ewma_us == 0.0 {
                    sample
                } else {
                    EWMA_ALPHA * sample + (1.0 - EWMA_ALPHA) * self.ewma_us
                };
                self.sampled_at = now;
            }
            Verdict::Failure { error } => {
                self.target.set_last_error(Some(error));
                self.breaker.on_failure(now);
            }
            Verdict::Neutral => {
                if msg.probe {
                    self.target.free_probe();
                }
            }
        }
        self.publish(ctx);
    }
}

/// Re-evaluate time-based state now (the breaker's open period). Sent by timers, and by
/// tests after moving a manual clock.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Tick;

impl Handler<Tick> for BackendActor {
    type Result = ();

    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        self.tick(ctx);
    }
}

/// Stop this actor (its target was removed by a reload and has drained).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for BackendActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Run a health check now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CheckNow;

impl Handler<CheckNow> for BackendActor {
    type Result = ();

    fn handle(&mut self, _: CheckNow, ctx: &mut Context<Self>) {
        self.check_health(ctx);
    }
}

/// Make this actor panic: a fault injected by tests (debug builds only) to prove that the
/// supervisor rebuilds it.
#[cfg(debug_assertions)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash;

#[cfg(debug_assertions)]
impl Handler<Crash> for BackendActor {
    type Result = ();

    #[allow(clippy::panic)]
    fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
        panic!("injected fault in BackendActor {}", self.target.slug());
    }
}
