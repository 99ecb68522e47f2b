//! The mock, driven by a raw HTTP/1.1 client over loopback TCP, so what is asserted is what
//! is on the wire (chunked framing, `Connection: close`, EOF).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use mock_upstream::{Behavior, MockOptions, MockUpstream};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(5);

struct Conn {
    io: BufReader<TcpStream>,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body ended as framed (content-length reached or the last chunk seen).
    complete: bool,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
    /// The `data:` payloads of an SSE body.
    fn events(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap().to_owned())
            .collect()
    }
}

impl Conn {
    async fn open(mock: &MockUpstream) -> Conn {
        let tcp = timeout(T, TcpStream::connect(mock.addr()))
            .await
            .unwrap()
            .unwrap();
        Conn {
            io: BufReader::new(tcp),
        }
    }

    async fn send(&mut self, method: &str, path: &str, body: &str) {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: mock\r\nx-test: yes\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.io.get_mut().write_all(req.as_bytes()).await.unwrap();
    }

    async fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let mut line = String::new();
        timeout(T, self.io.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            timeout(T, self.io.read_line(&mut line))
                .await
                .unwrap()
                .unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.to_ascii_lowercase(), v.trim().to_owned()));
        }
        (status, headers)
    }

    /// Reads one chunk of a chunked body: `Some(bytes)`, `Some(empty)` for the last chunk,
    /// `None` when the connection ends first.
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        let mut line = String::new();
        let n = timeout(T, self.io.read_line(&mut line))
            .await
            .unwrap()
            .ok()?;
        if n == 0 {
            return None;
        }
        let size = usize::from_str_radix(line.trim_end(), 16).ok()?;
        let mut data = vec![0; size + 2];
        timeout(T, self.io.read_exact(&mut data))
            .await
            .unwrap()
            .ok()?;
        data.truncate(size);
        Some(data)
    }

    async fn response(&mut self) -> Resp {
        let (status, headers) = self.head().await;
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
            complete: false,
        };
        if let Some(len) = resp.header("content-length") {
            let mut body = vec![0; len.parse().unwrap()];
            timeout(T, self.io.read_exact(&mut body))
                .await
                .unwrap()
                .unwrap();
            resp.body = body;
            resp.complete = true;
        } else {
            assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
            for _ in 0..10_000 {
                match self.chunk().await {
                    Some(c) if c.is_empty() => {
                        resp.complete = true;
                        break;
                    }
                    Some(c) => resp.body.extend_from_slice(&c),
                    None => break,
                }
            }
        }
        resp
    }

    async fn request(&mut self, method: &str, path: &str, body: &str) -> Resp {
        self.send(method, path, body).await;
        self.response().await
    }

    /// True when the server closed the connection (EOF) within `T`.
    async fn closed_by_server(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            timeout(T, self.io.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

const CHAT: &str = r#"{"model":"m1","messages":[{"role":"user","content":"hi"}]}"#;
const CHAT_STREAM: &str = r#"{"model":"m1","messages":[],"stream":true}"#;
const CHAT_STREAM_USAGE: &str =
    r#"{"model":"m1","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#;

#[actix_web::test]
async fn non_stream_routes_echo_the_model_and_are_recorded() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let mut c = Conn::open(&mock).await;

    let r = c.request("POST", "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "m1");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "tok0 tok1 tok2 tok3 tok4 "
    );
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(
        v["usage"]["total_tokens"],
        v["usage"]["prompt_tokens"].as_u64().unwrap() + 5
    );

    let r = c
        .request("POST", "/v1/completions", r#"{"model":"m2","prompt":"x"}"#)
        .await;
    assert_eq!(r.json()["object"], "text_completion");
    assert_eq!(r.json()["choices"][0]["text"], "tok0 tok1 tok2 tok3 tok4 ");
    let r = c
        .request(
            "POST",
            "/v1/embeddings",
            r#"{"model":"e","input":["a","b"]}"#,
        )
        .await;
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);
    let r = c
        .request(
            "POST",
            "/v1/rerank",
            r#"{"model":"r","query":"q","documents":["a","b","c"]}"#,
        )
        .await;
    assert_eq!(r.json()["results"].as_array().unwrap().len(), 3);
    let r = c
        .request("POST", "/v1/responses", r#"{"model":"m","input":"hi"}"#)
        .await;
    assert_eq!(r.json()["object"], "response");
    let r = c
        .request("POST", "/v1/messages", r#"{"model":"m","messages":[]}"#)
        .await;
    assert_eq!(r.json()["type"], "message");

    mock.set_behavior(Behavior {
        usage: false,
        ..Behavior::default()
    });
    let r = c.request("POST", "/v1/chat/completions", CHAT).await;
    assert!(r.json().get("usage").is_none());

    let r = c.request("GET", "/v1/models", "").await;
    assert_eq!(r.json()["data"][0]["id"], "mock-model");
    let r = c.request("GET", "/nope", "").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], 404);

    assert_eq!(mock.request_count(), 7);
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 7);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(&reqs[0].body[..], CHAT.as_bytes());
    assert!(reqs[0]
        .headers
        .iter()
        .any(|(k, v)| k == "x-test" && v == "yes"));
    assert_eq!(reqs[1].path, "/v1/completions");
    // One keep-alive connection for everything.
    assert_eq!(mock.connections_opened(), 1);
    mock.stop().await;
}

