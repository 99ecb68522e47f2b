//! Every error a client can see, as one enum. Each variant has its status and a stable
//! machine `code`; the body is always OpenAI's `{"error":{"message","type","param","code"}}`.
//! 5xx bodies never carry internals: the cause goes to the log only.

use std::time::Duration;

use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// Stable machine codes (the `code` field).
pub mod code {
    pub const INVALID_JSON: &str = "invalid_json";
    pub const INVALID_REQUEST: &str = "invalid_request";
    pub const MODEL_NOT_FOUND: &str = "model_not_found";
    pub const NOT_FOUND: &str = "not_found";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const LOOP_DETECTED: &str = "loop_detected";
    pub const RATE_LIMITED: &str = "rate_limit_exceeded";
    pub const INSUFFICIENT_QUOTA: &str = "insufficient_quota";
    pub const UPSTREAM_ERROR: &str = "upstream_error";
    pub const UPSTREAM_AUTH_ERROR: &str = "upstream_auth_error";
    pub const NO_AVAILABLE_TARGET: &str = "no_available_target";
    pub const UPSTREAM_TIMEOUT: &str = "upstream_timeout";
    pub const STREAM_INTERRUPTED: &str = "stream_interrupted";
    pub const STREAM_IDLE_TIMEOUT: &str = "stream_idle_timeout";
    pub const GATEWAY_SHUTDOWN: &str = "gateway_shutdown";
    pub const INTERNAL: &str = "internal_error";
    pub const INVALID_API_KEY: &str = "invalid_api_key";
    pub const FORBIDDEN: &str = "forbidden";
    pub const AUTH_UNAVAILABLE: &str = "auth_unavailable";
    pub const CLUSTER_MAINTENANCE: &str = "cluster_maintenance";
    pub const MODEL_STARTING: &str = "model_starting";
    pub const CONFLICT: &str = "conflict";
    pub const TOO_MANY_BATCHES: &str = "too_many_batches";
    pub const PATH_NOT_ALLOWED: &str = "path_not_allowed";
    pub const GATEWAY_OVERLOADED: &str = "gateway_overloaded";
    pub const REQUEST_TIMEOUT: &str = "request_timeout";
    pub const TOO_MANY_UPLOADS: &str = "too_many_uploads";
    pub const DATABASE_UNAVAILABLE: &str = "database_unavailable";
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// A JSON body whose field `param` (a path like `models[0]`) is wrong.
    #[error("{message}")]
    InvalidField { message: String, param: String },
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// A pinned route (`/{cluster}/{framework}/v1/...`) whose cluster and framework do not
    /// serve the model, which other clusters (`elsewhere`: "`local` (llama-cpp)") do.
    #[error(
        "The model `{model}` is not served by cluster `{cluster}` with framework `{framework}`; \
         it is served by {elsewhere}. Name one of those in the path, or use the route without \
         a cluster (/v1/...) to let the gateway choose."
    )]
    ModelNotOnCluster {
        model: String,
        cluster: String,
        framework: String,
        elsewhere: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("Method {0} is not allowed on this route.")]
    MethodNotAllowed(String),
    #[error("Request body is larger than the limit of {0} bytes.")]
    PayloadTooLarge(usize),
    /// The client stopped sending its body for `server.body_read_timeout_ms`.
    #[error("The request body did not arrive in time; the connection is closed.")]
    RequestTimeout,
    #[error("Request has passed through too many gateways; a target points back at this gateway.")]
    LoopDetected,
    /// Every target answered 429.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Option<Duration>,
    },
    /// A day or month budget of the caller (or its org or model) is used up.
    #[error("{message}")]
    QuotaExceeded {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Every attempt failed with a connection error or 5xx; `cause` names each target tried
    /// and how it failed ("target a: connection refused"), never a URL or a secret.
    #[error("All targets for model `{model}` failed ({cause}); try again later.")]
    AllTargetsFailed { model: String, cause: String },
    /// No target could take the request (breakers open, probes in flight); `cause` names
    /// each and why ("target a: circuit breaker open after repeated failures").
    #[error(
        "No target for model `{model}` is available right now{}; try again later.",
        in_parens(cause)
    )]
    NoAvailableTarget { model: String, cause: String },
    /// `cause`: the target and the wait ("target a: timed out after 600 s").
    #[error("The model `{model}` did not answer in time ({cause}).")]
    UpstreamTimeout { model: String, cause: String },
    /// The target refused the gateway's own credentials (its 401/403): an operator's
    /// problem, never the caller's, so never relayed as such.
    #[error("Target `{target}` refused the gateway's credentials (HTTP {status}); an operator must check the API key configured for it.")]
    UpstreamCredentials { target: String, status: u16 },
    /// No credentials, or credentials nobody issued.
    #[error("{0}")]
    Unauthorized(String),
    /// A known caller that may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The identity provider could not be asked (logged where it happened).
    #[error("Authentication is unavailable right now; try again shortly.")]
    AuthUnavailable,
    /// The cluster (every cluster serving the model) is in maintenance.
    #[error("{}", maintenance_message(cluster, notice))]
    Maintenance { cluster: String, notice: String },
    /// The model's targets are stopped or queued; a start was triggered or is pending.
    #[error("The model `{model}` is starting (its job is {phase}); retry in about {} seconds.", retry_after.as_secs())]
    ModelStarting {
        model: String,
        phase: &'static str,
        retry_after: Duration,
    },
    /// The resource is not in a state that allows this (e.g. cancelling a finished batch).
    #[error("{0}")]
    Conflict(String),
    /// The user has `MAX_BATCHES_PER_USER` active batches.
    #[error("You have {0} active batches, the most allowed; wait for one to finish.")]
    TooManyBatches(u64),
    /// A FIRST path outside `batches.allowed_roots` (or none configured).
    #[error("{message}")]
    PathNotAllowed {
        message: String,
        param: &'static str,
    },
    /// The gateway itself is out of file descriptors (EMFILE/ENFILE): its own fault, not
    /// the target's.
    #[error(
        "The gateway has no free connections right now (too many open files); try again shortly."
    )]
    GatewayOverloaded,
    /// A batch input file (uploaded, or FIRST's path) over `batches.max_file_bytes`.
    #[error("{}", file_too_large_message(param, *size, *limit))]
    FileTooLarge {
        param: &'static str,
        size: Option<u64>,
        limit: u64,
    },
    /// `batches.max_concurrent_uploads` uploads are being received already.
    #[error("Too many file uploads are in progress ({0}); try again shortly.")]
    TooManyUploads(u64),
    /// The database could not be reached. The cause is logged once, at the edge.
    #[error("The database is unavailable right now; try again shortly.")]
    DatabaseUnavailable(Cause),
    /// Something failed inside the gateway. The cause is logged once, at the edge; the
    /// client sees only this.
    #[error("internal error")]
    Internal(Cause),
}

