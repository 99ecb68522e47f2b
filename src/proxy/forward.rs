//! Sends one inference request to a model's targets: pick, send, and fail over on failures
//! that happened before anything reached the client (connection errors, 5xx, 429, an
//! upstream that dies before its first byte). Once a 2xx answer's first chunk is in hand,
//! the response is committed and the [`Relay`] streams the rest.

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use awc::error::SendRequestError;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::cache::{CacheKey, ResponseCache};
use crate::error::{code, envelope, ApiError};
use crate::fixtures::Transport;
use crate::metrics::{Metrics, UpstreamErrorKind};
use crate::proxy::demo;
use crate::proxy::globus_compute::{self, GlobusShared};
use crate::proxy::record::RequestRecord;
use crate::proxy::relay::{CacheStore, Finish, Framing, Relay};
use crate::proxy::upstream_pool::{is_fd_exhaustion, PoolGate};
use crate::proxy::usage::UsageMeter;
use crate::routing::directory::ModelEntry;
use crate::routing::ranking::{pick, Pin};
use crate::routing::target::{BreakerView, Lease, Target, Verdict};

// Header names set or read on every request, built once: a name made from a `&str` is
// parsed, and unless it is a standard one allocated, at every use.
use crate::request_id::REQUEST_ID;
/// Counts how many gateways a request has passed through (loop protection).
pub static HOPS: HeaderName = HeaderName::from_static("x-inference-gateway-hops");
static ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
/// Largest upstream error body read (to pass a 4xx through or log a 5xx).
const ERROR_BODY_LIMIT: usize = 1024 * 1024;
/// Client headers passed upstream as they are (beside content-type and accept).
static PASSED_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("anthropic-version"),
    HeaderName::from_static("anthropic-beta"),
    HeaderName::from_static("openai-beta"),
    header::ACCEPT,
];

/// Per-worker upstream HTTP client (awc clients are not Send: one per worker thread).
pub struct Upstream {
    client: awc::Client,
    /// Sends the one resend after a stale pooled connection: its connections are never
    /// reused (lifetime zero), so the resend cannot meet another stale one.
    fresh: awc::Client,
    /// The worker's cap on upstream requests (`pool_limit_per_worker`), counted and logged.
    pool: PoolGate,
    settings: crate::config::Upstream,
    /// The Globus Compute transport's shared caches (all workers share one).
    globus: Option<Arc<GlobusShared>>,
}

impl Upstream {
    pub fn new(settings: &crate::config::Upstream) -> Self {
        // awc's own limit would make requests wait in silence: `pool` is the cap (0 here is
        // no limit).
        let connector = awc::Connector::new()
            .timeout(settings.connect_timeout_ms.duration())
            .limit(0)
            .conn_keep_alive(settings.pool_idle_secs.duration());
        let client = awc::Client::builder()
            .connector(connector)
            .disable_redirects()
            .timeout(settings.response_timeout_secs.duration())
            .finish();
        let fresh = awc::Client::builder()
            .connector(
                awc::Connector::new()
                    .timeout(settings.connect_timeout_ms.duration())
                    .limit(0)
                    .conn_keep_alive(Duration::ZERO)
                    .conn_lifetime(Duration::ZERO),
            )
            .disable_redirects()
            .timeout(settings.response_timeout_secs.duration())
            .finish();
        Upstream {
            client,
            fresh,
            pool: PoolGate::new(settings.pool_limit_per_worker),
            settings: settings.clone(),
            globus: None,
        }
    }

    /// Enables the Globus Compute transport for targets that use it.
    pub fn with_globus(mut self, globus: Arc<GlobusShared>) -> Self {
        self.globus = Some(globus);
        self
    }
}

