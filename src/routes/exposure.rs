//! Who may call each route: the one table of the HTTP surface's exposure. The handlers
//! enforce it through their extractors (`Caller`, `Admin`, the callbacks' shared secret);
//! `tests/exposure.rs` holds the served routes, their answers without credentials and
//! `/openapi.json` (whose per-operation `security` is built from this table) to it.
//! README's route table says the same. Every path is also served under
//! `/resource_server`; chat aliases from `routes.chat_aliases` and relayed routes from
//! `routes.relayed` (and their pinned forms) are `Caller` like the built-in inference
//! routes.

/// What a route needs under `auth.mode = "required"` (with `"none"`, `Caller` routes are
/// open to the anonymous caller; the others are unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Nothing: liveness, metrics, and the API description (it lists routes, never
    /// models, targets or identities).
    Public,
    /// A token that resolves to an identity (API key, Globus, OIDC); answers are limited
    /// to what that identity may use.
    Caller,
    /// The bootstrap admin key or an admin-role API key.
    Admin,
    /// The Globus Compute function: shared secret (`X-Internal-Secret`) and task token.
    Callback,
}

impl Exposure {
    pub fn name(self) -> &'static str {
        match self {
            Exposure::Public => "public",
            Exposure::Caller => "caller",
            Exposure::Admin => "admin",
            Exposure::Callback => "callback",
        }
    }
}

use Exposure::{Admin, Callback, Caller, Public};

/// Every route (method, path as registered, exposure).
pub const ROUTES: &[(&str, &str, Exposure)] = &[
    ("POST", "/v1/chat/completions", Caller),
    ("POST", "/v1/completions", Caller),
    ("POST", "/v1/embeddings", Caller),
    ("POST", "/v1/rerank", Caller),
    ("POST", "/v1/responses", Caller),
    ("POST", "/v1/messages", Caller),
    ("POST", "/{cluster}/{framework}/v1/chat/completions", Caller),
    ("POST", "/{cluster}/{framework}/v1/completions", Caller),
    ("POST", "/{cluster}/{framework}/v1/embeddings", Caller),
    ("POST", "/{cluster}/{framework}/v1/rerank", Caller),
    ("POST", "/{cluster}/{framework}/v1/responses", Caller),
    ("POST", "/{cluster}/{framework}/v1/messages", Caller),
    ("POST", "/v1/files", Caller),
    ("GET", "/v1/files", Caller),
    ("GET", "/v1/files/{id}", Caller),
    ("DELETE", "/v1/files/{id}", Caller),
    ("GET", "/v1/files/{id}/content", Caller),
    ("POST", "/v1/batches", Caller),
    ("GET", "/v1/batches", Caller),
    ("GET", "/v1/batches/{id}", Caller),
    ("POST", "/v1/batches/{id}/cancel", Caller),
    ("GET", "/v1/batches/{id}/result", Caller),
    ("POST", "/{cluster}/{framework}/v1/batches", Caller),
    ("GET", "/v1/models", Caller),
    ("GET", "/list-endpoints", Caller),
    ("GET", "/whoami", Caller),
    ("GET", "/health", Public),
    ("GET", "/health/detailed", Caller),
    ("GET", "/status", Caller),
    ("GET", "/{cluster}/jobs", Caller),
    ("GET", "/metrics", Public),
    ("GET", "/openapi.json", Public),
    ("GET", "/docs", Public),
    ("GET", "/docs/docs.js", Public),
    ("GET", "/docs/docs.css", Public),
    ("POST", "/api/streaming/data", Callback),
    ("POST", "/api/streaming/done", Callback),
    ("POST", "/api/streaming/error", Callback),
    ("POST", "/admin/keys", Admin),
    ("GET", "/admin/keys", Admin),
    ("DELETE", "/admin/keys/{id}", Admin),
    ("GET", "/admin/backends", Admin),
    ("GET", "/admin/usage", Admin),
    ("GET", "/admin/quotas", Admin),
    ("GET", "/admin/quota/{subject}", Admin),
    ("PUT", "/admin/quota/{subject}", Admin),
    ("POST", "/admin/quota/{subject}/reset", Admin),
    ("POST", "/admin/reload", Admin),
    ("GET", "/admin/clusters", Admin),
    ("PUT", "/admin/clusters/{name}/maintenance", Admin),
    ("GET", "/admin/batches", Admin),
    ("POST", "/admin/batches/{id}/cancel", Admin),
    ("GET", "/admin/ui", Public),
    ("GET", "/admin/ui/console.js", Public),
    ("GET", "/admin/ui/console.css", Public),
    ("GET", "/admin/ui/favicon.svg", Public),
];

/// The exposure of `method` on the registered `path`; inference routes not in the table
/// (chat aliases and `routes.relayed`) are `Caller`.
pub fn of(method: &str, path: &str) -> Option<Exposure> {
    ROUTES
        .iter()
        .find(|(m, p, _)| m.eq_ignore_ascii_case(method) && *p == path)
        .map(|(_, _, e)| *e)
}
