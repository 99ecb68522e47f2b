//! `JsonBody<T>`: the extractor every JSON route (`/admin/keys`, `/v1/batches`, ...) takes
//! instead of `web::Json`. The body must be a JSON object of at most [`JSON_LIMIT`] bytes
//! (413 when declared or read larger); a field of the wrong type, a missing or unknown one
//! is a 400 naming the field by its path (`param`, e.g. `models[0]`) in the client's terms
//! (see `error::json_body_error`), never a Rust type name.

use actix_web::dev::Payload;
use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::{FromRequest, HttpRequest};
use bytes::BytesMut;
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::{json_body_error, ApiError};

/// The largest JSON body a JSON route reads (inference routes use `server.max_body_bytes`).
pub const JSON_LIMIT: usize = 1 << 20;

/// A deserialised JSON object body.
pub struct JsonBody<T>(pub T);

impl<T> JsonBody<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

/// `application/json`, `application/x-ndjson`... or no Content-Type at all.
fn is_json(req: &HttpRequest) -> bool {
    match req.headers().get(CONTENT_TYPE).map(|v| v.to_str()) {
        None => true,
        Some(Ok(v)) => {
            let mime = v.split(';').next().unwrap_or("").trim();
            mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
        }
        Some(Err(_)) => false,
    }
}

/// Parses a whole body (a JSON object) into `T`.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::InvalidJson(
                "The request body is empty; send a JSON object.".into(),
            ))
        }
        Some(b'{') => {}
        Some(_) => {
            return Err(ApiError::InvalidJson(
                "The request body must be a JSON object.".into(),
            ))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| json_body_error(&e.path().to_string(), e.inner()))?;
    de.end().map_err(|e| json_body_error(".", &e))?;
    Ok(value)
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let json = is_json(req);
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            if !json {
                return Err(ApiError::invalid(
                    "Send the body as JSON (Content-Type: application/json).",
                ));
            }
            if declared.is_some_and(|n| n > JSON_LIMIT) {
                return Err(ApiError::PayloadTooLarge(JSON_LIMIT));
            }
            let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(JSON_LIMIT));
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| {
                    ApiError::invalid(format!("Could not read the request body: {e}"))
                })?;
                if body.len() + chunk.len() > JSON_LIMIT {
                    return Err(ApiError::PayloadTooLarge(JSON_LIMIT));
                }
                body.extend_from_slice(&chunk);
            }
            parse(&body).map(JsonBody)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        user: String,
        #[serde(default)]
        models: Vec<String>,
        #[serde(default)]
        limit: Option<u32>,
    }

    fn err(body: &str) -> (String, Option<String>) {
        let e = parse::<Body>(body.as_bytes()).unwrap_err();
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        (
            v["error"]["message"].as_str().unwrap().to_string(),
            v["error"]["param"].as_str().map(str::to_string),
        )
    }

    #[test]
    fn errors_name_the_field_in_json_terms() {
        let cases = [
            (
                r#"{"user": 5}"#,
                "Field `user` must be a string (got integer `5`).",
                Some("user"),
            ),
            (
                r#"{"user": "x", "models": [1]}"#,
                "Field `models[0]` must be a string (got integer `1`).",
                Some("models[0]"),
            ),
            (
                r#"{"user": "x", "models": "m"}"#,
                "Field `models` must be a list (got string \"m\").",
                Some("models"),
            ),
            (
                r#"{"user": "x", "limit": -1}"#,
                "Field `limit` must be a whole number, 0 or more (got integer `-1`).",
                Some("limit"),
            ),
            (r#"{}"#, "Missing required field `user`.", Some("user")),
            (
                r#"{"user": "x", "colour": 1}"#,
                "Unknown field `colour`; known fields: `user`, `models`, `limit`.",
                Some("colour"),
            ),
            (r#"[]"#, "The request body must be a JSON object.", None),
            (
                r#"{"user": "#,
                "The request body is not valid JSON (line 1, column 9).",
                None,
            ),
            (
                r#"{"user": "x"} {}"#,
                "The request body is not valid JSON (line 1, column 15).",
                None,
            ),
        ];
        for (body, message, param) in cases {
            assert_eq!(
                err(body),
                (message.to_string(), param.map(str::to_string)),
                "{body}"
            );
        }
        assert_eq!(parse::<Body>(br#" {"user": "x"} "#).unwrap().user, "x");
    }
}
