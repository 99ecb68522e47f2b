//! The body of an inference request: read within the size limit, its few fields the
//! gateway reads (`model`, `stream`, `temperature`, `stream_options`) parsed without
//! touching the rest, and `include_usage` added when quotas need the stream's usage.

use std::borrow::Cow;

use actix_web::dev::Payload;
use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::HttpRequest;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::error::ApiError;

/// The fields the gateway reads; everything else in the body passes through untouched.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    /// Kept raw: only "is it exactly 0" matters (for the response cache), and a value of
    /// another type is the target's to refuse.
    #[serde(borrow, default)]
    temperature: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// What the gateway reads from a request body.
#[derive(Debug, PartialEq)]
pub(super) struct Parsed {
    pub model: String,
    pub stream: bool,
    pub temperature: Option<f64>,
    /// The client set `stream_options.include_usage` to true.
    pub include_usage: bool,
    /// The body has a `stream_options` member at all.
    pub has_stream_options: bool,
}

/// The whole body, or 413 as soon as it is known to pass `limit` bytes.
pub(super) async fn read_body(
    req: &HttpRequest,
    mut payload: Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::invalid(format!("Could not read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The fields the gateway reads from a JSON body; a clear 400 when they are wrong.
pub(super) fn parse_head(body: &[u8]) -> Result<Parsed, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_none() {
        return Err(ApiError::InvalidJson(
            "The request body is empty; send a JSON object.".into(),
        ));
    }
    if first != Some(&b'{') {
        return Err(ApiError::InvalidJson(
            "The request body must be a JSON object.".into(),
        ));
    }
    let head: Head = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::invalid(format!("Invalid request body: {e}"))
        } else {
            ApiError::InvalidJson(format!("The request body is not valid JSON: {e}"))
        }
    })?;
    let model = match head.model {
        Some(m) if !m.trim().is_empty() => m.into_owned(),
        Some(_) => {
            return Err(ApiError::invalid_param(
                "model",
                "`model` must not be empty.",
            ))
        }
        None => return Err(ApiError::invalid_param("model", "`model` is required.")),
    };
    Ok(Parsed {
        model,
        stream: head.stream.unwrap_or(false),
        temperature: head
            .temperature
            .and_then(|t| t.get().trim().parse::<f64>().ok()),
        include_usage: head
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        has_stream_options: head.stream_options.is_some(),
    })
}

/// The `model` (and `stream`) form fields of a `multipart/form-data` body (audio
/// transcription), read from the buffered body; the body itself goes upstream unchanged.
pub(super) async fn parse_multipart_head(
    req: &HttpRequest,
    body: &Bytes,
) -> Result<Parsed, ApiError> {
    let is_form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("multipart/form-data"));
    if !is_form {
        return Err(ApiError::invalid(
            "This route takes a multipart/form-data body with a `model` field.",
        ));
    }
    let chunks = futures_util::stream::once(std::future::ready(Ok::<
        _,
        actix_web::error::PayloadError,
    >(body.clone())));
    let mut form = actix_multipart::Multipart::new(req.headers(), chunks);
    let malformed = |e: actix_multipart::MultipartError| {
        ApiError::invalid(format!("The multipart body is malformed: {e}"))
    };
    let mut model = None;
    let mut stream = false;
    while let Some(field) = form.next().await {
        let mut field = field.map_err(malformed)?;
        let name = field.name().map(str::to_owned);
        if !matches!(name.as_deref(), Some("model" | "stream")) {
            // Drain the part (file contents) without keeping it.
            while let Some(chunk) = field.next().await {
                chunk.map_err(malformed)?;
            }
            continue;
        }
        let mut value = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(malformed)?;
            if value.len() + chunk.len() > 1024 {
                return Err(ApiError::invalid(format!(
                    "The `{}` field is too long.",
                    name.as_deref().unwrap_or_default()
                )));
            }
            value.extend_from_slice(&chunk);
        }
        let value = String::from_utf8_lossy(&value).trim().to_string();
        match name.as_deref() {
            Some("model") => model = Some(value),
            _ => stream = value == "true",
        }
    }
    match model {
        Some(m) if !m.is_empty() => Ok(Parsed {
            model: m,
            stream,
            temperature: None,
            include_usage: false,
            has_stream_options: false,
        }),
        _ => Err(ApiError::invalid_param(
            "model",
            "The form field `model` is required.",
        )),
    }
}

