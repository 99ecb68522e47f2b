//! Response bodies, written straight into one `String` each (no `serde_json::Value` trees on
//! the hot path), and the few fields the mock reads from a request.

use std::borrow::Cow;
use std::fmt::Write;

use serde::Deserialize;

/// The inference routes the mock serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Chat,
    Completion,
    Embedding,
    Rerank,
    Response,
    Message,
}

impl Kind {
    pub(crate) const ROUTES: [(&'static str, Kind); 6] = [
        ("/v1/chat/completions", Kind::Chat),
        ("/v1/completions", Kind::Completion),
        ("/v1/embeddings", Kind::Embedding),
        ("/v1/rerank", Kind::Rerank),
        ("/v1/responses", Kind::Response),
        ("/v1/messages", Kind::Message),
    ];
}

pub(crate) const DEFAULT_MODEL: &str = "mock-model";

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// The request fields that change the answer. A body that is not JSON (or has fields of
/// unexpected types) reads as the default: not streaming, model `mock-model`.
#[derive(Deserialize, Default)]
pub(crate) struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

impl<'a> Probe<'a> {
    pub(crate) fn parse(body: &'a [u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }

    pub(crate) fn stream(&self) -> bool {
        self.stream == Some(true)
    }

    pub(crate) fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// The model as a JSON string literal, quotes included.
    pub(crate) fn model_json(&self) -> String {
        let model = self.model.as_deref().unwrap_or(DEFAULT_MODEL);
        serde_json::to_string(model).unwrap_or_else(|_| format!("\"{DEFAULT_MODEL}\""))
    }
}

/// Prompt tokens: a deterministic function of the body (a quarter of its length, at least 1).
pub(crate) fn prompt_tokens(body: &[u8]) -> usize {
    (body.len() / 4).max(1)
}

/// Token `i` of every answer: `tok<i> `.
fn push_content(out: &mut String, chunks: usize) {
    for i in 0..chunks {
        let _ = write!(out, "tok{i} ");
    }
}

fn push_usage(out: &mut String, prompt: usize, completion: usize) {
    let _ = write!(
        out,
        r#""usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{}}}"#,
        prompt + completion
    );
}

/// One SSE content event.
pub(crate) fn sse_content(kind: Kind, model_json: &str, i: usize, last: bool, out: &mut String) {
    let finish = if last { r#""stop""# } else { "null" };
    let _ = match kind {
        Kind::Completion => write!(
            out,
            r#"data: {{"id":"cmpl-mock","object":"text_completion","created":1,"model":{model_json},"choices":[{{"index":0,"text":"tok{i} ","logprobs":null,"finish_reason":{finish}}}]}}"#
        ),
        _ => write!(
            out,
            r#"data: {{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1,"model":{model_json},"choices":[{{"index":0,"delta":{{"content":"tok{i} "}},"finish_reason":{finish}}}]}}"#
        ),
    };
    out.push_str("\n\n");
}

/// The final usage event (`"choices":[]`).
pub(crate) fn sse_usage(
    kind: Kind,
    model_json: &str,
    prompt: usize,
    completion: usize,
    out: &mut String,
) {
    let (id, object) = match kind {
        Kind::Completion => ("cmpl-mock", "text_completion"),
        _ => ("chatcmpl-mock", "chat.completion.chunk"),
    };
    let _ = write!(
        out,
        r#"data: {{"id":"{id}","object":"{object}","created":1,"model":{model_json},"choices":[],"#
    );
    push_usage(out, prompt, completion);
    out.push_str("}\n\n");
}

pub(crate) const SSE_DONE: &str = "data: [DONE]\n\n";

/// A non-stream answer shaped like the route's OpenAI (or Anthropic, for `/v1/messages`)
/// response.
pub(crate) fn non_stream(
    kind: Kind,
    model_json: &str,
    body: &[u8],
    chunks: usize,
    usage: bool,
) -> String {
    let prompt = prompt_tokens(body);
    let mut out = String::with_capacity(256 + 8 * chunks);
    match kind {
        Kind::Chat => {
            let _ = write!(
                out,
                r#"{{"id":"chatcmpl-mock","object":"chat.completion","created":1,"model":{model_json},"choices":[{{"index":0,"message":{{"role":"assistant","content":""#
            );
            push_content(&mut out, chunks);
            out.push_str(r#""},"logprobs":null,"finish_reason":"stop"}]"#);
            if usage {
                out.push(',');
                push_usage(&mut out, prompt, chunks);
            }
            out.push('}');
        }
        Kind::Completion => {
            let _ = write!(
                out,
                r#"{{"id":"cmpl-mock","object":"text_completion","created":1,"model":{model_json},"choices":[{{"index":0,"text":""#
            );
            push_content(&mut out, chunks);
            out.push_str(r#"","logprobs":null,"finish_reason":"stop"}]"#);
            if usage {
                out.push(',');
                push_usage(&mut out, prompt, chunks);
            }
            out.push('}');
        }
        Kind::Embedding => {
            out.push_str(r#"{"object":"list","data":["#);
            for i in 0..count_items(body, "input") {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(
                    out,
                    r#"{{"object":"embedding","index":{i},"embedding":[0.1,0.2,0.3,0.4]}}"#
                );
            }
            let _ = write!(out, r#"],"model":{model_json}"#);
            if usage {
                let _ = write!(
                    out,
                    r#","usage":{{"prompt_tokens":{prompt},"total_tokens":{prompt}}}"#
                );
            }
            out.push('}');
        }
        Kind::Rerank => {
            let _ = write!(
                out,
                r#"{{"id":"rerank-mock","object":"list","model":{model_json},"results":["#
            );
            for i in 0..count_items(body, "documents") {
                if i > 0 {
                    out.push(',');
                }
                // Scores fall with the index, so results are already in rank order.
                let score = 1.0 / (i as f64 + 1.0);
                let _ = write!(out, r#"{{"index":{i},"relevance_score":{score}}}"#);
            }
            out.push(']');
            if usage {
                let _ = write!(
                    out,
                    r#","usage":{{"prompt_tokens":{prompt},"total_tokens":{prompt}}}"#
                );
            }
            out.push('}');
        }
        Kind::Response => {
            let _ = write!(
                out,
                r#"{{"id":"resp_mock","object":"response","created_at":1,"status":"completed","model":{model_json},"output":[{{"type":"message","id":"msg_mock","status":"completed","role":"assistant","content":[{{"type":"output_text","text":""#
            );
            push_content(&mut out, chunks);
            out.push_str(r#"","annotations":[]}]}]"#);
            if usage {
                let _ = write!(
                    out,
                    r#","usage":{{"input_tokens":{prompt},"output_tokens":{chunks},"total_tokens":{}}}"#,
                    prompt + chunks
                );
            }
            out.push('}');
        }
        Kind::Message => {
            let _ = write!(
                out,
                r#"{{"id":"msg_mock","type":"message","role":"assistant","model":{model_json},"content":[{{"type":"text","text":""#
            );
            push_content(&mut out, chunks);
            out.push_str(r#""}],"stop_reason":"end_turn","stop_sequence":null"#);
            if usage {
                let _ = write!(
                    out,
                    r#","usage":{{"input_tokens":{prompt},"output_tokens":{chunks}}}"#
                );
            }
            out.push('}');
        }
    }
    out
}

/// How many items the request's `field` holds: the length of an array of strings (or of
/// token arrays), 1 for a single string or a single token array, 0 if absent.
fn count_items(body: &[u8], field: &str) -> usize {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) else {
        return 1;
    };
    match map.get(field) {
        None | Some(serde_json::Value::Null) => 0,
        Some(serde_json::Value::Array(items)) => match items.first() {
            Some(serde_json::Value::Number(_)) => 1,
            _ => items.len(),
        },
        Some(_) => 1,
    }
}

/// The error envelope llama-server and vLLM send: `{"error":{"message","type","code"}}`.
pub(crate) fn error_envelope(status: u16) -> String {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        501 => "not_supported_error",
        503 => "unavailable_error",
        _ => "server_error",
    };
    format!(
        r#"{{"error":{{"message":"mock upstream error (status {status})","type":"{kind}","code":{status}}}}}"#
    )
}

pub(crate) const MODELS: &str = r#"{"object":"list","data":[{"id":"mock-model","object":"model","created":1,"owned_by":"mock-upstream"}]}"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
    }

    #[test]
    fn probe_reads_stream_and_usage() {
        let body = br#"{"model":"m\"x","stream":true,"stream_options":{"include_usage":true}}"#;
        let p = Probe::parse(body);
        assert!(p.stream());
        assert!(p.include_usage());
        assert_eq!(p.model_json(), r#""m\"x""#);
        let p = Probe::parse(b"not json");
        assert!(!p.stream());
        assert_eq!(p.model_json(), r#""mock-model""#);
    }

    #[test]
    fn every_body_is_json() {
        let req = br#"{"model":"m","input":["a","b"],"documents":["x","y","z"]}"#;
        for (_, kind) in Kind::ROUTES {
            for usage in [true, false] {
                let v = json(&non_stream(kind, "\"m\"", req, 3, usage));
                assert_eq!(v.get("model").and_then(|m| m.as_str()), Some("m"));
                assert_eq!(v.get("usage").is_some(), usage, "{kind:?}");
            }
            let mut s = String::new();
            sse_content(kind, "\"m\"", 0, true, &mut s);
            sse_usage(kind, "\"m\"", 4, 5, &mut s);
            for event in s.split("\n\n").filter(|e| !e.is_empty()) {
                json(event.trim_start_matches("data: "));
            }
        }
        let v = json(&non_stream(Kind::Embedding, "\"m\"", req, 3, true));
        assert_eq!(v["data"].as_array().map(Vec::len), Some(2));
        let v = json(&non_stream(Kind::Rerank, "\"m\"", req, 3, true));
        assert_eq!(v["results"].as_array().map(Vec::len), Some(3));
        let v = json(&non_stream(Kind::Chat, "\"m\"", req, 3, true));
        assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1 tok2 ");
        assert_eq!(v["usage"]["completion_tokens"], 3);
        let v = json(&error_envelope(503));
        assert_eq!(v["error"]["code"], 503);
    }
}