/// Everything about the incoming request that forwarding needs.
pub struct Call {
    pub model: Arc<ModelEntry>,
    pub upstream_path: &'static str,
    /// Sent upstream as the body's type: JSON, or the client's multipart type (boundary).
    pub content_type: HeaderValue,
    pub body: Bytes,
    /// The model name the client asked for (rewritten when a target serves another name).
    pub requested_model: String,
    pub pin: Option<Pin>,
    /// Who is asking: only targets they may use are picked.
    pub caller: Arc<crate::auth::identity::Identity>,
    pub stream: bool,
    /// The gateway added `stream_options.include_usage`: hide the usage-only event.
    pub hide_usage: bool,
    /// The request id as a header value (sent upstream and returned; cloned by refcount).
    pub request_id: HeaderValue,
    pub hops: u32,
    pub client_headers: Vec<(HeaderName, HeaderValue)>,
    pub metrics: Arc<Metrics>,
    /// Where to store a whole 2xx JSON answer (cacheable requests only).
    pub cache: Option<(Arc<ResponseCache>, CacheKey)>,
}

/// Picks from the client's headers those passed upstream.
pub fn passed_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    PASSED_HEADERS
        .iter()
        .filter_map(|name| headers.get(name).map(|v| (name.clone(), v.clone())))
        .collect()
}

/// Why one attempt did not produce a response to commit.
pub(crate) enum AttemptError {
    /// Before the request could have reached the target's application (connect failed).
    /// The text is shown to the client after the target's id: no URL, no secret.
    Connect(String),
    /// The connection was closed or reset before any byte of an answer: most often a
    /// pooled connection the target had already closed (llama-server closes after every
    /// stream while announcing keep-alive). Resent once on a fresh connection.
    Broken(String),
    /// The target answered 2xx, then died before the first body byte.
    Died(String),
    /// No response head in time.
    Timeout,
    /// The target answered 5xx but 501 (message for the log).
    Status5xx(u16, String),
    /// The target answered 429.
    RateLimited(Option<Duration>, Bytes),
    /// The target is coming up (a Globus Compute endpoint with no managers yet): not a
    /// failure; retry after this long.
    Starting(Duration),
    /// The gateway is out of file descriptors: its own fault, never the target's.
    OutOfFds(String),
}

impl AttemptError {
    /// The metric label of an upstream error; `None` for a target that is only starting.
    fn kind(&self) -> Option<UpstreamErrorKind> {
        Some(match self {
            AttemptError::Connect(_) => UpstreamErrorKind::Connect,
            AttemptError::Broken(_) => UpstreamErrorKind::Broken,
            AttemptError::Died(_) => UpstreamErrorKind::DiedBeforeFirstByte,
            AttemptError::Timeout => UpstreamErrorKind::Timeout,
            AttemptError::Status5xx(..) => UpstreamErrorKind::Status5xx,
            AttemptError::RateLimited(..) => UpstreamErrorKind::RateLimited,
            AttemptError::Starting(_) | AttemptError::OutOfFds(_) => return None,
        })
    }

    /// How the attempt failed, for the client: the failure class, never a URL, a secret
    /// or the backend's own text.
    fn client_cause(&self, target: &Target) -> String {
        match self {
            AttemptError::Connect(m) => m.clone(),
            AttemptError::Broken(_) => "the connection broke before an answer".into(),
            AttemptError::Died(_) => "closed the connection before the first byte".into(),
            AttemptError::Timeout => format!(
                "timed out after {} s",
                target.response_timeout.as_secs_f64()
            ),
            AttemptError::Status5xx(status, _) => format!("answered {status}"),
            AttemptError::RateLimited(..) => "answered 429".into(),
            AttemptError::Starting(_) => "starting".into(),
            AttemptError::OutOfFds(_) => "the gateway is out of file descriptors".into(),
        }
    }
}

