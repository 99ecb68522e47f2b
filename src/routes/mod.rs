//! The HTTP surface. Every route is served at the root and again under `/resource_server`
//! (FIRST's prefix), so existing clients keep working. Unknown paths get a 404 and wrong
//! methods a 405, both in the OpenAI error envelope.

pub mod admin;
pub mod batches;
pub mod batches_admin;
pub mod catalog;
pub mod clusters;
pub mod console;
pub mod exposure;
pub mod health;
pub mod inference;
mod inference_body;
pub mod inference_request;
pub mod keys_admin;
pub mod ops;
pub mod quota_admin;
pub mod streaming;

use std::collections::HashSet;
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::config::{BodyKind, Settings};
use crate::error::ApiError;
use inference::InferenceRoute;

/// Client paths of the built-in inference routes (config may not reuse them).
pub const BUILTIN_PATHS: [&str; 6] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/rerank",
    "/v1/responses",
    "/v1/messages",
];

/// Paths the gateway serves itself: a relayed route may not be one of them or below one.
pub const GATEWAY_PREFIXES: [&str; 13] = [
    "/v1/models",
    "/v1/files",
    "/v1/batches",
    "/admin",
    "/api",
    "/health",
    "/metrics",
    "/whoami",
    "/status",
    "/list-endpoints",
    "/openapi.json",
    "/docs",
    "/resource_server",
];

/// Built-in routes plus the chat-shaped aliases and relayed routes from config.
pub fn inference_routes(settings: &Settings) -> Vec<Arc<InferenceRoute>> {
    let mut routes: Vec<Arc<InferenceRoute>> =
        inference::builtin().into_iter().map(Arc::new).collect();
    for alias in &settings.routes.chat_aliases {
        let name: &'static str = alias.path.trim_start_matches("/v1/").to_string().leak();
        routes.push(Arc::new(InferenceRoute {
            name,
            path: alias.path.clone(),
            upstream_path: inference::CHAT,
            models: (!alias.models.is_empty())
                .then(|| alias.models.iter().cloned().collect::<HashSet<_>>()),
            body: BodyKind::Json,
            relayed: false,
        }));
    }
    for relayed in &settings.routes.relayed {
        // Routes live as long as the process (they are rebuilt only on restart).
        let path: &'static str = relayed.path.clone().leak();
        routes.push(Arc::new(InferenceRoute {
            name: path.trim_start_matches("/v1/").trim_start_matches('/'),
            path: relayed.path.clone(),
            upstream_path: path,
            models: None,
            body: relayed.body,
            relayed: true,
        }));
    }
    routes
}

/// Registers every route (used twice: at the root and under `/resource_server`).
pub fn configure(cfg: &mut web::ServiceConfig, routes: &[Arc<InferenceRoute>]) {
    for route in routes.iter().filter(|r| !r.relayed) {
        inference_services(cfg, route);
    }
    files_and_batches(cfg);
    models_and_caller(cfg);
    admin(cfg);
    operations(cfg);
    clusters_and_callbacks(cfg);
    // After the fixed routes: a pinned `/{cluster}/{framework}/tokenize` would otherwise
    // shadow `/v1/files/{id}` and its like.
    for route in routes.iter().filter(|r| r.relayed) {
        inference_services(cfg, route);
    }
    // Last: `{cluster}` would otherwise shadow fixed two-segment paths.
    cfg.service(resource("/{cluster}/jobs").route(web::get().to(clusters::jobs)));
}

/// A route whose other methods answer 405 in the OpenAI envelope.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// The Files and Batch APIs, and FIRST's pinned batch form.
fn files_and_batches(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/files")
            .route(web::post().to(batches::upload))
            .route(web::get().to(batches::list_files)),
    );
    cfg.service(
        resource("/v1/files/{id}")
            .route(web::get().to(batches::get_file))
            .route(web::delete().to(batches::delete_file)),
    );
    cfg.service(resource("/v1/files/{id}/content").route(web::get().to(batches::file_content)));
    cfg.service(
        resource("/v1/batches")
            .route(web::post().to(batches::create))
            .route(web::get().to(batches::list)),
    );
    cfg.service(resource("/v1/batches/{id}").route(web::get().to(batches::get)));
    cfg.service(resource("/v1/batches/{id}/cancel").route(web::post().to(batches::cancel)));
    cfg.service(resource("/v1/batches/{id}/result").route(web::get().to(batches::result)));
    // FIRST's path form, pinned to a cluster and framework.
    cfg.service(
        resource("/{cluster}/{framework}/v1/batches")
            .route(web::post().to(batches::create_from_path)),
    );
}

