//! The real binary as systemd runs it: graceful shutdown on SIGTERM (a stream begun
//! before it completes, new connections are refused, exit 0 within the grace, the log is
//! flushed), the notify protocol (READY, WATCHDOG, RELOADING, STOPPING) and SIGHUP reload.
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::binary::{gateway_bin, spawn_binary, Binary};
use crate::common::*;
use futures_util::StreamExt;
use serde_json::json;

/// The binary with its own fixtures directory (dropped after the process).
struct Gateway {
    proc: Binary,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for Gateway {
    type Target = Binary;
    fn deref(&self) -> &Binary {
        &self.proc
    }
}

impl std::ops::DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut Binary {
        &mut self.proc
    }
}

fn spawn(targets: &[T<'_>], env: &[(&str, String)]) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    write_fixtures(dir.path(), targets, &[]);
    let bin = gateway_bin();
    let cmd = if env.iter().any(|(k, _)| *k == "WATCHDOG_USEC") {
        // systemd sets WATCHDOG_PID to the service's pid: exec keeps the shell's.
        let mut c = Command::new("sh");
        c.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" serve", bin]);
        c
    } else {
        let mut c = Command::new(bin);
        c.arg("serve");
        c
    };
    let mut all = vec![("GATEWAY__SERVER__SHUTDOWN_GRACE_SECS", "10".to_string())];
    all.extend(env.iter().cloned());
    Gateway {
        proc: spawn_binary(cmd, dir.path(), &all),
        dir,
    }
}

