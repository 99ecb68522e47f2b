//! The built-in `demo` target (`framework: "demo"` in the fixtures): an OpenAI-compatible
//! responder inside the gateway's process, so a fresh gateway answers with no model server.
//!
//! It serves chat completions, completions, embeddings, the Responses API and Anthropic
//! Messages, streamed or not, with `usage`. The text is deterministic and instant: a fixed
//! sentence followed by an echo of the last user message, one "token" per word, cut at the
//! request's `max_tokens` (or `max_completion_tokens`, `max_output_tokens`). Embeddings are
//! derived from a SHA-256 of each input.
//!
//! The answer is handed to `proxy::forward` as an `awc::ClientResponse` (its body a stream
//! of the prepared chunks), exactly where an HTTP target's response comes in: routing,
//! leases and the breaker, the first-byte wait, the relay (usage metering, hiding the usage
//! event the gateway asked for), quotas, the request log and metrics all treat it as any
//! other target's. Only the transport differs, and it is chosen by the target's
//! `Transport`, so an HTTP target's request path does not change.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::http::StatusCode;
use bytes::Bytes;
use futures_util::Stream;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::{code, envelope};

/// What every answer starts with, so nobody mistakes it for a model.
pub const PREAMBLE: &str = "This is the inference gateway's built-in demo model. You said:";
/// Words of the user's message echoed at most.
const ECHO_WORDS: usize = 64;
/// Embedding dimensions unless the request asks for others (`dimensions`, at most 4096).
const EMBEDDING_DIMENSIONS: usize = 16;
const MAX_DIMENSIONS: usize = 4096;

/// An answer: status, content type, and the body in the chunks it is sent as.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub chunks: Vec<Bytes>,
}

impl Answer {
    fn json(value: &Value) -> Answer {
        Answer {
            status: StatusCode::OK,
            content_type: "application/json",
            chunks: vec![Bytes::from(value.to_string())],
        }
    }

    fn error(status: StatusCode, message: &str, param: Option<&str>) -> Answer {
        let kind = if status == StatusCode::NOT_FOUND {
            "not_found_error"
        } else {
            "invalid_request_error"
        };
        let code = if status == StatusCode::NOT_FOUND {
            code::NOT_FOUND
        } else {
            code::INVALID_REQUEST
        };
        Answer {
            status,
            content_type: "application/json",
            chunks: vec![Bytes::from(envelope(message, kind, param, code))],
        }
    }

    fn events(events: Vec<String>) -> Answer {
        Answer {
            status: StatusCode::OK,
            content_type: "text/event-stream",
            chunks: events.into_iter().map(Bytes::from).collect(),
        }
    }

    /// The whole body (tests).
    pub fn body(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

/// The answer to `body` on `path`, as an upstream response for `proxy::forward`.
pub fn response(path: &str, body: &[u8]) -> awc::ClientResponse {
    let answer = answer(path, body);
    let sized = answer.content_type != "text/event-stream";
    let length: usize = answer.chunks.iter().map(Bytes::len).sum();
    let chunks = answer.chunks;
    awc::test::TestResponse::default()
        .finish()
        .map_body(move |head, _| {
            head.status = answer.status;
            head.headers
                .insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
            if sized {
                head.headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(length));
            }
            let stream: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> =
                Box::pin(futures_util::stream::iter(chunks.into_iter().map(Ok)));
            Payload::Stream { payload: stream }
        })
}

/// The demo's answer to `body` on `path` (an upstream path: `/v1/chat/completions`...).
pub fn answer(path: &str, body: &[u8]) -> Answer {
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                "The demo model takes a JSON object.",
                None,
            )
        }
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("demo")
        .to_string();
    let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    match path {
        "/v1/chat/completions" => chat(&request, &model, stream),
        "/v1/completions" => completions(&request, &model, stream),
        "/v1/embeddings" => embeddings(&request, &model),
        "/v1/responses" => responses(&request, &model, stream),
        "/v1/messages" => messages(&request, &model, stream),
        other => Answer::error(
            StatusCode::NOT_FOUND,
            &format!(
                "The built-in demo model does not serve {other}; it serves chat completions, \
                 completions, embeddings, responses and messages."
            ),
            None,
        ),
    }
}

