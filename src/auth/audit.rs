//! Audit events in the JSON log (`"msg":"audit"`, `event`): refused credentials
//! (`auth.failed`, `admin_auth.failed`), keys created (`key.created`) and revoked
//! (`key.revoked`). Each names who (the key id or `bootstrap`), which key, and from where
//! (`client_ip`, `path`); never a token or key secret. Refused admin credentials are also
//! counted in `gateway_admin_auth_failures_total{reason}`.

use actix_web::HttpRequest;

use crate::auth::keys::looks_like_key;
use crate::auth::oidc::looks_like_jwt;
use crate::error::ApiError;
use crate::metrics::auth_reason;
use crate::state::AppState;
use crate::store::ApiKeyRow;

/// The peer's address (the request log's `client_ip`).
fn client_ip(req: &HttpRequest) -> String {
    req.peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default()
}

/// What kind of credential was presented (never its value).
fn credential(token: Option<&str>) -> &'static str {
    match token {
        None => "none",
        Some(t) if looks_like_key(t) => "api_key",
        Some(t) if looks_like_jwt(t) => "jwt",
        Some(_) => "token",
    }
}

/// The id of the key behind a refused token, when it was issued (expired or revoked).
fn key_id(state: &AppState, token: Option<&str>) -> Option<String> {
    token
        .filter(|t| looks_like_key(t))
        .and_then(|t| state.auth.keys.recent_id(t))
}

/// A request refused by the `Caller` extractor (401/403/503).
pub fn auth_failed(state: &AppState, req: &HttpRequest, token: Option<&str>, error: &ApiError) {
    use actix_web::ResponseError;
    slog::warn!(state.log, "audit";
        "event" => "auth.failed",
        "reason" => auth_reason(error),
        "status" => error.status_code().as_u16(),
        "credential" => credential(token),
        "key_id" => key_id(state, token),
        "client_ip" => client_ip(req),
        "method" => req.method().as_str(),
        "path" => req.path());
}

/// Why a credential was refused on the admin API (the metric's `reason`).
#[derive(Debug, Clone, Copy)]
pub enum AdminRefusal {
    MissingToken,
    /// Not the bootstrap key, and not an API key.
    InvalidAdminKey,
    /// No bootstrap key is configured, and the token is not an API key.
    NoAdminKey,
    /// An API key nobody issued, expired or revoked.
    InvalidToken,
    /// A valid API key without the admin role.
    NotAdmin,
}

impl AdminRefusal {
    pub fn name(self) -> &'static str {
        match self {
            AdminRefusal::MissingToken => "missing_token",
            AdminRefusal::InvalidAdminKey => "invalid_admin_key",
            AdminRefusal::NoAdminKey => "no_admin_key",
            AdminRefusal::InvalidToken => "invalid_token",
            AdminRefusal::NotAdmin => "not_admin",
        }
    }
}

/// A request refused by the `Admin` extractor: logged and counted.
pub fn admin_failed(
    state: &AppState,
    req: &HttpRequest,
    token: Option<&str>,
    refusal: AdminRefusal,
    key_id_known: Option<&str>,
) {
    state
        .metrics
        .auth
        .admin_failures
        .with_label_values(&[refusal.name()])
        .inc();
    let key = key_id_known
        .map(str::to_string)
        .or_else(|| key_id(state, token));
    slog::warn!(state.log, "audit";
        "event" => "admin_auth.failed",
        "reason" => refusal.name(),
        "credential" => credential(token),
        "key_id" => key,
        "client_ip" => client_ip(req),
        "method" => req.method().as_str(),
        "path" => req.path());
}

/// A key was made through the admin API by `by` (`bootstrap` or an admin key's id).
pub fn key_created(state: &AppState, req: &HttpRequest, by: &str, row: &ApiKeyRow) {
    slog::info!(state.log, "audit";
        "event" => "key.created",
        "by" => by,
        "key_id" => &row.id,
        "user" => &row.user_id,
        "org" => (!row.org_id.is_empty()).then_some(row.org_id.as_str()),
        "role" => &row.role,
        "models" => &row.allowed_models,
        "expires_at" => row.expires_at.map(|t| t / 1000),
        "client_ip" => client_ip(req));
}

/// A key was revoked through the admin API by `by`.
pub fn key_revoked(state: &AppState, req: &HttpRequest, by: &str, id: &str) {
    slog::info!(state.log, "audit";
        "event" => "key.revoked",
        "by" => by,
        "key_id" => id,
        "client_ip" => client_ip(req));
}
