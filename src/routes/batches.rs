//! The Files API (`/v1/files`) and the Batch API (`/v1/batches`, OpenAI's; and FIRST's
//! `POST /{cluster}/{framework}/v1/batches` with paths). Files and batches belong to the
//! caller who made them: anyone else gets 404. Handlers only store rows and files; the
//! `BatchActor` does the work (woken with `Wake`).

use actix_multipart::Multipart;
use std::sync::Arc;

use actix_web::http::header::CONTENT_TYPE;
use actix_web::http::ConnectionType;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::caller::Caller;
use crate::batch::actor::Wake;
use crate::batch::{batch_json, files, is_terminal, paths, ENDPOINTS, WINDOW, WINDOW_MS};
use crate::error::ApiError;
use crate::json_body::JsonBody;
use crate::quota::{Kind, Subject};
use crate::state::AppState;
use crate::store::{now_ms, BatchPatch, BatchRow, FileRow};

type Result<T> = std::result::Result<T, ApiError>;

#[derive(Deserialize)]
pub struct Page {
    pub limit: Option<i64>,
    pub after: Option<String>,
}

impl Page {
    pub fn limit(&self, default: i64, max: i64) -> Result<i64> {
        match self.limit {
            None => Ok(default),
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::invalid_param(
                "limit",
                format!("`limit` must be between 1 and {max}."),
            )),
        }
    }
}

/// One page of an OpenAI list from `rows`, fetched with `limit + 1` so that the extra row
/// tells whether there are more (`has_more`); the extra row is not shown.
pub fn list_json<T>(mut rows: Vec<T>, limit: i64, to_json: impl Fn(&T) -> Value) -> Value {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    let data: Vec<Value> = rows.iter().map(to_json).collect();
    let first = data.first().and_then(|v| v.get("id")).cloned();
    let last = data.last().and_then(|v| v.get("id")).cloned();
    json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": has_more})
}

// ---------------------------------------------------------------------------- files

/// Room for a multipart body's boundaries and part headers beside the file itself.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;

/// `POST /v1/files` (multipart: `file`, `purpose=batch`). The file part is written to a
/// temporary file as it arrives, its size checked with every chunk; a declared
/// `Content-Length` over the limit is refused before the body is read; at most
/// `batches.max_concurrent_uploads` uploads are received at once (429 beyond).
pub async fn upload(
    req: HttpRequest,
    Caller(caller): Caller,
    payload: Multipart,
    state: web::Data<AppState>,
) -> HttpResponse {
    let r = async {
        let limit = state.settings.batches.max_file_bytes.get();
        let declared = req
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit.saturating_add(MULTIPART_OVERHEAD)) {
            return Err(ApiError::FileTooLarge {
                param: "file",
                size: None,
                limit,
            });
        }
        let Ok(_slot) = Arc::clone(&state.uploads).try_acquire_owned() else {
            return Err(ApiError::TooManyUploads(
                state.settings.batches.max_concurrent_uploads.get(),
            ));
        };
        upload_inner(caller.id.clone(), payload, &state).await
    }
    .await;
    // The edge names the answer (`x-request-id`) and logs an error's cause.
    let mut res = r.unwrap_or_else(|e| actix_web::ResponseError::error_response(&e));
    if res.status().is_client_error() {
        // The rest of a refused body is not read: the connection cannot be reused.
        res.head_mut().set_connection_type(ConnectionType::Close);
    }
    res
}

fn multipart_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(format!("Invalid multipart body: {e}"))
}