#[actix_rt::test]
async fn sigterm_lets_a_running_stream_finish_and_refuses_new_connections() {
    let mock = MockUpstream::start(Behavior {
        chunks: 30,
        chunk_delay: Duration::from_millis(50),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let mut gw = spawn(&[target("a", "m", mock.url())], &[]);
    gw.wait_ready().await;

    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut stream = chat("m");
    stream["stream"] = json!(true);
    let mut res = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .insert_header(("x-request-id", "before-sigterm"))
        .insert_header(("authorization", "Bearer sk-client-secret-0123456789"))
        .send_json(&stream)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.next().await.unwrap().unwrap().to_vec();

    let signalled = Instant::now();
    gw.signal("TERM");
    // New connections are refused while the stream still runs.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", gw.port)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "still accepting connections after SIGTERM"
                );
                actix_rt::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert_eq!(
        mock.streams_completed(),
        0,
        "the listener closed before the stream ended"
    );
    while let Some(chunk) = res.next().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(sse_data(&body).last().unwrap(), "[DONE]");
    assert_eq!(mock.streams_completed(), 1);

    let code = gw.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(10));

    // The log writer was flushed: the stream's record and the final line are there, and
    // the client's key is nowhere.
    let lines = gw.log_lines();
    let record = lines
        .iter()
        .find(|l| l["msg"] == "request" && l["request_id"] == "before-sigterm")
        .expect("the stream's request record was written");
    assert_eq!(record["status"], 200);
    assert_eq!(record["ending"], "complete");
    assert_eq!(record["user"], "anonymous");
    assert_eq!(record["model"], "m");
    assert_eq!(record["target"], "a");
    assert!(record["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(record.get("tokens.completion").is_some());
    assert!(lines.iter().any(|l| l["msg"] == "stopped"));
    assert!(!gw.stdout_text().contains("sk-client-secret"));
}

#[actix_rt::test]
async fn streams_still_open_when_the_grace_ends_get_a_final_error_event() {
    // One stream keeps sending (an event every 200 ms), one has gone quiet (its next event
    // is 60 s away): both outlive a 1 s grace.
    let busy = MockUpstream::start(Behavior {
        chunks: 100,
        chunk_delay: Duration::from_millis(200),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let quiet = MockUpstream::start(Behavior {
        chunks: 3,
        chunk_delay: Duration::from_secs(60),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let mut gw = spawn(
        &[
            target("busy", "busy", busy.url()),
            target("quiet", "quiet", quiet.url()),
        ],
        &[("GATEWAY__SERVER__SHUTDOWN_GRACE_SECS", "1".to_string())],
    );
    gw.wait_ready().await;
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut responses = Vec::new();
    for model in ["busy", "quiet"] {
        let mut body = chat(model);
        body["stream"] = json!(true);
        let mut res = client
            .post(format!("{}/v1/chat/completions", gw.url))
            .insert_header(("x-request-id", format!("cut-{model}")))
            .send_json(&body)
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let first = res.next().await.unwrap().unwrap().to_vec();
        responses.push((model, res, first));
    }

    let signalled = Instant::now();
    gw.signal("TERM");
    for (model, mut res, mut body) in responses {
        while let Some(chunk) = res.next().await {
            body.extend_from_slice(&chunk.expect("the stream ends cleanly, not reset"));
        }
        let events = sse_data(&body);
        let last: serde_json::Value = serde_json::from_str(events.last().unwrap())
            .unwrap_or_else(|_| panic!("{model}: last event is not the error: {events:?}"));
        assert_eq!(last["error"]["code"], "gateway_shutdown", "{model}: {last}");
        assert!(!events.contains(&"[DONE]".to_string()));
    }
    let code = gw.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(5));

    let lines = gw.log_lines();
    for model in ["busy", "quiet"] {
        let record = lines
            .iter()
            .find(|l| l["msg"] == "request" && l["request_id"] == format!("cut-{model}"))
            .unwrap_or_else(|| panic!("no record for the {model} stream"));
        assert_eq!(record["ending"], "shutdown", "{record}");
        assert_eq!(record["error_code"], "gateway_shutdown", "{record}");
    }
}

fn recv(sock: &UnixDatagram, want: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let found = msg.lines().any(|l| l == want);
            seen.push(msg);
            if found {
                return seen;
            }
        }
    }
    panic!("no {want} within {within:?}; got {seen:?}");
}

#[actix_rt::test]
async fn systemd_notify_ready_watchdog_reload_and_stopping() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let sock_dir = tempfile::tempdir().unwrap();
    let sock_path = sock_dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut gw = spawn(
        &[target("a", "m", mock.url())],
        &[
            ("NOTIFY_SOCKET", sock_path.display().to_string()),
            ("WATCHDOG_USEC", "200000".to_string()),
        ],
    );
    recv(&sock, "READY=1", Duration::from_secs(20));
    // READY=1 comes after the listener is bound.
    let res = awc::Client::default()
        .get(format!("{}/health", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    recv(&sock, "WATCHDOG=1", Duration::from_secs(2));

    // SIGHUP: a target added to the fixtures is served after RELOADING=1 ... READY=1.
    write_fixtures(
        gw.dir.path(),
        &[target("a", "m", mock.url()), target("b", "m2", mock.url())],
        &[],
    );
    gw.signal("HUP");
    recv(&sock, "RELOADING=1", Duration::from_secs(5));
    recv(&sock, "READY=1", Duration::from_secs(5));
    let mut res = awc::Client::default()
        .post(format!("{}/v1/chat/completions", gw.url))
        .send_json(&chat("m2"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.body().await);

    gw.signal("TERM");
    recv(&sock, "STOPPING=1", Duration::from_secs(5));
    assert_eq!(gw.wait_exit(Duration::from_secs(10)).await, Some(0));
    assert!(gw.log_lines().iter().any(|l| l["msg"] == "reloaded"));
}

#[actix_rt::test]
async fn sighup_with_broken_fixtures_keeps_serving_and_logs_the_file() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let mut gw = spawn(&[target("a", "m", mock.url())], &[]);
    gw.wait_ready().await;
    std::fs::write(gw.dir.path().join("endpoints.json"), "{broken").unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.log_lines().iter().any(|l| {
        l["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("reload refused"))
    }) {
        assert!(Instant::now() < deadline, "no reload error logged");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let line = gw
        .log_lines()
        .into_iter()
        .find(|l| {
            l["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("reload refused"))
        })
        .unwrap();
    assert!(
        line["error"].as_str().unwrap().contains("endpoints.json"),
        "{line}"
    );
    let res = awc::Client::default()
        .post(format!("{}/v1/chat/completions", gw.url))
        .send_json(&chat("m"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(10)).await, Some(0));
}
