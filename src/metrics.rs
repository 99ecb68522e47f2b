//! Every Prometheus metric the gateway exports, registered once in a private registry and
//! owned by `AppState` (no global registry). Names start with `gateway_`; no label takes
//! unbounded values: `route` comes from config, `model` and `target` from the catalog (a
//! model name nobody configured is counted as `model="unknown"`), `status` is an HTTP
//! status, and `kind`/`reason`/`result` are fixed sets named here.
//!
//! Counters and histograms are atomics; the request path touches a handful of them once,
//! when the request's record is written. Target gauges (up, breaker, in flight, actor
//! restarts) are read from the targets' published state when `/metrics` is scraped.
//!
//! Some metrics belong to components that are not built yet. They are registered with
//! their final names and labels so dashboards and alerts can be written now, and stay at
//! zero until those components feed them:
//! - quota/rate limiting: `gateway_queue_wait_seconds`, `gateway_rate_limit_rejections_total`,
//!   `gateway_quota_rejections_total`;
//! - auth: `gateway_auth_failures_total`, `gateway_introspection_cache_total`;
//! - storage (the log writer): `gateway_log_queue_depth`, `gateway_log_spills_total`,
//!   `gateway_log_quarantined_total`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::proxy::record::{Ending, RequestRecord};
use crate::routing::directory::Directory;
use crate::routing::target::BreakerView;

/// Why an upstream attempt or response failed (`gateway_upstream_errors_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Broken,
    DiedBeforeFirstByte,
    Timeout,
    Status5xx,
    RateLimited,
    StreamBroken,
    StreamIdle,
}

impl UpstreamErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Broken => "broken_connection",
            UpstreamErrorKind::DiedBeforeFirstByte => "died_before_first_byte",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Status5xx => "status_5xx",
            UpstreamErrorKind::RateLimited => "rate_limited",
            UpstreamErrorKind::StreamBroken => "stream_broken",
            UpstreamErrorKind::StreamIdle => "stream_idle_timeout",
        }
    }
}

/// The model label for a model the catalog does not know (bounded cardinality).
pub const UNKNOWN_MODEL: &str = "unknown";

/// Latency buckets in seconds, from a cached answer to a long generation.
const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];
const SHORT_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub ttft: HistogramVec,
    pub prompt_tokens: IntCounterVec,
    pub completion_tokens: IntCounterVec,
    pub in_flight: IntGauge,
    pub queue_wait: Histogram,
    pub rate_limit_rejections: IntCounterVec,
    pub quota_rejections: IntCounterVec,
    targets: TargetGauges,
    pub health_check_duration: HistogramVec,
    pub retries: IntCounterVec,
    pub failovers: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub stream_disconnects: IntCounterVec,
    pub auth: AuthCounters,
    log: LogGauges,
    /// Redis mode: 1 while Redis answers the quota component, 0 while it falls back.
    pub quota_redis_up: IntGauge,
    /// Redis mode: admissions decided on local limits because Redis was unreachable.
    pub quota_redis_fallback: IntCounter,
    pub cache: IntCounterVec,
    pub cache_entries: IntGauge,
    pub reloads: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub batches: BatchMetrics,
    /// Upstream connection slots and the gateway's own file descriptors.
    pub pool: crate::proxy::upstream_pool::PoolMetrics,
}

/// The auth component's counters.
pub struct AuthCounters {
    /// Refused credentials, by reason.
    pub failures: IntCounterVec,
    /// Refused credentials on the admin API, by reason (`auth::audit::AdminRefusal`).
    pub admin_failures: IntCounterVec,
    /// Token introspection cache lookups: hit, miss.
    pub introspection_cache: IntCounterVec,
}