async fn upload_inner(
    owner: String,
    mut form: Multipart,
    state: &AppState,
) -> Result<HttpResponse> {
    let limit = state.settings.batches.max_file_bytes.get();
    let dir = files::dir(&state.settings);
    let mut purpose: Option<String> = None;
    let mut file: Option<(String, files::Incoming)> = None;
    while let Some(field) = form.next().await {
        let mut field = field.map_err(multipart_error)?;
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "file" => {
                if file.is_some() {
                    return Err(ApiError::invalid_param("file", "Send one `file` part."));
                }
                let filename = field
                    .content_disposition()
                    .and_then(|d| d.get_filename())
                    .map(str::to_string)
                    .unwrap_or_else(|| "upload.jsonl".into());
                let mut incoming = files::Incoming::create(dir.clone())
                    .await
                    .map_err(|e| ApiError::internal("creating an upload file", e))?;
                while let Some(chunk) = field.next().await {
                    let chunk = chunk.map_err(multipart_error)?;
                    if incoming.len() + chunk.len() as u64 > limit {
                        return Err(ApiError::FileTooLarge {
                            param: "file",
                            size: None,
                            limit,
                        });
                    }
                    incoming
                        .push(&chunk)
                        .await
                        .map_err(|e| ApiError::internal("writing an upload", e))?;
                }
                file = Some((filename, incoming));
            }
            other => {
                let mut bytes = Vec::new();
                while let Some(chunk) = field.next().await {
                    let chunk = chunk.map_err(multipart_error)?;
                    if bytes.len() + chunk.len() > 1024 {
                        return Err(ApiError::invalid(format!(
                            "The form field `{}` is too long.",
                            other.chars().take(64).collect::<String>()
                        )));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                if other == "purpose" {
                    purpose = Some(String::from_utf8_lossy(&bytes).trim().to_string());
                }
            }
        }
    }
    match purpose.as_deref() {
        Some("batch") => {}
        Some(other) => {
            return Err(ApiError::invalid_param(
                "purpose",
                format!(
                    "`purpose` must be \"batch\"; got \"{}\".",
                    other.chars().take(50).collect::<String>()
                ),
            ))
        }
        None => return Err(ApiError::invalid_param("purpose", "`purpose` is required.")),
    }
    let Some((filename, incoming)) = file else {
        return Err(ApiError::invalid_param("file", "`file` is required."));
    };
    let row = file_row(files::new_file_id(), owner, filename, incoming.len());
    incoming
        .commit(&row.id)
        .await
        .map_err(|e| ApiError::internal("writing a file", e))?;
    if let Err(e) = state.store.create_file(row.clone()).await {
        let _ = files::remove(dir, row.id.clone()).await;
        return Err(ApiError::store("files row", e));
    }
    Ok(HttpResponse::Ok().json(files::file_json(&row)))
}

fn file_row(id: String, owner: String, filename: String, bytes: u64) -> FileRow {
    FileRow {
        id,
        owner,
        filename: filename.chars().take(255).collect(),
        purpose: "batch".into(),
        bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
        created_at: now_ms(),
    }
}

/// The caller's file, or 404 (also for another user's file).
async fn owned_file(state: &AppState, owner: &str, id: &str) -> Result<FileRow> {
    let row = state
        .store
        .get_file(id.to_string())
        .await
        .map_err(|e| ApiError::store("reading a file row", e))?;
    owned(row.filter(|f| f.owner == owner), "file", id)
}

/// The row when the caller owns it, else 404 naming `what` and the (truncated) id: another
/// user's row is indistinguishable from a missing one.
fn owned<T>(row: Option<T>, what: &str, id: &str) -> Result<T> {
    row.ok_or_else(|| {
        ApiError::NotFound(format!(
            "No such {what}: `{}`.",
            id.chars().take(100).collect::<String>()
        ))
    })
}

pub async fn list_files(
    Caller(caller): Caller,
    page: web::Query<Page>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let r = async {
        let limit = page.limit(10000, 10000)?;
        let rows = state
            .store
            .list_files(caller.id.clone(), page.after.clone(), limit + 1)
            .await
            .map_err(|e| ApiError::store("listing files", e))?;
        Ok(HttpResponse::Ok().json(list_json(rows, limit, files::file_json)))
    }
    .await;
    r
}

pub async fn get_file(
    Caller(caller): Caller,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let r = owned_file(&state, &caller.id, &id)
        .await
        .map(|f| HttpResponse::Ok().json(files::file_json(&f)));
    r
}

pub async fn file_content(
    Caller(caller): Caller,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let r = async {
        let f = owned_file(&state, &caller.id, &id).await?;
        let bytes = files::read(files::dir(&state.settings), f.id.clone())
            .await
            .map_err(|e| ApiError::internal("reading file bytes", e))?;
        Ok(HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, "application/octet-stream"))
            .body(bytes))
    }
    .await;
    r
}