/// Models, endpoints, liveness, the caller.
fn models_and_caller(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/models").route(web::get().to(catalog::models)));
    cfg.service(resource("/list-endpoints").route(web::get().to(catalog::list_endpoints)));
    cfg.service(resource("/health").route(web::get().to(health::live)));
    cfg.service(resource("/whoami").route(web::get().to(catalog::whoami)));
}

/// Keys, backends, usage, quotas.
fn admin(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/admin/keys")
            .route(web::post().to(keys_admin::create))
            .route(web::get().to(keys_admin::list)),
    );
    cfg.service(resource("/admin/keys/{id}").route(web::delete().to(keys_admin::revoke)));
    cfg.service(resource("/admin/backends").route(web::get().to(admin::backends)));
    cfg.service(resource("/admin/batches").route(web::get().to(batches_admin::list)));
    cfg.service(
        resource("/admin/batches/{id}/cancel").route(web::post().to(batches_admin::cancel)),
    );
    cfg.service(resource("/admin/usage").route(web::get().to(admin::usage)));
    cfg.service(resource("/admin/quotas").route(web::get().to(quota_admin::list)));
    cfg.service(
        resource("/admin/quota/{subject}")
            .route(web::get().to(quota_admin::get))
            .route(web::put().to(quota_admin::put)),
    );
    cfg.service(resource("/admin/quota/{subject}/reset").route(web::post().to(quota_admin::reset)));
}

/// Detailed health, reload, metrics, the API description.
fn operations(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/health/detailed").route(web::get().to(health::detailed)));
    cfg.service(resource("/admin/reload").route(web::post().to(admin::reload)));
    cfg.service(resource("/admin/ui").route(web::get().to(console::page)));
    cfg.service(resource("/admin/ui/console.js").route(web::get().to(console::script)));
    cfg.service(resource("/admin/ui/console.css").route(web::get().to(console::style)));
    cfg.service(resource("/admin/ui/favicon.svg").route(web::get().to(console::icon)));
    cfg.service(resource("/metrics").route(web::get().to(ops::metrics)));
    cfg.service(resource("/openapi.json").route(web::get().to(crate::openapi::openapi_json)));
    cfg.service(resource("/docs").route(web::get().to(crate::openapi::docs)));
    cfg.service(resource("/docs/docs.js").route(web::get().to(crate::openapi::docs_js)));
    cfg.service(resource("/docs/docs.css").route(web::get().to(crate::openapi::docs_css)));
}

/// Cluster status and maintenance, the streaming callbacks.
fn clusters_and_callbacks(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/status").route(web::get().to(clusters::status)));
    cfg.service(resource("/admin/clusters").route(web::get().to(clusters::admin_status)));
    cfg.service(
        resource("/admin/clusters/{name}/maintenance")
            .route(web::put().to(clusters::set_maintenance)),
    );
    for (path, kind) in [
        ("/api/streaming/data", streaming::Kind::Data),
        ("/api/streaming/done", streaming::Kind::Done),
        ("/api/streaming/error", streaming::Kind::Error),
    ] {
        cfg.service(
            resource(path).route(
                web::post()
                    .to(move |req, payload, state| streaming::callback(req, payload, state, kind)),
            ),
        );
    }
}

/// One inference route, federated and pinned (`/{cluster}/{framework}{path}`).
fn inference_services(cfg: &mut web::ServiceConfig, route: &Arc<InferenceRoute>) {
    for pinned in [false, true] {
        let path = if pinned {
            format!("/{{cluster}}/{{framework}}{}", route.path)
        } else {
            route.path.clone()
        };
        let on = inference::OnRoute {
            route: Arc::clone(route),
            pinned,
        };
        cfg.service(
            web::resource(path)
                .app_data(on)
                .route(web::post().to(inference::handle))
                .default_service(web::to(method_not_allowed)),
        );
    }
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let path: String = req.path().chars().take(200).collect();
    Err(ApiError::NotFound(format!(
        "No route {path}; see /v1/models."
    )))
}

pub async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(req.method().to_string()))
}
