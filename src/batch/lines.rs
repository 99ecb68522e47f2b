//! Batch input lines: validation (every line JSON with a unique `custom_id`, `method`
//! POST, `url` the batch's endpoint, and a `body` object naming a `model`), and the lines
//! of OpenAI's batch output format.
//!
//! FIRST's users write bare lines: the request body alone (`{"messages": [...]}`, no
//! `custom_id`, `method`, `url` or `body`). Such a line's custom_id is its 1-based line
//! number, and its endpoint comes from the body's shape (`messages` chat, `prompt`
//! completions, `input` embeddings), else the batch's.

use std::collections::HashSet;

use bytes::Bytes;
use serde_json::{json, Value};

/// One valid input line.
#[derive(Debug, Clone)]
pub struct Line {
    /// 0-based line number in the file (blank lines count), the key of its result.
    pub index: usize,
    pub custom_id: String,
    pub model: String,
    /// Where it goes: the batch's endpoint, or for a bare line its body's shape.
    pub endpoint: &'static str,
    /// The request body sent upstream.
    pub body: Bytes,
}

/// A line that failed validation (`line` is 1-based, as OpenAI reports it).
#[derive(Debug, Clone, PartialEq)]
pub struct LineError {
    pub line: usize,
    pub custom_id: Option<String>,
    pub message: String,
}

/// Most validation errors listed in a batch's `errors.data`.
pub const MAX_LISTED_ERRORS: usize = 1000;

/// Parses and checks every line. `model` (FIRST's form) fills in a missing body `model`
/// and must equal a present one. Blank lines are skipped (their numbers still count).
pub fn parse(
    input: &[u8],
    endpoint: &str,
    model: Option<&str>,
) -> Result<Vec<Line>, Vec<LineError>> {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (i, raw) in input.split(|b| *b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(raw, i + 1, endpoint, model) {
            Ok((custom_id, model, endpoint, body)) => {
                if !seen.insert(custom_id.clone()) {
                    errors.push(LineError {
                        line: i + 1,
                        message: format!("custom_id `{custom_id}` is used by an earlier line; each line needs its own."),
                        custom_id: Some(custom_id),
                    });
                } else {
                    lines.push(Line {
                        index: i,
                        custom_id,
                        model,
                        endpoint,
                        body,
                    });
                }
            }
            Err((custom_id, message)) => errors.push(LineError {
                line: i + 1,
                custom_id,
                message,
            }),
        }
    }
    if lines.is_empty() && errors.is_empty() {
        errors.push(LineError {
            line: 1,
            custom_id: None,
            message: "The input file has no lines.".into(),
        });
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(errors)
    }
}

type Parsed = (String, String, &'static str, Bytes);

/// The batch endpoint `name` is (the batch's own was checked when it was created).
fn known_endpoint(name: &str) -> &'static str {
    super::ENDPOINTS
        .iter()
        .find(|e| **e == name)
        .copied()
        .unwrap_or(super::ENDPOINTS[0])
}

