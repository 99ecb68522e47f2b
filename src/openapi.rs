//! `GET /openapi.json` (an OpenAPI 3.1 description of every route, built here by hand and
//! kept next to the route table) and `GET /docs` (a page that renders it with a small
//! script served from the binary: no CDN, nothing fetched at build or run time).

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};

use crate::routes::exposure::{self, Exposure};
use crate::routes::inference::InferenceRoute;
use crate::security::DOCS_CSP;

const DOCS_HTML: &str = include_str!("docs/index.html");
const DOCS_JS: &str = include_str!("docs/docs.js");
const DOCS_CSS: &str = include_str!("docs/docs.css");

fn error_responses(extra: &[(&str, &str)]) -> Map<String, Value> {
    let mut m = Map::new();
    for (code, what) in extra {
        m.insert(
            (*code).to_string(),
            json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    m
}

fn inference_op(route: &InferenceRoute, pinned: bool) -> Value {
    let mut responses = error_responses(&[
        (
            "400",
            "Invalid body: not JSON, no `model`, or a field of the wrong type.",
        ),
        (
            "404",
            "Unknown model (or no target of it in this cluster and framework).",
        ),
        ("413", "Body larger than `server.max_body_bytes`."),
        (
            "422",
            "The target found the request unprocessable (its answer, relayed).",
        ),
        (
            "501",
            "The target does not support this request (its answer, relayed).",
        ),
        (
            "429",
            "Every target is rate limited (`Retry-After` when known).",
        ),
        ("502", "Every target failed."),
        ("503", "No target of the model is available."),
        ("504", "The target did not answer in time."),
        ("508", "Loop: the request passed through too many gateways."),
    ]);
    responses.insert(
        "200".into(),
        json!({
            "description": "The target's answer, relayed unchanged: JSON, or `text/event-stream` when `stream` is true. Cached answers carry `x-cache: hit`.",
            "headers": {
                "x-request-id": {"schema": {"type": "string"}},
                "x-cache": {"schema": {"type": "string", "enum": ["hit", "miss"]}}
            },
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/event-stream": sse_content()
            }
        }),
    );
    let mut parameters = vec![
        json!({"name": "x-request-id", "in": "header", "required": false, "schema": {"type": "string"}}),
        json!({"name": "x-cache", "in": "header", "required": false,
               "description": "`on`: cache this non-streaming answer whatever its temperature; `off`: never.",
               "schema": {"type": "string", "enum": ["on", "off"]}}),
    ];
    if pinned {
        parameters.push(json!({"name": "cluster", "in": "path", "required": true, "schema": {"type": "string"}}));
        parameters.push(json!({"name": "framework", "in": "path", "required": true, "schema": {"type": "string"}}));
    }
    let summary = if pinned {
        format!(
            "{} pinned to the targets of one cluster and framework",
            route.path
        )
    } else {
        format!("{} routed by `model` to one of its targets", route.path)
    };
    let body = match route.body {
        crate::config::BodyKind::Json => json!({"application/json": {"schema": {
            "type": "object", "required": ["model"],
            "properties": {"model": {"type": "string"}, "stream": {"type": "boolean"}, "temperature": {"type": "number"}},
            "additionalProperties": true}}}),
        crate::config::BodyKind::Multipart => json!({"multipart/form-data": {"schema": {
            "type": "object", "required": ["model", "file"],
            "properties": {"model": {"type": "string"}, "file": {"type": "string", "format": "binary"}},
            "additionalProperties": true}}}),
    };
    json!({"post": {
        "tags": [if pinned { "pinned" } else { "inference" }],
        "summary": summary,
        "description": "The body goes upstream unchanged (only `model` may be rewritten to the name the target serves). Failures before the first byte fail over to another target; the target's own 4xx and 501 are relayed as it sent them.",
        "parameters": parameters,
        "requestBody": {"required": true, "content": body},
        "responses": responses,
    }})
}

fn get_op(tag: &str, summary: &str, content_type: &str, errors: &[(&str, &str)]) -> Value {
    let mut responses = error_responses(errors);
    responses.insert(
        "200".into(),
        json!({"description": summary, "content": {content_type: {"schema": {"type": if content_type == "application/json" { "object" } else { "string" }}}}}),
    );
    json!({"tags": [tag], "summary": summary, "responses": responses})
}

/// The refusals of every admin operation; `secure` adds them from the exposure table, so
/// an operation lists only its own.
const ADMIN_ERRORS: [(&str, &str); 2] = [
    ("401", "No admin key, or a key nobody issued."),
    (
        "403",
        "No admin key is configured, or the key lacks the admin role.",
    ),
];

/// The OpenAPI document for the routes this process serves.
pub fn document(routes: &[std::sync::Arc<InferenceRoute>]) -> Value {
    let mut paths = Map::new();
    for route in routes {
        paths.insert(route.path.clone(), inference_op(route, false));
    }
    for route in routes {
        paths.insert(
            format!("/{{cluster}}/{{framework}}{}", route.path),
            inference_op(route, true),
        );
    }
    catalog_and_operations_paths(&mut paths);
    admin_paths(&mut paths);
    hpc_paths(&mut paths);
    batch_paths(&mut paths);
    secure_every_operation(&mut paths);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "inference-gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "An OpenAI-compatible gateway in front of many inference servers. Every path is also served under /resource_server (FIRST's prefix). Every error is an OpenAI error envelope."
        },
        "paths": paths,
        "security": [{"bearer": []}],
        "components": components(),
    })
}

