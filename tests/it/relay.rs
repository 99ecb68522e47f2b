//! The relay end to end: bytes through unchanged, streaming, usage, disconnects, servers
//! that close connections after streams, in-band stream errors.
use std::num::NonZero;
use std::time::Duration;

use crate::common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// A gateway over one target, `a`, serving model `m` at `mock`.
fn app(mock: &MockUpstream) -> TestApp {
    TestApp::builder().target(target("a", "m", mock.url()))
}

#[actix_rt::test]
async fn non_stream_bytes_and_unknown_fields_pass_through_unchanged() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = app(&mock).start().await;

    let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"my_custom_field":{"x":[1,2]},"logprobs":true}"#;
    let mut res = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .insert_header(("x-request-id", "req-123"))
        .insert_header(("content-type", "application/json"))
        .send_body(&body[..])
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get("x-request-id").unwrap(), "req-123");
    let got = res.body().await.unwrap();
    // The backend's length is kept: no chunked re-framing of a body that is passed whole.
    assert_eq!(
        res.headers()
            .get("content-length")
            .unwrap()
            .to_str()
            .unwrap(),
        got.len().to_string()
    );
    assert!(res.headers().get("transfer-encoding").is_none());

    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(
        &seen[0].body[..],
        &body[..],
        "request body reaches the backend byte for byte"
    );
    let header = |name: &str| {
        seen[0]
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-request-id").as_deref(), Some("req-123"));
    assert_eq!(
        header("authorization"),
        None,
        "the client's credentials never go upstream"
    );

    // What the mock sent is what the client got.
    let direct = awc::Client::default()
        .post(format!("{}/v1/chat/completions", mock.url()))
        .send_body(&body[..])
        .await
        .unwrap()
        .body()
        .await
        .unwrap();
    assert_eq!(got, direct);
    gw.stop().await;
}

#[actix_rt::test]
async fn request_id_is_generated_when_absent() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = app(&mock).start().await;
    let (status, headers, _) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 200);
    let id = headers
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let seen = mock.requests();
    assert!(seen[0]
        .headers
        .iter()
        .any(|(k, v)| k == "x-request-id" && *v == id));
    gw.stop().await;
}

#[actix_rt::test]
async fn streams_arrive_as_whole_events_ending_in_done() {
    let mock = MockUpstream::start(Behavior {
        chunks: 20,
        chunk_delay: Duration::from_millis(2),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = app(&mock).start().await;
    let mut body = chat("m");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let mut res = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(res.headers().get("x-accel-buffering").unwrap(), "no");
    let bytes = res.body().limit(1 << 20).await.unwrap();
    let data = sse_data(&bytes);
    assert_eq!(
        data.len(),
        22,
        "20 content chunks, a usage chunk, [DONE]: {data:?}"
    );
    assert_eq!(data.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&data[20]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 20);
    assert_eq!(mock.streams_completed(), 1);
    gw.stop().await;
}

#[actix_rt::test]
async fn client_disconnect_mid_stream_closes_the_upstream() {
    let mock = MockUpstream::start(Behavior {
        chunks: 200,
        chunk_delay: Duration::from_millis(20),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = app(&mock).start().await;
    let mut body = chat("m");
    body["stream"] = json!(true);
    let mut res = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .send_json(&body)
        .await
        .unwrap();
    let first = res.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(res);
    let closed = mock
        .wait_for(|m| m.streams_cancelled() == 1, Duration::from_secs(5))
        .await;
    assert!(
        closed,
        "the mock must see its stream dropped once the client went away"
    );
    assert_eq!(mock.streams_completed(), 0);
    // The lease was released.
    gw.wait_target("a", |t| t["in_flight"] == 0).await;
    gw.stop().await;
}

#[actix_rt::test]
async fn backend_that_closes_after_every_stream_costs_no_failed_request() {
    let mock = MockUpstream::start(Behavior {
        close_after_response: true,
        chunks: 3,
        ..Behavior::default()
    })
    .await
    .unwrap();
    // One attempt only: a stale pooled connection must be handled without failover.
    let gw = app(&mock)
        .settings(|s| s.upstream.max_attempts = NonZero::new(1).unwrap())
        .start()
        .await;
    for i in 0..40 {
        let mut body = chat("m");
        body["stream"] = json!(i % 2 == 0);
        let mut res = gw
            .client()
            .post(gw.at("/v1/chat/completions"))
            .send_json(&body)
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "request {i}");
        let bytes = res.body().await.unwrap();
        if i % 2 == 0 {
            assert_eq!(
                sse_data(&bytes).last().map(String::as_str),
                Some("[DONE]"),
                "request {i}"
            );
        }
    }
    assert_eq!(mock.request_count(), 40);
    gw.stop().await;
}

#[actix_rt::test]
async fn upstream_dying_mid_stream_ends_with_an_in_band_error_event() {
    let mock = MockUpstream::start(Behavior {
        chunks: 10,
        drop_after_chunks: Some(3),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = app(&mock).start().await;
    let mut body = chat("m");
    body["stream"] = json!(true);
    let mut res = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let bytes = res.body().limit(1 << 20).await.unwrap();
    let data = sse_data(&bytes);
    assert_eq!(data.len(), 4, "3 chunks then the error: {data:?}");
    for chunk in &data[..3] {
        serde_json::from_str::<Value>(chunk).expect("every relayed event is whole JSON");
    }
    let error: Value = serde_json::from_str(&data[3]).unwrap();
    assert_eq!(error["error"]["code"], "stream_interrupted");
    assert_eq!(error["error"]["type"], "server_error");
    // Only one attempt: the response had begun, so no failover.
    assert_eq!(mock.request_count(), 1);
    let state = gw.wait_target("a", |t| t["failures"] == 1).await;
    assert!(state["last_error"]
        .as_str()
        .unwrap()
        .starts_with("upstream "));
    gw.stop().await;
}

#[actix_rt::test]
async fn usage_chunk_is_relayed_and_non_stream_usage_untouched() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = app(&mock).start().await;
    let (status, _, body) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 200);
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(body["model"], "m");
    gw.stop().await;
}

/// A backend whose body stops short of its Content-Length: the client must see a broken
/// response (the gateway passes the length on, then cuts the connection), never a short
/// body that looks whole.
#[actix_rt::test]
async fn a_body_cut_short_of_its_length_reaches_the_client_as_broken() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = actix_rt::spawn(async move {
        // Every connection (health checks included) gets the same cut answer.
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 64 * 1024];
            let _ = sock.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                        content-length: 100\r\n\r\n{\"id\":\"cut\",";
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.flush().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(sock);
        }
    });
    let gw = TestApp::builder()
        .target(target("a", "m", url))
        .start()
        .await;
    // A raw client: awc, like many clients, takes an early close as the end of the body.
    let addr = gw.at("").trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(addr.trim_end_matches('/'))
        .await
        .unwrap();
    let body = serde_json::to_vec(&chat("m")).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&body).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut got))
        .await
        .expect("the gateway closes the connection")
        .unwrap();
    let text = String::from_utf8_lossy(&got).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-length: 100"), "{head}");
    assert_eq!(
        body, "{\"id\":\"cut\",",
        "what the backend sent, then the close"
    );
    server.abort();
    gw.stop().await;
}
