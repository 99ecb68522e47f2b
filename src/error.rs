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
    pub const NO_AVAILABLE_TARGET: &str = "no_available_target";
    pub const UPSTREAM_TIMEOUT: &str = "upstream_timeout";
    pub const STREAM_INTERRUPTED: &str = "stream_interrupted";
    pub const STREAM_IDLE_TIMEOUT: &str = "stream_idle_timeout";
    pub const INTERNAL: &str = "internal_error";
    pub const INVALID_API_KEY: &str = "invalid_api_key";
    pub const FORBIDDEN: &str = "forbidden";
    pub const AUTH_UNAVAILABLE: &str = "auth_unavailable";
    pub const CLUSTER_MAINTENANCE: &str = "cluster_maintenance";
    pub const MODEL_STARTING: &str = "model_starting";
    pub const CONFLICT: &str = "conflict";
    pub const TOO_MANY_BATCHES: &str = "too_many_batches";
    pub const PATH_NOT_ALLOWED: &str = "path_not_allowed";
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
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    #[error("{0}")]
    NotFound(String),
    #[error("Method {0} is not allowed on this route.")]
    MethodNotAllowed(String),
    #[error("Request body is larger than the limit of {0} bytes.")]
    PayloadTooLarge(usize),
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
    /// Every attempt failed with a connection error or 5xx.
    #[error("All targets for model `{0}` failed; try again later.")]
    AllTargetsFailed(String),
    /// No target is healthy with a closed breaker.
    #[error("No target for model `{0}` is available right now; try again later.")]
    NoAvailableTarget(String),
    #[error("The model `{0}` did not answer in time.")]
    UpstreamTimeout(String),
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
    /// The database could not be reached (the cause is logged where it happened).
    #[error("The database is unavailable right now; try again shortly.")]
    DatabaseUnavailable,
    /// The cause is logged where it happens; the client sees only this.
    #[error("internal error")]
    Internal,
}

fn file_too_large_message(param: &str, size: Option<u64>, limit: u64) -> String {
    match size {
        Some(size) => {
            format!("`{param}` is {size} bytes; an input file may be at most {limit} bytes.")
        }
        None => format!("`{param}` is larger than the limit of {limit} bytes for an input file."),
    }
}

/// A JSON body actix-web could not take, in the client's terms: over the size limit is 413;
/// a body of the wrong shape names the field, never a Rust type. Every route's `JsonConfig`
/// uses this (`server.rs`).
pub fn json_body_error(e: &actix_web::error::JsonPayloadError) -> ApiError {
    use actix_web::error::JsonPayloadError as E;
    match e {
        E::OverflowKnownLength { limit, .. } | E::Overflow { limit } => {
            ApiError::PayloadTooLarge(*limit)
        }
        E::ContentType => {
            ApiError::invalid("The body must be JSON (Content-Type: application/json).")
        }
        E::Deserialize(e) if e.is_data() => ApiError::invalid(format!(
            "The JSON body does not fit: {}",
            json_error_words(e)
        )),
        E::Deserialize(e) => {
            ApiError::InvalidJson(format!("Invalid JSON body: {}", json_error_words(e)))
        }
        E::Serialize(_) => ApiError::Internal,
        E::Payload(_) => ApiError::invalid("The request body could not be read."),
        _ => ApiError::invalid("Invalid JSON body."),
    }
}

/// serde_json's message with Rust type names put in JSON words (`expected struct
/// CreateBatch` → `expected a JSON object`), and where it happened.
pub fn json_error_words(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // serde_json appends " at line L column C"; keep it, after the rewritten part.
    let (head, tail) = match text.rfind(" at line ") {
        Some(i) => text.split_at(i),
        None => (text.as_str(), ""),
    };
    let mut out = String::with_capacity(head.len());
    let mut rest = head;
    while let Some(i) = rest.find("expected ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "expected ".len()..];
        let (word, skip) = if let Some(r) = after.strip_prefix("struct ") {
            ("a JSON object", "struct ".len() + ident_len(r))
        } else if let Some(r) = after.strip_prefix("enum ") {
            ("one of the allowed values", "enum ".len() + ident_len(r))
        } else if let Some(r) = after.strip_prefix("tuple struct ") {
            ("a JSON value", "tuple struct ".len() + ident_len(r))
        } else {
            out.push_str("expected ");
            rest = after;
            continue;
        };
        out.push_str("expected ");
        out.push_str(word);
        rest = &after[skip..];
    }
    out.push_str(rest);
    out.push_str(tail);
    out
}