pub async fn forward(
    upstream: &Upstream,
    call: Call,
    mut record: RequestRecord,
    log: &slog::Logger,
) -> Result<HttpResponse, (ApiError, RequestRecord)> {
    let settings = &upstream.settings;
    let mut tried: Vec<Arc<Target>> = Vec::new();
    let mut last: Option<AttemptError> = None;
    // "target a: connection refused" for every failed attempt, for the client's message.
    let mut causes: Vec<String> = Vec::new();
    let mut stale_retry_used = false;
    let model_name = call.requested_model.clone();
    let json = call.content_type.as_bytes() == b"application/json";
    // One upstream connection slot of this worker for the whole request (all attempts).
    let mut pool_slot = upstream.pool.acquire(&call.metrics.pool, log).await;

    let accept = |t: &Target| {
        call.pin.as_ref().is_none_or(|p| p.matches(t))
            && call.caller.may_use(&t.spec)
            // Globus Compute carries JSON bodies only.
            && (json || !matches!(t.spec.transport, Transport::GlobusCompute(_)))
    };

    while record.attempts() < settings.max_attempts.get() {
        let lease = pick(&call.model.ranked.load(), &accept, &tried);
        let Some(mut lease) = lease else {
            // Say why the targets not tried could not be: the client's message names them.
            for t in call.model.targets.iter() {
                if accept(t) && !tried.iter().any(|x| Arc::ptr_eq(x, t)) {
                    causes.push(format!("target {}: {}", t.slug(), unavailable_cause(t)));
                }
            }
            break;
        };
        if record.attempts() > 0 {
            let backoff = settings.retry_backoff_ms.duration() * 2u32.pow(record.attempts() - 1);
            actix_rt::time::sleep(backoff.min(Duration::from_secs(2))).await;
        }
        let target = Arc::clone(lease.target());
        record.on_attempt(&target);
        if record.attempts() > 1 {
            call.metrics
                .failovers
                .with_label_values(&[&call.requested_model])
                .inc();
        }

        let body = match body_for(&call, &target, json) {
            Ok(body) => body,
            Err(e) => {
                return Err((ApiError::internal("rewriting the model field", e), record));
            }
        };
        let result = attempt(
            upstream,
            &call,
            &lease,
            body,
            &mut stale_retry_used,
            &record,
            log,
        )
        .await;
        match result {
            Ok(Committed::Response(res, first)) => {
                lease.hold_pool_slot(pool_slot.take());
                record.on_first_byte(lease.started().elapsed());
                return Ok(respond(res, first, lease, record, &call, settings, log));
            }
            Ok(Committed::Callback(source)) => {
                record.on_first_byte(lease.started().elapsed());
                return Ok(respond_callback(
                    source, lease, record, &call, settings, log,
                ));
            }
            Ok(Committed::Body(status, body)) => {
                return Ok(respond_whole(status, body, lease, record, &call, log));
            }
            Ok(Committed::CredentialsRefused(status)) => {
                // The target's own credentials are wrong: neither the caller's fault nor
                // the target's health; no failover (another try would send a 4xx again).
                lease.set_verdict(Verdict::Neutral);
                drop(lease);
                slog::warn!(log, "target refused the gateway's credentials";
                    "request_id" => record.request_id(), "target" => target.slug(),
                    "status" => status.as_u16());
                let error = ApiError::UpstreamCredentials {
                    target: target.spec.slug.clone(),
                    status: status.as_u16(),
                };
                return Err((error, record));
            }
            Ok(Committed::ClientError(status, headers, body)) => {
                lease.set_verdict(Verdict::Success {
                    ttfb: lease.started().elapsed(),
                });
                record.on_answer(status.as_u16());
                drop(lease);
                let response = pass_client_error(status, &headers, body, &call.request_id);
                record.finish_soon(log.clone(), &call.metrics);
                return Ok(response);
            }
            Err(e) => {
                let (verdict, detail) = verdict_of(&e, &call.metrics);
                if let Some(kind) = e.kind() {
                    call.metrics.upstream_error(target.slug(), kind);
                }
                slog::warn!(log, "attempt failed";
                    "request_id" => record.request_id(), "target" => target.slug(),
                    "attempt" => record.attempts(), "error" => detail);
                lease.set_verdict(verdict);
                drop(lease);
                causes.push(format!(
                    "target {}: {}",
                    target.slug(),
                    e.client_cause(&target)
                ));
                tried.push(target);
                // Out of descriptors: so is every other attempt.
                let give_up = matches!(e, AttemptError::Timeout | AttemptError::OutOfFds(_));
                last = Some(e);
                if give_up {
                    // The target may still be working on it; another try would double the
                    // wait (and the work). Give up.
                    break;
                }
            }
        }
    }

    Err((final_error(last, model_name, causes.join("; ")), record))
}

