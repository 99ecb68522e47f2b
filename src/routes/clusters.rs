//! The HPC surface: `GET /{cluster}/jobs` (FIRST's `JobsByStatus` shape, from the
//! cluster's last scheduler probe), `GET /status` (each cluster up or in maintenance) and
//! `PUT /admin/clusters/{name}/maintenance` (admin role).

use std::time::UNIX_EPOCH;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::auth::admin::Admin;
use crate::auth::caller::Caller;
use crate::error::ApiError;
use crate::request_id::request_id;
use crate::routing::cluster::Republish;
use crate::routing::cluster::{ClusterState, ProbeState};
use crate::routing::target::SchedStatus;
use crate::scheduler::{Job, JobPhase};
use crate::state::AppState;

fn status_doc(cluster: &ClusterState) -> Value {
    let snapshot = cluster.snapshot();
    let maintenance = cluster.maintenance();
    json!({
        "status": if maintenance.is_some() { "maintenance" } else { "up" },
        "notice": maintenance.as_deref(),
        "scheduler": snapshot.state.name(),
        "free_nodes": snapshot.observation.free_nodes.unwrap_or(-1),
        "updated_at": snapshot.at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
    })
}

fn all_clusters(state: &AppState) -> HttpResponse {
    let directory = state.directory.load();
    let clusters: Map<String, Value> = directory
        .clusters
        .values()
        .map(|c| (c.name.clone(), status_doc(c)))
        .collect();
    HttpResponse::Ok().json(json!({"clusters": clusters}))
}

/// `GET /status` (any caller): every cluster, up or in maintenance, with its scheduler state.
pub async fn status(_: Caller, state: web::Data<AppState>) -> HttpResponse {
    all_clusters(&state)
}

/// `GET /admin/clusters` (admin role): what `/status` says, for the console and scripts that
/// hold the admin key rather than a caller's token.
pub async fn admin_status(_: Admin, state: web::Data<AppState>) -> HttpResponse {
    all_clusters(&state)
}

fn job_entry(job: &Job, models: &str, framework: &str, cluster: &str) -> Value {
    let mut e = Map::new();
    e.insert("Models".into(), json!(models));
    e.insert("Framework".into(), json!(framework));
    e.insert("Cluster".into(), json!(cluster));
    e.insert("Model Status".into(), json!(job.phase().name()));
    e.insert("Job ID".into(), json!(job.id));
    e.insert("Job State".into(), json!(job.state));
    e.insert(
        "Host Name".into(),
        json!(job.host.as_deref().unwrap_or("N/A")),
    );
    e.insert(
        "Job Comments".into(),
        json!(job.comment.as_deref().unwrap_or("")),
    );
    e.insert(
        "Nodes Reserved".into(),
        json!(job.nodes.as_deref().unwrap_or("N/A")),
    );
    if let Some(w) = &job.walltime {
        e.insert("Walltime".into(), json!(w));
    }
    if let Some(s) = &job.estimated_start {
        e.insert("Estimated Start Time".into(), json!(s));
    }
    Value::Object(e)
}

/// `GET /{cluster}/jobs`: the jobs serving this cluster's targets, bucketed like FIRST
/// (`running` holds running and starting jobs, with `Model Status` telling which);
/// `stopped` lists targets with no job. Under maintenance, only `stopped`, with every
/// model. Jobs serving no known target are not shown.
pub async fn jobs(
    _: Caller,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = req.match_info().get("cluster").unwrap_or_default();
    let directory = state.directory.load();
    let cluster = directory
        .cluster(name)
        .ok_or_else(|| ApiError::NotFound(format!("No cluster `{name}`.")))?;
    let stub = |t: &crate::routing::target::Target| json!({"Models": t.spec.model, "Framework": t.spec.framework, "Cluster": cluster.name});
    let mut running = Vec::new();
    let mut queued = Vec::new();
    let mut others = Vec::new();
    let mut stopped = Vec::new();
    if cluster.maintenance().is_some() {
        stopped = cluster.targets.iter().map(|t| stub(t)).collect();
    } else {
        let snapshot = cluster.snapshot();
        if snapshot.state == ProbeState::Ok {
            for job in &snapshot.observation.jobs {
                let served: Vec<&std::sync::Arc<crate::routing::target::Target>> = cluster
                    .targets
                    .iter()
                    .filter(|t| job.serves_target(&t.spec))
                    .collect();
                let Some(first) = served.first() else {
                    continue;
                };
                let mut models: Vec<&str> = Vec::new();
                for t in &served {
                    if !models.contains(&t.spec.model.as_str()) {
                        models.push(&t.spec.model);
                    }
                }
                let entry = job_entry(job, &models.join(","), &first.spec.framework, &cluster.name);
                match job.phase() {
                    JobPhase::Running | JobPhase::Starting => running.push(entry),
                    JobPhase::Queued => queued.push(entry),
                    JobPhase::Other => others.push(entry),
                }
            }
            stopped = cluster
                .targets
                .iter()
                .filter(|t| {
                    matches!(
                        t.sched(),
                        SchedStatus::Stopped | SchedStatus::StoppedFreeNodes
                    )
                })
                .map(|t| stub(t))
                .collect();
        }
    }
    let mut cluster_status = status_doc(cluster);
    cluster_status["cluster"] = json!(cluster.name);
    Ok(HttpResponse::Ok().json(json!({
        "running": running,
        "queued": queued,
        "stopped": stopped,
        "others": others,
        "private_batch_running": [],
        "private_batch_queued": [],
        "cluster_status": cluster_status,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceBody {
    pub enabled: bool,
    #[serde(default)]
    pub notice: Option<String>,
}

/// Largest maintenance notice accepted.
const NOTICE_LIMIT: usize = 2000;

/// `PUT /admin/clusters/{name}/maintenance` with `{"enabled": bool, "notice": "..."}`.
pub async fn set_maintenance(
    _: Admin,
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = req.match_info().get("name").unwrap_or_default();
    let directory = state.directory.load();
    let cluster = directory
        .cluster(name)
        .ok_or_else(|| ApiError::NotFound(format!("No cluster `{name}`.")))?;
    let body: MaintenanceBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(format!(
            "Expected {{\"enabled\": bool, \"notice\": string}}: {e}"
        ))
    })?;
    let notice = body.notice.unwrap_or_default();
    if notice.len() > NOTICE_LIMIT {
        return Err(ApiError::invalid_param(
            "notice",
            format!("The notice is longer than {NOTICE_LIMIT} bytes."),
        ));
    }
    cluster.set_maintenance(body.enabled.then_some(notice));
    if let Some(probe) = cluster.probe() {
        probe.republish.do_send(Republish);
    }
    slog::info!(state.log, "cluster maintenance changed";
        "cluster" => &cluster.name, "maintenance" => body.enabled,
        "request_id" => request_id(&req));
    Ok(HttpResponse::Ok().json(json!({"cluster": cluster.name, "status": status_doc(cluster)})))
}