fn ident_len(s: &str) -> usize {
    s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len())
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
            ApiError::InvalidRequest { .. } => code::INVALID_REQUEST,
            ApiError::ModelNotFound(_) => code::MODEL_NOT_FOUND,
            ApiError::NotFound(_) => code::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => code::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => code::PAYLOAD_TOO_LARGE,
            ApiError::LoopDetected => code::LOOP_DETECTED,
            ApiError::RateLimited { .. } => code::RATE_LIMITED,
            ApiError::QuotaExceeded { .. } => code::INSUFFICIENT_QUOTA,
            ApiError::AllTargetsFailed(_) => code::UPSTREAM_ERROR,
            ApiError::NoAvailableTarget(_) => code::NO_AVAILABLE_TARGET,
            ApiError::UpstreamTimeout(_) => code::UPSTREAM_TIMEOUT,
            ApiError::Unauthorized(_) => code::INVALID_API_KEY,
            ApiError::Forbidden(_) => code::FORBIDDEN,
            ApiError::AuthUnavailable => code::AUTH_UNAVAILABLE,
            ApiError::Maintenance { .. } => code::CLUSTER_MAINTENANCE,
            ApiError::ModelStarting { .. } => code::MODEL_STARTING,
            ApiError::Conflict(_) => code::CONFLICT,
            ApiError::TooManyBatches(_) => code::TOO_MANY_BATCHES,
            ApiError::PathNotAllowed { .. } => code::PATH_NOT_ALLOWED,
            ApiError::FileTooLarge { .. } => code::PAYLOAD_TOO_LARGE,
            ApiError::TooManyUploads(_) => code::TOO_MANY_UPLOADS,
            ApiError::DatabaseUnavailable => code::DATABASE_UNAVAILABLE,
            ApiError::Internal => code::INTERNAL,
        }
    }

    /// OpenAI's `type` field.
    pub fn kind(&self) -> &'static str {
        match self.status_code().as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 if matches!(self, ApiError::ModelNotFound(_)) => "invalid_request_error",
            404 => "not_found_error",
            429 if matches!(self, ApiError::QuotaExceeded { .. }) => "insufficient_quota",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { param, .. } => *param,
            ApiError::ModelNotFound(_) => Some("model"),
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
            ApiError::InvalidJson(_) | ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::LoopDetected => StatusCode::LOOP_DETECTED,
            ApiError::RateLimited { .. } | ApiError::QuotaExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::AllTargetsFailed(_) => StatusCode::BAD_GATEWAY,
            ApiError::NoAvailableTarget(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Maintenance { .. } | ApiError::ModelStarting { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooManyBatches(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PathNotAllowed { .. } => StatusCode::BAD_REQUEST,
            ApiError::FileTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyUploads(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::DatabaseUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
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
            ApiError::NoAvailableTarget(_) | ApiError::DatabaseUnavailable => {
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
        res.body(self.body())
    }
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
    fn server_errors_say_nothing_internal() {
        let e = ApiError::Internal;
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
    fn json_errors_speak_json_not_rust() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct CreateBatch {
            endpoint: String,
        }
        let e = serde_json::from_str::<CreateBatch>(r#""x""#).unwrap_err();
        let words = json_error_words(&e);
        assert!(
            !words.contains("CreateBatch") && !words.contains("struct"),
            "{words}"
        );
        assert!(words.contains("expected a JSON object"), "{words}");
        let e = serde_json::from_str::<CreateBatch>(r#"{"endpoint": 5}"#).unwrap_err();
        assert!(json_error_words(&e).contains("expected a string"));
        let big = actix_web::error::JsonPayloadError::OverflowKnownLength {
            length: 10,
            limit: 5,
        };
        assert_eq!(json_body_error(&big).status_code().as_u16(), 413);
    }

    #[test]
    fn each_variant_has_its_status() {
        let cases: Vec<(ApiError, u16)> = vec![
            (ApiError::InvalidJson("x".into()), 400),
            (ApiError::invalid("x"), 400),
            (ApiError::NotFound("x".into()), 404),
            (ApiError::MethodNotAllowed("GET".into()), 405),
            (ApiError::PayloadTooLarge(1), 413),
            (ApiError::LoopDetected, 508),
            (ApiError::AllTargetsFailed("m".into()), 502),
            (ApiError::NoAvailableTarget("m".into()), 503),
            (ApiError::UpstreamTimeout("m".into()), 504),
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
            (ApiError::DatabaseUnavailable, 503),
        ];
        for (e, status) in cases {
            assert_eq!(e.status_code().as_u16(), status, "{e:?}");
            assert_eq!(body_of(&e)["error"]["code"], e.code());
        }
    }
}