/// One attempt on the lease's target by its transport; on HTTP, resent once per request
/// (`stale_retry_used`) on a fresh connection when the pooled one turns out closed.
async fn attempt(
    upstream: &Upstream,
    call: &Call,
    lease: &Lease,
    body: Bytes,
    stale_retry_used: &mut bool,
    record: &RequestRecord,
    log: &slog::Logger,
) -> Result<Committed, AttemptError> {
    let target = lease.target();
    let result = match &target.spec.transport {
        Transport::Http => send(&upstream.client, target, call, body.clone(), lease).await,
        // In process: the same sorting of its answer as an HTTP target's.
        Transport::Demo => receive(demo::response(call.upstream_path, &body), target, lease).await,
        Transport::GlobusCompute(g) => match &upstream.globus {
            // Boxed: its future (about 7 KB) would otherwise size every HTTP request's.
            Some(shared) => {
                Box::pin(globus_compute::send(
                    &upstream.client,
                    shared,
                    target,
                    g,
                    call,
                    body.clone(),
                ))
                .await
            }
            None => Err(AttemptError::Connect(
                "the Globus Compute transport is not enabled".into(),
            )),
        },
    };
    if let Err(AttemptError::Broken(_)) = &result {
        if !*stale_retry_used {
            call.metrics
                .upstream_error(target.slug(), UpstreamErrorKind::Broken);
            call.metrics
                .retries
                .with_label_values(&[target.slug()])
                .inc();
            // A pooled connection the target had already closed (llama-server closes
            // after every stream): nothing came back, so resend on a new connection.
            // Not a target failure, not a failover: the same lease, no verdict yet.
            *stale_retry_used = true;
            slog::debug!(log, "resending on a fresh connection";
                "request_id" => record.request_id(), "target" => target.slug());
            return send(&upstream.fresh, target, call, body, lease).await;
        }
    }
    result
}

/// The body for `target`: the request's, with `model` renamed to the target's own name.
fn body_for(call: &Call, target: &Target, json: bool) -> Result<Bytes, String> {
    if json {
        rewrite_model(&call.body, &call.requested_model, &target.spec.model)
            .map_err(|e| e.to_string())
    } else {
        rewrite_form_model(
            &call.body,
            &call.content_type,
            &call.requested_model,
            &target.spec.model,
        )
    }
}

/// A whole (not streamed) JSON answer: the lease's success, the usage it reports, the
/// record written once the answer is flushed.
fn respond_whole(
    status: StatusCode,
    body: Bytes,
    mut lease: Lease,
    mut record: RequestRecord,
    call: &Call,
    log: &slog::Logger,
) -> HttpResponse {
    let ttfb = lease.started().elapsed();
    lease.set_verdict(Verdict::Success { ttfb });
    drop(lease);
    record.on_first_byte(ttfb);
    record.on_answer(status.as_u16());
    let mut meter = UsageMeter::default();
    meter.observe_json(&body);
    record.on_usage(meter.usage());
    let response = HttpResponse::build(status)
        .content_type("application/json")
        .insert_header((REQUEST_ID.clone(), call.request_id.clone()))
        .body(body);
    record.finish_soon(log.clone(), &call.metrics);
    response
}

/// What a failed attempt means for its target's breaker, and its words for the log.
fn verdict_of(e: &AttemptError, metrics: &Metrics) -> (Verdict, String) {
    match e {
        AttemptError::Connect(m) | AttemptError::Broken(m) | AttemptError::Died(m) => {
            (Verdict::Failure { error: m.clone() }, m.clone())
        }
        AttemptError::Timeout => (
            Verdict::Failure {
                error: "no response head in time".into(),
            },
            "timeout".into(),
        ),
        AttemptError::Status5xx(s, m) => (
            Verdict::Failure {
                error: format!("HTTP {s}: {m}"),
            },
            format!("HTTP {s}"),
        ),
        AttemptError::RateLimited(..) => (Verdict::Neutral, "HTTP 429".into()),
        AttemptError::Starting(_) => (Verdict::Neutral, "starting".into()),
        AttemptError::OutOfFds(m) => {
            metrics
                .pool
                .fd_exhausted
                .with_label_values(&["connect"])
                .inc();
            (Verdict::Neutral, m.clone())
        }
    }
}

