//! `GET /metrics`: the Prometheus text exposition. Target gauges are refreshed from the
//! published directory at scrape time; everything else is counted as requests go.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::ApiError;
use crate::routes::inference::{error_response, request_id};
use crate::state::AppState;

pub async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    state.metrics.refresh_targets(&state.directory.load());
    state.metrics.pool.refresh_fds();
    if let Some(stats) = &state.log_stats {
        state.metrics.refresh_log(stats);
    }
    match state.metrics.render() {
        Ok(text) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(text),
        Err(e) => error_response(
            &ApiError::internal("rendering /metrics", e),
            &request_id(&req),
        ),
    }
}