fn json_op(tag: &str, summary: &str, errors: &[(&str, &str)]) -> Value {
    get_op(tag, summary, "application/json", errors)
}

fn json_get(tag: &str, summary: &str, errors: &[(&str, &str)]) -> Value {
    json!({"get": json_op(tag, summary, errors)})
}

/// The catalog, health, auth and operations routes, and the two pages.
fn catalog_and_operations_paths(paths: &mut Map<String, Value>) {
    paths.insert(
        "/v1/models".into(),
        json_get(
            "catalog",
            "Models, with live status and targets (OpenAI model list); the built-in demo is marked `demo: true`.",
            &[],
        ),
    );
    paths.insert(
        "/list-endpoints".into(),
        json_get(
            "catalog",
            "Clusters, frameworks, models and their pinned endpoint paths (FIRST's shape).",
            &[],
        ),
    );
    paths.insert(
        "/health".into(),
        json_get("health", "Liveness: the process answers.", &[]),
    );
    paths.insert(
        "/health/detailed".into(),
        json_get(
            "health",
            "Every target's health, breaker, in-flight count and latency.",
            &[],
        ),
    );
    paths.insert(
        "/admin/backends".into(),
        json_get(
            "admin",
            "Every target with its live state (health, breaker, scheduler, in-flight, latency, last error), base URL and fixture extras, and every model with its status (admin role).",
            &[],
        ),
    );
    let reload_errors = [("400", "The new configuration or fixtures are invalid; the gateway keeps running on the old ones. The message names the key or file.")];
    let mut reload = get_op("admin", "Re-read configuration and fixtures and apply them without dropping a request (same as SIGHUP).", "application/json", &reload_errors);
    reload["description"] = json!("Unchanged targets keep their state; removed ones drain; new ones start. `restart_required` lists changed settings that apply only after a restart.");
    paths.insert("/admin/reload".into(), json!({"post": reload}));
    paths.insert("/metrics".into(), json!({"get": get_op("operations", "Prometheus metrics (text format 0.0.4), all named gateway_*.", "text/plain", &[])}));
    paths.insert(
        "/openapi.json".into(),
        json_get("operations", "This document.", &[]),
    );
    paths.insert(
        "/docs".into(),
        json!({"get": get_op("operations", "This document rendered as a page.", "text/html", &[])}),
    );
    paths.insert(
        "/admin/ui".into(),
        json!({"get": get_op("admin", "The admin console: a page that signs in with an admin key and shows what the admin API answers.", "text/html", &[])}),
    );
    paths.insert(
        "/admin/ui/console.js".into(),
        json!({"get": get_op("admin", "The script of the admin console.", "text/javascript", &[])}),
    );
    paths.insert(
        "/admin/ui/console.css".into(),
        json!({"get": get_op("admin", "The style sheet of the admin console.", "text/css", &[])}),
    );
    paths.insert(
        "/admin/ui/favicon.svg".into(),
        json!({"get": get_op("admin", "The admin console's icon.", "image/svg+xml", &[])}),
    );
    paths.insert("/docs/docs.js".into(), json!({"get": get_op("operations", "The script of the docs page.", "text/javascript", &[])}));
    paths.insert(
        "/docs/docs.css".into(),
        json!({"get": get_op("operations", "The style sheet of the docs page.", "text/css", &[])}),
    );
}

