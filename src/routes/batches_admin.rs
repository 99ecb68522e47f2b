//! The admin view of batches (admin role): `GET /admin/batches?user=&status=&limit=&after=`
//! lists every user's batches, newest first, each with its `owner`; `POST
//! /admin/batches/{id}/cancel` cancels any user's batch (as the owner's own cancel does).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::admin::Admin;
use crate::batch::batch_json;
use crate::error::ApiError;
use crate::routes::admin::non_empty;
use crate::routes::batches::{cancel_batch, list_json, owned_batch, Page};
use crate::state::AppState;
use crate::store::BatchRow;

/// Every state a batch can be in (OpenAI's), for the `status` filter.
const STATES: [&str; 8] = [
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    user: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    after: Option<String>,
}

/// A batch as the admin sees it: the owner's view plus who owns it.
fn admin_json(b: &BatchRow) -> Value {
    let mut v = batch_json(b);
    v["owner"] = Value::from(b.owner.as_str());
    v
}

pub async fn list(
    _: Admin,
    params: web::Query<ListParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // A bad query string is refused by the app's `QueryConfig` (400, naming the problem).
    let params = params.into_inner();
    let status = non_empty(params.status);
    if let Some(s) = status.as_deref() {
        if !STATES.contains(&s) {
            return Err(ApiError::invalid_param(
                "status",
                format!("`status` must be one of {}.", STATES.join(", ")),
            ));
        }
    }
    let page = Page {
        limit: params.limit,
        after: non_empty(params.after),
    };
    let limit = page.limit(50, 500)?;
    let rows = state
        .store
        .list_batches(non_empty(params.user), status, page.after, limit + 1)
        .await
        .map_err(|e| ApiError::store("listing batches", e))?;
    Ok(HttpResponse::Ok().json(list_json(rows, limit, admin_json)))
}

pub async fn cancel(
    _: Admin,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let b = cancel_batch(&state, owned_batch(&state, None, &id).await?).await?;
    Ok(HttpResponse::Ok().json(admin_json(&b)))
}