pub async fn delete_file(
    Caller(caller): Caller,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let r = async {
        let f = owned_file(&state, &caller.id, &id).await?;
        state
            .store
            .delete_file(f.id.clone())
            .await
            .map_err(|e| ApiError::store("deleting a file row", e))?;
        files::remove(files::dir(&state.settings), f.id.clone())
            .await
            .map_err(|e| ApiError::internal("deleting file bytes", e))?;
        Ok(HttpResponse::Ok().json(json!({"id": f.id, "object": "file", "deleted": true})))
    }
    .await;
    r
}

// -------------------------------------------------------------------------- batches

/// A batch request body, read field by field so that every refusal names the field in
/// the client's words. Two forms: OpenAI's (`input_file_id`, an uploaded file) and
/// FIRST's (`input_file_path`, or `input_file`, a path on this host).
struct BatchBody(serde_json::Map<String, Value>);

const OPENAI_FIELDS: [&str; 4] = ["input_file_id", "endpoint", "completion_window", "metadata"];
const PATH_FIELDS: [&str; 7] = [
    "input_file_path",
    "input_file",
    "output_folder_path",
    "model",
    "endpoint",
    "completion_window",
    "metadata",
];

impl BatchBody {
    fn new(body: Value) -> Result<BatchBody> {
        match body {
            Value::Object(m) => Ok(BatchBody(m)),
            _ => Err(ApiError::invalid(
                "The body must be a JSON object: OpenAI's {\"input_file_id\", \"endpoint\", \"completion_window\"} or FIRST's {\"input_file_path\", \"output_folder_path\", \"model\"}.",
            )),
        }
    }

    /// The path field FIRST's form used, if any.
    fn path_field(&self) -> Option<&'static str> {
        ["input_file_path", "input_file"]
            .into_iter()
            .find(|k| self.0.get(*k).is_some_and(|v| !v.is_null()))
    }

    fn only(&self, allowed: &[&str], form: &str) -> Result<()> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => Err(ApiError::invalid(format!(
                "Unknown field `{}` for a batch from {form}; the fields are {}.",
                k.chars().take(64).collect::<String>(),
                allowed.join(", ")
            ))),
        }
    }

    /// A string field (absent and null are `None`).
    fn string(&self, key: &'static str) -> Result<Option<String>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::invalid_param(
                key,
                format!("`{key}` must be a string."),
            )),
        }
    }

    fn required(&self, key: &'static str) -> Result<String> {
        self.string(key)?
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| ApiError::invalid_param(key, format!("`{key}` is required.")))
    }
}

fn check_endpoint(endpoint: &str) -> Result<()> {
    if ENDPOINTS.contains(&endpoint) {
        Ok(())
    } else {
        Err(ApiError::invalid_param(
            "endpoint",
            format!("`endpoint` must be one of {}.", ENDPOINTS.join(", ")),
        ))
    }
}

fn check_window(window: &str) -> Result<()> {
    if window == WINDOW {
        Ok(())
    } else {
        Err(ApiError::invalid_param(
            "completion_window",
            "`completion_window` must be \"24h\".",
        ))
    }
}

/// OpenAI's metadata: at most 16 string values, keys up to 64 and values up to 512 chars.
fn check_metadata(metadata: Option<Value>) -> Result<Option<String>> {
    match metadata {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m))
            if m.len() <= 16
                && m.iter().all(|(k, v)| {
                    k.chars().count() <= 64 && v.as_str().is_some_and(|s| s.chars().count() <= 512)
                }) =>
        {
            Ok(Some(Value::Object(m).to_string()))
        }
        Some(_) => Err(ApiError::invalid_param(
            "metadata",
            "`metadata` must be an object of at most 16 string values (keys up to 64, values up to 512 characters).",
        )),
    }
}