/// A process-unique id suffix (ids only need to differ; the text is what is deterministic).
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Words of `text`, the demo's tokens.
fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The generated answer: its words (pieces to stream, the first without a leading
/// space), and whether `limit` cut it.
struct Generated {
    pieces: Vec<String>,
    cut: bool,
}

impl Generated {
    fn new(said: &str, limit: Option<u64>) -> Generated {
        let echo: Vec<&str> = said.split_whitespace().take(ECHO_WORDS).collect();
        let echo = if echo.is_empty() {
            "(nothing)".to_string()
        } else {
            format!("\"{}\"", echo.join(" "))
        };
        let text = format!("{PREAMBLE} {echo}");
        let words: Vec<&str> = text.split_whitespace().collect();
        let keep = limit.map_or(words.len(), |n| {
            usize::try_from(n).unwrap_or(usize::MAX).min(words.len())
        });
        let pieces = words[..keep]
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    (*w).to_string()
                } else {
                    format!(" {w}")
                }
            })
            .collect();
        Generated {
            pieces,
            cut: keep < words.len(),
        }
    }

    fn text(&self) -> String {
        self.pieces.concat()
    }

    fn tokens(&self) -> u64 {
        self.pieces.len() as u64
    }
}

/// The first of `names` that is a non-negative integer in `request`.
fn limit(request: &Value, names: &[&str]) -> Option<u64> {
    names
        .iter()
        .find_map(|n| request.get(*n).and_then(Value::as_u64))
}

/// The text of an OpenAI or Anthropic message `content`: a string, or a list of parts
/// whose `text` members are joined.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Every message's text (prompt tokens) and the last user message's (the echo).
fn conversation(messages: &[Value]) -> (String, String) {
    let all: Vec<String> = messages
        .iter()
        .map(|m| content_text(m.get("content")))
        .collect();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| content_text(m.get("content")))
        .unwrap_or_default();
    (all.join(" "), last_user)
}

fn messages_of<'a>(request: &'a Value, field: &'static str) -> Result<&'a [Value], Answer> {
    match request.get(field) {
        Some(Value::Array(list)) if !list.is_empty() => Ok(list),
        _ => Err(Answer::error(
            StatusCode::BAD_REQUEST,
            &format!("`{field}` is required: a non-empty list of messages."),
            Some(field),
        )),
    }
}

fn include_usage(request: &Value) -> bool {
    request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true)
}

fn openai_usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

fn data(value: &Value) -> String {
    format!("data: {value}\n\n")
}

fn event(name: &str, value: &Value) -> String {
    format!("event: {name}\ndata: {value}\n\n")
}

const DONE: &str = "data: [DONE]\n\n";

fn chat(request: &Value, model: &str, stream: bool) -> Answer {
    let messages = match messages_of(request, "messages") {
        Ok(m) => m,
        Err(e) => return e,
    };
    let (all, said) = conversation(messages);
    let prompt = count_words(&all).max(1);
    let out = Generated::new(
        &said,
        limit(request, &["max_completion_tokens", "max_tokens"]),
    );
    let finish = if out.cut { "length" } else { "stop" };
    let id = format!("chatcmpl-demo-{}", next_id());
    let created = now_secs();
    if !stream {
        return Answer::json(&json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0,
                "message": {"role": "assistant", "content": out.text(), "refusal": null},
                "logprobs": null, "finish_reason": finish}],
            "usage": openai_usage(prompt, out.tokens()),
        }));
    }
    let chunk = |delta: Value, finish: Value| {
        data(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        }))
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for piece in &out.pieces {
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    events.push(chunk(json!({}), json!(finish)));
    if include_usage(request) {
        events.push(data(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": openai_usage(prompt, out.tokens()),
        })));
    }
    events.push(DONE.into());
    Answer::events(events)
}

