//! The inference routes: read and check the body, find the model, forward. Federated
//! (`/v1/...`, routed by the body's `model`) and pinned (`/{cluster}/{framework}/v1/...`).

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::auth::caller::Caller;
use crate::cache::{self, CacheMode};
use crate::config::BodyKind;
use crate::error::ApiError;
use crate::metrics::InFlight;
use crate::proxy::cold_start;
use crate::proxy::forward::{self, passed_headers, Call, Upstream};
use crate::proxy::record::RequestRecord;
use crate::quota::{rate_limit_headers, Kind, Subject, SubjectState};
use crate::routing::ranking::Pin;
use crate::state::AppState;

/// One inference route: the path clients call and the path sent upstream.
#[derive(Debug, Clone)]
pub struct InferenceRoute {
    /// Name in logs and metrics.
    pub name: &'static str,
    pub path: String,
    pub upstream_path: &'static str,
    /// Models this route serves; `None` = all.
    pub models: Option<HashSet<String>>,
    /// Where the body names its model.
    pub body: BodyKind,
    /// From `routes.relayed`: registered after the gateway's own routes.
    pub relayed: bool,
}

pub const CHAT: &str = "/v1/chat/completions";
pub const COMPLETIONS: &str = "/v1/completions";

/// The built-in routes; config adds chat-shaped aliases.
pub fn builtin() -> Vec<InferenceRoute> {
    [
        ("chat", CHAT),
        ("completions", "/v1/completions"),
        ("embeddings", "/v1/embeddings"),
        ("rerank", "/v1/rerank"),
        ("responses", "/v1/responses"),
        ("messages", "/v1/messages"),
    ]
    .into_iter()
    .map(|(name, path)| InferenceRoute {
        name,
        path: path.to_string(),
        upstream_path: path,
        models: None,
        body: BodyKind::Json,
        relayed: false,
    })
    .collect()
}

/// The fields the gateway reads; everything else in the body passes through untouched.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    /// Kept raw: only "is it exactly 0" matters (for the response cache), and a value of
    /// another type is the target's to refuse.
    #[serde(borrow, default)]
    temperature: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// What the gateway reads from a request body.
#[derive(Debug, PartialEq)]
struct Parsed {
    model: String,
    stream: bool,
    temperature: Option<f64>,
    /// The client set `stream_options.include_usage` to true.
    include_usage: bool,
    /// The body has a `stream_options` member at all.
    has_stream_options: bool,
}

/// Request id from `x-request-id` when it is sane, else a new one.
pub fn request_id(req: &HttpRequest) -> String {
    request_id_and_header(req).0
}

/// The request id as text (logs, the request log) and as a header value (sent upstream
/// and returned): the client's `x-request-id` when it is 1 to 128 printable ASCII bytes
/// (its value is then shared, not copied), else a new UUID.
pub fn request_id_and_header(req: &HttpRequest) -> (String, HeaderValue) {
    let sane = |v: &&HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic)
    };
    if let Some(given) = req.headers().get(&forward::REQUEST_ID).filter(sane) {
        if let Ok(text) = given.to_str() {
            return (text.to_string(), given.clone());
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    // A UUID's text is always a valid header value; the fallback is never taken.
    let header = HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("-"));
    (id, header)
}

/// The error response, with the request id.
pub fn error_response(error: &ApiError, request_id: &str) -> HttpResponse {
    let mut res = error.error_response();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        res.headers_mut().insert(forward::REQUEST_ID.clone(), v);
    }
    res
}

async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::invalid(format!("Could not read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn parse_head(body: &[u8]) -> Result<Parsed, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_none() {
        return Err(ApiError::InvalidJson(
            "The request body is empty; send a JSON object.".into(),
        ));
    }
    if first != Some(&b'{') {
        return Err(ApiError::InvalidJson(
            "The request body must be a JSON object.".into(),
        ));
    }
    let head: Head = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::invalid(format!("Invalid request body: {e}"))
        } else {
            ApiError::InvalidJson(format!("The request body is not valid JSON: {e}"))
        }
    })?;
    let model = match head.model {
        Some(m) if !m.trim().is_empty() => m.into_owned(),
        Some(_) => {
            return Err(ApiError::invalid_param(
                "model",
                "`model` must not be empty.",
            ))
        }
        None => return Err(ApiError::invalid_param("model", "`model` is required.")),
    };
    Ok(Parsed {
        model,
        stream: head.stream.unwrap_or(false),
        temperature: head
            .temperature
            .and_then(|t| t.get().trim().parse::<f64>().ok()),
        include_usage: head
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        has_stream_options: head.stream_options.is_some(),
    })
}

