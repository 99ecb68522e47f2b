//! The streaming callbacks a Globus Compute function POSTs to (FIRST's relay):
//! `/api/streaming/{data,done,error}` (also under `/resource_server`, trailing slash or
//! not). No user auth: a shared secret (`X-Internal-Secret`) and the per-request token
//! (`X-Stream-Task-Token`) guard them, both compared in constant time; bodies are size
//! limited. Checked in FIRST's order: size, secret, token presence, JSON, task id, token.
//! Errors leave in the OpenAI envelope with FIRST's statuses (413, 401, 400, 403).

use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;
use crate::streaming::{token_hash, DeliverError, StreamEvent};
use crate::streaming_redis::ForwardError;

pub const SECRET_HEADER: &str = "x-internal-secret";
pub const TOKEN_HEADER: &str = "x-stream-task-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Data,
    Done,
    Error,
}

#[derive(Deserialize)]
struct Callback {
    task_id: Option<String>,
    data: Option<String>,
    error: Option<String>,
}

pub async fn callback(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    kind: Kind,
) -> Result<HttpResponse, ApiError> {
    handle(&req, payload, &state, kind).await
}

async fn handle(
    req: &HttpRequest,
    mut payload: web::Payload,
    state: &AppState,
    kind: Kind,
) -> Result<HttpResponse, ApiError> {
    let settings = &state.settings.streaming;
    let limit = match kind {
        Kind::Data => settings.max_data_bytes,
        Kind::Done | Kind::Error => settings.max_control_bytes,
    }
    .get();
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let presented = req
        .headers()
        .get(SECRET_HEADER)
        .map(|v| token_hash(&String::from_utf8_lossy(v.as_bytes())));
    let secret_ok = match (&state.streaming_secret, presented) {
        (Some(expected), Some(presented)) => bool::from(expected.ct_eq(&presented)),
        _ => false,
    };
    if !secret_ok {
        return Err(ApiError::Unauthorized(
            "Unauthorized: Invalid internal secret".into(),
        ));
    }
    let Some(token) = req
        .headers()
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
    else {
        return Err(ApiError::Unauthorized(
            "Unauthorized: Missing task token".into(),
        ));
    };
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::invalid("Could not read the body"))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    let cb: Callback =
        serde_json::from_slice(&body).map_err(|_| ApiError::InvalidJson("Invalid JSON".into()))?;
    let Some(task_id) = cb.task_id else {
        return Err(ApiError::invalid_param("task_id", "Missing task_id"));
    };
    let id = Uuid::parse_str(&task_id)
        .map_err(|_| ApiError::Forbidden("Invalid task_id format".into()))?;
    let event = match kind {
        Kind::Data => StreamEvent::Data(Bytes::from(
            cb.data
                .ok_or_else(|| ApiError::invalid_param("data", "Missing data"))?,
        )),
        Kind::Done => StreamEvent::Done,
        Kind::Error => StreamEvent::Error(
            cb.error
                .ok_or_else(|| ApiError::invalid_param("error", "Missing error"))?,
        ),
    };
    let mut outcome = state.streams.deliver(&id, &token, event.clone());
    if outcome == Err(DeliverError::Unknown) {
        if let Some(redis) = &state.redis_streams {
            // Not ours: the replica that owns the stream may be another one.
            outcome = match redis.forward(&id, &token, event).await {
                Ok(()) => Ok(()),
                Err(ForwardError::Deliver(e)) => Err(e),
                Err(ForwardError::Redis(e)) => {
                    return Err(ApiError::internal(
                        &format!("redis, forwarding a callback of stream {id}"),
                        e,
                    ));
                }
            };
        }
    }
    match outcome {
        Ok(()) => {}
        Err(DeliverError::BadToken) => {
            return Err(ApiError::Forbidden(
                "Invalid task authentication token".into(),
            ))
        }
        Err(DeliverError::Unknown) => {
            return Err(ApiError::Forbidden(
                "Invalid or expired task authentication".into(),
            ))
        }
        Err(DeliverError::Full) => {
            return Err(ApiError::RateLimited {
                message: "The client is reading more slowly than the stream is sent.".into(),
                retry_after: Some(std::time::Duration::from_secs(1)),
            })
        }
    }
    Ok(match kind {
        Kind::Data => HttpResponse::Ok().json(json!({"status": "received"})),
        _ => HttpResponse::Ok().json(json!({"status": "ok", "task_id": task_id})),
    })
}
