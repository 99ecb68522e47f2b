//! The worker's cap on upstream connections (`upstream.pool_limit_per_worker`) and the
//! gateway's own file descriptors: a request waiting for a slot is counted and the episode
//! logged once; running out of descriptors is a 503 of the gateway and a metric, never a
//! failure of a healthy target.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::binary::{gateway_bin, spawn_binary};
use crate::common::metrics::{metrics_text, sample};
use crate::common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

#[actix_rt::test]
async fn requests_waiting_for_an_upstream_slot_are_counted_and_logged_once_per_episode() {
    let mock = MockUpstream::start(Behavior {
        chunks: 20,
        chunk_delay: Duration::from_millis(50),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = TestApp::builder()
        .target(target("a", "m", mock.url()))
        .settings(|s| {
            s.server.workers = 1;
            s.upstream.pool_limit_per_worker = 1;
        })
        .start()
        .await;
    // One stream holds the worker's only slot for about a second.
    let mut body = chat("m");
    body["stream"] = json!(true);
    let mut stream = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let _first = stream.next().await.unwrap().unwrap();

    // Three more wait for it.
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let client = gw.client();
            let url = gw.at("/v1/chat/completions");
            actix_rt::spawn(async move {
                let res = client.post(url).send_json(&chat("m")).await.unwrap();
                res.status().as_u16()
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics_text(&gw).await;
        if sample(&text, "gateway_upstream_pool_waiters") == Some(3.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the waiting requests are not counted: {}",
            text.lines()
                .filter(|l| l.contains("pool"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.request_count(), 1, "they wait in the gateway");

    // The stream ends; the slot passes to each waiter in turn.
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
    }
    for w in waiting {
        assert_eq!(w.await.unwrap(), 200);
    }
    let text = metrics_text(&gw).await;
    assert_eq!(sample(&text, "gateway_upstream_pool_waiters"), Some(0.0));
    assert_eq!(
        sample(&text, "gateway_upstream_pool_wait_seconds_count"),
        Some(3.0)
    );
    assert!(sample(&text, "gateway_upstream_pool_wait_seconds_sum").is_some_and(|v| v > 0.0));
    // One episode, one line (not one per waiting request).
    let lines = gw
        .logs()
        .lines()
        .filter(|l| l.contains("upstream connection slots"))
        .count();
    assert_eq!(lines, 1, "{}", gw.logs());
    gw.stop().await;
}

/// One HTTP/1.1 exchange on an open connection (keep-alive): status and body.
fn exchange(conn: &mut TcpStream, method: &str, path: &str, body: &str) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status: u16 = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a sized response");
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    (status, body)
}

#[actix_rt::test]
async fn running_out_of_file_descriptors_is_the_gateways_503_not_the_targets_failure() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_fixtures(dir.path(), &[target("a", "m", mock.url())], &[]);
    // A small descriptor limit the test can fill with idle client connections.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -n 96 && exec \"$0\" serve", gateway_bin()]);
    let gw = spawn_binary(
        cmd,
        dir.path(),
        &[
            // One failure would open the breaker if this were counted against the target.
            ("GATEWAY__BREAKER__FAILURE_THRESHOLD", "1".into()),
            ("GATEWAY__LOGGING__LEVEL", "warning".into()),
        ],
    );
    gw.wait_ready().await;

    let mut conn = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(exchange(&mut conn, "GET", "/health", "").0, 200);
    // The limit and the count are published (read while a descriptor is still free).
    let (_, before) = exchange(&mut conn, "GET", "/metrics", "");
    assert_eq!(sample(&before, "gateway_max_fds"), Some(96.0));
    let open = sample(&before, "gateway_open_fds").expect("gateway_open_fds is exported");
    assert!(open > 3.0 && open < 96.0, "{open}");
    // Fill the gateway's descriptors with idle connections (the rest wait in the backlog).
    let idle: Vec<TcpStream> = (0..150)
        .map(|_| TcpStream::connect(("127.0.0.1", gw.port)).unwrap())
        .collect();
    actix_rt::time::sleep(Duration::from_millis(500)).await;

    let chat = chat("m").to_string();
    for _ in 0..3 {
        let (status, body) = exchange(&mut conn, "POST", "/v1/chat/completions", &chat);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status, 503, "{body}");
        assert_eq!(v["error"]["code"], "gateway_overloaded", "{body}");
        assert_eq!(v["error"]["type"], "server_error");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("too many open files"),
            "{body}"
        );
    }
    let (_, detail) = exchange(&mut conn, "GET", "/health/detailed", "");
    let detail: Value = serde_json::from_str(&detail).unwrap();
    let a = &detail["targets"][0];
    assert_eq!(a["breaker"], "closed", "{a}");
    assert_eq!(a["failures"], 0, "{a}");
    let (_, metrics) = exchange(&mut conn, "GET", "/metrics", "");
    assert!(
        sample(&metrics, "gateway_fd_exhausted_total{op=\"connect\"}").is_some_and(|v| v >= 3.0),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("fd_"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Descriptors free again: the target serves.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = exchange(&mut conn, "POST", "/v1/chat/completions", &chat);
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never recovered: {status} {body}"
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(mock.request_count() >= 1);
}
