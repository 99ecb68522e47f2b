//! The inference routes: federated (`/v1/...`, routed by the body's `model`) and pinned
//! (`/{cluster}/{framework}/v1/...`). The handler takes an [`InferenceRequest`] (read,
//! parsed, permitted), answers from the response cache or forwards it.

use std::collections::HashSet;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::inference_request::{reject, Admitted, InferenceRequest};
use crate::cache::{self, CacheMode};
use crate::config::BodyKind;
use crate::error::ApiError;
use crate::proxy::cold_start;
use crate::proxy::forward::{self, Upstream};
use crate::request_id::REQUEST_ID;
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

/// The route a request came in on, as its resource's data: which route, and whether its
/// path names cluster and framework.
#[derive(Debug, Clone)]
pub struct OnRoute {
    pub route: Arc<InferenceRoute>,
    pub pinned: bool,
}

/// Serves one inference request: from the response cache when it may, else forwarded.
pub async fn handle(
    req: HttpRequest,
    request: InferenceRequest,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
) -> Result<HttpResponse, ApiError> {
    let Admitted {
        mut call,
        temperature,
        mut record,
    } = request.into_inner();
    let log = &state.log;
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
                record.route(),
                pin,
                &call.requested_model,
                &call.body,
            );
            if let Some(hit) = state.cache.get(&key) {
                record.on_cache_hit(hit.status);
                let response =
                    HttpResponse::build(StatusCode::from_u16(hit.status).unwrap_or(StatusCode::OK))
                        .content_type(hit.content_type.as_str())
                        .insert_header((REQUEST_ID.clone(), call.request_id))
                        .insert_header((cache::HEADER_NAME.clone(), "hit"))
                        .body(hit.body.clone());
                record.finish_soon(log.clone(), &state.metrics);
                return Ok(response);
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
        return Err(reject(error, record, &state));
    }
    forward::forward(&upstream, call, record, log)
        .await
        .map_err(|(error, record)| reject(error, record, &state))
}
