//! The routes: inference (`POST /v1/...`), `GET /health`, `GET /v1/models`, and a JSON 404.

use std::sync::Arc;

use actix_web::http::header::ContentType;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use bytes::Bytes;

use crate::bodies::{self, Kind, Probe};
use crate::sse::SseBody;
use crate::state::Shared;

/// Request bodies up to this size are accepted (embeddings batches can be large).
const BODY_LIMIT: usize = 64 * 1024 * 1024;

pub(crate) fn configure(shared: Arc<Shared>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::from(shared))
            .app_data(web::PayloadConfig::new(BODY_LIMIT))
            .route("/health", web::get().to(health))
            .route("/v1/models", web::get().to(models));
        for (path, kind) in Kind::ROUTES {
            cfg.route(
                path,
                web::post().to(
                    move |req: HttpRequest, body: Bytes, shared: web::Data<Shared>| {
                        inference(kind, req, body, shared)
                    },
                ),
            );
        }
        cfg.default_service(web::to(not_found));
    }
}

fn status_or_500(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn json(status: StatusCode, body: String) -> HttpResponse {
    HttpResponseBuilder::new(status)
        .content_type(ContentType::json())
        .body(body)
}

async fn inference(
    kind: Kind,
    req: HttpRequest,
    body: Bytes,
    shared: web::Data<Shared>,
) -> HttpResponse {
    Shared::bump(&shared.requests);
    shared.record(&req, &body);
    shared.wait_thawed().await;
    let forced = shared.take_failure();
    let behavior = shared.behavior();
    if !behavior.latency.is_zero() {
        tokio::time::sleep(behavior.latency).await;
    }
    let status = status_or_500(forced.unwrap_or(behavior.status));

    let mut response = if !status.is_success() {
        let body = match &behavior.error_body {
            Some(b) => b.clone(),
            None => bodies::error_envelope(status.as_u16()),
        };
        let mut answer = json(status, body);
        if let Some(secs) = behavior.retry_after_secs {
            answer.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from(secs),
            );
        }
        answer
    } else {
        let probe = Probe::parse(&body);
        let model_json = probe.model_json();
        if probe.stream() {
            let usage = (behavior.usage && probe.include_usage())
                .then(|| (bodies::prompt_tokens(&body), behavior.chunks));
            let sse = SseBody::new(
                shared.into_inner(),
                kind,
                model_json,
                behavior.chunks,
                usage,
                behavior.chunk_delay,
                behavior.drop_after_chunks,
            );
            HttpResponseBuilder::new(status)
                .content_type(ContentType(mime_event_stream()))
                .insert_header(("cache-control", "no-cache"))
                .streaming(sse)
        } else {
            json(
                status,
                bodies::non_stream(kind, &model_json, &body, behavior.chunks, behavior.usage),
            )
        }
    };
    if behavior.close_after_response {
        response
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    response
}

fn mime_event_stream() -> actix_web::mime::Mime {
    actix_web::mime::TEXT_EVENT_STREAM
}

async fn health(shared: web::Data<Shared>) -> HttpResponse {
    Shared::bump(&shared.health_checks);
    shared.wait_thawed().await;
    let behavior = shared.behavior();
    let status = status_or_500(behavior.health_status);
    let mut response = if status.is_success() {
        json(status, r#"{"status":"ok"}"#.to_owned())
    } else {
        json(status, bodies::error_envelope(status.as_u16()))
    };
    if behavior.close_after_response {
        response
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    response
}

async fn models() -> HttpResponse {
    json(StatusCode::OK, bodies::MODELS.to_owned())
}

async fn not_found() -> HttpResponse {
    json(StatusCode::NOT_FOUND, bodies::error_envelope(404))
}