/// The texts of a `prompt` or `input` list: strings as they are, anything else (token ids,
/// nested lists) as its JSON.
fn texts(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| match i {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

fn completions(request: &Value, model: &str, stream: bool) -> Answer {
    let prompts: Vec<String> = match request.get("prompt") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => texts(items),
        _ => {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                "`prompt` is required: a string or a list of strings.",
                Some("prompt"),
            )
        }
    };
    let max = limit(request, &["max_tokens"]);
    let outs: Vec<Generated> = prompts.iter().map(|p| Generated::new(p, max)).collect();
    let prompt_tokens: u64 = prompts.iter().map(|p| count_words(p).max(1)).sum();
    let completion_tokens: u64 = outs.iter().map(Generated::tokens).sum();
    let finish = |g: &Generated| if g.cut { "length" } else { "stop" };
    let id = format!("cmpl-demo-{}", next_id());
    let created = now_secs();
    if !stream {
        let choices: Vec<Value> = outs
            .iter()
            .enumerate()
            .map(|(i, g)| {
                json!({"index": i, "text": g.text(), "logprobs": null, "finish_reason": finish(g)})
            })
            .collect();
        return Answer::json(&json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": openai_usage(prompt_tokens, completion_tokens),
        }));
    }
    let chunk = |index: usize, text: &str, finish: Value| {
        data(&json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "logprobs": null, "finish_reason": finish}],
        }))
    };
    let mut events = Vec::new();
    for (i, g) in outs.iter().enumerate() {
        for piece in &g.pieces {
            events.push(chunk(i, piece, Value::Null));
        }
        events.push(chunk(i, "", json!(finish(g))));
    }
    if include_usage(request) {
        events.push(data(&json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [], "usage": openai_usage(prompt_tokens, completion_tokens),
        })));
    }
    events.push(DONE.into());
    Answer::events(events)
}

/// A unit vector of `dimensions` derived from `text` (SHA-256 in counter mode).
fn embedding(text: &str, dimensions: usize) -> Vec<f32> {
    let mut values = Vec::with_capacity(dimensions);
    let mut block = 0u32;
    while values.len() < dimensions {
        let digest = Sha256::new()
            .chain_update(block.to_le_bytes())
            .chain_update(text.as_bytes())
            .finalize();
        for pair in digest.chunks_exact(2) {
            if values.len() == dimensions {
                break;
            }
            let n = u16::from_le_bytes([pair[0], pair[1]]);
            values.push(f32::from(n) / 32767.5 - 1.0);
        }
        block += 1;
    }
    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        for v in &mut values {
            *v /= norm;
        }
    }
    values
}