/// The admin API (keys, usage, batches, quotas; the pages' own routes are with the pages).
fn admin_paths(paths: &mut Map<String, Value>) {
    paths.insert(
        "/whoami".into(),
        json_get(
            "auth",
            "The caller's identity, groups and identity provider as the gateway sees them.",
            &[
                ("401", "No token, or a token nobody issued."),
                (
                    "403",
                    "A valid identity that a policy rule refuses; the message names the rule.",
                ),
            ],
        ),
    );
    paths.insert(
        "/admin/usage".into(),
        json_get(
            "admin",
            "The request log aggregated (?user=&org=&model=&since=&until=&bucket=): totals and per model; with bucket=minute|hour|day also `series`, one entry per time bucket (empty ones included) with its totals and per-model split, over the last hour, day or 30 days unless since/until say otherwise.",
            &[
                (
                    "400",
                    "A bad time, bucket or unknown parameter, or a window of more than 2000 buckets; the message names it.",
                ),
            ],
        ),
    );
    let key_errors = [("400", "A bad or unknown field; the message names it.")];
    paths.insert(
        "/admin/keys".into(),
        json!({
            "get": json_op("admin", "API keys (?user=), never their secrets.", &[]),
            "post": json_op("admin", "Create an API key ({user, org?, admin?, expires_in?, models?}); the key is in the answer, once.", &key_errors),
        }),
    );
    let revoke_errors = [("404", "No active key with that id.")];
    paths.insert(
        "/admin/keys/{id}".into(),
        json!({"delete": json_op("admin", "Revoke an API key.", &revoke_errors)}),
    );
    let batch_list_errors = [(
        "400",
        "A bad status, limit or unknown parameter; the message names it.",
    )];
    paths.insert(
        "/admin/batches".into(),
        json!({"get": json_op("admin", "Every user's batches, newest first, each with its `owner` (?user=&status=&limit=&after=).", &batch_list_errors)}),
    );
    let batch_cancel_errors = [
        ("404", "No such batch."),
        (
            "409",
            "The batch has already ended (completed, failed or expired).",
        ),
    ];
    paths.insert(
        "/admin/batches/{id}/cancel".into(),
        json!({"post": json_op("admin", "Cancel any user's batch: the lines done are kept and written out.", &batch_cancel_errors)}),
    );
    paths.insert(
        "/admin/quotas".into(),
        json!({"get": json_op("admin", "Every subject with its usage and limits, paged (?limit=&after=).", &[])}),
    );
    let quota_errors = [(
        "400",
        "A bad subject, or a bad or unknown limit field; the message names it.",
    )];
    paths.insert(
        "/admin/quota/{subject}".into(),
        json!({
            "get": json_op("admin", "One subject (user:ID, org:ID or model:NAME): usage, limits, override.", &quota_errors),
            "put": json_op("admin", "Set the subject's overrides (a JSON object of limit fields; null = the default, {} = none). Takes effect at once.", &quota_errors),
        }),
    );
    paths.insert(
        "/admin/quota/{subject}/reset".into(),
        json!({"post": json_op("admin", "Forget the subject's usage in every window.", &quota_errors)}),
    );
}

/// Clusters, jobs, maintenance and the Globus Compute streaming callbacks.
fn hpc_paths(paths: &mut Map<String, Value>) {
    paths.insert(
        "/status".into(),
        json_get(
            "hpc",
            "Each cluster: up or in maintenance, scheduler state, free nodes.",
            &[],
        ),
    );
    paths.insert(
        "/{cluster}/jobs".into(),
        json_get(
            "hpc",
            "The cluster's jobs by state, in FIRST's shape.",
            &[("404", "No such cluster.")],
        ),
    );
    let maintenance_errors = [("404", "No such cluster.")];
    paths.insert(
        "/admin/clusters".into(),
        json!({"get": json_op("admin", "Each cluster as /status shows it (for the admin key).", &[])}),
    );
    paths.insert(
        "/admin/clusters/{name}/maintenance".into(),
        json!({"put": json_op("admin", "Put a cluster in or out of maintenance ({enabled, notice}).", &maintenance_errors)}),
    );
    for (path, what) in [
        ("/api/streaming/data", "a chunk"),
        ("/api/streaming/done", "the end"),
        ("/api/streaming/error", "an error"),
    ] {
        paths.insert(
            path.into(),
            json!({"post": json_op(
                "hpc",
                &format!("Globus Compute streaming callback: {what} of a stream task (shared secret and per-task token)."),
                &[("400", "Malformed callback."), ("401", "Wrong shared secret."), ("403", "Unknown task or wrong task token."), ("413", "Callback body too large.")],
            )}),
        );
    }
}

