//! Batches: the Files API's storage, the Batch API's objects, input validation, FIRST's
//! confined paths, and the `BatchActor` that runs batches through the same routing and
//! forwarding path as interactive requests (see `actor.rs`).

pub mod actor;
pub mod files;
pub mod lines;
pub mod paths;
pub mod repeat_log;

use serde_json::{json, Value};

use crate::store::BatchRow;

/// Endpoints a batch may target.
pub const ENDPOINTS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];
/// The only completion window OpenAI offers.
pub const WINDOW: &str = "24h";
pub const WINDOW_MS: i64 = 24 * 3600 * 1000;

/// Unix ms → unix seconds (OpenAI's timestamps).
fn secs(ms: i64) -> i64 {
    ms / 1000
}

fn opt_secs(ms: Option<i64>) -> Value {
    ms.map(|m| json!(secs(m))).unwrap_or(Value::Null)
}

/// The batch as OpenAI's API shows it.
pub fn batch_json(b: &BatchRow) -> Value {
    let errors = b
        .errors
        .as_deref()
        .and_then(|e| serde_json::from_str::<Value>(e).ok())
        .map(|data| json!({"object": "list", "data": data}))
        .unwrap_or(Value::Null);
    let metadata = b
        .metadata
        .as_deref()
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
        .unwrap_or(Value::Null);
    let mut v = json!({
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "errors": errors,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": secs(b.created_at),
        "in_progress_at": opt_secs(b.in_progress_at),
        "expires_at": secs(b.expires_at),
        "finalizing_at": opt_secs(b.finalizing_at),
        "completed_at": opt_secs(b.completed_at),
        "failed_at": opt_secs(b.failed_at),
        "expired_at": opt_secs(b.expired_at),
        "cancelling_at": opt_secs(b.cancelling_at),
        "cancelled_at": opt_secs(b.cancelled_at),
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "metadata": metadata,
    });
    if let (Some(model), Some(obj)) = (&b.model, v.as_object_mut()) {
        // FIRST's form: what the batch is pinned to.
        obj.insert("model".into(), json!(model));
        obj.insert("cluster".into(), json!(b.cluster));
        obj.insert("framework".into(), json!(b.framework));
        obj.insert("output_folder_path".into(), json!(b.output_folder));
    }
    v
}

/// Whether a batch has reached a final state.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled" | "expired")
}