/// What failed inside, for the log only: a 5xx body never carries it. [`ApiError`]'s
/// response carries it in its extensions, and the edge layer (`server::edges`) logs it once
/// with the request id and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause(std::sync::Arc<str>);

impl Cause {
    pub fn new(what: &str, error: impl std::fmt::Display) -> Cause {
        Cause(format!("{what}: {error}").into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl ApiError {
    /// An internal error: `what` failed with `error`.
    pub fn internal(what: &str, error: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(Cause::new(what, error))
    }

    /// A database error while doing `what`: 503 when the database cannot be reached or did
    /// not answer in time (a client may retry), else an internal error.
    pub fn store(what: &str, error: crate::store::StoreError) -> ApiError {
        if error.is_unavailable() {
            ApiError::DatabaseUnavailable(Cause::new(what, error))
        } else {
            ApiError::Internal(Cause::new(what, error))
        }
    }

    /// The inside cause of a 5xx the gateway made itself, to log.
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            ApiError::Internal(c) | ApiError::DatabaseUnavailable(c) => Some(c),
            _ => None,
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> ApiError {
        ApiError::store("database", error)
    }
}

fn file_too_large_message(param: &str, size: Option<u64>, limit: u64) -> String {
    match size {
        Some(size) => {
            format!("`{param}` is {size} bytes; an input file may be at most {limit} bytes.")
        }
        None => format!("`{param}` is larger than the limit of {limit} bytes for an input file."),
    }
}

/// " (text)", or nothing for an empty text.
fn in_parens(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(" ({text})")
    }
}

fn maintenance_message(cluster: &str, notice: &str) -> String {
    if notice.trim().is_empty() {
        format!("Cluster `{cluster}` is under maintenance; try again later.")
    } else {
        format!("Cluster `{cluster}` is under maintenance: {notice}")
    }
}

/// The inner object of an OpenAI error body.
#[derive(Debug, Serialize)]
pub struct ErrorObject<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: &'a str,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: ErrorObject<'a>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    pub fn invalid_param(param: &'static str, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => code::INVALID_JSON,
            ApiError::InvalidRequest { .. } | ApiError::InvalidField { .. } => {
                code::INVALID_REQUEST
            }
            ApiError::ModelNotFound(_) | ApiError::ModelNotOnCluster { .. } => {
                code::MODEL_NOT_FOUND
            }
            ApiError::NotFound(_) => code::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => code::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => code::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => code::REQUEST_TIMEOUT,
            ApiError::LoopDetected => code::LOOP_DETECTED,
            ApiError::RateLimited { .. } => code::RATE_LIMITED,
            ApiError::QuotaExceeded { .. } => code::INSUFFICIENT_QUOTA,
            ApiError::AllTargetsFailed { .. } => code::UPSTREAM_ERROR,
            ApiError::UpstreamCredentials { .. } => code::UPSTREAM_AUTH_ERROR,
            ApiError::NoAvailableTarget { .. } => code::NO_AVAILABLE_TARGET,
            ApiError::UpstreamTimeout { .. } => code::UPSTREAM_TIMEOUT,
            ApiError::Unauthorized(_) => code::INVALID_API_KEY,
            ApiError::Forbidden(_) => code::FORBIDDEN,
            ApiError::AuthUnavailable => code::AUTH_UNAVAILABLE,
            ApiError::Maintenance { .. } => code::CLUSTER_MAINTENANCE,
            ApiError::ModelStarting { .. } => code::MODEL_STARTING,
            ApiError::Conflict(_) => code::CONFLICT,
            ApiError::TooManyBatches(_) => code::TOO_MANY_BATCHES,
            ApiError::PathNotAllowed { .. } => code::PATH_NOT_ALLOWED,
            ApiError::GatewayOverloaded => code::GATEWAY_OVERLOADED,
            ApiError::FileTooLarge { .. } => code::PAYLOAD_TOO_LARGE,
            ApiError::TooManyUploads(_) => code::TOO_MANY_UPLOADS,
            ApiError::DatabaseUnavailable(_) => code::DATABASE_UNAVAILABLE,
            ApiError::Internal(_) => code::INTERNAL,
        }
    }

