//! What real model servers do that our own mock does not: announce keep-alive and close
//! anyway, answer 501/422 for requests they do not support, put extra fields (`timings`)
//! on the usage event, and serve model-addressed routes beyond the OpenAI ones.
use std::num::NonZero;
use std::time::Duration;

use crate::common::raw_upstream::{Closing, RawRequest, RawUpstream, Reply};
use crate::common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

const CHUNK: &str = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#;
const FINAL: &str = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
const USAGE: &str = r#"{"choices":[],"created":1,"id":"c1","model":"m","system_fingerprint":"b1","object":"chat.completion.chunk","usage":{"completion_tokens":1,"prompt_tokens":2,"total_tokens":3},"timings":{"cache_n":0,"prompt_n":2,"predicted_ms":1.5}}"#;
const COMPLETION: &str = r#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}}"#;

/// A llama-server-shaped chat backend: streams (usage event with `timings` when asked),
/// JSON answers otherwise, and `/health`.
fn llama_like(req: &RawRequest) -> Reply {
    if req.method == "GET" {
        return Reply::json(200, r#"{"status":"ok"}"#);
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    if body["stream"] == true {
        let mut events = vec![CHUNK, FINAL];
        if body["stream_options"]["include_usage"] == true {
            events.push(USAGE);
        }
        events.push("[DONE]");
        Reply::sse(&events)
    } else {
        Reply::json(200, COMPLETION)
    }
}

fn stream_chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": true})
}

/// Sends `total` requests, `concurrency` at a time, alternating stream and JSON; returns
/// the statuses that were not 200 or streams that did not end with `[DONE]`.
async fn run_load(gw: &TestGateway, total: usize, concurrency: usize) -> Vec<String> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    futures_util::stream::iter(0..total)
        .map(|i| {
            // awc's client is a cheap handle (reference counted) on this thread.
            let client = client.clone();
            let url = gw.at("/v1/chat/completions");
            async move {
                let body = if i % 2 == 0 {
                    stream_chat("m")
                } else {
                    chat("m")
                };
                let mut res = match client.post(url).send_json(&body).await {
                    Ok(res) => res,
                    Err(e) => return Some(format!("request {i}: {e}")),
                };
                let bytes = res.body().limit(1 << 20).await.unwrap_or_default();
                let text = String::from_utf8_lossy(&bytes).into_owned();
                if res.status() != 200 {
                    return Some(format!("request {i}: {} {text}", res.status()));
                }
                if i % 2 == 0 && !text.contains("data: [DONE]") {
                    return Some(format!("request {i}: stream without [DONE]: {text}"));
                }
                None
            }
        })
        .buffer_unordered(concurrency)
        .filter_map(|r| async move { r })
        .collect()
        .await
}