/// A bare line's endpoint by its body's shape, else the batch's.
fn endpoint_of(body: &serde_json::Map<String, Value>, batch: &'static str) -> &'static str {
    if body.contains_key("messages") {
        "/v1/chat/completions"
    } else if body.contains_key("prompt") {
        "/v1/completions"
    } else if body.contains_key("input") {
        "/v1/embeddings"
    } else {
        batch
    }
}

/// Whether a line is a bare request body (FIRST): none of the batch line's own keys.
fn is_bare(obj: &serde_json::Map<String, Value>) -> bool {
    !["custom_id", "method", "url", "body"]
        .iter()
        .any(|k| obj.contains_key(*k))
}

fn parse_line(
    raw: &[u8],
    line_no: usize,
    endpoint: &str,
    batch_model: Option<&str>,
) -> Result<Parsed, (Option<String>, String)> {
    let v: Value = serde_json::from_slice(raw)
        .map_err(|e| (None, format!("The line is not valid JSON: {e}.")))?;
    let Value::Object(mut obj) = v else {
        return Err((None, "The line must be a JSON object.".into()));
    };
    let batch_endpoint = known_endpoint(endpoint);
    if is_bare(&obj) {
        let endpoint = endpoint_of(&obj, batch_endpoint);
        let custom_id = line_no.to_string();
        let model = body_model(&mut obj, batch_model, Some(&custom_id))?;
        let bytes =
            serde_json::to_vec(&obj).map_err(|e| (Some(custom_id.clone()), e.to_string()))?;
        return Ok((custom_id, model, endpoint, Bytes::from(bytes)));
    }
    let custom_id = match obj.get("custom_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err((
                None,
                "`custom_id` is required and must be a non-empty string.".into(),
            ))
        }
    };
    let cid = Some(custom_id.clone());
    if obj.get("method").and_then(Value::as_str) != Some("POST") {
        return Err((cid, "`method` must be \"POST\".".into()));
    }
    match obj.get("url").and_then(Value::as_str) {
        Some(u) if u == endpoint => {}
        Some(u) => {
            return Err((
                cid,
                format!("`url` is `{u}` but the batch's endpoint is `{endpoint}`."),
            ))
        }
        None => return Err((cid, "`url` is required.".into())),
    }
    let Some(Value::Object(body)) = obj.get_mut("body") else {
        return Err((cid, "`body` is required and must be a JSON object.".into()));
    };
    let model = body_model(body, batch_model, cid.as_deref())?;
    let bytes = serde_json::to_vec(&obj["body"]).map_err(|e| (cid.clone(), e.to_string()))?;
    Ok((custom_id, model, batch_endpoint, Bytes::from(bytes)))
}

/// Checks a request body's `stream` and `model` (filling in the batch's model).
fn body_model(
    body: &mut serde_json::Map<String, Value>,
    batch_model: Option<&str>,
    custom_id: Option<&str>,
) -> Result<String, (Option<String>, String)> {
    let cid = custom_id.map(str::to_string);
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err((cid, "`body.stream` must not be true in a batch.".into()));
    }
    let model = match (body.get("model"), batch_model) {
        (Some(Value::String(m)), Some(bm)) if m != bm => {
            return Err((
                cid,
                format!("`body.model` is `{m}` but the batch is for model `{bm}`."),
            ))
        }
        (Some(Value::String(m)), _) if !m.is_empty() => m.clone(),
        (None, Some(bm)) => {
            body.insert("model".into(), Value::String(bm.to_string()));
            bm.to_string()
        }
        _ => {
            return Err((
                cid,
                "`body.model` is required and must be a non-empty string.".into(),
            ))
        }
    };
    Ok(model)
}

/// A new output line id.
pub fn request_line_id() -> String {
    format!("batch_req_{}", uuid::Uuid::new_v4().simple())
}

/// A line answered by the model (any status): `response` holds it.
pub fn response_line(custom_id: &str, status: u16, request_id: &str, body: &[u8]) -> String {
    let body: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
    let error = if (200..300).contains(&status) {
        Value::Null
    } else {
        let message = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("The request failed.")
            .to_string();
        json!({"code": status.to_string(), "message": message})
    };
    json!({
        "id": request_line_id(),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": error,
    })
    .to_string()
}

/// A line that got no answer (validation, or the gateway could not deliver it).
pub fn error_line(
    custom_id: Option<&str>,
    code: &str,
    message: &str,
    line: Option<usize>,
) -> String {
    let mut error = json!({"code": code, "message": message});
    if let (Some(line), Some(obj)) = (line, error.as_object_mut()) {
        obj.insert("line".into(), json!(line));
    }
    json!({
        "id": request_line_id(),
        "custom_id": custom_id,
        "response": null,
        "error": error,
    })
    .to_string()
}