#[actix_rt::test]
async fn stream_with_and_without_usage() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let mut c = Conn::open(&mock).await;

    let r = c
        .request("POST", "/v1/chat/completions", CHAT_STREAM_USAGE)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!(r.complete);
    let events = r.events();
    assert_eq!(events.len(), 5 + 1 + 1, "{events:?}");
    for (i, e) in events[..5].iter().enumerate() {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["model"], "m1");
        assert_eq!(v["choices"][0]["delta"]["content"], format!("tok{i} "));
        let finish = if i == 4 {
            Value::from("stop")
        } else {
            Value::Null
        };
        assert_eq!(v["choices"][0]["finish_reason"], finish);
    }
    let usage: Value = serde_json::from_str(&events[5]).unwrap();
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert_eq!(events[6], "[DONE]");

    // No usage chunk unless asked for, nor when usage is off.
    let r = c.request("POST", "/v1/chat/completions", CHAT_STREAM).await;
    assert_eq!(r.events().len(), 6);
    mock.set_behavior(Behavior {
        usage: false,
        chunks: 2,
        ..Behavior::default()
    });
    let r = c
        .request("POST", "/v1/chat/completions", CHAT_STREAM_USAGE)
        .await;
    assert_eq!(r.events().len(), 3);

    assert!(mock.wait_for(|m| m.streams_completed() == 3, T).await);
    assert_eq!(mock.streams_cancelled(), 0);
    mock.stop().await;
}

#[actix_rt::test]
async fn drop_after_chunks_aborts_the_connection_without_done() {
    let mock = MockUpstream::start(Behavior {
        drop_after_chunks: Some(2),
        chunk_delay: Duration::from_millis(5),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let mut c = Conn::open(&mock).await;
    let r = c.request("POST", "/v1/chat/completions", CHAT_STREAM).await;
    assert_eq!(r.status, 200);
    assert!(!r.complete, "the chunked body must not end cleanly");
    let events = r.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(!r.text().contains("[DONE]"));
    assert!(c.closed_by_server().await);

    // Dropping after more events than there are still withholds [DONE].
    mock.set_behavior(Behavior {
        drop_after_chunks: Some(100),
        ..Behavior::default()
    });
    let mut c = Conn::open(&mock).await;
    let r = c.request("POST", "/v1/chat/completions", CHAT_STREAM).await;
    assert!(!r.complete);
    assert_eq!(r.events().len(), 5);
    assert_eq!(mock.streams_completed(), 0);
    assert_eq!(mock.streams_cancelled(), 0);
    mock.stop().await;
}

#[actix_rt::test]
async fn fail_next_then_back_to_the_behavior() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let mut c = Conn::open(&mock).await;
    mock.fail_next(2, 503);
    for _ in 0..2 {
        let r = c.request("POST", "/v1/chat/completions", CHAT_STREAM).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["error"]["type"], "unavailable_error");
        assert_eq!(r.json()["error"]["code"], 503);
    }
    let r = c.request("POST", "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status, 200);

    mock.set_behavior(Behavior {
        status: 429,
        error_body: Some(r#"{"error":{"message":"slow down"}}"#.to_owned()),
        ..Behavior::default()
    });
    let r = c
        .request("POST", "/v1/embeddings", r#"{"input":"x"}"#)
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["message"], "slow down");
    assert_eq!(mock.request_count(), 4);
    mock.stop().await;
}

#[actix_rt::test]
async fn close_after_response_closes_every_connection() {
    let mock = MockUpstream::start(Behavior {
        close_after_response: true,
        ..Behavior::default()
    })
    .await
    .unwrap();
    for body in [CHAT, CHAT_STREAM] {
        let mut c = Conn::open(&mock).await;
        let r = c.request("POST", "/v1/chat/completions", body).await;
        assert_eq!(r.status, 200);
        assert!(r.complete);
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.closed_by_server().await, "connection left open");
    }
    assert_eq!(mock.connections_opened(), 2);
    assert!(mock.wait_for(|m| m.streams_completed() == 1, T).await);
    mock.stop().await;
}

#[tokio::test]
async fn client_disconnect_mid_stream_counts_as_cancelled() {
    let mock = MockUpstream::start(Behavior {
        chunks: 1000,
        chunk_delay: Duration::from_millis(20),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let mut c = Conn::open(&mock).await;
    c.send("POST", "/v1/chat/completions", CHAT_STREAM).await;
    let (status, _) = c.head().await;
    assert_eq!(status, 200);
    assert!(!c.chunk().await.unwrap().is_empty());
    assert!(!c.chunk().await.unwrap().is_empty());
    drop(c);
    assert!(mock.wait_for(|m| m.streams_cancelled() == 1, T).await);
    assert_eq!(mock.streams_completed(), 0);
    mock.stop().await;
}

#[actix_rt::test]
async fn health_latency_and_bounded_record() {
    let mock = MockUpstream::start_with_options(
        Behavior {
            latency: Duration::from_millis(100),
            ..Behavior::default()
        },
        MockOptions {
            record_limit: 3,
            workers: 2,
            ..MockOptions::default()
        },
    )
    .await
    .unwrap();
    let mut c = Conn::open(&mock).await;
    let r = c.request("GET", "/health", "").await;
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));

    let started = Instant::now();
    let r = c.request("POST", "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(100));

    mock.set_behavior(Behavior {
        health_status: 503,
        ..mock.behavior()
    });
    assert_eq!(c.request("GET", "/health", "").await.status, 503);
    assert_eq!(mock.health_checks(), 2);

    mock.set_behavior(Behavior::default());
    for i in 0..4 {
        let body = format!(r#"{{"model":"m{i}"}}"#);
        c.request("POST", "/v1/completions", &body).await;
    }
    assert_eq!(mock.request_count(), 5);
    let kept: Vec<_> = mock.requests().into_iter().map(|r| r.body).collect();
    assert_eq!(kept.len(), 3);
    assert_eq!(&kept[2][..], br#"{"model":"m3"}"#);
    mock.clear_requests();
    assert!(mock.requests().is_empty());
    mock.stop().await;
}