/// The client's error when no attempt answered: from the last attempt's failure, with
/// every attempt's cause ("target a: connection refused; target b: ...").
fn final_error(last: Option<AttemptError>, model: String, cause: String) -> ApiError {
    match last {
        None => ApiError::NoAvailableTarget { model, cause },
        Some(AttemptError::Timeout) => ApiError::UpstreamTimeout { model, cause },
        Some(AttemptError::OutOfFds(_)) => ApiError::GatewayOverloaded,
        Some(AttemptError::RateLimited(retry_after, body)) => ApiError::RateLimited {
            message: upstream_message(&body).unwrap_or_else(|| {
                format!("Every target for model `{model}` is rate limited; try again later.")
            }),
            retry_after,
        },
        Some(AttemptError::Starting(retry_after)) => ApiError::ModelStarting {
            model,
            phase: "starting",
            retry_after,
        },
        Some(_) => ApiError::AllTargetsFailed { model, cause },
    }
}

/// Why a target could not take a request, for the client: its state, never its address
/// or the text of its last error.
fn unavailable_cause(target: &Target) -> &'static str {
    if target.in_maintenance() {
        return "its cluster is in maintenance";
    }
    match target.breaker() {
        BreakerView::Open => "circuit breaker open after repeated failures",
        BreakerView::HalfOpen => "being probed after repeated failures (one request at a time)",
        BreakerView::Closed => "not available",
    }
}

pub(crate) enum Committed {
    /// A 2xx answer and its first body chunk (None if the body was empty).
    Response(awc::ClientResponse, Option<Bytes>),
    /// A whole JSON answer in hand (the Globus Compute transport).
    Body(StatusCode, Bytes),
    /// A stream fed by the remote function's callbacks (Globus Compute, `stream: true`).
    Callback(globus_compute::CallbackSource),
    /// A 4xx (but 401, 403 and 429) or 501 answer, read whole: the request is the
    /// problem, so it is passed through as the backend sent it.
    ClientError(StatusCode, HeaderMap, Bytes),
    /// The target answered 401 or 403 to the gateway's own credentials.
    CredentialsRefused(StatusCode),
}

async fn send(
    client: &awc::Client,
    target: &Target,
    call: &Call,
    body: Bytes,
    lease: &Lease,
) -> Result<Committed, AttemptError> {
    let uri = target
        .uri(call.upstream_path)
        .map_err(|e| AttemptError::Connect(format!("invalid target URL: {e}")))?;
    let mut req = client
        .post(uri)
        .timeout(target.response_timeout)
        .insert_header((header::CONTENT_TYPE, call.content_type.clone()))
        .insert_header((REQUEST_ID.clone(), call.request_id.clone()))
        .insert_header((HOPS.clone(), HeaderValue::from(call.hops + 1)));
    for (name, value) in &call.client_headers {
        req = req.insert_header((name.clone(), value.clone()));
    }
    if let Some(authorization) = target.authorization() {
        req = req.insert_header((header::AUTHORIZATION, authorization.clone()));
    }
    match req.send_body(body).await {
        Ok(res) => receive(res, target, lease).await,
        Err(e) => Err(classify(e)),
    }
}