/// Path parameters, `security` and refusals from the exposure table, and the 405 of every
/// operation.
fn secure_every_operation(paths: &mut Map<String, Value>) {
    for (path, item) in paths.iter_mut() {
        let Some(ops) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in ops.iter_mut() {
            declare_path_parameters(path, op);
            // Who may call it, from the one exposure table (aliases are inference routes).
            let exposure = exposure::of(method, path).unwrap_or(Exposure::Caller);
            secure(op, exposure);
            // Every path answers wrong methods with 405 in the same envelope.
            if let Some(r) = op.get_mut("responses").and_then(Value::as_object_mut) {
                r.insert("405".into(), json!({"description": "Method not allowed on this path.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
            }
        }
    }
}

fn components() -> Value {
    json!({
    "securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "A gateway API key (`igw_...`), a Globus Auth token or an OIDC/JWT token; for admin routes the bootstrap admin key or an admin-role API key."},
        "internalSecret": {"type": "apiKey", "in": "header", "name": "X-Internal-Secret"},
        "taskToken": {"type": "apiKey", "in": "header", "name": "X-Stream-Task-Token"}
    },
    "schemas": {
    "SseEvent": {
        "description": "One server-sent event of a streamed answer: `data: <JSON chunk of the target's answer>` separated by a blank line, the last `data: [DONE]`; a stream the target breaks ends with `data: {\"error\": ...}`.",
        "type": "object", "required": ["data"],
        "properties": {
            "event": {"type": "string"},
            "id": {"type": "string"},
            "data": {"oneOf": [
                {"const": "[DONE]"},
                {"type": "string", "contentMediaType": "application/json"}
            ]}
        }
    },
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]}
            }
        }}
    }}})
}

/// A `text/event-stream` body: a string of events, each described by `SseEvent`
/// (`itemSchema` as OpenAPI 3.2 names it, an extension here).
fn sse_content() -> Value {
    json!({
        "schema": {"type": "string", "contentMediaType": "text/event-stream",
                   "description": "Server-sent events; see the SseEvent schema."},
        "x-itemSchema": {"$ref": "#/components/schemas/SseEvent"}
    })
}

/// Adds a `path` parameter for every `{name}` of `path` the operation does not declare.
fn declare_path_parameters(path: &str, op: &mut Value) {
    let names: Vec<&str> = path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect();
    if names.is_empty() {
        return;
    }
    let Some(obj) = op.as_object_mut() else {
        return;
    };
    let params = obj.entry("parameters").or_insert_with(|| json!([]));
    let Some(list) = params.as_array_mut() else {
        return;
    };
    for name in names {
        let declared = list.iter().any(|p| p["in"] == "path" && p["name"] == name);
        if !declared {
            list.push(json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "minLength": 1}}));
        }
    }
}

/// The operation's `security` and its refusals, from its exposure.
fn secure(op: &mut Value, exposure: Exposure) {
    let Some(obj) = op.as_object_mut() else {
        return;
    };
    obj.insert("x-exposure".into(), json!(exposure.name()));
    let (security, refusals): (Value, &[(&str, &str)]) = match exposure {
        Exposure::Public => (json!([]), &[]),
        Exposure::Caller => (
            json!([{"bearer": []}]),
            &[
                ("401", "No token, or a token nobody issued (or expired)."),
                (
                    "403",
                    "A valid identity that a rule refuses; the message names the rule.",
                ),
            ],
        ),
        Exposure::Admin => (json!([{"bearer": []}]), &ADMIN_ERRORS),
        Exposure::Callback => (
            json!([{"internalSecret": [], "taskToken": []}]),
            &[
                ("401", "Wrong shared secret."),
                ("403", "Unknown task or wrong task token."),
            ],
        ),
    };
    obj.insert("security".into(), security);
    if let Some(r) = obj.get_mut("responses").and_then(Value::as_object_mut) {
        for (code, what) in refusals {
            r.entry(code.to_string()).or_insert_with(|| {
                json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
            });
        }
    }
}