    /// OpenAI's `type` field.
    pub fn kind(&self) -> &'static str {
        match self.status_code().as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 if matches!(
                self,
                ApiError::ModelNotFound(_) | ApiError::ModelNotOnCluster { .. }
            ) =>
            {
                "invalid_request_error"
            }
            404 => "not_found_error",
            429 if matches!(self, ApiError::QuotaExceeded { .. }) => "insufficient_quota",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ApiError::InvalidRequest { param, .. } => *param,
            ApiError::InvalidField { param, .. } => Some(param),
            ApiError::ModelNotFound(_) | ApiError::ModelNotOnCluster { .. } => Some("model"),
            ApiError::PathNotAllowed { param, .. } | ApiError::FileTooLarge { param, .. } => {
                Some(*param)
            }
            _ => None,
        }
    }

    /// The JSON body for this error.
    pub fn body(&self) -> String {
        let message = self.to_string();
        envelope(&message, self.kind(), self.param(), self.code())
    }
}

/// Serialises an OpenAI error envelope.
pub fn envelope(message: &str, kind: &str, param: Option<&str>, code: &str) -> String {
    serde_json::to_string(&Envelope {
        error: ErrorObject {
            message,
            kind,
            param,
            code,
        },
    })
    .unwrap_or_else(|_| String::from(r#"{"error":{"message":"internal error","type":"server_error","param":null,"code":"internal_error"}}"#))
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_)
            | ApiError::InvalidRequest { .. }
            | ApiError::InvalidField { .. } => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_)
            | ApiError::ModelNotOnCluster { .. }
            | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::LoopDetected => StatusCode::LOOP_DETECTED,
            ApiError::RateLimited { .. } | ApiError::QuotaExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::AllTargetsFailed { .. } | ApiError::UpstreamCredentials { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ApiError::NoAvailableTarget { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Maintenance { .. } | ApiError::ModelStarting { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooManyBatches(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PathNotAllowed { .. } => StatusCode::BAD_REQUEST,
            ApiError::GatewayOverloaded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::FileTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyUploads(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        res.content_type("application/json");
        match self {
            ApiError::RateLimited {
                retry_after: Some(after),
                ..
            }
            | ApiError::QuotaExceeded {
                retry_after: Some(after),
                ..
            } => {
                let secs = after.as_secs().max(1);
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    res.insert_header((RETRY_AFTER, v));
                }
            }
            ApiError::ModelStarting { retry_after, .. } => {
                let secs = retry_after.as_secs().max(1);
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    res.insert_header((RETRY_AFTER, v));
                }
            }
            ApiError::NoAvailableTarget { .. }
            | ApiError::GatewayOverloaded
            | ApiError::DatabaseUnavailable(_) => {
                res.insert_header((RETRY_AFTER, HeaderValue::from_static("5")));
            }
            ApiError::TooManyUploads(_) => {
                res.insert_header((RETRY_AFTER, HeaderValue::from_static("1")));
            }
            ApiError::Unauthorized(_) => {
                res.insert_header((
                    actix_web::http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                ));
            }
            _ => {}
        }
        let mut res = res.body(self.body());
        if let Some(cause) = self.cause() {
            res.extensions_mut().insert(cause.clone());
        }
        res
    }
}

/// A JSON body that failed to deserialise, in the client's terms: the field (a path like
/// `models[0]`, which is also `param`) and what it must be, never a Rust type name.
/// `path` is serde_path_to_error's path (`.` for the whole body).
pub fn json_body_error(path: &str, e: &serde_json::Error) -> ApiError {
    if e.is_syntax() || e.is_eof() {
        return ApiError::InvalidJson(format!(
            "The request body is not valid JSON (line {}, column {}).",
            e.line(),
            e.column()
        ));
    }
    let full = e.to_string();
    // serde_json appends " at line L column C"; the position adds nothing to a field name.
    let text = full
        .rfind(" at line ")
        .map_or(full.as_str(), |at| &full[..at]);
    let field = |name: &str| {
        if path == "." || path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    let named = |text: &str, prefix: &str| {
        text.strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string)
    };
    if let Some(name) = named(text, "missing field `") {
        let param = field(&name);
        return ApiError::InvalidField {
            message: format!("Missing required field `{param}`."),
            param,
        };
    }
    if let Some(name) = named(text, "duplicate field `") {
        let param = field(&name);
        return ApiError::InvalidField {
            message: format!("Field `{param}` is given twice."),
            param,
        };
    }
    if let Some(name) = named(text, "unknown field `") {
        // serde_path_to_error's path already ends with the unknown field.
        let param = if path.ends_with(name.as_str()) {
            path.to_string()
        } else {
            field(&name)
        };
        let expected = text
            .split_once(", expected ")
            .map(|(_, e)| format!("; known fields: {}", e.trim_start_matches("one of ")))
            .unwrap_or_default();
        return ApiError::InvalidField {
            message: format!("Unknown field `{param}`{expected}."),
            param,
        };
    }
    let (got, expected) = ["invalid type: ", "invalid value: ", "invalid length "]
        .iter()
        .find_map(|p| text.strip_prefix(p))
        .and_then(|rest| rest.split_once(", expected "))
        .map_or((None, user_terms(text)), |(got, expected)| {
            (Some(user_terms(got)), user_terms(expected))
        });
    let got = got.map(|g| format!(" (got {g})")).unwrap_or_default();
    if path == "." || path.is_empty() {
        return ApiError::InvalidJson(format!("The request body must be {expected}{got}."));
    }
    ApiError::InvalidField {
        message: format!("Field `{path}` must be {expected}{got}."),
        param: path.to_string(),
    }
}

/// actix-web's `web::Json` errors, alike: 413 over the limit, the field named otherwise.
pub fn json_payload_error(e: actix_web::error::JsonPayloadError) -> ApiError {
    use actix_web::error::JsonPayloadError as E;
    match e {
        E::Overflow { limit } | E::OverflowKnownLength { limit, .. } => {
            ApiError::PayloadTooLarge(limit)
        }
        E::Deserialize(e) => json_body_error(".", &e),
        E::ContentType => {
            ApiError::invalid("Send the body as JSON (Content-Type: application/json).")
        }
        other => ApiError::invalid(format!("Could not read the request body: {other}")),
    }
}

/// serde's words for types, as a JSON client says them.
fn user_terms(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut words = text.split(' ').peekable();
    while let Some(word) = words.next() {
        let replaced = match word {
            // `struct CreateKey`, `enum Kind`, `tuple struct X`: the next word is a Rust name.
            "struct" | "enum" => {
                words.next();
                if out.last().is_some_and(|w| w == "tuple") {
                    out.pop();
                }
                if out.last().is_some_and(|w| w == "a" || w == "an") {
                    out.pop();
                }
                if word == "enum" {
                    "one of the allowed values"
                } else {
                    "a JSON object"
                }
            }
            "sequence" | "sequence," => {
                if word.ends_with(',') {
                    "list,"
                } else {
                    "list"
                }
            }
            "map" | "map," => {
                if out.last().is_some_and(|w| w == "a") {
                    out.pop();
                }
                if word.ends_with(',') {
                    "an object,"
                } else {
                    "an object"
                }
            }
            "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more",
            "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
            "f32" | "f64" => "a number",
            "unit" => "null",
            other => other,
        };
        out.push(replaced.to_string());
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body_of(e: &ApiError) -> serde_json::Value {
        let bytes = e.error_response().into_body().try_into_bytes().unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn model_not_found_is_404_with_openai_envelope() {
        let e = ApiError::ModelNotFound("gpt-x".into());
        assert_eq!(e.status_code(), StatusCode::NOT_FOUND);
        assert_eq!(
            body_of(&e),
            serde_json::json!({"error":{
                "message":"The model `gpt-x` does not exist or you do not have access to it.",
                "type":"invalid_request_error","param":"model","code":"model_not_found"}})
        );
    }

    #[test]
    fn failures_name_each_target_and_how_it_failed() {
        let e = ApiError::AllTargetsFailed {
            model: "smollm2".into(),
            cause: "target local-llama-cpp-smollm2: connection refused".into(),
        };
        assert_eq!(
            body_of(&e),
            serde_json::json!({"error":{
                "message":"All targets for model `smollm2` failed (target local-llama-cpp-smollm2: connection refused); try again later.",
                "type":"server_error","param":null,"code":"upstream_error"}})
        );
        let e = ApiError::NoAvailableTarget {
            model: "m".into(),
            cause: "target a: circuit breaker open after repeated failures".into(),
        };
        assert_eq!(
            body_of(&e)["error"]["message"],
            "No target for model `m` is available right now (target a: circuit breaker open \
             after repeated failures); try again later."
        );
        let e = ApiError::NoAvailableTarget {
            model: "m".into(),
            cause: String::new(),
        };
        assert_eq!(
            body_of(&e)["error"]["message"],
            "No target for model `m` is available right now; try again later."
        );
        let e = ApiError::ModelNotOnCluster {
            model: "m".into(),
            cluster: "sophia".into(),
            framework: "vllm".into(),
            elsewhere: "`local` (llama-cpp)".into(),
        };
        assert_eq!(
            body_of(&e),
            serde_json::json!({"error":{
                "message":"The model `m` is not served by cluster `sophia` with framework `vllm`; it is served by `local` (llama-cpp). Name one of those in the path, or use the route without a cluster (/v1/...) to let the gateway choose.",
                "type":"invalid_request_error","param":"model","code":"model_not_found"}})
        );
    }

    #[test]
    fn server_errors_say_nothing_internal() {
        let e = ApiError::internal("test", "a cause the client never sees");
        assert_eq!(
            body_of(&e),
            serde_json::json!({"error":{"message":"internal error","type":"server_error","param":null,"code":"internal_error"}})
        );
    }

    #[test]
    fn rate_limited_carries_retry_after() {
        let e = ApiError::RateLimited {
            message: "slow down".into(),
            retry_after: Some(Duration::from_millis(2500)),
        };
        let res = e.error_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers().get(RETRY_AFTER).unwrap(), "2");
        assert_eq!(body_of(&e)["error"]["type"], "rate_limit_error");
    }

    #[test]
    fn hpc_errors_carry_notice_and_retry_after() {
        let e = ApiError::Maintenance {
            cluster: "sophia".into(),
            notice: "PBS upgrade until 14:00".into(),
        };
        assert_eq!(
            body_of(&e),
            serde_json::json!({"error":{"message":"Cluster `sophia` is under maintenance: PBS upgrade until 14:00",
                "type":"server_error","param":null,"code":"cluster_maintenance"}})
        );
        let e = ApiError::ModelStarting {
            model: "m".into(),
            phase: "submitted",
            retry_after: Duration::from_secs(30),
        };
        let res = e.error_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers().get(RETRY_AFTER).unwrap(), "30");
        assert_eq!(
            body_of(&e)["error"]["message"],
            "The model `m` is starting (its job is submitted); retry in about 30 seconds."
        );
    }

    #[test]
    fn quota_exceeded_is_openai_insufficient_quota() {
        let e = ApiError::QuotaExceeded {
            message: "used up".into(),
            retry_after: Some(Duration::from_secs(3600)),
        };
        let res = e.error_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers().get(RETRY_AFTER).unwrap(), "3600");
        assert_eq!(
            body_of(&e),
            serde_json::json!({"error":{"message":"used up","type":"insufficient_quota",
                "param":null,"code":"insufficient_quota"}})
        );
    }

    #[test]
    fn each_variant_has_its_status() {
        let cases: Vec<(ApiError, u16)> = vec![
            (ApiError::InvalidJson("x".into()), 400),
            (ApiError::invalid("x"), 400),
            (ApiError::NotFound("x".into()), 404),
            (ApiError::MethodNotAllowed("GET".into()), 405),
            (ApiError::PayloadTooLarge(1), 413),
            (ApiError::RequestTimeout, 408),
            (
                ApiError::InvalidField {
                    message: "x".into(),
                    param: "a.b".into(),
                },
                400,
            ),
            (ApiError::LoopDetected, 508),
            (
                ApiError::AllTargetsFailed {
                    model: "m".into(),
                    cause: "target a: connection refused".into(),
                },
                502,
            ),
            (
                ApiError::NoAvailableTarget {
                    model: "m".into(),
                    cause: String::new(),
                },
                503,
            ),
            (
                ApiError::ModelNotOnCluster {
                    model: "m".into(),
                    cluster: "c".into(),
                    framework: "f".into(),
                    elsewhere: "`d` (f)".into(),
                },
                404,
            ),
            (
                ApiError::UpstreamTimeout {
                    model: "m".into(),
                    cause: "target a: timed out after 600 s".into(),
                },
                504,
            ),
            (ApiError::Unauthorized("x".into()), 401),
            (ApiError::Forbidden("x".into()), 403),
            (
                ApiError::Maintenance {
                    cluster: "c".into(),
                    notice: "n".into(),
                },
                503,
            ),
            (
                ApiError::ModelStarting {
                    model: "m".into(),
                    phase: "queued",
                    retry_after: Duration::from_secs(30),
                },
                503,
            ),
            (
                ApiError::QuotaExceeded {
                    message: "x".into(),
                    retry_after: None,
                },
                429,
            ),
            (
                ApiError::FileTooLarge {
                    param: "file",
                    size: None,
                    limit: 1,
                },
                413,
            ),
            (ApiError::TooManyUploads(2), 429),
            (
                ApiError::DatabaseUnavailable(Cause::new("test", "down")),
                503,
            ),
        ];
        for (e, status) in cases {
            assert_eq!(e.status_code().as_u16(), status, "{e:?}");
            assert_eq!(body_of(&e)["error"]["code"], e.code());
        }
    }
}