impl AuthCounters {
    fn new(r: &Registry) -> AuthCounters {
        AuthCounters {
        failures: counter(
            r,
            "gateway_auth_failures_total",
            "Refused credentials, by reason (fed by the auth component).",
            &["reason"],
        ),
        admin_failures: counter(
            r,
            "gateway_admin_auth_failures_total",
            "Refused credentials on the admin API, by reason: missing_token, invalid_admin_key, no_admin_key, invalid_token, not_admin.",
            &["reason"],
        ),
        introspection_cache: counter(
            r,
            "gateway_introspection_cache_total",
            "Token introspection cache lookups, by result: hit, miss (fed by the auth component).",
            &["result"],
        ),
        }
    }
}

/// The batch runner's metrics.
pub struct BatchMetrics {
    /// Batch lines finished, by result: completed (2xx), failed.
    pub lines: IntCounterVec,
    /// Batches this process is running now.
    pub active: IntGauge,
}

impl BatchMetrics {
    fn new(r: &Registry) -> BatchMetrics {
        BatchMetrics {
            lines: counter(
                r,
                "gateway_batch_lines_total",
                "Batch lines finished by this process, by result: completed (2xx answer), failed.",
                &["result"],
            ),
            active: int_gauge(
                r,
                "gateway_batches_active",
                "Batches this process is running now.",
            ),
        }
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| bad(name, e));
    register(r, name, Box::new(c.clone()));
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| bad(name, e));
    register(r, name, Box::new(g.clone()));
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str], b: &[f64]) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(b.to_vec()), labels)
        .unwrap_or_else(|e| bad(name, e));
    register(r, name, Box::new(h.clone()));
    h
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| bad(name, e));
    register(r, name, Box::new(g.clone()));
    g
}

fn int_counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| bad(name, e));
    register(r, name, Box::new(c.clone()));
    c
}

fn plain_histogram(r: &Registry, name: &str, help: &str, b: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(b.to_vec()))
        .unwrap_or_else(|e| bad(name, e));
    register(r, name, Box::new(h.clone()));
    h
}

fn register(r: &Registry, name: &str, c: Box<dyn prometheus::core::Collector>) {
    if let Err(e) = r.register(c) {
        bad(name, e)
    }
}

/// Metric definitions are constants of this file: a bad one is a programming error that
/// the unit tests catch, not something a deployment can cause.
#[allow(clippy::panic)]
fn bad(name: &str, e: prometheus::Error) -> ! {
    panic!("metric {name} is defined wrongly: {e}")
}

/// The gauges rebuilt from the published directory at each scrape: one series per target
/// (and per cluster with a scheduler); targets removed by a reload disappear.
struct TargetGauges {
    up: IntGaugeVec,
    breaker_state: IntGaugeVec,
    in_flight: IntGaugeVec,
    actor_restarts: IntGaugeVec,
    /// Jobs the cluster's last scheduler probe could not read (and skipped).
    scheduler_unreadable_jobs: IntGaugeVec,
}

impl TargetGauges {
    fn new(r: &Registry) -> TargetGauges {
        let up = gauge(
            r,
            "gateway_target_up",
            "1 when the target is routable with a good health check, else 0.",
            &["target"],
        );
        let breaker_state = gauge(
            r,
            "gateway_breaker_state",
            "Circuit breaker of a target: 0 closed, 1 open, 2 half-open.",
            &["target"],
        );
        let in_flight = gauge(
            r,
            "gateway_target_in_flight",
            "Requests in flight on a target.",
            &["target"],
        );
        let actor_restarts = gauge(
            r,
            "gateway_target_actor_restarts",
            "Times a target's BackendActor was rebuilt after a crash (since its target was created).",
            &["target"],
        );
        let scheduler_unreadable_jobs = gauge(
            r,
            "gateway_scheduler_unreadable_jobs",
            "Jobs in the cluster's last scheduler output that could not be read and were skipped (the others still count).",
            &["cluster"],
        );
        TargetGauges {
            up,
            breaker_state,
            in_flight,
            actor_restarts,
            scheduler_unreadable_jobs,
        }
    }

