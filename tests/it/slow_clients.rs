//! Issue 19 item 4, against the real binary with raw TCP sockets: a client that sends
//! headers and half a body gets 408 and a closed connection after
//! `server.body_read_timeout_ms`, and `server.max_connections` bounds what one worker
//! holds while `/health` and normal requests keep being served.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::binary::spawn_gateway;
use crate::common::*;

const BODY_TIMEOUT_MS: u64 = 1500;
const MAX_CONNECTIONS: usize = 16;

/// Headers declaring a 100-byte body, then 40 bytes of it, and nothing more.
fn half_sent(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{}",
        "{\"model\": \"m\", \"messages\": [{\"role\":"
    );
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// Sends a GET on a fresh connection; returns the whole answer (the server closes).
fn get(port: u16, path: &str, wait: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(wait))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Reads until the server closes (bounded by `wait`).
fn answer(mut s: TcpStream, wait: Duration) -> String {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => String::from_utf8_lossy(&out).into_owned(),
        Err(e) => panic!(
            "no answer and no close within {wait:?} ({e}); got: {}",
            String::from_utf8_lossy(&out)
        ),
    }
}

#[actix_rt::test]
async fn half_sent_bodies_get_408_and_the_gateway_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    write_fixtures(dir.path(), &[target("a", "m", dead_url())], &[]);
    let gw = spawn_gateway(
        dir.path(),
        &[
            (
                "GATEWAY__SERVER__BODY_READ_TIMEOUT_MS",
                BODY_TIMEOUT_MS.to_string(),
            ),
            (
                "GATEWAY__SERVER__MAX_CONNECTIONS",
                MAX_CONNECTIONS.to_string(),
            ),
        ],
    );
    gw.wait_ready().await;
    let port = gw.port;

    // Fewer stalled clients than the cap: others are served at once meanwhile.
    let stalled: Vec<TcpStream> = (0..MAX_CONNECTIONS - 4).map(|_| half_sent(port)).collect();
    let health = get(port, "/health", Duration::from_secs(5)).unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let models = get(port, "/v1/models", Duration::from_secs(5)).unwrap();
    assert!(models.starts_with("HTTP/1.1 200"), "{models}");
    // Each stalled client gets 408 in the OpenAI envelope, then its connection closes.
    let wait = Duration::from_millis(BODY_TIMEOUT_MS * 4);
    for s in stalled {
        let text = answer(s, wait);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
    }

    // The cap: with every slot held, a new client waits in the backlog (not refused),
    // and is served once the stalled ones are timed out.
    let stalled: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| half_sent(port)).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut waiting = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        waiting,
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    let early = waiting.read(&mut buf);
    assert!(
        early.is_err(),
        "answered past max_connections: {:?}",
        early.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    );
    let text = answer(waiting, wait);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for s in stalled {
        assert!(answer(s, wait).starts_with("HTTP/1.1 408"));
    }
    // And the gateway is as it was.
    let health = get(port, "/health", Duration::from_secs(5)).unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
}