/// The `model` (and `stream`) form fields of a `multipart/form-data` body (audio
/// transcription), read from the buffered body; the body itself goes upstream unchanged.
async fn parse_multipart_head(req: &HttpRequest, body: &Bytes) -> Result<Parsed, ApiError> {
    let is_form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("multipart/form-data"));
    if !is_form {
        return Err(ApiError::invalid(
            "This route takes a multipart/form-data body with a `model` field.",
        ));
    }
    let chunks = futures_util::stream::once(std::future::ready(Ok::<
        _,
        actix_web::error::PayloadError,
    >(body.clone())));
    let mut form = actix_multipart::Multipart::new(req.headers(), chunks);
    let malformed = |e: actix_multipart::MultipartError| {
        ApiError::invalid(format!("The multipart body is malformed: {e}"))
    };
    let mut model = None;
    let mut stream = false;
    while let Some(field) = form.next().await {
        let mut field = field.map_err(malformed)?;
        let name = field.name().map(str::to_owned);
        if !matches!(name.as_deref(), Some("model" | "stream")) {
            // Drain the part (file contents) without keeping it.
            while let Some(chunk) = field.next().await {
                chunk.map_err(malformed)?;
            }
            continue;
        }
        let mut value = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(malformed)?;
            if value.len() + chunk.len() > 1024 {
                return Err(ApiError::invalid(format!(
                    "The `{}` field is too long.",
                    name.as_deref().unwrap_or_default()
                )));
            }
            value.extend_from_slice(&chunk);
        }
        let value = String::from_utf8_lossy(&value).trim().to_string();
        match name.as_deref() {
            Some("model") => model = Some(value),
            _ => stream = value == "true",
        }
    }
    match model {
        Some(m) if !m.is_empty() => Ok(Parsed {
            model: m,
            stream,
            temperature: None,
            include_usage: false,
            has_stream_options: false,
        }),
        _ => Err(ApiError::invalid_param(
            "model",
            "The form field `model` is required.",
        )),
    }
}

/// The 404 of a pinned route whose cluster and framework do not serve `model`: which
/// clusters do (those of targets the caller may use), or plain "not found" when none.
pub(crate) fn not_on_cluster(
    entry: &crate::routing::directory::ModelEntry,
    caller: &crate::auth::identity::Identity,
    model: String,
    pin: Pin,
) -> ApiError {
    let mut elsewhere: Vec<String> = Vec::new();
    for t in entry.targets.iter().filter(|t| caller.may_use(&t.spec)) {
        let place = format!("`{}` ({})", t.spec.cluster, t.spec.framework);
        if !elsewhere.contains(&place) {
            elsewhere.push(place);
        }
    }
    if elsewhere.is_empty() {
        return ApiError::ModelNotFound(model);
    }
    ApiError::ModelNotOnCluster {
        model,
        cluster: pin.cluster,
        framework: pin.framework,
        elsewhere: elsewhere.join(", "),
    }
}

