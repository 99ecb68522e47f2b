//! The admin API (admin role only): `GET /admin/backends` lists every target with what an
//! operator needs and a user must not see (base URLs, fixture extras); `POST /admin/reload`
//! re-reads configuration and fixtures (like SIGHUP).

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use crate::auth::admin::Admin;
use crate::error::ApiError;
use crate::routes::inference::{error_response, request_id};
use crate::state::AppState;

pub async fn backends(_: Admin, state: web::Data<AppState>) -> HttpResponse {
    let directory = state.directory.load();
    let targets: Vec<Value> = directory
        .targets
        .iter()
        .map(|t| {
            json!({
                "id": t.slug(),
                "cluster": t.spec.cluster,
                "framework": t.spec.framework,
                "model": t.spec.model,
                "base_url": t.spec.base_url,
                "api_key_env_name": t.spec.api_key_env,
                "api_key_set": t.api_key.is_some(),
                "health": t.health().name(),
                "breaker": t.breaker().name(),
                "in_flight": t.in_flight(),
                "extra": t.spec.extra,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({"object": "list", "data": targets}))
}

/// Applies new configuration and fixtures; 400 (naming the key or file) when they are
/// invalid, and the gateway keeps running on the old ones.
pub async fn reload(
    _: Admin,
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
) -> HttpResponse {
    match state.reloader.reload().await {
        Ok(report) => HttpResponse::Ok().json(json!({"status": "reloaded", "report": report})),
        Err(e @ crate::reload::ReloadError::Gateway) => {
            slog::error!(state.log, "reload failed"; "error" => e.to_string());
            error_response(&ApiError::Internal, &request_id(&req))
        }
        Err(e) => error_response(&ApiError::invalid(e.to_string()), &request_id(&req)),
    }
}
