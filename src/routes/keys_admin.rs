//! `/admin/keys` (admin role): create a key (shown once), list keys (never their secrets
//! or hashes), revoke one.

use actix_web::http::header::CACHE_CONTROL;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::admin::Admin;
use crate::auth::audit;
use crate::auth::keys::{self, NewKey};
use crate::error::ApiError;
use crate::json_body::JsonBody;
use crate::state::AppState;
use crate::store::{now_ms, ApiKeyRow};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    user: String,
    #[serde(default)]
    org: Option<String>,
    #[serde(default)]
    admin: bool,
    /// A lifetime like `30d`, `12h`, or seconds.
    #[serde(default)]
    expires_in: Option<String>,
    #[serde(default)]
    models: Vec<String>,
}

#[derive(Deserialize)]
pub struct ListQuery {
    user: Option<String>,
}

/// A key as listed (no secret, no hash).
pub fn describe(row: &ApiKeyRow) -> Value {
    json!({
        "id": row.id,
        "object": "api_key",
        "user": row.user_id,
        "org": (!row.org_id.is_empty()).then_some(&row.org_id),
        "role": row.role,
        "prefix": row.prefix,
        "created_at": row.created_at / 1000,
        "expires_at": row.expires_at.map(|t| t / 1000),
        "revoked_at": row.revoked_at.map(|t| t / 1000),
        "last_used_at": row.last_used_at.map(|t| t / 1000),
        "models": row.allowed_models().unwrap_or_default(),
        "active": row.is_active(now_ms()),
    })
}

pub async fn create(
    admin: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
    body: JsonBody<CreateKey>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let user = body.user.trim().to_string();
    if user.is_empty() || user.len() > 200 || user.contains(['<', '>', '\0']) {
        return Err(ApiError::invalid_param(
            "user",
            "`user` must be a non-empty name (at most 200 characters).",
        ));
    }
    if body
        .org
        .as_deref()
        .is_some_and(|o| o.len() > 200 || o.contains('\0'))
    {
        return Err(ApiError::invalid_param(
            "org",
            "`org` must be a name of at most 200 characters.",
        ));
    }
    let expires_at = match body.expires_in.as_deref() {
        None => None,
        Some(text) => Some(
            keys::expires_at(text, now_ms())
                .map_err(|m| ApiError::invalid_param("expires_in", format!("`expires_in`: {m}")))?,
        ),
    };
    let new = NewKey {
        user,
        org: body.org.filter(|o| !o.trim().is_empty()),
        admin: body.admin,
        expires_at,
        models: body.models,
    };
    let (secret, row) = keys::create(state.store.as_ref(), new)
        .await
        .map_err(|e| ApiError::store("the key store", e))?;
    audit::key_created(&state, &req, &admin.by, &row);
    let mut out = describe(&row);
    out["key"] = json!(secret);
    // The answer carries the secret: no cache (browser, proxy) may keep it.
    Ok(HttpResponse::Created()
        .insert_header((CACHE_CONTROL, "no-store"))
        .json(out))
}

pub async fn list(
    _: Admin,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let rows = state
        .store
        .list_keys(query.into_inner().user)
        .await
        .map_err(|e| ApiError::store("the key store", e))?;
    let data: Vec<Value> = rows.iter().map(describe).collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

pub async fn revoke(
    admin: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let revoked = state
        .store
        .revoke_key(id.clone(), now_ms())
        .await
        .map_err(|e| ApiError::store("the key store", e))?;
    if !revoked {
        return Err(ApiError::NotFound(format!("No active API key {id}.")));
    }
    state.auth.keys.forget_all();
    audit::key_revoked(&state, &req, &admin.by, &id);
    Ok(HttpResponse::Ok().json(json!({"id": id, "object": "api_key", "revoked": true})))
}