    fn refresh(&self, directory: &Directory) {
        self.up.reset();
        self.breaker_state.reset();
        self.in_flight.reset();
        self.actor_restarts.reset();
        self.scheduler_unreadable_jobs.reset();
        for (name, c) in &directory.clusters {
            if c.settings.scheduler != crate::config::SchedulerKind::None {
                self.scheduler_unreadable_jobs
                    .with_label_values(&[name.as_str()])
                    .set(c.snapshot().observation.skipped as i64);
            }
        }
        for t in &directory.targets {
            let slug = [t.slug()];
            self.up
                .with_label_values(&slug)
                .set(i64::from(t.tier() == Some(0)));
            self.breaker_state
                .with_label_values(&slug)
                .set(match t.breaker() {
                    BreakerView::Closed => 0,
                    BreakerView::Open => 1,
                    BreakerView::HalfOpen => 2,
                });
            self.in_flight
                .with_label_values(&slug)
                .set(i64::from(t.in_flight()));
            self.actor_restarts
                .with_label_values(&slug)
                .set(i64::from(t.restarts()));
        }
    }
}

/// The request log writer's state, copied from its `LogStats` at each scrape.
struct LogGauges {
    queue_depth: IntGauge,
    spills: IntCounter,
    /// Request-log rows the database refused on their own (kept in the quarantine file).
    quarantined: IntCounter,
}

impl LogGauges {
    fn new(r: &Registry) -> LogGauges {
        LogGauges {
            queue_depth: int_gauge(
                r,
                "gateway_log_queue_depth",
                "Request-log rows waiting for the database writer (fed by the storage component).",
            ),
            spills: int_counter(
                r,
                "gateway_log_spills_total",
                "Request-log rows spilled to disk because the queue was full (fed by the storage component).",
            ),
            quarantined: int_counter(
                r,
                "gateway_log_quarantined_total",
                "Request-log rows the database refused on their own, moved to quarantine.jsonl beside the spill file.",
            ),
        }
    }