/// Refuses a new batch when the owner has `MAX_BATCHES_PER_USER` active (counted in the
/// database, so across replicas and restarts).
async fn check_batch_limit(state: &AppState, owner: &str) -> Result<()> {
    let limit = if state.quotas.enabled {
        state
            .quotas
            .state(Subject::new(Kind::User, owner))
            .await
            .limits()
            .max_batches
    } else {
        state.settings.quotas.max_batches_per_user
    };
    if limit == 0 {
        return Ok(());
    }
    let active = state
        .store
        .count_active_batches(owner.to_string())
        .await
        .map_err(|e| ApiError::store("counting batches", e))?;
    if u64::try_from(active).unwrap_or(0) >= limit {
        return Err(ApiError::TooManyBatches(limit));
    }
    Ok(())
}

struct NewBatch {
    input_file_id: String,
    endpoint: String,
    window: String,
    metadata: Option<String>,
    model: Option<String>,
    pin: Option<(String, String)>,
    output_folder: Option<String>,
}

async fn insert_batch(
    state: &AppState,
    caller: &crate::auth::identity::Identity,
    new: NewBatch,
) -> Result<HttpResponse> {
    let identity = serde_json::to_string(caller).map_err(|e| ApiError::internal("identity", e))?;
    let now = now_ms();
    let (cluster, framework) = new.pin.unzip();
    let row = BatchRow {
        id: files::new_batch_id(),
        owner: caller.id.clone(),
        identity,
        endpoint: new.endpoint,
        input_file_id: new.input_file_id,
        completion_window: new.window,
        status: "validating".into(),
        metadata: new.metadata,
        model: new.model,
        cluster,
        framework,
        output_folder: new.output_folder,
        output_file_id: None,
        error_file_id: None,
        errors: None,
        total: 0,
        completed: 0,
        failed: 0,
        created_at: now,
        in_progress_at: None,
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expires_at: now + WINDOW_MS,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
        lease_owner: None,
        lease_until: None,
    };
    state
        .store
        .create_batch(row.clone())
        .await
        .map_err(|e| ApiError::store("creating a batch", e))?;
    if let Some(batches) = &state.batches {
        batches.do_send(Wake);
    }
    Ok(HttpResponse::Ok().json(batch_json(&row)))
}

/// `POST /v1/batches`: OpenAI's form (`input_file_id`), or FIRST's form with a path
/// (`input_file_path`), routed by any target serving the model.
pub async fn create(
    Caller(caller): Caller,
    body: JsonBody<Value>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let r = async {
        let body = BatchBody::new(body.into_inner())?;
        if body.path_field().is_some() && !body.0.contains_key("input_file_id") {
            return create_path_batch(&state, &caller, body, None).await;
        }
        create_file_batch(&state, &caller, body).await
    }
    .await;
    r
}

async fn create_file_batch(
    state: &AppState,
    caller: &crate::auth::identity::Identity,
    body: BatchBody,
) -> Result<HttpResponse> {
    if body.path_field().is_some() {
        return Err(ApiError::invalid_param(
            "input_file_id",
            "Give either `input_file_id` (an uploaded file) or `input_file_path` (a path), not both.",
        ));
    }
    if body.0.get("input_file_id").is_none_or(Value::is_null) {
        return Err(ApiError::invalid_param(
            "input_file_id",
            "`input_file_id` (an uploaded file) or `input_file_path` (a path on this host) is required.",
        ));
    }
    body.only(&OPENAI_FIELDS, "an uploaded file")?;
    let input_file_id = body.required("input_file_id")?;
    let endpoint = body.required("endpoint")?;
    let window = body.required("completion_window")?;
    check_endpoint(&endpoint)?;
    check_window(&window)?;
    let metadata = check_metadata(body.0.get("metadata").cloned())?;
    let file = owned_file(state, &caller.id, &input_file_id)
        .await
        .map_err(|e| match e {
            // Another user's file is as missing as a file that never was.
            ApiError::NotFound(_) => ApiError::invalid_param(
                "input_file_id",
                format!(
                    "No such file: `{}`.",
                    input_file_id.chars().take(100).collect::<String>()
                ),
            ),
            other => other,
        })?;
    if file.purpose != "batch" {
        return Err(ApiError::invalid_param(
            "input_file_id",
            "The input file must have been uploaded with purpose \"batch\".",
        ));
    }
    check_batch_limit(state, &caller.id).await?;
    let new = NewBatch {
        input_file_id: file.id,
        endpoint,
        window,
        metadata,
        model: None,
        pin: None,
        output_folder: None,
    };
    insert_batch(state, caller, new).await
}

