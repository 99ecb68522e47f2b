//! `InferenceRequest`, the extractor of the inference routes: who asks (the caller), what
//! for (the body read and parsed), whether they may (model, targets, quotas). A refusal
//! is recorded (request log, metrics) here and answered by the edge.

use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::Payload;
use actix_web::http::header::{HeaderValue, CONTENT_TYPE};
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures_util::future::LocalBoxFuture;

use super::inference::{OnRoute, CHAT, COMPLETIONS};
use super::inference_body::{
    add_include_usage, parse_head, parse_multipart_head, read_body, Parsed,
};
use crate::auth::caller::Caller;
use crate::auth::identity::Identity;
use crate::config::BodyKind;
use crate::error::ApiError;
use crate::metrics::InFlight;
use crate::proxy::forward::{self, passed_headers, Call};
use crate::proxy::record::RequestRecord;
use crate::quota::{Kind, RateLimited, Subject};
use crate::request_id::RequestId;
use crate::routing::ranking::Pin;
use crate::state::AppState;

/// An inference request the gateway will serve, boxed: actix moves an extractor's output
/// through several futures before the handler runs, and [`Admitted`] is ~670 bytes (the
/// moves cost ~1.5k instructions per request unboxed, `bench/instructions.sh`).
pub struct InferenceRequest(Box<Admitted>);

/// What the handler of an [`InferenceRequest`] works with.
pub struct Admitted {
    /// The call to forward.
    pub call: Call,
    /// The body's `temperature` (the response cache keeps only answers at 0).
    pub temperature: Option<f64>,
    /// The request's record, started and filled in up to here.
    pub record: RequestRecord,
}

impl InferenceRequest {
    pub fn into_inner(self) -> Admitted {
        *self.0
    }
}

impl FromRequest for InferenceRequest {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let caller = Caller::from_request(req, payload);
        let (req, payload) = (req.clone(), payload.take());
        Box::pin(async move {
            let Caller(caller) = caller.await?;
            let missing = |what| ApiError::internal("an inference request", what);
            let state = req
                .app_data::<web::Data<AppState>>()
                .cloned()
                .ok_or_else(|| missing("the application state is missing"))?;
            let on = req
                .app_data::<OnRoute>()
                .cloned()
                .ok_or_else(|| missing("the route is missing"))?;
            take_in(req, caller, payload, &state, on).await
        })
    }
}

/// Starts the request's record, then reads and checks the request; a refusal ends the
/// record.
async fn take_in(
    req: HttpRequest,
    caller: Arc<Identity>,
    payload: Payload,
    state: &AppState,
    on: OnRoute,
) -> Result<InferenceRequest, ApiError> {
    // The user's quota state: the edge puts its limits in the answer's x-ratelimit headers.
    if state.quotas.enabled {
        let user = state
            .quotas
            .state(Subject::new(Kind::User, &caller.id))
            .await;
        req.extensions_mut().insert(RateLimited(user));
    }
    let started = Instant::now();
    let id = RequestId::of(&req);
    let mut record = RequestRecord::new(id.as_str().to_string(), on.route.name, started);
    record.on_start(
        InFlight::new(&state.metrics.in_flight),
        req.peer_addr().map(|a| a.ip()),
    );
    record.log_to(state.log_sink.clone());
    match prepare(&req, caller, payload, state, &on, id.0, &mut record).await {
        Ok((call, temperature)) => Ok(InferenceRequest(Box::new(Admitted {
            call,
            temperature,
            record,
        }))),
        Err(error) => Err(reject(error, record, state)),
    }
}

/// Ends a refused request's record (request log, metrics) and hands the error on to be
/// answered.
pub fn reject(error: ApiError, mut record: RequestRecord, state: &AppState) -> ApiError {
    record.on_rejected(&error);
    record.finish(&state.log, &state.metrics);
    error
}

/// Reads the body, parses it, checks the caller's permissions and quotas: the call to
/// forward, and the body's temperature.
async fn prepare(
    req: &HttpRequest,
    caller: Arc<Identity>,
    payload: Payload,
    state: &AppState,
    on: &OnRoute,
    request_id: HeaderValue,
    record: &mut RequestRecord,
) -> Result<(Call, Option<f64>), ApiError> {
    let route = &on.route;
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
    let pin = if on.pinned {
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
    let user = req
        .extensions()
        .get::<RateLimited>()
        .map(|u| Arc::clone(&u.0));
    if let Some(user) = user {
        let mut subjects = vec![user];
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