/// 1,000 sequential and 1,000 concurrent requests to a backend that announces keep-alive
/// and closes `delay` after every answer: the gateway reuses the pooled connection, writes
/// the next request, and reads EOF (awc: "connector has been disconnected").
async fn closing_backend_costs_no_request(delay: Duration) {
    let upstream = RawUpstream::start(Closing::AfterResponse(delay), llama_like);
    let gw = TestApp::builder()
        .target(target("a", "m", upstream.url()))
        // One attempt: a stale connection must cost no failover; no quotas, so 2,000
        // quick requests are not rate limited.
        .settings(|s| {
            s.upstream.max_attempts = NonZero::new(1).unwrap();
            s.quotas.enabled = false;
        })
        .start()
        .await;
    for (label, concurrency) in [("sequential", 1), ("concurrent", 32)] {
        let failed = run_load(&gw, 1000, concurrency).await;
        assert!(
            failed.is_empty(),
            "{label}, close after {delay:?}: {} failed, first: {:?}",
            failed.len(),
            failed.first()
        );
    }
    let state = gw.target_state("a").await;
    assert_eq!(state["breaker"], "closed", "{state}");
    assert_eq!(
        state["failures"], 0,
        "stale connections are not failures: {state}"
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn a_backend_that_closes_at_once_while_announcing_keep_alive_costs_no_request() {
    closing_backend_costs_no_request(Duration::ZERO).await;
}

#[actix_rt::test]
async fn a_backend_that_closes_soon_after_announcing_keep_alive_costs_no_request() {
    closing_backend_costs_no_request(Duration::from_millis(5)).await;
}

#[actix_rt::test]
async fn backend_501_and_422_are_relayed_and_never_open_the_breaker() {
    const NOT_SUPPORTED: &str = r#"{"error":{"code":501,"message":"This server does not support reranking. Start it with `--reranking`","type":"not_supported_error"}}"#;
    const UNPROCESSABLE: &str = r#"{"object":"error","message":"[{'type': 'missing', 'loc': ('body', 'messages')}]","type":"BadRequestError","param":null,"code":422}"#;
    let upstream = RawUpstream::start(Closing::Never, |req| match req.path.as_str() {
        "/v1/rerank" => Reply::json(501, NOT_SUPPORTED),
        "/v1/embeddings" => Reply::json(422, UNPROCESSABLE),
        _ => llama_like(req),
    });
    let b = RawUpstream::start(Closing::Never, llama_like);
    let gw = TestApp::builder()
        .targets(&[
            target("a", "m", upstream.url()),
            target("b", "other", b.url()),
        ])
        .start()
        .await;
    let client = gw.client();
    for _ in 0..8 {
        let mut res = client
            .post(gw.at("/v1/rerank"))
            .send_json(&json!({"model": "m", "query": "q", "documents": ["a"]}))
            .await
            .unwrap();
        assert_eq!(res.status(), 501);
        assert_eq!(&res.body().await.unwrap()[..], NOT_SUPPORTED.as_bytes());
        let mut res = client
            .post(gw.at("/v1/embeddings"))
            .send_json(&json!({"model": "m", "input": "x"}))
            .await
            .unwrap();
        assert_eq!(res.status(), 422);
        let body: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
        assert_eq!(body["code"], 422, "relayed as the backend sent it: {body}");
    }
    let state = gw.target_state("a").await;
    assert_eq!(state["breaker"], "closed", "{state}");
    assert_eq!(state["failures"], 0, "{state}");
    let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 200, "the model stays online for everyone");
    assert_eq!(
        upstream.inference_requests(),
        17,
        "each request tried once: a backend 4xx/501 is not retried"
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn backend_auth_failures_name_the_target_and_not_its_secret() {
    let upstream = RawUpstream::start(Closing::Never, |req| {
        if req.method == "GET" {
            return Reply::json(200, "{}");
        }
        Reply::json(
            401,
            r#"{"error":{"message":"Incorrect API key provided: sk-secret-123","type":"invalid_request_error","code":"invalid_api_key"}}"#,
        )
    });
    let gw = TestApp::builder()
        .target(target("tgt-a", "m", upstream.url()))
        .start()
        .await;
    let (status, _, body) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("tgt-a"), "{message}");
    assert!(message.contains("credentials"), "{message}");
    assert!(!message.contains("sk-secret"), "{message}");
    assert_eq!(gw.target_state("tgt-a").await["breaker"], "closed");
    gw.stop().await;
}

#[actix_rt::test]
async fn rate_limits_keep_retry_after_and_do_not_open_the_breaker() {
    let upstream = RawUpstream::start(Closing::Never, |req| {
        if req.method == "GET" {
            return Reply::json(200, "{}");
        }
        let mut reply = Reply::json(
            429,
            r#"{"error":{"message":"slow down","type":"rate_limit_error","code":429}}"#,
        );
        reply.headers.push(("Retry-After", "7".into()));
        reply
    });
    let gw = TestApp::builder()
        .target(target("a", "m", upstream.url()))
        .start()
        .await;
    for _ in 0..6 {
        let (status, headers, body) = gw.post("/v1/chat/completions", &chat("m")).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(headers.get("retry-after").unwrap(), "7");
        assert_eq!(body["error"]["message"], "slow down");
    }
    assert_eq!(gw.target_state("a").await["breaker"], "closed");
    gw.stop().await;
}

#[actix_rt::test]
async fn fields_beside_the_injected_usage_reach_the_client() {
    let upstream = RawUpstream::start(Closing::Never, llama_like);
    // Quotas on: the gateway asks for usage itself and hides what it asked for.
    let gw = TestApp::builder()
        .target(target("a", "m", upstream.url()))
        .settings(|s| s.quotas.enabled = true)
        .start()
        .await;
    let mut res = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .send_json(&stream_chat("m"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    let sent = upstream.requests().last().cloned().unwrap();
    assert!(
        String::from_utf8_lossy(&sent.body).contains(r#""include_usage":true"#),
        "the gateway asked for usage"
    );
    let events = sse_data(text.as_bytes());
    assert!(
        !text.contains("\"usage\""),
        "the usage the client did not ask for is hidden: {text}"
    );
    let last = events
        .iter()
        .rev()
        .find(|e| e.as_str() != "[DONE]")
        .unwrap();
    let last: Value = serde_json::from_str(last).unwrap();
    assert_eq!(
        last["timings"]["predicted_ms"], 1.5,
        "timings survive: {text}"
    );
    // Only `usage` is gone; every other byte of that event is as the backend sent it.
    assert!(
        text.contains(r#"data: {"choices":[],"created":1,"id":"c1","model":"m","system_fingerprint":"b1","object":"chat.completion.chunk","timings":{"cache_n":0,"prompt_n":2,"predicted_ms":1.5}}"#),
        "{text}"
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

    // A client that asked for usage gets the event untouched.
    let mut body = stream_chat("m");
    body["stream_options"] = json!({"include_usage": true});
    let mut res = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .send_json(&body)
        .await
        .unwrap();
    let text = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    assert!(text.contains(&format!("data: {USAGE}\n\n")), "{text}");
    gw.stop().await;
}

#[actix_rt::test]
async fn model_addressed_routes_are_relayed_by_model_and_others_never() {
    let a = RawUpstream::start(Closing::Never, |req| {
        Reply::json(200, format!(r#"{{"served_by":"a","path":"{}"}}"#, req.path))
    });
    let b = RawUpstream::start(Closing::Never, |req| {
        Reply::json(200, format!(r#"{{"served_by":"b","path":"{}"}}"#, req.path))
    });
    let gw = TestApp::builder()
        .targets(&[target("a", "ma", a.url()), target("b", "mb", b.url())])
        .start()
        .await;
    for (path, model, by) in [
        ("/v1/messages/count_tokens", "ma", "a"),
        ("/tokenize", "mb", "b"),
        ("/detokenize", "ma", "a"),
        ("/v1/score", "mb", "b"),
        ("/v1/classify", "ma", "a"),
        ("/pooling", "mb", "b"),
        ("/resource_server/tokenize", "ma", "a"),
        ("/local/vllm/tokenize", "mb", "b"),
    ] {
        let (status, _, body) = gw.post(path, &json!({"model": model, "prompt": "x"})).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["served_by"], by, "{path}: {body}");
        let upstream_path = path
            .trim_start_matches("/resource_server")
            .trim_start_matches("/local/vllm");
        assert_eq!(body["path"], upstream_path, "{path}: {body}");
    }
    // Admin routes of a backend are never reachable through the gateway.
    for path in ["/v1/load_lora_adapter", "/slots", "/props"] {
        let (status, _, body) = gw.post(path, &json!({"model": "ma"})).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    gw.stop().await;
}

#[actix_rt::test]
async fn multipart_audio_is_routed_by_its_model_field_and_relayed_unchanged() {
    let a = RawUpstream::start(Closing::Never, |req| {
        Reply::json(
            200,
            json!({"text": "hello", "content_type": req.header("content-type")}).to_string(),
        )
    });
    let gw = TestApp::builder()
        .target(target("a", "whisper", a.url()))
        .start()
        .await;
    let boundary = "XyZboundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\0\0\x01binary\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--{boundary}--\r\n"
    );
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let mut res = gw
        .client()
        .post(gw.at("/v1/audio/transcriptions"))
        .insert_header(("content-type", content_type.as_str()))
        .send_body(body.clone())
        .await
        .unwrap();
    let got: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(res.status(), 200, "{got}");
    assert_eq!(got["text"], "hello");
    assert_eq!(got["content_type"], content_type.as_str());
    let sent = a.requests().last().cloned().unwrap();
    assert_eq!(sent.path, "/v1/audio/transcriptions");
    assert_eq!(sent.body, body.as_bytes(), "relayed byte for byte");

    // No model field: 400 naming it; an unknown model: 404.
    let no_model = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nx\r\n--{boundary}--\r\n");
    let mut res = gw
        .client()
        .post(gw.at("/v1/audio/translations"))
        .insert_header(("content-type", content_type.as_str()))
        .send_body(no_model)
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let err: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(err["error"]["param"], "model", "{err}");
    let unknown = body.replace("\r\nwhisper\r\n", "\r\nnope\r\n");
    let res = gw
        .client()
        .post(gw.at("/v1/audio/transcriptions"))
        .insert_header(("content-type", content_type.as_str()))
        .send_body(unknown)
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    gw.stop().await;
}
