//! What clients can use: `GET /v1/models` (an OpenAI model list with live status and
//! targets) and `GET /list-endpoints` (FIRST's catalogue shape).

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use std::sync::Arc;

use crate::auth::caller::Caller;
use crate::auth::identity::Identity;
use crate::routing::directory::{Directory, ModelEntry};
use crate::routing::target::{BreakerView, Health, SchedStatus, Target};
use crate::state::AppState;

/// Live status of a model from its targets: `running` when one is healthy, takes requests
/// and (if its cluster has a scheduler) has a running job; else `starting` or `queued` when
/// a job is on its way; `unknown` while none has been checked yet; `maintenance` when every
/// target's cluster is in maintenance; else `offline`. Targets without a scheduler count
/// on health alone.
pub fn model_status(entry: &ModelEntry) -> &'static str {
    let usable = |t: &&std::sync::Arc<crate::routing::target::Target>| {
        t.breaker() != BreakerView::Open && !t.in_maintenance()
    };
    if !entry.targets.is_empty() && entry.targets.iter().all(|t| t.in_maintenance()) {
        return "maintenance";
    }
    if entry
        .targets
        .iter()
        .filter(usable)
        .any(|t| t.health() == Health::Healthy && !t.sched().is_cold())
    {
        return "running";
    }
    let sched = |s: SchedStatus| entry.targets.iter().filter(usable).any(|t| t.sched() == s);
    if sched(SchedStatus::Starting) {
        "starting"
    } else if sched(SchedStatus::Queued) {
        "queued"
    } else if entry
        .targets
        .iter()
        .filter(usable)
        .any(|t| t.health() == Health::Unknown && !t.sched().is_cold())
    {
        "unknown"
    } else {
        "offline"
    }
}

/// What `/v1/models` says about a model served only by the built-in demo target.
pub const DEMO_DESCRIPTION: &str = "Built-in demo, not a language model: answers in the \
    gateway's process with a fixed sentence and an echo of the last user message. Remove its \
    target from the fixtures once real model servers are set up.";

/// A model served only by the built-in demo target (`framework: "demo"`).
pub fn is_demo(entry: &ModelEntry) -> bool {
    !entry.targets.is_empty()
        && entry
            .targets
            .iter()
            .all(|t| matches!(t.spec.transport, crate::fixtures::Transport::Demo))
}

/// The models `caller` may see (as `/v1/models` lists them): it may name the model and use
/// one of its targets.
pub fn visible_models<'a>(
    caller: &'a Identity,
    directory: &'a Directory,
) -> impl Iterator<Item = &'a Arc<ModelEntry>> + 'a {
    directory
        .model_order
        .iter()
        .filter_map(|name| directory.model(name))
        .filter(|entry| caller.may_name(&entry.spec.name))
        .filter(|entry| entry.targets.iter().any(|t| caller.may_use(&t.spec)))
}

/// The targets `caller` may see, in catalog order: those it may use, of a visible model.
pub fn visible_targets<'a>(caller: &Identity, directory: &'a Directory) -> Vec<&'a Arc<Target>> {
    let models: Vec<&Arc<ModelEntry>> = visible_models(caller, directory).collect();
    directory
        .targets
        .iter()
        .filter(|t| caller.may_use(&t.spec))
        .filter(|t| {
            models
                .iter()
                .any(|m| m.targets.iter().any(|mt| Arc::ptr_eq(mt, t)))
        })
        .collect()
}

/// The identity the gateway sees for the caller.
pub async fn whoami(Caller(caller): Caller) -> HttpResponse {
    HttpResponse::Ok().json(&*caller)
}

pub async fn models(Caller(caller): Caller, state: web::Data<AppState>) -> HttpResponse {
    let directory = state.directory.load();
    let created = state
        .started_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let data: Vec<Value> = visible_models(&caller, &directory)
        .map(|entry| {
            let targets: Vec<Value> = entry
                .targets
                .iter()
                .filter(|t| caller.may_use(&t.spec))
                .map(|t| {
                    json!({
                        "id": t.slug(),
                        "cluster": t.spec.cluster,
                        "framework": t.spec.framework,
                        "health": t.health().name(),
                        "breaker": t.breaker().name(),
                    })
                })
                .collect();
            let mut model = json!({
                "id": entry.spec.name,
                "object": "model",
                "created": created,
                "owned_by": "inference-gateway",
                "status": model_status(entry),
                "targets": targets,
            });
            if is_demo(entry) {
                // Nobody should take the demo's echo for a model's answer.
                model["demo"] = Value::Bool(true);
                model["description"] = Value::String(DEMO_DESCRIPTION.into());
            }
            model
        })
        .collect();
    HttpResponse::Ok().json(json!({"object": "list", "data": data}))
}

pub async fn list_endpoints(Caller(caller): Caller, state: web::Data<AppState>) -> HttpResponse {
    let directory = state.directory.load();
    let endpoints: Vec<&str> =
        ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"].to_vec();
    let mut clusters: BTreeMap<&str, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    // Like /v1/models: only targets the caller may use, of models it may name.
    for target in directory
        .targets
        .iter()
        .filter(|t| caller.may_use(&t.spec) && caller.may_name(&t.spec.model))
    {
        let models = clusters
            .entry(target.spec.cluster.as_str())
            .or_default()
            .entry(target.spec.framework.as_str())
            .or_default();
        if !models.contains(&target.spec.model.as_str()) {
            models.push(target.spec.model.as_str());
        }
    }
    let clusters: serde_json::Map<String, Value> = clusters
        .into_iter()
        .map(|(cluster, frameworks)| {
            let frameworks: serde_json::Map<String, Value> = frameworks
                .into_iter()
                .map(|(fw, models)| {
                    let paths: Vec<String> = endpoints
                        .iter()
                        .map(|p| format!("{}/{cluster}/{fw}{p}", FIRST_PREFIX))
                        .collect();
                    (fw.to_string(), json!({"models": models, "endpoints": paths}))
                })
                .collect();
            (
                cluster.to_string(),
                json!({"base_url": format!("{}/{cluster}", FIRST_PREFIX), "frameworks": frameworks}),
            )
        })
        .collect();
    HttpResponse::Ok().json(json!({"clusters": clusters}))
}

/// FIRST's clients address clusters under this prefix.
const FIRST_PREFIX: &str = "/resource_server";