/// Sorts a target's response: a 2xx is committed once its first body chunk is in hand;
/// anything else is read whole and sorted (rate limited, credentials, 5xx, the request's
/// own 4xx). HTTP targets' responses come here from awc, the demo's from
/// [`demo::response`].
async fn receive(
    mut res: awc::ClientResponse,
    target: &Target,
    lease: &Lease,
) -> Result<Committed, AttemptError> {
    let status = res.status();
    if status.is_success() {
        // Wait for the first chunk before committing: a target that dies now can still be
        // replaced by another without the client noticing.
        let remaining = target
            .response_timeout
            .saturating_sub(lease.started().elapsed());
        return match actix_rt::time::timeout(remaining, res.next()).await {
            Ok(Some(Ok(first))) => Ok(Committed::Response(res, Some(first))),
            // A 2xx inference answer is never empty: the connection died before the body.
            Ok(None)
                if res
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .is_none_or(|v| v != "0") =>
            {
                Err(AttemptError::Died(
                    "body ended before the first byte".into(),
                ))
            }
            Ok(None) => Ok(Committed::Response(res, None)),
            Ok(Some(Err(e))) => Err(AttemptError::Died(format!(
                "body failed before the first byte: {e}"
            ))),
            Err(_) => Err(AttemptError::Timeout),
        };
    }
    let body = res.body().limit(ERROR_BODY_LIMIT).await.unwrap_or_default();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = res
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        return Err(AttemptError::RateLimited(retry_after, body));
    }
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return Ok(Committed::CredentialsRefused(status));
    }
    // 501 says the request asks for what this server does not do (llama-server without
    // `--reranking`): the request's problem, not the server's health.
    if status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED {
        let message = upstream_message(&body)
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
        return Err(AttemptError::Status5xx(status.as_u16(), message));
    }
    Ok(Committed::ClientError(status, res.headers().clone(), body))
}

/// Sorts awc's error by what was sent and received, not by its variant alone: awc reports
/// a request written on a connection the server had already closed (EOF before any byte
/// of an answer) as `Connect(Disconnected)`, and that is a stale connection, not a target
/// that cannot be reached.
fn classify(e: SendRequestError) -> AttemptError {
    use awc::error::ConnectError;
    match e {
        SendRequestError::Connect(awc::error::ConnectError::Io(e)) if is_fd_exhaustion(&e) => {
            AttemptError::OutOfFds(format!("gateway out of file descriptors: {e}"))
        }
        SendRequestError::Connect(ConnectError::Disconnected) => {
            AttemptError::Broken("the connection was closed before any byte of an answer".into())
        }
        SendRequestError::Connect(ConnectError::Io(e)) => {
            AttemptError::Connect(e.kind().to_string().to_lowercase())
        }
        SendRequestError::Connect(ConnectError::Timeout) => {
            AttemptError::Connect("connect timed out".into())
        }
        SendRequestError::Connect(ConnectError::Resolver(_) | ConnectError::NoRecords) => {
            AttemptError::Connect("host name not resolved".into())
        }
        SendRequestError::Connect(ConnectError::SslIsNotSupported) => {
            AttemptError::Connect("TLS is not supported".into())
        }
        SendRequestError::Connect(_) => AttemptError::Connect("connection failed".into()),
        SendRequestError::Timeout => AttemptError::Timeout,
        SendRequestError::Send(e) => AttemptError::Broken(format!("send: {e}")),
        SendRequestError::Response(e) => AttemptError::Broken(format!("response: {e}")),
        other => AttemptError::Connect(format!("request failed: {other}")),
    }
}

/// Builds the streaming response for a committed 2xx answer.
fn respond(
    res: awc::ClientResponse,
    first: Option<Bytes>,
    lease: Lease,
    mut record: RequestRecord,
    call: &Call,
    settings: &crate::config::Upstream,
    log: &slog::Logger,
) -> HttpResponse {
    let status = res.status();
    record.on_head(status.as_u16());
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let content_length = res
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let framing = Framing::new(&content_type, content_length);
    let sse = matches!(framing, Framing::Sse(_));
    let mut builder = HttpResponse::build(status);
    builder.insert_header((REQUEST_ID.clone(), call.request_id.clone()));
    if let Some(encoding) = res.headers().get(header::CONTENT_ENCODING) {
        builder.insert_header((header::CONTENT_ENCODING, encoding.clone()));
    }
    if sse {
        builder.insert_header((header::CACHE_CONTROL, "no-cache"));
        // Tell a reverse proxy in front of us (nginx) not to buffer the stream.
        builder.insert_header((ACCEL_BUFFERING.clone(), "no"));
    }
    let cache = match &call.cache {
        Some((cache, key)) if status.is_success() && matches!(framing, Framing::Json { .. }) => {
            builder.insert_header((crate::cache::HEADER_NAME.clone(), "miss"));
            Some(CacheStore {
                cache: Arc::clone(cache),
                key: *key,
                status: status.as_u16(),
                content_type: content_type.clone(),
            })
        }
        _ => None,
    };
    builder.insert_header((header::CONTENT_TYPE, content_type));
    let finish = Finish {
        lease,
        record,
        log: log.clone(),
        metrics: Arc::clone(&call.metrics),
        cache,
    };
    let relay = Relay::new(
        res,
        first,
        framing,
        settings.stream_idle_timeout_secs.duration(),
        finish,
    )
    .hide_usage_event(call.hide_usage);
    match content_length {
        // The body passes unchanged, so the upstream's length holds: the client gets a
        // Content-Length as from the backend itself (and as from nginx), not chunks. An
        // event stream is never sized: hiding the usage event changes its length.
        Some(len) if !sse => builder.body(SizedStream::new(len, relay)),
        _ => builder.streaming(relay),
    }
}