/// Asks the backend for usage in a stream: adds `"stream_options":{"include_usage":true}`.
/// Without `stream_options` in the body, the member is spliced in before the closing brace,
/// so every other byte stays as it was; otherwise the object is re-serialised with its
/// field order kept.
pub(super) fn add_include_usage(body: &Bytes, has_stream_options: bool) -> Result<Bytes, ApiError> {
    if !has_stream_options {
        let end = body
            .iter()
            .rposition(|b| *b == b'}')
            .ok_or_else(|| ApiError::internal("adding include_usage", "no closing brace"))?;
        let empty = body[..end]
            .iter()
            .rev()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{');
        let mut out = BytesMut::with_capacity(body.len() + 40);
        out.extend_from_slice(&body[..end]);
        if !empty {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
        out.extend_from_slice(&body[end..]);
        return Ok(out.freeze());
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    match value.get_mut("stream_options") {
        Some(serde_json::Value::Object(o)) => {
            o.insert("include_usage".into(), serde_json::Value::Bool(true));
        }
        _ => {
            return Err(ApiError::invalid_param(
                "stream_options",
                "`stream_options` must be an object.",
            ))
        }
    }
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal("adding include_usage", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::ResponseError;
    #[test]
    fn head_reads_model_and_stream_and_ignores_the_rest() {
        let p = parse_head(br#"{"model":"x","stream":true,"whatever":[1,2]}"#).unwrap();
        assert_eq!(
            (p.model.as_str(), p.stream, p.temperature),
            ("x", true, None)
        );
        let p = parse_head(br#" {"model":"x","temperature":0}"#).unwrap();
        assert!(!p.stream);
        assert_eq!(p.temperature, Some(0.0));
        // A temperature of another type is the target's to refuse, not ours.
        let p = parse_head(br#"{"model":"x","temperature":"hot"}"#).unwrap();
        assert_eq!(p.temperature, None);
    }

    #[test]
    fn include_usage_is_added_touching_nothing_else() {
        let body = Bytes::from_static(b"{\"model\":\"x\", \"n\":1.50,\"stream\":true}\n");
        assert_eq!(
            &add_include_usage(&body, false).unwrap()[..],
            &b"{\"model\":\"x\", \"n\":1.50,\"stream\":true,\"stream_options\":{\"include_usage\":true}}\n"[..]
        );
        let body = Bytes::from_static(
            br#"{"model":"x","stream_options":{"include_usage":false,"other":1},"stream":true}"#,
        );
        assert_eq!(
            &add_include_usage(&body, true).unwrap()[..],
            &br#"{"model":"x","stream_options":{"include_usage":true,"other":1},"stream":true}"#[..]
        );
        let bad = Bytes::from_static(br#"{"model":"x","stream_options":3}"#);
        assert_eq!(
            add_include_usage(&bad, true).unwrap_err().code(),
            "invalid_request"
        );
    }

    #[test]
    fn bad_bodies_are_400_with_clear_codes() {
        let cases: [(&[u8], &str); 7] = [
            (b"", "invalid_json"),
            (b"[1]", "invalid_json"),
            (b"{\"model\":", "invalid_json"),
            (b"{}", "invalid_request"),
            (b"{\"model\":\"\"}", "invalid_request"),
            (b"{\"model\":3}", "invalid_request"),
            (b"{\"model\":\"x\",\"stream\":\"yes\"}", "invalid_request"),
        ];
        for (body, code) in cases {
            let err = parse_head(body).unwrap_err();
            assert_eq!(err.code(), code, "{}", String::from_utf8_lossy(body));
            assert_eq!(err.status_code(), 400);
        }
    }
}
