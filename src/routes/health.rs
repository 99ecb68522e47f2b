//! `GET /health` (liveness: the process answers) and `GET /health/detailed` (every target's
//! health, breaker, in-flight count, latency and last error).

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use crate::auth::caller::Caller;
use crate::routes::catalog::{model_status, visible_models, visible_targets};
use crate::state::AppState;

pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Needs an authenticated caller, and shows only what it may use (the models and targets
/// `/v1/models` lists for it).
pub async fn detailed(Caller(caller): Caller, state: web::Data<AppState>) -> HttpResponse {
    let directory = state.directory.load();
    let targets: Vec<Value> = visible_targets(&caller, &directory)
        .into_iter()
        .map(|t| {
            let ewma = t.ewma_ttfb_us();
            json!({
                "id": t.slug(),
                "cluster": t.spec.cluster,
                "framework": t.spec.framework,
                "model": t.spec.model,
                "healthy": crate::routing::target::tier(t.health(), t.breaker()) == Some(0),
                "scheduler": t.sched().name(),
                "maintenance": t.in_maintenance(),
                "health": t.health().name(),
                "breaker": t.breaker().name(),
                "in_flight": t.in_flight(),
                "ewma_ttfb_ms": (ewma > 0).then(|| ewma as f64 / 1000.0),
                "requests": t.requests_total(),
                "failures": t.failures_total(),
                "actor_restarts": t.restarts(),
                "last_error": t.last_error(),
            })
        })
        .collect();
    let visible: Vec<_> = visible_models(&caller, &directory).collect();
    let models: Vec<Value> = visible
        .iter()
        .map(|m| json!({"id": m.spec.name, "status": model_status(m)}))
        .collect();
    let all_up = visible.iter().all(|m| model_status(m) == "running");
    HttpResponse::Ok().json(json!({
        "status": if all_up { "ok" } else { "degraded" },
        "targets": targets,
        "models": models,
    }))
}