/// Builds the SSE response for a stream relayed from Globus Compute callbacks.
fn respond_callback(
    source: globus_compute::CallbackSource,
    lease: Lease,
    mut record: RequestRecord,
    call: &Call,
    settings: &crate::config::Upstream,
    log: &slog::Logger,
) -> HttpResponse {
    record.on_head(200);
    slog::debug!(log, "streaming through Globus Compute callbacks";
        "request_id" => record.request_id(), "stream_task_id" => source.stream_id().to_string());
    let mut builder = HttpResponse::Ok();
    builder.insert_header((header::CONTENT_TYPE, "text/event-stream"));
    builder.insert_header((REQUEST_ID.clone(), call.request_id.clone()));
    builder.insert_header((header::CACHE_CONTROL, "no-cache"));
    builder.insert_header((ACCEL_BUFFERING.clone(), "no"));
    let finish = Finish {
        lease,
        record,
        log: log.clone(),
        metrics: Arc::clone(&call.metrics),
        cache: None,
    };
    let framing = Framing::new("text/event-stream", None);
    builder.streaming(Relay::new(
        source,
        None,
        framing,
        settings.stream_idle_timeout_secs.duration(),
        finish,
    ))
}

/// Passes a backend 4xx (or 501) through with its status. A JSON object goes as it is
/// (an OpenAI envelope, llama.cpp's with an integer `code`, vLLM's `{"object":"error"}`,
/// FastAPI's `{"detail"}`: the SDKs read them all); anything else (text, HTML) is wrapped
/// in an OpenAI envelope.
fn pass_client_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: Bytes,
    request_id: &HeaderValue,
) -> HttpResponse {
    let mut builder = HttpResponse::build(status);
    builder.insert_header((REQUEST_ID.clone(), request_id.clone()));
    builder.content_type("application/json");
    if let Some(after) = headers.get(header::RETRY_AFTER) {
        builder.insert_header((header::RETRY_AFTER, after.clone()));
    }
    let is_object = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .is_some_and(|v| v.is_object());
    if is_object {
        return builder.body(body);
    }
    let text = String::from_utf8_lossy(&body);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_string(),
        t => t.chars().take(2000).collect(),
    };
    let kind = if status == StatusCode::NOT_FOUND {
        "not_found_error"
    } else {
        "invalid_request_error"
    };
    builder.body(envelope(&message, kind, None, code::UPSTREAM_ERROR))
}

/// The `error.message` (or `detail`, `message`) of an upstream error body.
fn upstream_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let m = v
        .pointer("/error/message")
        .or_else(|| v.get("message"))
        .or_else(|| v.get("detail"))
        .or_else(|| v.get("error"))?;
    m.as_str().map(|s| s.chars().take(2000).collect())
}

/// Sends the body as it is, unless the target serves the model under another name; then
/// only the `model` field changes (field order is kept).
fn rewrite_model(body: &Bytes, requested: &str, served: &str) -> Result<Bytes, serde_json::Error> {
    if requested == served {
        return Ok(body.clone());
    }
    let mut value: serde_json::Value = serde_json::from_slice(body)?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert(
            "model".into(),
            serde_json::Value::String(served.to_string()),
        );
    }
    Ok(Bytes::from(serde_json::to_vec(&value)?))
}