/// FIRST's `POST /{cluster}/{framework}/v1/batches` with an input path.
pub async fn create_from_path(
    Caller(caller): Caller,
    path: web::Path<(String, String)>,
    body: JsonBody<Value>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let r = async {
        let body = BatchBody::new(body.into_inner())?;
        create_path_batch(&state, &caller, body, Some(path.into_inner())).await
    }
    .await;
    r
}

/// FIRST's form: the input file (a path under `batches.allowed_roots`) is copied in, the
/// output also goes to `output_folder_path`; pinned to a cluster and framework or not.
async fn create_path_batch(
    state: &AppState,
    caller: &crate::auth::identity::Identity,
    body: BatchBody,
    pin: Option<(String, String)>,
) -> Result<HttpResponse> {
    body.only(&PATH_FIELDS, "a path")?;
    let Some(input_param) = body.path_field() else {
        return Err(ApiError::invalid_param(
            "input_file_path",
            "`input_file_path` (a path on this host) is required.",
        ));
    };
    let input_raw = body.required(input_param)?;
    let model = body.required("model")?.trim().to_string();
    let endpoint = body
        .string("endpoint")?
        .unwrap_or_else(|| ENDPOINTS[0].to_string());
    check_endpoint(&endpoint)?;
    let window = body
        .string("completion_window")?
        .unwrap_or_else(|| WINDOW.to_string());
    check_window(&window)?;
    let metadata = check_metadata(body.0.get("metadata").cloned())?;
    let roots = &state.settings.batches.allowed_roots;
    let input = paths::confine(&input_raw, roots, paths::Kind::File, input_param)?;
    let output_folder = match body.string("output_folder_path")? {
        Some(p) => Some(
            paths::confine(&p, roots, paths::Kind::Dir, "output_folder_path")?
                .display()
                .to_string(),
        ),
        None => None,
    };
    {
        let directory = state.directory.load();
        let Some(entry) = directory.model(&model) else {
            return Err(ApiError::ModelNotFound(model));
        };
        if let Some((cluster, framework)) = &pin {
            let pin = crate::routing::ranking::Pin {
                cluster: cluster.clone(),
                framework: framework.clone(),
            };
            if !entry.targets.iter().any(|t| pin.matches(t)) {
                if !caller.may_name(&model) {
                    return Err(ApiError::ModelNotFound(model));
                }
                return Err(crate::routes::inference_request::not_on_cluster(
                    entry, caller, model, pin,
                ));
            }
        }
    }
    if !caller.may_name(&model) {
        return Err(ApiError::Forbidden(format!(
            "This API key may not use model `{model}`."
        )));
    }
    check_batch_limit(state, &caller.id).await?;
    let limit = state.settings.batches.max_file_bytes.get();
    let id = files::new_file_id();
    // The batch runs from its own copy: a later change to the path changes nothing.
    let copied = files::import(
        files::dir(&state.settings),
        id.clone(),
        input.clone(),
        limit,
    )
    .await
    .map_err(|_| ApiError::PathNotAllowed {
        message: format!("`{input_param}` could not be read."),
        param: input_param,
    })?;
    let bytes = copied.map_err(|size| ApiError::FileTooLarge {
        param: input_param,
        size: Some(size),
        limit,
    })?;
    let filename = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input.jsonl".into());
    let file = file_row(id, caller.id.clone(), filename, bytes);
    if let Err(e) = state.store.create_file(file.clone()).await {
        let _ = files::remove(files::dir(&state.settings), file.id.clone()).await;
        return Err(ApiError::store("files row", e));
    }
    let new = NewBatch {
        input_file_id: file.id,
        endpoint,
        window,
        metadata,
        model: Some(model),
        pin,
        output_folder,
    };
    insert_batch(state, caller, new).await
}