    fn refresh(&self, stats: &crate::store::log_sink::LogStats) {
        use std::sync::atomic::Ordering;
        self.queue_depth
            .set(i64::try_from(stats.queued.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        let spilled = stats.spilled.load(Ordering::Relaxed);
        if spilled > self.spills.get() {
            self.spills.inc_by(spilled - self.spills.get());
        }
        let quarantined = stats.quarantined.load(Ordering::Relaxed);
        if quarantined > self.quarantined.get() {
            self.quarantined
                .inc_by(quarantined - self.quarantined.get());
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let metrics = Metrics {
            requests: counter(
                &r,
                "gateway_requests_total",
                "Inference requests by route, model, target (\"\" when none was reached) and status.",
                &["route", "model", "target", "status"],
            ),
            request_duration: histogram(
                &r,
                "gateway_request_duration_seconds",
                "Inference request duration, from the request head to the last byte sent.",
                &["route", "model"],
                &LATENCY_BUCKETS,
            ),
            ttft: histogram(
                &r,
                "gateway_time_to_first_token_seconds",
                "Time from the request head to the first response byte from the target.",
                &["route", "model"],
                &LATENCY_BUCKETS,
            ),
            prompt_tokens: counter(
                &r,
                "gateway_prompt_tokens_total",
                "Prompt tokens reported by targets (usage objects).",
                &["model"],
            ),
            completion_tokens: counter(
                &r,
                "gateway_completion_tokens_total",
                "Completion tokens reported by targets (usage objects).",
                &["model"],
            ),
            in_flight: int_gauge(
                &r,
                "gateway_requests_in_flight",
                "Inference requests being handled now (streams included).",
            ),
            queue_wait: plain_histogram(
                &r,
                "gateway_queue_wait_seconds",
                "Time a request waited for admission (fed by the quota component).",
                &SHORT_BUCKETS,
            ),
            rate_limit_rejections: counter(
                &r,
                "gateway_rate_limit_rejections_total",
                "Requests refused by rate limiting, by reason (fed by the quota component).",
                &["reason"],
            ),
            quota_rejections: counter(
                &r,
                "gateway_quota_rejections_total",
                "Requests refused by quotas, by reason (fed by the quota component).",
                &["reason"],
            ),
            targets: TargetGauges::new(&r),
            health_check_duration: histogram(
                &r,
                "gateway_health_check_duration_seconds",
                "Duration of active health checks, by target and result (ok, failed).",
                &["target", "result"],
                &SHORT_BUCKETS,
            ),
            retries: counter(
                &r,
                "gateway_retries_total",
                "Requests resent to the same target on a fresh connection (stale pooled connection).",
                &["target"],
            ),
            failovers: counter(
                &r,
                "gateway_failovers_total",
                "Attempts moved to another target after a failure, by model.",
                &["model"],
            ),
            upstream_errors: counter(
                &r,
                "gateway_upstream_errors_total",
                "Failed upstream attempts and broken responses, by target and kind.",
                &["target", "kind"],
            ),
            stream_disconnects: counter(
                &r,
                "gateway_stream_disconnects_total",
                "Responses the client went away from before the end, by route.",
                &["route"],
            ),
            auth: AuthCounters::new(&r),
            log: LogGauges::new(&r),
            quota_redis_up: int_gauge(&r, "gateway_quota_redis_up", "Redis mode: 1 while Redis answers the quota component, 0 while quotas fall back to local limits (0 without redis.url)."),
            quota_redis_fallback: int_counter(
                &r,
                "gateway_quota_redis_fallback_total",
                "Redis mode: requests admitted on local limits because Redis was unreachable.",
            ),
            cache: counter(
                &r,
                "gateway_cache_requests_total",
                "Response cache lookups by result: hit, miss, bypass (not cacheable).",
                &["result"],
            ),
            cache_entries: int_gauge(
                &r,
                "gateway_cache_entries",
                "Entries in the response cache.",
            ),
            reloads: counter(
                &r,
                "gateway_reloads_total",
                "Configuration and fixture reloads, by result: ok, failed.",
                &["result"],
            ),
            build_info: gauge(
                &r,
                "gateway_build_info",
                "Always 1; the version label is the running build.",
                &["version"],
            ),
            batches: BatchMetrics::new(&r),
            pool: crate::proxy::upstream_pool::PoolMetrics::register(&r)
                .unwrap_or_else(|e| bad("gateway_upstream_pool_*", e)),
            registry: r,
        };
        metrics.prime();
        metrics
    }

    /// Series with a fixed set of label values exist from the start (build info at 1, the
    /// others at zero), so dashboards and alerts see them (and rate() works) before the
    /// first event.
    fn prime(&self) {
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for result in ["completed", "failed"] {
            self.batches.lines.with_label_values(&[result]);
        }
        for result in ["ok", "failed"] {
            self.reloads.with_label_values(&[result]);
        }
        for result in ["hit", "miss"] {
            self.auth.introspection_cache.with_label_values(&[result]);
        }
    }

    /// Counts one finished inference request (called once, where its record is written).
    pub fn observe_request(&self, record: &RequestRecord) {
        let model = if record.model_known() {
            record.model()
        } else {
            UNKNOWN_MODEL
        };
        let route = record.route();
        let status = status_label(record.status());
        self.requests
            .with_label_values(&[route, model, record.target_slug(), status])
            .inc();
        self.request_duration
            .with_label_values(&[route, model])
            .observe(record.elapsed().as_secs_f64());
        if let Some(ttft) = record.ttft() {
            self.ttft
                .with_label_values(&[route, model])
                .observe(ttft.as_secs_f64());
        }
        if let Some(usage) = record.usage() {
            if usage.prompt_tokens > 0 {
                self.prompt_tokens
                    .with_label_values(&[model])
                    .inc_by(usage.prompt_tokens);
            }
            if usage.completion_tokens > 0 {
                self.completion_tokens
                    .with_label_values(&[model])
                    .inc_by(usage.completion_tokens);
            }
        }
        match record.ending() {
            Ending::ClientGone => self.stream_disconnects.with_label_values(&[route]).inc(),
            Ending::UpstreamBroke | Ending::IdleTimeout => {
                let kind = if record.ending() == Ending::IdleTimeout {
                    UpstreamErrorKind::StreamIdle
                } else {
                    UpstreamErrorKind::StreamBroken
                };
                self.upstream_error(record.target_slug(), kind);
            }
            Ending::Complete | Ending::Rejected | Ending::Shutdown => {}
        }
    }

    /// Starts the per-route series at zero (routes are fixed for the process's life).
    pub fn init_routes<'a>(&self, routes: impl IntoIterator<Item = &'a str>) {
        for route in routes {
            self.stream_disconnects.with_label_values(&[route]);
        }
    }

    pub fn upstream_error(&self, target: &str, kind: UpstreamErrorKind) {
        self.upstream_errors
            .with_label_values(&[target, kind.name()])
            .inc();
    }

    /// Refreshes the per-target gauges from the published directory (on scrape). Targets
    /// removed by a reload disappear from the output.
    pub fn refresh_targets(&self, directory: &Directory) {
        self.targets.refresh(directory);
    }

    /// The request log writer's queue depth and spills, read at scrape time.
    pub fn refresh_log(&self, stats: &crate::store::log_sink::LogStats) {
        self.log.refresh(stats);
    }

    /// Counts a refused credential by a bounded reason.
    pub fn auth_failure(&self, error: &crate::error::ApiError) {
        self.auth
            .failures
            .with_label_values(&[auth_reason(error)])
            .inc();
    }

    /// Counts a request refused by a quota or rate limit (by its error code).
    pub fn quota_refusal(&self, error: &crate::error::ApiError) {
        use crate::error::ApiError;
        match error {
            ApiError::QuotaExceeded { .. } => self
                .quota_rejections
                .with_label_values(&[error.code()])
                .inc(),
            ApiError::RateLimited { .. } => self
                .rate_limit_rejections
                .with_label_values(&[error.code()])
                .inc(),
            _ => {}
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Names of every registered metric family (for tests and docs).
    pub fn names(&self) -> Vec<String> {
        self.registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect()
    }
}

/// Counts one request in `gateway_requests_in_flight` until dropped (the request's record
/// carries it, so a stream counts until its last byte or its client's departure).
#[derive(Debug)]
pub struct InFlight(IntGauge);

impl InFlight {
    pub fn new(gauge: &IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// HTTP statuses as label values without allocating (status codes are a small set).
fn status_label(status: u16) -> &'static str {
    const KNOWN: [(u16, &str); 22] = [
        (200, "200"),
        (201, "201"),
        (204, "204"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (408, "408"),
        (409, "409"),
        (413, "413"),
        (422, "422"),
        (429, "429"),
        (499, "499"),
        (500, "500"),
        (501, "501"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
        (508, "508"),
        (0, "0"),
        (206, "206"),
    ];
    KNOWN
        .iter()
        .find(|(s, _)| *s == status)
        .map(|(_, l)| *l)
        .unwrap_or(match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        })
}

/// The bounded reason of a refused credential (a metric label and an audit field).
pub fn auth_reason(error: &crate::error::ApiError) -> &'static str {
    use crate::error::ApiError;
    match error {
        ApiError::Unauthorized(m) if m.starts_with("Missing") => "missing_token",
        ApiError::Unauthorized(m) if m.starts_with("Malformed") => "malformed_header",
        ApiError::Unauthorized(m) if m.contains("expired") => "expired",
        ApiError::Unauthorized(_) => "invalid_token",
        ApiError::Forbidden(_) => "policy",
        ApiError::AuthUnavailable => "provider_unavailable",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn at_least_twenty_gateway_metrics_are_registered() {
        let m = Metrics::new();
        // Vec metrics with no series yet are not gathered; touch one series of each.
        m.requests.with_label_values(&["chat", "m", "t", "200"]);
        let text = m.render().unwrap();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert!(families.iter().all(|f| f.starts_with("gateway_")));
        // Every family is declared in the source, with the final names.
        for name in [
            "gateway_requests_total",
            "gateway_request_duration_seconds",
            "gateway_time_to_first_token_seconds",
            "gateway_prompt_tokens_total",
            "gateway_completion_tokens_total",
            "gateway_requests_in_flight",
            "gateway_queue_wait_seconds",
            "gateway_rate_limit_rejections_total",
            "gateway_quota_rejections_total",
            "gateway_target_up",
            "gateway_breaker_state",
            "gateway_target_in_flight",
            "gateway_health_check_duration_seconds",
            "gateway_retries_total",
            "gateway_failovers_total",
            "gateway_upstream_errors_total",
            "gateway_stream_disconnects_total",
            "gateway_auth_failures_total",
            "gateway_introspection_cache_total",
            "gateway_log_queue_depth",
            "gateway_log_spills_total",
            "gateway_log_quarantined_total",
            "gateway_quota_redis_up",
            "gateway_quota_redis_fallback_total",
            "gateway_cache_requests_total",
            "gateway_cache_entries",
        ] {
            assert!(DECLARED.contains(name), "{name} not declared");
        }
    }

    const DECLARED: &str = include_str!("metrics.rs");

    #[test]
    fn a_request_record_feeds_counts_tokens_and_latency() {
        let m = Metrics::new();
        let mut r = RequestRecord::new("id".into(), "chat", Instant::now());
        r.on_parsed("m", false);
        r.on_model_known();
        let t = std::sync::Arc::new(crate::routing::target::Target::new(
            crate::fixtures::TargetSpec::for_test("t", "c"),
            None,
            Duration::from_secs(1),
        ));
        r.on_attempt(&t);
        r.on_first_byte(Duration::from_millis(3));
        r.on_answer(200);
        r.on_usage(Some(crate::proxy::usage::Usage {
            prompt_tokens: 5,
            completion_tokens: 7,
            total_tokens: 12,
        }));
        m.observe_request(&r);
        let mut gone = RequestRecord::new("id2".into(), "chat", Instant::now());
        gone.on_attempt(&t);
        gone.on_head(200);
        gone.on_end(Ending::ClientGone, None, 0);
        gone.on_parsed("not-configured", true);
        m.observe_request(&gone);
        let text = m.render().unwrap();
        assert!(text.contains(
            r#"gateway_requests_total{model="m",route="chat",status="200",target="t"} 1"#
        ));
        assert!(text.contains(
            r#"gateway_requests_total{model="unknown",route="chat",status="200",target="t"} 1"#
        ));
        assert!(text.contains(r#"gateway_prompt_tokens_total{model="m"} 5"#));
        assert!(text.contains(r#"gateway_completion_tokens_total{model="m"} 7"#));
        assert!(text.contains(r#"gateway_stream_disconnects_total{route="chat"} 1"#));
        assert!(
            text.contains(r#"gateway_time_to_first_token_seconds_count{model="m",route="chat"} 1"#)
        );
    }

    /// Every metric the shipped Grafana dashboard queries exists.
    #[test]
    fn the_dashboard_queries_only_metrics_that_exist() {
        let dashboard = include_str!("../config/grafana/dashboards/inference-gateway.json");
        let mut names: Vec<&str> = dashboard
            .match_indices("gateway_")
            .map(|(i, _)| {
                let rest = &dashboard[i..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        names.sort();
        names.dedup();
        assert!(names.len() >= 15, "{names:?}");
        for name in names {
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                DECLARED.contains(&format!("\"{base}\"")),
                "the dashboard queries {name}, which is not registered"
            );
        }
    }

    #[test]
    fn status_labels_are_bounded() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(599), "5xx");
    }
}