/// Like [`rewrite_model`] for a `multipart/form-data` body: only the `model` field's value
/// changes, every other byte (the file) stays.
fn rewrite_form_model(
    body: &Bytes,
    content_type: &HeaderValue,
    requested: &str,
    served: &str,
) -> Result<Bytes, String> {
    if requested == served {
        return Ok(body.clone());
    }
    let boundary = content_type
        .to_str()
        .ok()
        .and_then(|ct| {
            ct.split(';')
                .filter_map(|p| p.trim().split_once('='))
                .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
                .map(|(_, v)| v.trim_matches('"').to_string())
        })
        .ok_or("the multipart content type has no boundary")?;
    let delimiter = format!("--{boundary}");
    let finder = memchr::memmem::Finder::new(delimiter.as_bytes());
    let starts: Vec<usize> = finder.find_iter(body).collect();
    for pair in starts.windows(2) {
        let part = &body[pair[0] + delimiter.len()..pair[1]];
        let Some(head_end) = memchr::memmem::find(part, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&part[..head_end]).to_ascii_lowercase();
        let is_model = head.lines().any(|l| {
            l.starts_with("content-disposition:")
                && l.split(';')
                    .any(|p| matches!(p.trim(), "name=\"model\"" | "name=model"))
        });
        if !is_model {
            continue;
        }
        let value_start = pair[0] + delimiter.len() + head_end + 4;
        // The value ends with the CRLF before the next delimiter.
        let value_end = pair[1].saturating_sub(2);
        let mut out = Vec::with_capacity(body.len() + served.len());
        out.extend_from_slice(&body[..value_start]);
        out.extend_from_slice(served.as_bytes());
        out.extend_from_slice(&body[value_end.max(value_start)..]);
        return Ok(Bytes::from(out));
    }
    Err("the multipart body has no `model` field".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_model_is_rewritten_and_nothing_else() {
        let ct = HeaderValue::from_static("multipart/form-data; boundary=\"b1\"");
        let body = Bytes::from_static(
            b"--b1\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n\x00model\r\n--b1\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nalias\r\n--b1--\r\n",
        );
        let out = rewrite_form_model(&body, &ct, "alias", "real/model").unwrap();
        assert_eq!(
            &out[..],
            &b"--b1\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n\x00model\r\n--b1\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nreal/model\r\n--b1--\r\n"[..]
        );
        assert_eq!(
            rewrite_form_model(&body, &ct, "alias", "alias").unwrap(),
            body
        );
    }

    #[test]
    fn rewrite_keeps_other_fields_and_order() {
        let body = Bytes::from_static(br#"{"messages":[],"model":"alias","x_unknown":{"a":1}}"#);
        assert_eq!(rewrite_model(&body, "alias", "alias").unwrap(), body);
        let out = rewrite_model(&body, "alias", "real/model").unwrap();
        assert_eq!(
            &out[..],
            br#"{"messages":[],"model":"real/model","x_unknown":{"a":1}}"#
        );
    }

    #[test]
    fn upstream_messages_from_common_shapes() {
        assert_eq!(
            upstream_message(br#"{"error":{"code":400,"message":"bad","type":"x"}}"#).as_deref(),
            Some("bad")
        );
        assert_eq!(
            upstream_message(br#"{"detail":"Not Found"}"#).as_deref(),
            Some("Not Found")
        );
        assert_eq!(upstream_message(b"oops"), None);
    }

    #[test]
    fn client_errors_keep_envelopes_and_wrap_the_rest() {
        use actix_web::body::MessageBody;
        let res = pass_client_error(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            Bytes::from_static(
                br#"{"error":{"code":400,"message":"bad","type":"invalid_request_error"}}"#,
            ),
            &HeaderValue::from_static("rid"),
        );
        assert_eq!(res.status(), 400);
        let body = res.into_body().try_into_bytes().unwrap();
        assert_eq!(
            &body[..],
            br#"{"error":{"code":400,"message":"bad","type":"invalid_request_error"}}"#
        );

        let res = pass_client_error(
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            Bytes::from_static(b"404 page not found"),
            &HeaderValue::from_static("rid"),
        );
        let body = res.into_body().try_into_bytes().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["message"], "404 page not found");
        assert_eq!(v["error"]["type"], "not_found_error");
    }
}