/// Batch `id`, when `owner` (if given) owns it: else 404, as if it did not exist.
pub(crate) async fn owned_batch(
    state: &AppState,
    owner: Option<&str>,
    id: &str,
) -> Result<BatchRow> {
    let row = state
        .store
        .get_batch(id.to_string())
        .await
        .map_err(|e| ApiError::store("reading a batch", e))?;
    owned(
        row.filter(|b| owner.is_none_or(|o| b.owner == o)),
        "batch",
        id,
    )
}

pub async fn list(
    Caller(caller): Caller,
    page: web::Query<Page>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let r = async {
        let limit = page.limit(20, 100)?;
        let rows = state
            .store
            .list_batches(Some(caller.id.clone()), None, page.after.clone(), limit + 1)
            .await
            .map_err(|e| ApiError::store("listing batches", e))?;
        Ok(HttpResponse::Ok().json(list_json(rows, limit, batch_json)))
    }
    .await;
    r
}

pub async fn get(
    Caller(caller): Caller,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let r = owned_batch(&state, Some(&caller.id), &id)
        .await
        .map(|b| HttpResponse::Ok().json(batch_json(&b)));
    r
}

/// `POST /v1/batches/{id}/cancel`: any state not final → cancelling; the runner stops,
/// keeps the lines done and writes their output (→ cancelled).
pub async fn cancel(
    Caller(caller): Caller,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let b = owned_batch(&state, Some(&caller.id), &id).await?;
    let b = cancel_batch(&state, b).await?;
    Ok(HttpResponse::Ok().json(batch_json(&b)))
}

/// Moves `b` to cancelling (when not final) and wakes the runner; the batch as it is now,
/// or 409 when it had already ended otherwise. Also used by the admin view.
pub async fn cancel_batch(state: &AppState, b: BatchRow) -> Result<BatchRow> {
    if matches!(
        b.status.as_str(),
        "validating" | "in_progress" | "finalizing"
    ) {
        let patch = BatchPatch {
            status: Some("cancelling".into()),
            cancelling_at: Some(now_ms()),
            ..BatchPatch::default()
        };
        state
            .store
            .update_batch(
                b.id.clone(),
                None,
                vec![
                    "validating".into(),
                    "in_progress".into(),
                    "finalizing".into(),
                ],
                patch,
            )
            .await
            .map_err(|e| ApiError::store("cancelling a batch", e))?;
        if let Some(batches) = &state.batches {
            batches.do_send(Wake);
        }
    }
    let b = owned_batch(state, None, &b.id).await?;
    match b.status.as_str() {
        "cancelling" | "cancelled" => Ok(b),
        other => Err(ApiError::Conflict(format!(
            "Batch `{}` is {other} and cannot be cancelled.",
            b.id
        ))),
    }
}

/// `GET /v1/batches/{id}/result` (FIRST): the output lines, then the error lines, as JSONL.
pub async fn result(
    Caller(caller): Caller,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let r = async {
        let b = owned_batch(&state, Some(&caller.id), &id).await?;
        if !is_terminal(&b.status) {
            return Err(ApiError::Conflict(format!(
                "Batch `{}` is {}; its result is ready when it is completed, failed, cancelled or expired.",
                b.id, b.status
            )));
        }
        let mut body = Vec::new();
        for file in [&b.output_file_id, &b.error_file_id].into_iter().flatten() {
            let bytes = files::read(files::dir(&state.settings), file.clone())
                .await
                .map_err(|e| ApiError::internal("reading a result file", e))?;
            body.extend_from_slice(&bytes);
        }
        Ok(HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, "application/jsonl"))
            .body(body))
    }
    .await;
    r
}
