//! Errors the gateway makes itself: a database that cannot answer is a 503 with
//! `Retry-After` on every route that uses it (never a 500 here and a 503 there), and the
//! inside cause is logged once, at the edge, with the request id — never in the body.
use std::time::{Duration, Instant};

use crate::common::*;
use inference_gateway::config::{nz, Millis, Seconds};
use serde_json::Value;

/// Holds SQLite's write lock on `db` from another connection until dropped.
struct Locked(
    Option<std::sync::mpsc::Sender<()>>,
    Option<std::thread::JoinHandle<()>>,
);

impl Locked {
    fn hold(db: std::path::PathBuf) -> Locked {
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            use diesel::connection::SimpleConnection;
            use diesel::Connection;
            let mut c =
                diesel::sqlite::SqliteConnection::establish(&db.display().to_string()).unwrap();
            c.batch_execute("PRAGMA busy_timeout = 10000; BEGIN EXCLUSIVE")
                .unwrap();
            locked_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(Duration::from_secs(60));
            c.batch_execute("COMMIT").unwrap();
        });
        locked_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Locked(Some(release_tx), Some(thread))
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        drop(self.0.take());
        if let Some(t) = self.1.take() {
            t.join().unwrap();
        }
    }
}

async fn admin_call(
    gw: &TestGateway,
    method: &str,
    path: &str,
    body: Option<Value>,
    request_id: &str,
) -> (u16, Option<String>, Value) {
    let client = gw.client();
    let req = match method {
        "PUT" => client.put(gw.at(path)),
        "POST" => client.post(gw.at(path)),
        _ => client.get(gw.at(path)),
    }
    .bearer_auth(ADMIN_KEY)
    .insert_header(("x-request-id", request_id));
    let mut res = match body {
        Some(b) => req.send_json(&b).await.unwrap(),
        None => req.send().await.unwrap(),
    };
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = res.body().await.unwrap();
    (
        res.status().as_u16(),
        retry_after,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

#[actix_rt::test]
async fn a_database_that_cannot_answer_is_503_on_every_admin_write_and_logged_once() {
    let gw = TestApp::builder()
        .admin_key()
        .settings(|s| s.database.timeout_secs = Seconds::new(nz(1)))
        .start()
        .await;
    let db = gw.dir.path().join("data").join("gateway.db");
    assert!(db.exists(), "the default SQLite file is {}", db.display());
    let quota = || Some(serde_json::json!({"tokens_per_day": 7}));
    let key = || Some(serde_json::json!({"user": "ada"}));
    let (status, _, body) =
        admin_call(&gw, "PUT", "/admin/quota/user:ada", quota(), "before").await;
    assert_eq!(status, 200, "{body}");

    // SQLite in WAL mode still serves reads under another writer's lock: writes wait.
    let locked = Locked::hold(db);
    // Before: these were a 500 on the quota and key routes and a 503 on the batch routes.
    let writes = [
        ("PUT", "/admin/quota/user:ada", quota()),
        ("POST", "/admin/keys", key()),
    ];
    for (i, (method, path, body)) in writes.into_iter().enumerate() {
        let request_id = format!("locked-{i}");
        let started = Instant::now();
        let (status, retry_after, body) = admin_call(&gw, method, path, body, &request_id).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(body["error"]["code"], "database_unavailable", "{path}");
        assert_eq!(retry_after.as_deref(), Some("5"), "{path}");
        assert!(
            !body.to_string().contains("locked") && !body.to_string().contains("gateway.db"),
            "{path}: no cause in the body: {body}"
        );
        assert!(started.elapsed() < Duration::from_secs(30), "{path}");
        // Logged once, with its cause and request id (a handler that also logged would
        // make it two).
        let lines: Vec<String> = gw
            .logs()
            .lines()
            .filter(|l| l.contains(&format!("\"request_id\":\"{request_id}\"")))
            .filter(|l| l.contains("\"cause\""))
            .map(str::to_string)
            .collect();
        assert_eq!(lines.len(), 1, "{path}: {lines:?}");
        let line: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(line["msg"], "unavailable", "{line}");
        assert_eq!(line["path"], *path, "{line}");
        assert!(
            line["cause"]
                .as_str()
                .is_some_and(|c| c.contains("database")),
            "{line}"
        );
    }
    drop(locked);
    let (status, _, body) = admin_call(&gw, "PUT", "/admin/quota/user:ada", quota(), "after").await;
    assert_eq!(status, 200, "{body}");
    gw.stop().await;
}

#[actix_rt::test]
async fn an_error_a_handler_returns_carries_the_request_id() {
    let gw = TestApp::builder().start().await;
    // The batch handlers return their errors; the edge names the request.
    let res = gw
        .client()
        .get(gw.at("/v1/batches/batch_nope"))
        .insert_header(("x-request-id", "mine-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers().get("x-request-id").unwrap(), "mine-1");
    let res = gw
        .client()
        .get(gw.at("/v1/files/file_nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let id = res.headers().get("x-request-id").unwrap().to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    gw.stop().await;
}

/// Every answer names its request, whatever produced it: a handler's success, the
/// router's 404 and 405, the edge's own refusals (a NUL in the path, a body that stops
/// arriving), a public page. The client's id is echoed when it gives one.
#[actix_rt::test]
async fn every_answer_carries_a_request_id() {
    let gw = TestApp::builder()
        .settings(|s| s.server.body_read_timeout_ms = Millis::new(nz(300)))
        .start()
        .await;
    for (method, path, want) in [
        ("GET", "/v1/models", 200),
        ("GET", "/health", 200),
        ("GET", "/metrics", 200),
        ("GET", "/admin/ui", 200),
        ("GET", "/no/such/route", 404),
        ("DELETE", "/v1/models", 405),
        ("GET", "/v1/models%00", 400),
    ] {
        for given in [Some("client-id-7"), None] {
            let mut req = gw.client().request(method.parse().unwrap(), gw.at(path));
            if let Some(id) = given {
                req = req.insert_header(("x-request-id", id));
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status().as_u16(), want, "{method} {path}");
            let id = res
                .headers()
                .get("x-request-id")
                .unwrap_or_else(|| panic!("{method} {path}: no x-request-id"))
                .to_str()
                .unwrap();
            match given {
                Some(g) => assert_eq!(id, g, "{method} {path}"),
                None => assert!(uuid::Uuid::parse_str(id).is_ok(), "{method} {path}: {id}"),
            }
        }
    }
    // A body that stops arriving: the edge answers 408 itself.
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\nx-request-id: slow-1\r\n\r\n{\"model\"",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = actix_rt::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 408"), "{answer}");
    assert!(answer.contains("x-request-id: slow-1"), "{answer}");
    gw.stop().await;
}

/// A line logged about a request names the id its answer carries, also when the client
/// sent none (the id is chosen once, at the edge).
#[actix_rt::test]
async fn a_logged_request_names_the_id_its_answer_carries() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .target(target("a", "llama", mock.url()))
        .admin_key()
        .start()
        .await;
    // A served request and a refused one: their request log rows.
    let mut answered = Vec::new();
    for body in [chat("llama"), serde_json::json!({"messages": []})] {
        let res = gw
            .client()
            .post(gw.at("/v1/chat/completions"))
            .send_json(&body)
            .await
            .unwrap();
        let id = res.headers().get("x-request-id").unwrap().to_str().unwrap();
        answered.push((res.status().as_u16(), id.to_string()));
    }
    gw.flush_log().await;
    let rows = gw
        .store
        .list_log(inference_gateway::store::UsageFilter::default(), 10)
        .await
        .unwrap();
    let mut logged: Vec<(u16, String)> = rows
        .iter()
        .map(|r| (r.status as u16, r.request_id.clone()))
        .collect();
    logged.sort();
    answered.sort();
    assert_eq!(answered[0].0, 200);
    assert_eq!(answered[1].0, 400);
    assert_eq!(logged, answered);
    let res = gw
        .client()
        .put(gw.at("/admin/clusters/local/maintenance"))
        .bearer_auth(ADMIN_KEY)
        .send_json(&serde_json::json!({"enabled": true, "notice": "disk swap"}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let answered = res
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    // A line an admin handler logs.
    let logs = gw.logs();
    let line: Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["msg"] == "cluster maintenance changed")
        .unwrap_or_else(|| panic!("no maintenance line in {logs}"));
    assert_eq!(line["request_id"], answered.as_str(), "{line}");
    gw.stop().await;
}
