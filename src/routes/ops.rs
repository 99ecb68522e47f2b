//! `GET /metrics`: the Prometheus text exposition. Target gauges are refreshed from the
//! published directory at scrape time; everything else is counted as requests go.

use actix_web::{web, HttpResponse};

use crate::error::ApiError;
use crate::state::AppState;

pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.metrics.refresh_targets(&state.directory.load());
    state.metrics.pool.refresh_fds();
    if let Some(stats) = &state.log_stats {
        state.metrics.refresh_log(stats);
    }
    let text = state
        .metrics
        .render()
        .map_err(|e| ApiError::internal("rendering /metrics", e))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}