fn embeddings(request: &Value, model: &str) -> Answer {
    let inputs: Vec<String> = match request.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        // A list of token ids is one input; a list of lists or strings is many.
        Some(Value::Array(items)) if items.iter().all(Value::is_number) && !items.is_empty() => {
            vec![Value::Array(items.clone()).to_string()]
        }
        Some(Value::Array(items)) if !items.is_empty() => texts(items),
        _ => {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                "`input` is required: a string or a list of strings.",
                Some("input"),
            )
        }
    };
    let dimensions = match request.get("dimensions") {
        None | Some(Value::Null) => EMBEDDING_DIMENSIONS,
        Some(d) => match d.as_u64().and_then(|d| usize::try_from(d).ok()) {
            Some(d @ 1..=MAX_DIMENSIONS) => d,
            _ => {
                return Answer::error(
                    StatusCode::BAD_REQUEST,
                    &format!("`dimensions` must be an integer from 1 to {MAX_DIMENSIONS}."),
                    Some("dimensions"),
                )
            }
        },
    };
    let base64 = request.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let vector = embedding(text, dimensions);
            let value = if base64 {
                use base64::Engine;
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": value})
        })
        .collect();
    let tokens: u64 = inputs.iter().map(|t| count_words(t).max(1)).sum();
    Answer::json(&json!({
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

/// The Responses API's `input`: a string, or a list of items (messages with a string or
/// a list of `input_text` parts).
fn responses(request: &Value, model: &str, stream: bool) -> Answer {
    let (all, said) = match request.get("input") {
        Some(Value::String(s)) => (s.clone(), s.clone()),
        Some(Value::Array(items)) if !items.is_empty() => conversation(items),
        _ => {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                "`input` is required: a string or a list of input items.",
                Some("input"),
            )
        }
    };
    let input_tokens = count_words(&all).max(1);
    let out = Generated::new(&said, limit(request, &["max_output_tokens"]));
    let id = format!("resp_demo{}", next_id());
    let item_id = format!("msg_demo{}", next_id());
    let created = now_secs();
    let text = out.text();
    let item = |status: &str, text: &str| {
        json!({"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
    };
    let response = |status: &str, output: Value, usage: Value| {
        let incomplete = if status == "incomplete" {
            json!({"reason": "max_output_tokens"})
        } else {
            Value::Null
        };
        json!({
            "id": id, "object": "response", "created_at": created, "status": status,
            "error": null, "incomplete_details": incomplete, "instructions": null,
            "max_output_tokens": request.get("max_output_tokens").cloned().unwrap_or(Value::Null),
            "model": model, "output": output, "parallel_tool_calls": true,
            "previous_response_id": null, "reasoning": {"effort": null, "summary": null},
            "store": false, "temperature": 1.0, "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
            "usage": usage, "user": null, "metadata": {},
        })
    };
    let usage = json!({
        "input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": out.tokens(), "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + out.tokens(),
    });
    let status = if out.cut { "incomplete" } else { "completed" };
    if !stream {
        return Answer::json(&response(status, json!([item("completed", &text)]), usage));
    }
    let mut seq = 0u64;
    let mut events = Vec::new();
    let mut push = |name: &str, mut body: Value| {
        if let Value::Object(o) = &mut body {
            o.insert("type".into(), json!(name));
            o.insert("sequence_number".into(), json!(seq));
        }
        seq += 1;
        events.push(event(name, &body));
    };
    let start = response("in_progress", json!([]), Value::Null);
    push("response.created", json!({"response": start}));
    push("response.in_progress", json!({"response": start}));
    push(
        "response.output_item.added",
        json!({"output_index": 0, "item": {"id": item_id, "type": "message",
            "status": "in_progress", "role": "assistant", "content": []}}),
    );
    let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
    let at = json!({"item_id": item_id, "output_index": 0, "content_index": 0});
    let with = |extra: Value| {
        let mut v = at.clone();
        if let (Value::Object(o), Value::Object(e)) = (&mut v, extra) {
            o.extend(e);
        }
        v
    };
    push(
        "response.content_part.added",
        with(json!({"part": part("")})),
    );
    for piece in &out.pieces {
        push(
            "response.output_text.delta",
            with(json!({"delta": piece, "logprobs": []})),
        );
    }
    push(
        "response.output_text.done",
        with(json!({"text": text, "logprobs": []})),
    );
    push(
        "response.content_part.done",
        with(json!({"part": part(&text)})),
    );
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": item("completed", &text)}),
    );
    let last = if out.cut {
        "response.incomplete"
    } else {
        "response.completed"
    };
    push(
        last,
        json!({"response": response(status, json!([item("completed", &text)]), usage)}),
    );
    Answer::events(events)
}

/// Anthropic's Messages API.
fn messages(request: &Value, model: &str, stream: bool) -> Answer {
    let messages = match messages_of(request, "messages") {
        Ok(m) => m,
        Err(e) => return e,
    };
    let (mut all, said) = conversation(messages);
    if let Some(system) = request.get("system") {
        all.push(' ');
        all.push_str(&content_text(Some(system)));
    }
    let input_tokens = count_words(&all).max(1);
    let out = Generated::new(&said, limit(request, &["max_tokens"]));
    let stop = if out.cut { "max_tokens" } else { "end_turn" };
    let id = format!("msg_demo{}", next_id());
    let message = |content: Value, stop: Value, output_tokens: u64| {
        json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        })
    };
    if !stream {
        return Answer::json(&message(
            json!([{"type": "text", "text": out.text()}]),
            json!(stop),
            out.tokens(),
        ));
    }
    let mut events = vec![
        event(
            "message_start",
            &json!({"type": "message_start", "message": message(json!([]), Value::Null, 1)}),
        ),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for piece in &out.pieces {
        events.push(event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    events.push(event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event(
        "message_delta",
        &json!({"type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": null},
            "usage": {"output_tokens": out.tokens()}}),
    ));
    events.push(event("message_stop", &json!({"type": "message_stop"})));
    Answer::events(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::usage::UsageMeter;

    fn answer_json(path: &str, body: Value) -> (StatusCode, Value) {
        let a = answer(path, body.to_string().as_bytes());
        (a.status, serde_json::from_slice(&a.body()).unwrap())
    }

    /// The `data:` payloads of an SSE answer, and its usage as the relay meters it.
    fn stream(path: &str, body: Value) -> (Vec<Value>, UsageMeter) {
        let a = answer(path, body.to_string().as_bytes());
        assert_eq!(a.content_type, "text/event-stream");
        let bytes = a.body();
        let mut meter = UsageMeter::default();
        meter.observe_events(&bytes);
        let text = String::from_utf8(bytes).unwrap();
        let events = text
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        (events, meter)
    }

    #[test]
    fn chat_echoes_the_last_user_message_with_usage() {
        let body = json!({"model": "demo", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "Hello there"}]});
        let (status, v) = answer_json("/v1/chat/completions", body.clone());
        assert_eq!(status, 200);
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(text, format!("{PREAMBLE} \"Hello there\""));
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["prompt_tokens"], 4);
        assert_eq!(v["usage"]["completion_tokens"], count_words(text));
        // Deterministic: the same request, the same text.
        let (_, again) = answer_json("/v1/chat/completions", body);
        assert_eq!(again["choices"][0]["message"]["content"], text);
    }

    #[test]
    fn chat_streams_word_by_word_and_honours_max_tokens() {
        let body = json!({"model": "m", "stream": true, "max_tokens": 3,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]});
        let (events, meter) = stream("/v1/chat/completions", body);
        assert!(meter.saw_terminal());
        let text: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "This is the");
        let finish: Vec<&Value> = events
            .iter()
            .map(|e| &e["choices"][0]["finish_reason"])
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finish, vec![&json!("length")]);
        assert_eq!(meter.usage().unwrap().completion_tokens, 3);
        // Without include_usage, no usage event.
        let body = json!({"model": "m", "stream": true,
            "messages": [{"role": "user", "content": "Hi"}]});
        let (_, meter) = stream("/v1/chat/completions", body);
        assert!(meter.usage().is_none());
    }

    #[test]
    fn completions_embeddings_responses_and_messages() {
        let (_, v) = answer_json(
            "/v1/completions",
            json!({"model": "m", "prompt": ["a b", "c"], "max_tokens": 2}),
        );
        assert_eq!(v["choices"].as_array().unwrap().len(), 2);
        assert_eq!(v["choices"][1]["text"], "This is");
        assert_eq!(v["usage"]["total_tokens"], 3 + 4);
        let (events, meter) = stream(
            "/v1/completions",
            json!({"model": "m", "prompt": "x", "stream": true,
                "stream_options": {"include_usage": true}}),
        );
        assert!(meter.saw_terminal() && meter.usage().is_some());
        assert_eq!(events[0]["object"], "text_completion");

        let (_, v) = answer_json(
            "/v1/embeddings",
            json!({"model": "m", "input": ["a", "b"], "dimensions": 8}),
        );
        let first = v["data"][0]["embedding"].as_array().unwrap();
        assert_eq!(first.len(), 8);
        assert_ne!(v["data"][0]["embedding"], v["data"][1]["embedding"]);
        let norm: f64 = first.iter().map(|x| x.as_f64().unwrap().powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-3, "{norm}");
        let (_, b64) = answer_json(
            "/v1/embeddings",
            json!({"model": "m", "input": "a", "dimensions": 8, "encoding_format": "base64"}),
        );
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let floats: Vec<f32> = v["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(decoded, floats, "base64 holds the same vector");

        let (_, v) = answer_json("/v1/responses", json!({"model": "m", "input": "Hey"}));
        assert_eq!(v["status"], "completed");
        assert_eq!(
            v["output"][0]["content"][0]["text"],
            format!("{PREAMBLE} \"Hey\"")
        );
        assert_eq!(v["usage"]["input_tokens"], 1);
        let (events, meter) = stream(
            "/v1/responses",
            json!({"model": "m", "input": [{"role": "user", "content": "Hey"}], "stream": true}),
        );
        assert!(meter.saw_terminal());
        assert_eq!(events.last().unwrap()["type"], "response.completed");
        assert!(meter.usage().unwrap().total() > 1);

        let (_, v) = answer_json(
            "/v1/messages",
            json!({"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "Yo"}]}),
        );
        assert_eq!(v["type"], "message");
        assert_eq!(v["stop_reason"], "end_turn");
        let (events, meter) = stream(
            "/v1/messages",
            json!({"model": "m", "max_tokens": 100, "stream": true,
                "messages": [{"role": "user", "content": "Yo"}]}),
        );
        assert!(meter.saw_terminal());
        assert_eq!(events.last().unwrap()["type"], "message_stop");
        let u = meter.usage().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (1, 11));
    }

    #[test]
    fn bad_requests_and_other_paths_are_openai_errors() {
        let (status, v) = answer_json("/v1/chat/completions", json!({"model": "m"}));
        assert_eq!(status, 400);
        assert_eq!(v["error"]["param"], "messages");
        let (status, v) = answer_json("/tokenize", json!({"model": "m"}));
        assert_eq!(status, 404);
        assert_eq!(v["error"]["type"], "not_found_error");
        let a = answer("/v1/chat/completions", b"[1]");
        assert_eq!(a.status, 400);
    }
}