/// The Files and Batch APIs (OpenAI's) and FIRST's path batches.
fn batch_paths(paths: &mut Map<String, Value>) {
    let op = |summary: &str, errors: &[(&str, &str)]| {
        get_op("batches", summary, "application/json", errors)
    };
    let not_found = (
        "404",
        "No such file or batch (or it belongs to another user).",
    );
    paths.insert(
        "/v1/files".into(),
        json!({
            "post": {
                "tags": ["batches"],
                "summary": "Upload a file (multipart: `file`, `purpose=batch`), owned by the caller.",
                "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["file", "purpose"],
                    "properties": {"file": {"type": "string", "format": "binary"},
                                   "purpose": {"type": "string", "enum": ["batch"]}}}}}},
                "responses": with_ok(error_responses(&[
                    ("400", "No `file`, or `purpose` is not `batch`."),
                    ("413", "File larger than `batches.max_file_bytes`."),
                ]), "The file object."),
            },
            "get": op("The caller's files, newest first (?limit=&after=).", &[("400", "Bad `limit`.")]),
        }),
    );
    paths.insert(
        "/v1/files/{id}".into(),
        json!({
            "get": op("One file object.", &[not_found]),
            "delete": op("Delete a file and its bytes.", &[not_found]),
        }),
    );
    paths.insert(
        "/v1/files/{id}/content".into(),
        json!({"get": get_op("batches", "The file's bytes.", "application/octet-stream", &[not_found])}),
    );
    paths.insert(
        "/v1/batches".into(),
        json!({
            "post": op(
                "Create a batch ({input_file_id, endpoint, completion_window: \"24h\", metadata?}).",
                &[
                    ("400", "Bad endpoint, window, metadata or input file; the message names it."),
                    ("429", "The caller has MAX_BATCHES_PER_USER active batches (`too_many_batches`)."),
                ],
            ),
            "get": op("The caller's batches, newest first (?limit=&after=; `has_more`).", &[("400", "Bad `limit`.")]),
        }),
    );
    paths.insert(
        "/v1/batches/{id}".into(),
        json!({"get": op("One batch: status, request_counts, output_file_id, error_file_id, errors.", &[not_found])}),
    );
    paths.insert(
        "/v1/batches/{id}/cancel".into(),
        json!({"post": op(
            "Cancel a validating or in-progress batch (→ cancelling → cancelled; finished lines are kept).",
            &[not_found, ("409", "The batch is already finished (`conflict`).")],
        )}),
    );
    paths.insert(
        "/v1/batches/{id}/result".into(),
        json!({"get": get_op(
            "batches",
            "FIRST: the finished batch's output lines, then its error lines (JSONL).",
            "application/jsonl",
            &[not_found, ("409", "The batch is not finished yet (`conflict`).")],
        )}),
    );
    let mut first = op(
        "FIRST's path batch ({input_file, model, output_folder_path?, endpoint?}): lines pinned to the cluster and framework; paths must lie under `batches.allowed_roots`.",
        &[
            ("400", "A path outside the allowed roots, with `..`, through a symlink that leaves them, or no roots configured (`path_not_allowed`)."),
            ("404", "The model has no target in this cluster and framework."),
            ("413", "Input file larger than `batches.max_file_bytes`."),
            ("429", "The caller has MAX_BATCHES_PER_USER active batches."),
        ],
    );
    if let Some(obj) = first.as_object_mut() {
        obj.insert(
            "parameters".into(),
            json!([
                {"name": "cluster", "in": "path", "required": true, "schema": {"type": "string"}},
                {"name": "framework", "in": "path", "required": true, "schema": {"type": "string"}}
            ]),
        );
    }
    paths.insert(
        "/{cluster}/{framework}/v1/batches".into(),
        json!({"post": first}),
    );
}

fn with_ok(mut responses: Map<String, Value>, what: &str) -> Map<String, Value> {
    responses.insert(
        "200".into(),
        json!({"description": what, "content": {"application/json": {"schema": {"type": "object"}}}}),
    );
    responses
}

/// The serialised document, built once at start.
pub struct OpenApi(pub String);

pub async fn openapi_json(doc: web::Data<OpenApi>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.0.clone())
}

pub async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_SECURITY_POLICY, DOCS_CSP))
        .content_type("text/html; charset=utf-8")
        .body(DOCS_HTML)
}

pub async fn docs_js() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_SECURITY_POLICY, DOCS_CSP))
        .content_type("text/javascript; charset=utf-8")
        .body(DOCS_JS)
}

pub async fn docs_css() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_SECURITY_POLICY, DOCS_CSP))
        .content_type("text/css; charset=utf-8")
        .body(DOCS_CSS)
}