/// Asks the backend for usage in a stream: adds `"stream_options":{"include_usage":true}`.
/// Without `stream_options` in the body, the member is spliced in before the closing brace,
/// so every other byte stays as it was; otherwise the object is re-serialised with its
/// field order kept.
fn add_include_usage(body: &Bytes, has_stream_options: bool) -> Result<Bytes, ApiError> {
    if !has_stream_options {
        let end = body
            .iter()
            .rposition(|b| *b == b'}')
            .ok_or_else(|| ApiError::internal("adding include_usage", "no closing brace"))?;
        let empty = body[..end]
            .iter()
            .rev()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{');
        let mut out = BytesMut::with_capacity(body.len() + 40);
        out.extend_from_slice(&body[..end]);
        if !empty {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
        out.extend_from_slice(&body[end..]);
        return Ok(out.freeze());
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    match value.get_mut("stream_options") {
        Some(serde_json::Value::Object(o)) => {
            o.insert("include_usage".into(), serde_json::Value::Bool(true));
        }
        _ => {
            return Err(ApiError::invalid_param(
                "stream_options",
                "`stream_options` must be an object.",
            ))
        }
    }
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal("adding include_usage", e))
}

/// Handles one inference request on `route`; `pinned` routes carry cluster and framework
/// in the path.
pub async fn handle(
    req: HttpRequest,
    Caller(caller): Caller,
    payload: web::Payload,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
    route: Arc<InferenceRoute>,
    pinned: bool,
) -> HttpResponse {
    // The user's quota state: its limits go into every answer's x-ratelimit headers.
    let user_quota = if state.quotas.enabled {
        Some(
            state
                .quotas
                .state(Subject::new(Kind::User, &caller.id))
                .await,
        )
    } else {
        None
    };
    let inbound = Inbound {
        req: &req,
        caller,
        user_quota: user_quota.as_ref(),
        state: &state,
        route: &route,
        pinned,
    };
    let mut response = serve(inbound, payload, &upstream).await;
    if let Some(user) = &user_quota {
        rate_limit_headers(response.headers_mut(), user);
    }
    response
}

/// One inference request as its handler took it in: who asks, on which route.
struct Inbound<'a> {
    req: &'a HttpRequest,
    caller: Arc<crate::auth::identity::Identity>,
    /// The caller's quota state, when quotas are on.
    user_quota: Option<&'a Arc<SubjectState>>,
    state: &'a AppState,
    route: &'a InferenceRoute,
    /// The route names cluster and framework in its path.
    pinned: bool,
}

async fn serve(
    inbound: Inbound<'_>,
    payload: web::Payload,
    upstream: &web::Data<Upstream>,
) -> HttpResponse {
    let started = Instant::now();
    let Inbound {
        req, state, route, ..
    } = inbound;
    let (request_id, request_header) = request_id_and_header(req);
    // Lines about the request name `request_id` themselves (no child logger to build
    // and serialize per request).
    let log = &state.log;
    let mut record = RequestRecord::new(request_id, route.name, started);
    record.on_start(
        InFlight::new(&state.metrics.in_flight),
        req.peer_addr().map(|a| a.ip()),
    );
    record.log_to(state.log_sink.clone());

    let (mut call, temperature) =
        match prepare(&inbound, payload, request_header, &mut record).await {
            Ok(call) => call,
            Err(error) => return reject(error, record, state, log),
        };
    if state.cache.enabled() {
        let mode =
            CacheMode::from_header(req.headers().get(&cache::HEADER_NAME).map(|v| v.as_bytes()));
        if mode.cacheable(call.stream, temperature) {
            let pin = call
                .pin
                .as_ref()
                .map(|p| (p.cluster.as_str(), p.framework.as_str()));
            let key = cache::key(
                record.user(),
                route.name,
                pin,
                &call.requested_model,
                &call.body,
            );
            if let Some(hit) = state.cache.get(&key) {
                record.on_cache_hit(hit.status);
                let response = HttpResponse::build(
                    actix_web::http::StatusCode::from_u16(hit.status)
                        .unwrap_or(actix_web::http::StatusCode::OK),
                )
                .content_type(hit.content_type.as_str())
                .insert_header((forward::REQUEST_ID.clone(), call.request_id))
                .insert_header((cache::HEADER_NAME.clone(), "hit"))
                .body(hit.body.clone());
                record.finish_soon(log.clone(), &state.metrics);
                return response;
            }
            call.cache = Some((Arc::clone(&state.cache), key));
        } else {
            state.cache.bypass();
        }
    }
    let preflight = {
        let directory = state.directory.load_full();
        cold_start::preflight(
            &call.model,
            call.pin.as_ref(),
            &call.requested_model,
            &directory,
            &state.settings.cold_start,
            state.redis_streams.as_deref(),
            log,
        )
        .await
    };
    if let Err(error) = preflight {
        return reject(error, record, state, log);
    }
    match forward::forward(upstream, call, record, log).await {
        Ok(response) => response,
        Err((error, record)) => reject(error, record, state, log),
    }
}

fn reject(
    error: ApiError,
    mut record: RequestRecord,
    state: &AppState,
    log: &slog::Logger,
) -> HttpResponse {
    let response = error_response(&error, record.request_id());
    record.on_rejected(&error);
    record.finish(log, &state.metrics);
    response
}

async fn prepare(
    inbound: &Inbound<'_>,
    payload: web::Payload,
    request_id: HeaderValue,
    record: &mut RequestRecord,
) -> Result<(Call, Option<f64>), ApiError> {
    let Inbound {
        req,
        user_quota,
        state,
        route,
        pinned,
        ..
    } = *inbound;
    let caller = Arc::clone(&inbound.caller);
    let hops = req
        .headers()
        .get(&forward::HOPS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    if hops >= state.settings.server.max_hops.get() {
        return Err(ApiError::LoopDetected);
    }
    let body = read_body(req, payload, state.settings.server.max_body_bytes.get()).await?;
    // The caller is the cache tenant and the request log's user.
    record.on_caller(&caller.id, caller.org.as_deref());
    let (parsed, content_type) = match route.body {
        BodyKind::Json => {
            record.keep_prompt(&body);
            (
                parse_head(&body)?,
                HeaderValue::from_static("application/json"),
            )
        }
        BodyKind::Multipart => {
            let parsed = parse_multipart_head(req, &body).await?;
            // Checked above: a multipart/form-data content type with its boundary.
            let content_type = req.headers().get(CONTENT_TYPE).cloned().ok_or_else(|| {
                ApiError::internal("a multipart request", "its content type is gone")
            })?;
            (parsed, content_type)
        }
    };
    let Parsed {
        model,
        stream,
        temperature,
        include_usage,
        has_stream_options,
    } = parsed;
    record.on_parsed(&model, stream);

    if !caller.may_name(&model) {
        return Err(ApiError::Forbidden(format!(
            "This API key may not use model `{model}`."
        )));
    }
    if route
        .models
        .as_ref()
        .is_some_and(|allowed| !allowed.contains(&model))
    {
        return Err(ApiError::ModelNotFound(model));
    }
    let entry = state
        .directory
        .load()
        .model(&model)
        .cloned()
        .ok_or_else(|| ApiError::ModelNotFound(model.clone()))?;
    record.on_model_known();
    let pin = if pinned {
        let info = req.match_info();
        let pin = Pin {
            cluster: info.get("cluster").unwrap_or_default().to_string(),
            framework: info.get("framework").unwrap_or_default().to_string(),
        };
        if !entry.targets.iter().any(|t| pin.matches(t)) {
            return Err(not_on_cluster(&entry, &caller, model, pin));
        }
        Some(pin)
    } else {
        None
    };
    // The caller must be allowed on at least one (pinned) target of the model.
    let mut refusal = None;
    let allowed = entry.eligible(pin.as_ref()).any(|t| {
        caller.may_use(&t.spec) || {
            refusal = caller.permission(&t.spec).err();
            false
        }
    });
    if !allowed {
        return Err(ApiError::Forbidden(format!(
            "You may not use model `{model}`: {}.",
            refusal.unwrap_or_default()
        )));
    }
    let mut body = body;
    let mut hide_usage = false;
    if let Some(user) = user_quota {
        let mut subjects = vec![Arc::clone(user)];
        if let Some(org) = caller.org.as_deref().filter(|o| !o.is_empty()) {
            subjects.push(state.quotas.state(Subject::new(Kind::Org, org)).await);
        }
        subjects.push(state.quotas.state(Subject::new(Kind::Model, &model)).await);
        let waited = Instant::now();
        let admitted = state.quotas.admit(&subjects).await;
        state
            .metrics
            .queue_wait
            .observe(waited.elapsed().as_secs_f64());
        record.on_admitted(admitted.inspect_err(|e| state.metrics.quota_refusal(e))?);
        // Tokens are charged from the stream's usage: ask for it when the client did not.
        let chat_shaped = matches!(route.upstream_path, CHAT | COMPLETIONS);
        if stream && chat_shaped && !include_usage {
            body = add_include_usage(&body, has_stream_options)?;
            hide_usage = true;
        }
    }
    let call = Call {
        model: entry,
        upstream_path: route.upstream_path,
        content_type,
        hide_usage,
        body,
        requested_model: model,
        pin,
        caller,
        stream,
        request_id,
        hops,
        client_headers: passed_headers(req.headers()),
        metrics: Arc::clone(&state.metrics),
        cache: None,
    };
    Ok((call, temperature))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_request_id_is_kept_as_sent_and_any_other_replaced() {
        use actix_web::test::TestRequest;
        let req = TestRequest::default()
            .insert_header(("x-request-id", "abc-123"))
            .to_http_request();
        let (text, header) = request_id_and_header(&req);
        assert_eq!(
            (text.as_str(), header.as_bytes()),
            ("abc-123", &b"abc-123"[..])
        );
        for bad in ["has space", "", &"x".repeat(129)] {
            let req = TestRequest::default()
                .insert_header(("x-request-id", bad))
                .to_http_request();
            let (text, header) = request_id_and_header(&req);
            assert!(uuid::Uuid::parse_str(&text).is_ok(), "{bad:?} gave {text}");
            assert_eq!(header.as_bytes(), text.as_bytes());
        }
    }

    #[test]
    fn head_reads_model_and_stream_and_ignores_the_rest() {
        let p = parse_head(br#"{"model":"x","stream":true,"whatever":[1,2]}"#).unwrap();
        assert_eq!(
            (p.model.as_str(), p.stream, p.temperature),
            ("x", true, None)
        );
        let p = parse_head(br#" {"model":"x","temperature":0}"#).unwrap();
        assert!(!p.stream);
        assert_eq!(p.temperature, Some(0.0));
        // A temperature of another type is the target's to refuse, not ours.
        let p = parse_head(br#"{"model":"x","temperature":"hot"}"#).unwrap();
        assert_eq!(p.temperature, None);
    }

    #[test]
    fn include_usage_is_added_touching_nothing_else() {
        let body = Bytes::from_static(b"{\"model\":\"x\", \"n\":1.50,\"stream\":true}\n");
        assert_eq!(
            &add_include_usage(&body, false).unwrap()[..],
            &b"{\"model\":\"x\", \"n\":1.50,\"stream\":true,\"stream_options\":{\"include_usage\":true}}\n"[..]
        );
        let body = Bytes::from_static(
            br#"{"model":"x","stream_options":{"include_usage":false,"other":1},"stream":true}"#,
        );
        assert_eq!(
            &add_include_usage(&body, true).unwrap()[..],
            &br#"{"model":"x","stream_options":{"include_usage":true,"other":1},"stream":true}"#[..]
        );
        let bad = Bytes::from_static(br#"{"model":"x","stream_options":3}"#);
        assert_eq!(
            add_include_usage(&bad, true).unwrap_err().code(),
            "invalid_request"
        );
    }

    #[test]
    fn bad_bodies_are_400_with_clear_codes() {
        let cases: [(&[u8], &str); 7] = [
            (b"", "invalid_json"),
            (b"[1]", "invalid_json"),
            (b"{\"model\":", "invalid_json"),
            (b"{}", "invalid_request"),
            (b"{\"model\":\"\"}", "invalid_request"),
            (b"{\"model\":3}", "invalid_request"),
            (b"{\"model\":\"x\",\"stream\":\"yes\"}", "invalid_request"),
        ];
        for (body, code) in cases {
            let err = parse_head(body).unwrap_err();
            assert_eq!(err.code(), code, "{}", String::from_utf8_lossy(body));
            assert_eq!(err.status_code(), 400);
        }
    }
}