/// `errors.data` of a batch that failed validation (OpenAI's shape).
pub fn errors_data(errors: &[LineError]) -> Value {
    Value::Array(
        errors
            .iter()
            .take(MAX_LISTED_ERRORS)
            .map(|e| {
                json!({"code": "invalid_line", "message": e.message, "param": null, "line": e.line})
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP: &str = "/v1/chat/completions";

    fn line(id: &str) -> String {
        json!({"custom_id": id, "method": "POST", "url": EP,
               "body": {"model": "m", "messages": []}})
        .to_string()
    }

    #[test]
    fn good_lines_parse_and_keep_their_positions() {
        let input = format!("{}\n\n{}\n", line("a"), line("b"));
        let lines = parse(input.as_bytes(), EP, None).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[0].index, lines[1].index), (0, 2));
        assert_eq!(lines[1].custom_id, "b");
        assert_eq!(lines[0].model, "m");
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let input = [
            line("a"),
            "not json".to_string(),
            line("a"),
            json!({"custom_id": "c", "method": "GET", "url": EP, "body": {"model": "m"}}).to_string(),
            json!({"custom_id": "d", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m"}}).to_string(),
            json!({"custom_id": "e", "method": "POST", "url": EP, "body": {}}).to_string(),
            json!({"method": "POST", "url": EP, "body": {"model": "m"}}).to_string(),
        ]
        .join("\n");
        let errors = parse(input.as_bytes(), EP, None).unwrap_err();
        let numbers: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(numbers, vec![2, 3, 4, 5, 6, 7]);
        assert!(errors[1].message.contains("custom_id"));
        assert!(errors[3].message.contains("/v1/embeddings"));
        assert!(parse(b"\n\n", EP, None).is_err());
    }

    #[test]
    fn the_batch_model_fills_in_and_must_match() {
        let no_model =
            json!({"custom_id": "a", "method": "POST", "url": EP, "body": {"messages": []}});
        let lines = parse(no_model.to_string().as_bytes(), EP, Some("m")).unwrap();
        let body: Value = serde_json::from_slice(&lines[0].body).unwrap();
        assert_eq!(body["model"], "m");
        assert!(parse(line("a").as_bytes(), EP, Some("other")).is_err());
    }

    /// FIRST's guide: bare request bodies, one a line; the line number is the custom_id.
    #[test]
    fn bare_lines_take_their_number_and_endpoint_from_the_body() {
        let input = concat!(
            r#"{"messages": [{"role": "user", "content": "What is AI?"}], "max_tokens": 100}"#,
            "\n\n",
            r#"{"prompt": "Explain ML", "max_tokens": 100}"#,
            "\n",
            r#"{"input": "embed me"}"#,
            "\n",
        );
        let lines = parse(input.as_bytes(), EP, Some("m")).unwrap();
        let ids: Vec<&str> = lines.iter().map(|l| l.custom_id.as_str()).collect();
        assert_eq!(ids, vec!["1", "3", "4"]);
        let eps: Vec<&str> = lines.iter().map(|l| l.endpoint).collect();
        assert_eq!(
            eps,
            vec!["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
        );
        let body: Value = serde_json::from_slice(&lines[0].body).unwrap();
        assert_eq!(body["model"], "m");
        assert_eq!(body["max_tokens"], 100);
        assert_eq!(body["messages"][0]["content"], "What is AI?");
        // Without a batch model a bare line must name one; a body of another shape goes
        // to the batch's endpoint.
        assert!(parse(br#"{"messages": []}"#, EP, None).is_err());
        let other = parse(br#"{"model": "m", "foo": 1}"#, "/v1/embeddings", None).unwrap();
        assert_eq!(other[0].endpoint, "/v1/embeddings");
        // A line with some of the batch keys is a batch line and must have them all.
        assert!(parse(br#"{"body": {"model": "m"}}"#, EP, None).is_err());
    }

    #[test]
    fn output_lines_have_openais_shape() {
        let ok: Value =
            serde_json::from_str(&response_line("a", 200, "r1", br#"{"x":1}"#)).unwrap();
        assert_eq!(ok["custom_id"], "a");
        assert_eq!(ok["response"]["status_code"], 200);
        assert_eq!(ok["response"]["body"]["x"], 1);
        assert!(ok["error"].is_null());
        let bad: Value = serde_json::from_str(&error_line(Some("b"), "c", "m", Some(3))).unwrap();
        assert!(bad["response"].is_null());
        assert_eq!(bad["error"]["line"], 3);
    }
}
