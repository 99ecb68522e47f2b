//! Batches end to end: the Files API (CRUD, ownership, size limit), the Batch API (a full
//! run with every line in the output exactly once, validation errors with their error
//! file, cancel, paging, MAX_BATCHES_PER_USER), FIRST's path form (confined paths:
//! `..` and symlink escapes are 400), a BatchActor crash, a `kill -9` of the real binary
//! mid-batch and its resume, and (PostgreSQL) two gateways sharing one database's work.
use std::collections::HashSet;
use std::num::NonZero;
use std::time::{Duration, Instant};

use crate::common::binary::{spawn_gateway, Binary};
use crate::common::db::TestDb;
use crate::common::*;
use futures_util::StreamExt;
use inference_gateway::batch::actor::{ActorAddr, Crash, Restarts};
use inference_gateway::config::{nz, Millis, Seconds};
use inference_gateway::quota::{Kind, Subject};
use inference_gateway::store::now_ms;
use serde_json::{json, Value};

const EP: &str = "/v1/chat/completions";

/// A gateway over one target, `a`, serving model `m` at `mock`.
fn app(mock: &MockUpstream) -> TestApp {
    TestApp::builder().target(target("a", "m", mock.url()))
}

fn line(id: &str, model: &str) -> String {
    json!({"custom_id": id, "method": "POST", "url": EP,
           "body": {"model": model, "messages": [{"role": "user", "content": id}], "max_tokens": 4}})
    .to_string()
}

fn input(n: usize, model: &str) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&line(&format!("req-{i}"), model));
        s.push('\n');
    }
    s.into_bytes()
}

/// A request with an optional bearer key; status and body bytes.
async fn call(
    url: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Vec<u8>) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut req = match method {
        "GET" => client.get(format!("{url}{path}")),
        "POST" => client.post(format!("{url}{path}")),
        "DELETE" => client.delete(format!("{url}{path}")),
        _ => unreachable!(),
    };
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let mut res = match body {
        Some(b) => req.send_json(&b).await.unwrap(),
        None => req.send().await.unwrap(),
    };
    let bytes = res.body().limit(64 << 20).await.unwrap();
    (res.status().as_u16(), bytes.to_vec())
}

async fn json_call(
    url: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let (s, b) = call(url, method, path, key, body).await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

/// `POST /v1/files` as multipart.
async fn upload(url: &str, key: Option<&str>, purpose: &str, bytes: &[u8]) -> (u16, Value) {
    let boundary = "igw-test-boundary-7d1f";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
             Content-Type: application/jsonl\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut req = client.post(format!("{url}/v1/files")).insert_header((
        "content-type",
        format!("multipart/form-data; boundary={boundary}"),
    ));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let mut res = req.send_body(body).await.unwrap();
    let bytes = res.body().limit(1 << 20).await.unwrap();
    (
        res.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn create_batch(url: &str, key: Option<&str>, file_id: &str) -> (u16, Value) {
    json_call(
        url,
        "POST",
        "/v1/batches",
        key,
        Some(
            json!({"input_file_id": file_id, "endpoint": EP, "completion_window": "24h",
                    "metadata": {"purpose": "test"}}),
        ),
    )
    .await
}

/// Uploads `bytes` as a batch input file and creates a batch of it (no key); returns
/// the batch.
async fn submit(url: &str, bytes: &[u8]) -> Value {
    submit_as(url, None, bytes).await
}

/// [`submit`] as the holder of `key`.
async fn submit_as(url: &str, key: Option<&str>, bytes: &[u8]) -> Value {
    let (status, f) = upload(url, key, "batch", bytes).await;
    assert_eq!(status, 200, "{f}");
    let (status, b) = create_batch(url, key, f["id"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{b}");
    b
}

/// Polls a batch (bounded) until `done` holds.
async fn wait_batch(
    url: &str,
    key: Option<&str>,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, b) = json_call(url, "GET", &format!("/v1/batches/{id}"), key, None).await;
        assert_eq!(status, 200, "{b}");
        if done(&b) {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "batch never reached the expected state: {b}"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

fn terminal(b: &Value) -> bool {
    matches!(
        b["status"].as_str(),
        Some("completed" | "failed" | "cancelled" | "expired")
    )
}

async fn content_lines(url: &str, key: Option<&str>, file_id: &str) -> Vec<Value> {
    let (status, bytes) = call(
        url,
        "GET",
        &format!("/v1/files/{file_id}/content"),
        key,
        None,
    )
    .await;
    assert_eq!(status, 200);
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every custom id `req-0..n` appears exactly once across `lines`.
fn exactly_once(lines: &[Value], n: usize) {
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "a custom_id appears twice");
    let expected: HashSet<String> = (0..n).map(|i| format!("req-{i}")).collect();
    let got: HashSet<String> = unique.iter().map(|s| s.to_string()).collect();
    assert_eq!(got, expected);
}

async fn user_key(url: &str, bootstrap: &str, user: &str) -> String {
    let (status, v) = json_call(
        url,
        "POST",
        "/admin/keys",
        Some(bootstrap),
        Some(json!({"user": user})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    v["key"].as_str().unwrap().to_string()
}

#[actix_rt::test]
async fn files_crud_ownership_and_size_limit() {
    std::env::set_var("IGW_TEST_BATCH_ADMIN", "batch-bootstrap-admin-key-0123");
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = app(&mock)
        .env(&[("GATEWAY__AUTH__MODE", "required")])
        .settings(|s| {
            s.auth.admin_key_env = "IGW_TEST_BATCH_ADMIN".into();
            s.batches.max_file_bytes = NonZero::new(2000).unwrap();
        })
        .start()
        .await;
    let alice = user_key(&gw.url, "batch-bootstrap-admin-key-0123", "alice").await;
    let bob = user_key(&gw.url, "batch-bootstrap-admin-key-0123", "bob").await;
    let bytes = input(3, "m");

    let (status, f) = upload(&gw.url, Some(&alice), "batch", &bytes).await;
    assert_eq!(status, 200, "{f}");
    let id = f["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("file-"));
    assert_eq!(f["object"], "file");
    assert_eq!(f["bytes"], bytes.len());
    assert_eq!(f["filename"], "in.jsonl");
    assert_eq!(f["purpose"], "batch");
    assert_eq!(f["status"], "processed");
    assert!(f["created_at"].as_i64().unwrap() > 1_700_000_000);

    let (_, list) = json_call(&gw.url, "GET", "/v1/files", Some(&alice), None).await;
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["id"], id.as_str());
    assert_eq!(list["has_more"], false);
    let (status, got) = json_call(
        &gw.url,
        "GET",
        &format!("/v1/files/{id}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!((status, got["id"].as_str()), (200, Some(id.as_str())));
    let (status, content) = call(
        &gw.url,
        "GET",
        &format!("/v1/files/{id}/content"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(content, bytes);

    // Another user sees nothing of it.
    let (_, list) = json_call(&gw.url, "GET", "/v1/files", Some(&bob), None).await;
    assert!(list["data"].as_array().unwrap().is_empty());
    for (method, path) in [
        ("GET", format!("/v1/files/{id}")),
        ("GET", format!("/v1/files/{id}/content")),
        ("DELETE", format!("/v1/files/{id}")),
    ] {
        let (status, err) = json_call(&gw.url, method, &path, Some(&bob), None).await;
        assert_eq!(status, 404, "{method} {path}");
        assert_eq!(err["error"]["code"], "not_found");
        assert_eq!(err["error"]["type"], "not_found_error");
    }
    let (status, err) = create_batch(&gw.url, Some(&bob), &id).await;
    assert_eq!(status, 400, "bob may not batch alice's file: {err}");
    assert_eq!(err["error"]["param"], "input_file_id");

    // Limits and checks.
    let (status, err) = upload(&gw.url, Some(&alice), "batch", &[b'x'; 2001]).await;
    assert_eq!(status, 413, "{err}");
    assert_eq!(err["error"]["code"], "payload_too_large");
    let (status, err) = upload(&gw.url, Some(&alice), "fine-tune", &bytes).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "purpose");
    let (status, _) = upload(&gw.url, None, "batch", &bytes).await;
    assert_eq!(status, 401);

    let (status, del) = json_call(
        &gw.url,
        "DELETE",
        &format!("/v1/files/{id}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(del, json!({"id": id, "object": "file", "deleted": true}));
    let (status, _) = json_call(
        &gw.url,
        "GET",
        &format!("/v1/files/{id}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert!(!gw.dir.path().join("data/files").join(&id).exists());
    gw.stop().await;
}

#[actix_rt::test]
async fn a_batch_runs_every_line_once_and_reports_failures() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = app(&mock)
        .settings(|s| s.batches.poll_interval_ms = Millis::new(nz(50)))
        .start()
        .await;
    // Two lines get a 400 from the model: they go to the error file.
    mock.fail_next(2, 400);
    let n = 60;
    let b = submit(&gw.url, &input(n, "m")).await;
    assert_eq!(b["object"], "batch");
    assert_eq!(b["status"], "validating");
    assert_eq!(b["endpoint"], EP);
    assert_eq!(b["completion_window"], "24h");
    assert_eq!(b["metadata"], json!({"purpose": "test"}));
    assert_eq!(
        b["expires_at"].as_i64().unwrap() - b["created_at"].as_i64().unwrap(),
        86400
    );
    let id = b["id"].as_str().unwrap().to_string();
    let b = wait_batch(&gw.url, None, &id, Duration::from_secs(30), terminal).await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(
        b["request_counts"],
        json!({"total": n, "completed": n - 2, "failed": 2})
    );
    for at in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(b[at].is_i64(), "{at}: {b}");
    }
    let out = content_lines(&gw.url, None, b["output_file_id"].as_str().unwrap()).await;
    let err = content_lines(&gw.url, None, b["error_file_id"].as_str().unwrap()).await;
    assert_eq!((out.len(), err.len()), (n - 2, 2));
    let mut all = out.clone();
    all.extend(err.iter().cloned());
    exactly_once(&all, n);
    for l in &out {
        assert!(l["id"].as_str().unwrap().starts_with("batch_req_"));
        assert_eq!(l["response"]["status_code"], 200);
        assert_eq!(l["response"]["body"]["object"], "chat.completion");
        assert!(l["error"].is_null());
    }
    for l in &err {
        assert_eq!(l["response"]["status_code"], 400);
        assert!(l["error"]["message"].is_string());
    }
    assert_eq!(mock.request_count(), n, "each line went upstream once");
    // Lines are sent as they were written (only upstream, not via HTTP to ourselves).
    let bodies: Vec<Value> = mock
        .requests()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert!(bodies
        .iter()
        .all(|b| b["model"] == "m" && b["max_tokens"] == 4));
    let (_, out_file) = json_call(
        &gw.url,
        "GET",
        &format!("/v1/files/{}", b["output_file_id"].as_str().unwrap()),
        None,
        None,
    )
    .await;
    assert_eq!(out_file["purpose"], "batch_output");

    // Paging: newest first, `after` continues.
    let b2 = submit(&gw.url, &input(1, "m")).await;
    let (_, page) = json_call(&gw.url, "GET", "/v1/batches?limit=1", None, None).await;
    assert_eq!(page["data"][0]["id"], b2["id"]);
    assert_eq!(page["has_more"], true);
    let (_, page) = json_call(
        &gw.url,
        "GET",
        &format!("/v1/batches?limit=1&after={}", b2["id"].as_str().unwrap()),
        None,
        None,
    )
    .await;
    assert_eq!(page["data"][0]["id"], id.as_str());
    assert_eq!(page["has_more"], false);
    wait_batch(
        &gw.url,
        None,
        b2["id"].as_str().unwrap(),
        Duration::from_secs(30),
        terminal,
    )
    .await;

    // Every line was charged to its owner's quota.
    let user = gw
        .quotas
        .get(&Subject::new(Kind::User, "anonymous"))
        .expect("the owner's quota state");
    assert!(user.snapshot(now_ms()).day.requests >= n as u64);

    let (_, metrics) = call(&gw.url, "GET", "/metrics", None, None).await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains(&format!(
            "gateway_batch_lines_total{{result=\"completed\"}} {}",
            n - 1
        )),
        "{metrics}"
    );
    assert!(metrics.contains("gateway_batch_lines_total{result=\"failed\"} 2"));
    assert!(metrics.contains("gateway_batches_active 0"));

    let (status, err) = json_call(&gw.url, "POST", "/v1/batches", None,
        Some(json!({"input_file_id": "file-x", "endpoint": "/v1/rerank", "completion_window": "24h"}))).await;
    assert_eq!(
        (status, err["error"]["param"].as_str()),
        (400, Some("endpoint"))
    );
    let (status, err) = json_call(
        &gw.url,
        "POST",
        "/v1/batches",
        None,
        Some(json!({"input_file_id": b2["input_file_id"], "endpoint": EP, "completion_window": "1h"})),
    )
    .await;
    assert_eq!(
        (status, err["error"]["param"].as_str()),
        (400, Some("completion_window"))
    );
    let (status, err) = json_call(&gw.url, "GET", "/v1/batches/batch_nope", None, None).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn bad_lines_fail_validation_with_an_error_file() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = app(&mock)
        .settings(|s| s.batches.poll_interval_ms = Millis::new(nz(50)))
        .start()
        .await;
    let text = [
        line("a", "m"),
        "{not json".to_string(),
        line("a", "m"),
        json!({"custom_id": "c", "method": "GET", "url": EP, "body": {"model": "m"}}).to_string(),
        json!({"custom_id": "d", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m"}}).to_string(),
        json!({"custom_id": "e", "method": "POST", "url": EP, "body": {"messages": []}}).to_string(),
        line("ok", "m"),
    ]
    .join("\n");
    let b = submit(&gw.url, text.as_bytes()).await;
    let b = wait_batch(
        &gw.url,
        None,
        b["id"].as_str().unwrap(),
        Duration::from_secs(30),
        terminal,
    )
    .await;
    assert_eq!(b["status"], "failed", "{b}");
    assert!(b["failed_at"].is_i64());
    assert!(b["output_file_id"].is_null());
    let errors = b["errors"]["data"].as_array().unwrap();
    assert_eq!(b["errors"]["object"], "list");
    let numbers: Vec<i64> = errors.iter().map(|e| e["line"].as_i64().unwrap()).collect();
    assert_eq!(numbers, vec![2, 3, 4, 5, 6]);
    assert!(errors
        .iter()
        .all(|e| e["code"] == "invalid_line" && e["message"].is_string()));
    assert!(errors[3]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/embeddings"));
    let lines = content_lines(&gw.url, None, b["error_file_id"].as_str().unwrap()).await;
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[1]["custom_id"], "a");
    assert_eq!(lines[1]["error"]["line"], 3);
    assert!(lines[0]["custom_id"].is_null());
    assert_eq!(mock.request_count(), 0, "nothing ran");
    gw.stop().await;
}

#[actix_rt::test]
async fn cancel_keeps_the_finished_lines() {
    let mock = MockUpstream::start(Behavior {
        latency: Duration::from_millis(100),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = app(&mock)
        .settings(|s| {
            s.batches.poll_interval_ms = Millis::new(nz(50));
            s.batches.concurrency_per_batch = NonZero::new(2).unwrap();
        })
        .start()
        .await;
    let n = 200;
    let b = submit(&gw.url, &input(n, "m")).await;
    let id = b["id"].as_str().unwrap().to_string();
    wait_batch(&gw.url, None, &id, Duration::from_secs(30), |b| {
        b["request_counts"]["completed"].as_i64() >= Some(4)
    })
    .await;
    let (status, c) = json_call(
        &gw.url,
        "POST",
        &format!("/v1/batches/{id}/cancel"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{c}");
    assert!(
        matches!(c["status"].as_str(), Some("cancelling" | "cancelled")),
        "{c}"
    );
    let b = wait_batch(&gw.url, None, &id, Duration::from_secs(30), terminal).await;
    assert_eq!(b["status"], "cancelled", "{b}");
    assert!(b["cancelled_at"].is_i64() && b["cancelling_at"].is_i64());
    let done = b["request_counts"]["completed"].as_u64().unwrap() as usize;
    assert!(done >= 4 && done < n, "{b}");
    let out = content_lines(&gw.url, None, b["output_file_id"].as_str().unwrap()).await;
    assert_eq!(out.len(), done);
    let ids: HashSet<&str> = out
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), done);
    // Nothing more goes upstream after the cancel.
    let sent = mock.request_count();
    actix_rt::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(mock.request_count(), sent);
    assert!(
        sent <= done + 2,
        "{sent} sent, {done} done (at most the 2 in flight were dropped)"
    );
    let (status, err) = json_call(
        &gw.url,
        "POST",
        &format!("/v1/batches/{id}/cancel"),
        None,
        None,
    )
    .await;
    assert_eq!(
        status, 200,
        "cancelling a cancelled batch is a no-op: {err}"
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn a_batch_past_its_window_expires_keeping_the_finished_lines() {
    let mock = MockUpstream::start(Behavior {
        latency: Duration::from_millis(100),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = app(&mock)
        .settings(|s| {
            s.batches.poll_interval_ms = Millis::new(nz(50));
            s.batches.concurrency_per_batch = NonZero::new(2).unwrap();
        })
        .start()
        .await;
    let n = 100;
    let b = submit(&gw.url, &input(n, "m")).await;
    let id = b["id"].as_str().unwrap().to_string();
    wait_batch(&gw.url, None, &id, Duration::from_secs(30), |b| {
        b["request_counts"]["completed"].as_i64() >= Some(4)
    })
    .await;
    // The 24 h window ends now (moved in the database rather than waited for).
    {
        use diesel::prelude::*;
        let path = gw.dir.path().join("data/gateway.db");
        let mut conn = diesel::sqlite::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        diesel::sql_query("PRAGMA busy_timeout = 5000")
            .execute(&mut conn)
            .unwrap();
        diesel::sql_query(format!(
            "UPDATE batches SET expires_at = {} WHERE id = '{id}'",
            now_ms()
        ))
        .execute(&mut conn)
        .unwrap();
    }
    let b = wait_batch(&gw.url, None, &id, Duration::from_secs(30), terminal).await;
    assert_eq!(b["status"], "expired", "{b}");
    assert!(b["expired_at"].is_i64());
    let done = b["request_counts"]["completed"].as_u64().unwrap() as usize;
    assert!(done >= 4 && done < n, "{b}");
    let out = content_lines(&gw.url, None, b["output_file_id"].as_str().unwrap()).await;
    assert_eq!(out.len(), done);
    gw.stop().await;
}

#[actix_rt::test]
async fn first_path_form_is_confined_to_the_allowed_roots() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let roots = root.path().display().to_string();
    let gw = app(&mock)
        .env(&[("GATEWAY__BATCHES__ALLOWED_ROOTS", &roots)])
        .settings(|s| s.batches.poll_interval_ms = Millis::new(nz(50)))
        .start()
        .await;
    let in_path = root.path().join("in.jsonl");
    // FIRST's lines may leave the model out: the batch's model fills it in.
    let mut text = String::new();
    for i in 0..5 {
        text.push_str(
            &json!({"custom_id": format!("req-{i}"), "method": "POST", "url": EP,
            "body": {"messages": [{"role": "user", "content": "hi"}]}})
            .to_string(),
        );
        text.push('\n');
    }
    std::fs::write(&in_path, &text).unwrap();
    let out_dir = root.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let body = json!({"input_file": in_path, "model": "m", "output_folder_path": out_dir});
    let (status, b) = json_call(
        &gw.url,
        "POST",
        "/resource_server/local/vllm/v1/batches",
        None,
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["model"], "m");
    assert_eq!(b["cluster"], "local");
    let id = b["id"].as_str().unwrap().to_string();
    let (status, err) = json_call(
        &gw.url,
        "GET",
        &format!("/v1/batches/{id}/result"),
        None,
        None,
    )
    .await;
    if status != 200 {
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (409, Some("conflict"))
        );
    }
    let b = wait_batch(&gw.url, None, &id, Duration::from_secs(30), terminal).await;
    assert_eq!(b["status"], "completed", "{b}");
    let (status, result) = call(
        &gw.url,
        "GET",
        &format!("/resource_server/v1/batches/{id}/result"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let lines: Vec<Value> = String::from_utf8(result)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    exactly_once(&lines, 5);
    let written = std::fs::read_to_string(out_dir.join(format!("{id}_output.jsonl"))).unwrap();
    assert_eq!(written.lines().count(), 5);
    assert!(mock
        .requests()
        .iter()
        .all(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["model"] == "m"));

    // Everything outside the roots is a 400 naming the field.
    let secret = outside.path().join("secret.jsonl");
    std::fs::write(&secret, &text).unwrap();
    let link = root.path().join("link.jsonl");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let link_dir = root.path().join("escape");
    std::os::unix::fs::symlink(outside.path(), &link_dir).unwrap();
    let dotdot = format!(
        "{}/../{}/secret.jsonl",
        root.path().display(),
        outside.path().file_name().unwrap().to_string_lossy()
    );
    for (body, param) in [
        (json!({"input_file": secret, "model": "m"}), "input_file"),
        (json!({"input_file": dotdot, "model": "m"}), "input_file"),
        (json!({"input_file": link, "model": "m"}), "input_file"),
        (
            json!({"input_file": "in.jsonl", "model": "m"}),
            "input_file",
        ),
        (
            json!({"input_file": in_path, "model": "m", "output_folder_path": link_dir}),
            "output_folder_path",
        ),
        (
            json!({"input_file": in_path, "model": "m", "output_folder_path": format!("{}/out/..", root.path().display())}),
            "output_folder_path",
        ),
    ] {
        let (status, err) = json_call(
            &gw.url,
            "POST",
            "/resource_server/local/vllm/v1/batches",
            None,
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["error"]["code"], "path_not_allowed", "{body}");
        assert_eq!(err["error"]["param"], param);
        assert_eq!(err["error"]["type"], "invalid_request_error");
    }
    let (status, err) = json_call(
        &gw.url,
        "POST",
        "/resource_server/elsewhere/vllm/v1/batches",
        None,
        Some(json!({"input_file": in_path, "model": "m"})),
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    gw.stop().await;

    // No roots configured: the path form is off.
    let gw = app(&mock).start().await;
    let (status, err) = json_call(
        &gw.url,
        "POST",
        "/resource_server/local/vllm/v1/batches",
        None,
        Some(json!({"input_file": in_path, "model": "m"})),
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("path_not_allowed"))
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn max_batches_per_user_is_429() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = app(&mock)
        .settings(|s| {
            // Nothing runs, so both batches stay active.
            s.batches.enabled = false;
            s.quotas.max_batches_per_user = 2;
        })
        .start()
        .await;
    let (_, f) = upload(&gw.url, None, "batch", &input(1, "m")).await;
    let fid = f["id"].as_str().unwrap();
    for _ in 0..2 {
        let (status, b) = create_batch(&gw.url, None, fid).await;
        assert_eq!(status, 200, "{b}");
    }
    let (status, err) = create_batch(&gw.url, None, fid).await;
    assert_eq!(status, 429, "{err}");
    assert_eq!(err["error"]["code"], "too_many_batches");
    assert_eq!(err["error"]["type"], "rate_limit_error");
    assert!(err["error"]["message"].as_str().unwrap().contains('2'));
    // Cancelling one makes room once it is cancelled... it stays `cancelling` until a
    // runner finishes it, which still counts as active.
    let (_, list) = json_call(&gw.url, "GET", "/v1/batches", None, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    gw.stop().await;
}

#[actix_rt::test]
async fn batch_lines_wait_while_interactive_requests_are_in_flight() {
    let mock = MockUpstream::start(Behavior {
        chunks: 10,
        chunk_delay: Duration::from_millis(100),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = app(&mock)
        .settings(|s| {
            s.batches.poll_interval_ms = Millis::new(nz(50));
            s.batches.yield_above_interactive = 1;
        })
        .start()
        .await;
    // One interactive stream in flight for about a second.
    let mut body = chat("m");
    body["stream"] = json!(true);
    let mut stream = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let b = submit(&gw.url, &input(5, "m")).await;
    let id = b["id"].as_str().unwrap().to_string();
    wait_batch(&gw.url, None, &id, Duration::from_secs(10), |b| {
        b["status"] == "in_progress"
    })
    .await;
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        mock.request_count(),
        1,
        "no batch line started beside the interactive stream"
    );
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
    }
    let b = wait_batch(&gw.url, None, &id, Duration::from_secs(30), terminal).await;
    assert_eq!(b["request_counts"]["completed"], 5, "{b}");
    assert_eq!(mock.request_count(), 6);
    gw.stop().await;
}

#[actix_rt::test]
async fn quota_refusals_delay_lines_without_failing_them() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = app(&mock)
        .settings(|s| {
            s.batches.poll_interval_ms = Millis::new(nz(50));
            // The model admits 20 requests a second, one at a time: most lines get a 429
            // from quotas first.
            s.quotas.model.requests_per_second = 20.0;
            s.quotas.model.burst = 1;
        })
        .start()
        .await;
    let n = 20;
    let b = submit(&gw.url, &input(n, "m")).await;
    let b = wait_batch(
        &gw.url,
        None,
        b["id"].as_str().unwrap(),
        Duration::from_secs(30),
        terminal,
    )
    .await;
    assert_eq!(
        b["request_counts"],
        json!({"total": n, "completed": n, "failed": 0}),
        "{b}"
    );
    assert_eq!(mock.request_count(), n);
    let (_, metrics) = call(&gw.url, "GET", "/metrics", None, None).await;
    let metrics = String::from_utf8(metrics).unwrap();
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("gateway_rate_limit_rejections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(refused > 0.0, "the quota did refuse lines: {metrics}");
    gw.stop().await;
}

#[actix_rt::test]
async fn batches_finish_after_the_batch_actor_crashes() {
    let mock = MockUpstream::start(Behavior {
        latency: Duration::from_millis(5),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = app(&mock)
        .settings(|s| {
            s.batches.poll_interval_ms = Millis::new(nz(50));
            s.batches.concurrency_per_batch = NonZero::new(4).unwrap();
        })
        .start()
        .await;
    let n = 300;
    let b = submit(&gw.url, &input(n, "m")).await;
    let id = b["id"].as_str().unwrap().to_string();
    wait_batch(&gw.url, None, &id, Duration::from_secs(30), |b| {
        b["request_counts"]["completed"].as_i64() >= Some(20)
    })
    .await;
    let sup = gw.batches.clone().unwrap();
    let actor = sup.send(ActorAddr).await.unwrap();
    let _ = actor.send(Crash).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while sup.send(Restarts).await.unwrap() == 0 {
        assert!(
            Instant::now() < deadline,
            "the supervisor never rebuilt the actor"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let b = wait_batch(&gw.url, None, &id, Duration::from_secs(60), terminal).await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(b["request_counts"]["completed"], n);
    let out = content_lines(&gw.url, None, b["output_file_id"].as_str().unwrap()).await;
    exactly_once(&out, n);
    assert!(mock.request_count() >= n);
    gw.stop().await;
}

// ------------------------------------------------------------------ the real binary

fn spawn(dir: &std::path::Path, env: &[(&str, String)]) -> Binary {
    let mut all = vec![("GATEWAY__LOGGING__LEVEL", "warning".to_string())];
    all.extend(env.iter().cloned());
    spawn_gateway(dir, &all)
}

#[actix_rt::test]
async fn a_batch_resumes_after_kill_9_with_every_line_once() {
    let mock = MockUpstream::start(Behavior {
        latency: Duration::from_millis(10),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_fixtures(dir.path(), &[target("a", "m", mock.url())], &[]);
    let env = [
        ("GATEWAY__BATCHES__POLL_INTERVAL_MS", "100".to_string()),
        ("GATEWAY__BATCHES__CONCURRENCY_PER_BATCH", "4".to_string()),
        // The dead process's claim lapses quickly.
        ("GATEWAY__BATCHES__LEASE_SECS", "3".to_string()),
    ];
    let mut first = spawn(dir.path(), &env);
    first.wait_ready().await;
    let n = 600;
    let b = submit(&first.url, &input(n, "m")).await;
    let id = b["id"].as_str().unwrap().to_string();
    let part = wait_batch(&first.url, None, &id, Duration::from_secs(30), |b| {
        b["request_counts"]["completed"].as_i64() >= Some(60)
    })
    .await;
    first.kill9();
    let done_before = part["request_counts"]["completed"].as_u64().unwrap() as usize;
    assert!(done_before < n, "killed too late to test a resume: {part}");
    let sent_before = mock.request_count();

    let second = spawn(dir.path(), &env);
    second.wait_ready().await;
    let b = wait_batch(&second.url, None, &id, Duration::from_secs(60), terminal).await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(
        b["request_counts"],
        json!({"total": n, "completed": n, "failed": 0})
    );
    let out = content_lines(&second.url, None, b["output_file_id"].as_str().unwrap()).await;
    exactly_once(&out, n);
    // The resumed run skipped what was stored: only the lines in flight or not yet written
    // at the kill ran twice.
    let again = mock.request_count() - sent_before;
    assert!(
        again <= n - done_before,
        "{again} lines sent after the restart, {done_before} were done"
    );
    let logs = second.stdout_text();
    assert!(!logs.contains("\"level\":\"ERRO\""), "{logs}");
}

#[actix_rt::test]
async fn two_gateways_on_postgres_share_batches_without_double_work() {
    let Some(db) = TestDb::pg("two_gateways_on_postgres_share_batches_without_double_work") else {
        return;
    };
    inference_gateway::store::migrate::run(&db.url()).unwrap();
    let mock = MockUpstream::start(Behavior {
        latency: Duration::from_millis(2),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let shared = tempfile::tempdir().unwrap();
    let data = shared.path().join("data");
    let url = db.config_url();
    let replica = || {
        let (url, data) = (url.clone(), data.clone());
        app(&mock).settings(move |s| {
            s.database.url = url;
            s.storage.data_dir = data;
            s.batches.poll_interval_ms = Millis::new(nz(50));
            s.batches.max_running = NonZero::new(2).unwrap();
            s.batches.concurrency_per_batch = NonZero::new(4).unwrap();
        })
    };
    let a = replica().start().await;
    let b = replica().start().await;
    let (batches, n) = (6, 80);
    let mut ids = Vec::new();
    for i in 0..batches {
        let gw = if i % 2 == 0 { &a } else { &b };
        let bt = submit(&gw.url, &input(n, "m")).await;
        ids.push(bt["id"].as_str().unwrap().to_string());
    }
    let mut owners = HashSet::new();
    for id in &ids {
        let bt = wait_batch(&a.url, None, id, Duration::from_secs(60), terminal).await;
        assert_eq!(bt["status"], "completed", "{bt}");
        assert_eq!(bt["request_counts"]["completed"], n);
        let out = content_lines(&b.url, None, bt["output_file_id"].as_str().unwrap()).await;
        exactly_once(&out, n);
        let row = a.store.get_batch(id.clone()).await.unwrap().unwrap();
        owners.insert(row.lease_owner.unwrap());
    }
    assert_eq!(
        mock.request_count(),
        batches * n,
        "no line was processed twice"
    );
    assert_eq!(owners.len(), 2, "both gateways ran batches: {owners:?}");
    a.stop().await;
    b.stop().await;
}

// ------------------------------------------------- FIRST's guide, hostile input (issue 19/20)

/// The FIRST user guide's batch example, as written (a bearer token, the federated route
/// under `/resource_server`, `input_file_path`, bare lines), with its paths under an
/// allowed root.
#[actix_rt::test]
async fn first_guides_batch_example_works_as_written() {
    std::env::set_var("IGW_TEST_GUIDE_ADMIN", "guide-bootstrap-admin-key-0123");
    let root = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let model = "meta-llama/Meta-Llama-3-8B-Instruct";
    let roots = root.path().display().to_string();
    let gw = TestApp::builder()
        .target(target("a", model, mock.url()))
        .env(&[
            ("GATEWAY__AUTH__MODE", "required"),
            ("GATEWAY__BATCHES__ALLOWED_ROOTS", &roots),
        ])
        .settings(|s| {
            s.auth.admin_key_env = "IGW_TEST_GUIDE_ADMIN".into();
            s.batches.poll_interval_ms = Millis::new(nz(50));
        })
        .start()
        .await;
    let token = user_key(&gw.url, "guide-bootstrap-admin-key-0123", "alice").await;
    let input = root.path().join("path/to/input.jsonl");
    std::fs::create_dir_all(input.parent().unwrap()).unwrap();
    std::fs::write(
        &input,
        concat!(
            r#"{"messages": [{"role": "user", "content": "What is AI?"}], "max_tokens": 100}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "Explain ML"}], "max_tokens": 100}"#,
            "\n"
        ),
    )
    .unwrap();
    let output = root.path().join("path/to/output");
    std::fs::create_dir_all(&output).unwrap();
    let (status, b) = json_call(
        &gw.url,
        "POST",
        "/resource_server/v1/batches",
        Some(&token),
        Some(json!({
            "input_file_path": input,
            "output_folder_path": format!("{}/", output.display()),
            "model": model
        })),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["model"], model);
    let deadline = Instant::now() + Duration::from_secs(30);
    let b = loop {
        let (status, b) = json_call(
            &gw.url,
            "GET",
            &format!("/resource_server/v1/batches/{id}"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, 200, "{b}");
        if terminal(&b) {
            break b;
        }
        assert!(Instant::now() < deadline, "{b}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(
        b["request_counts"],
        json!({"total": 2, "completed": 2, "failed": 0})
    );
    let written = std::fs::read_to_string(output.join(format!("{id}_output.jsonl"))).unwrap();
    let ids: HashSet<String> = written
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["custom_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, HashSet::from(["1".to_string(), "2".to_string()]));
    let sent: Vec<Value> = mock
        .requests()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(sent.len(), 2);
    for body in &sent {
        assert_eq!(body["model"], model);
        assert_eq!(body["max_tokens"], 100);
    }
    assert!(mock
        .requests()
        .iter()
        .all(|r| r.path == "/v1/chat/completions"));

    // The host's files cannot be probed: outside the roots, existing or not, one answer.
    let mut messages = Vec::new();
    for path in ["/etc/shadow", "/etc/nonexistent"] {
        let (status, err) = json_call(
            &gw.url,
            "POST",
            "/resource_server/v1/batches",
            Some(&token),
            Some(json!({"input_file_path": path, "model": model})),
        )
        .await;
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["error"]["param"], "input_file_path");
        messages.push(err["error"]["message"].as_str().unwrap().replace(path, "P"));
    }
    assert_eq!(messages[0], messages[1]);
    gw.stop().await;
}

#[actix_rt::test]
async fn batch_and_file_errors_say_what_was_wrong_with_the_right_status() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let roots = root.path().display().to_string();
    let gw = app(&mock)
        .env(&[("GATEWAY__BATCHES__ALLOWED_ROOTS", &roots)])
        .settings(|s| {
            s.batches.enabled = false;
            s.batches.max_file_bytes = NonZero::new(1000).unwrap();
        })
        .start()
        .await;
    // JSON of the wrong shape: no Rust type names, the field named.
    for (body, needle) in [
        (json!("x"), "JSON object"),
        (
            json!({"input_file_id": 5, "endpoint": EP, "completion_window": "24h"}),
            "`input_file_id`",
        ),
        (
            json!({"input_file_id": "file-x", "endpoint": EP, "completion_window": "24h", "colour": 1}),
            "`colour`",
        ),
        (json!({"endpoint": EP}), "`input_file_id`"),
    ] {
        let (status, err) =
            json_call(&gw.url, "POST", "/v1/batches", None, Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains("struct") && !message.contains("CreateBatch"),
            "{message}"
        );
        assert!(message.contains(needle), "{body}: {message}");
    }
    // JSON over the limit is 413.
    let big =
        json!({"input_file_id": "x".repeat(2 << 20), "endpoint": EP, "completion_window": "24h"});
    let (status, err) = json_call(&gw.url, "POST", "/v1/batches", None, Some(big)).await;
    assert_eq!(status, 413, "{err}");
    // An input file over the limit says so, naming the file and the limit.
    let in_path = root.path().join("big.jsonl");
    std::fs::write(&in_path, vec![b' '; 1001]).unwrap();
    let (status, err) = json_call(
        &gw.url,
        "POST",
        "/v1/batches",
        None,
        Some(json!({"input_file_path": in_path, "model": "m"})),
    )
    .await;
    assert_eq!(status, 413, "{err}");
    assert_eq!(err["error"]["param"], "input_file_path");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("1001") && message.contains("1000"),
        "{message}"
    );
    assert!(!message.contains("Request body"), "{message}");
    // The old pinned form still works with either field name.
    std::fs::write(&in_path, input(1, "m")).unwrap();
    for field in ["input_file", "input_file_path"] {
        let (status, b) = json_call(
            &gw.url,
            "POST",
            "/resource_server/local/vllm/v1/batches",
            None,
            Some(json!({field: in_path, "model": "m"})),
        )
        .await;
        assert_eq!(status, 200, "{field}: {b}");
    }
    gw.stop().await;
}

/// Raw HTTP/1.1: sends `head` (and `body`), returns the status line's code and the time
/// to it. Bounded by a 10 s read timeout.
async fn raw_request(addr: &str, head: String, body: &[u8]) -> (u16, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("no answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, started.elapsed())
}

#[actix_rt::test]
async fn uploads_are_refused_early_and_bounded_in_number() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = app(&mock)
        .settings(|s| {
            s.batches.enabled = false;
            s.batches.max_file_bytes = NonZero::new(1000000).unwrap();
            s.batches.max_concurrent_uploads = NonZero::new(2).unwrap();
        })
        .start()
        .await;
    let addr = gw.url.trim_start_matches("http://").to_string();
    let boundary = "b0undary";
    let head = |len: u64| {
        format!(
            "POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    let part = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n"
    );
    // A declared 200 MB body is refused before it is sent.
    let (code, _) = raw_request(&addr, head(200_000_000), part.as_bytes()).await;
    assert_eq!(code, 413);
    // Two uploads in flight (half sent) hold both slots: a third is 429 at once.
    use tokio::io::AsyncWriteExt;
    let hold = || async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(head(500_000).as_bytes()).await.unwrap();
        s.write_all(part.as_bytes()).await.unwrap();
        s.write_all(&[b'x'; 1000]).await.unwrap();
        s
    };
    let mut held = vec![hold().await, hold().await];
    // Until the held uploads' handlers have run, a whole upload may still pass, and take
    // a slot first: then a held one is refused (answered and closed) and is opened again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, err) = upload(&gw.url, None, "batch", &input(1, "m")).await;
        if status == 429 {
            assert_eq!(err["error"]["code"], "too_many_uploads");
            break;
        }
        assert_eq!(status, 200, "{err}");
        assert!(Instant::now() < deadline, "never 429");
        for h in held.iter_mut() {
            let mut byte = [0u8; 1];
            // Readable: it was answered (429) or closed.
            if h.try_read(&mut byte).is_ok() {
                *h = hold().await;
            }
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    // Slots come back when those uploads end: a whole upload passes again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, f) = upload(&gw.url, None, "batch", &input(2, "m")).await;
        if status == 200 {
            assert_eq!(f["bytes"], input(2, "m").len());
            break;
        }
        assert_eq!(status, 429, "{f}");
        assert!(Instant::now() < deadline, "slots never came back");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    // A streamed upload over the limit leaves no temporary file behind.
    let (status, _) = upload(&gw.url, None, "batch", &vec![b'x'; 1_000_001]).await;
    assert_eq!(status, 413);
    let leftovers: Vec<_> = std::fs::read_dir(gw.dir.path().join("data/files"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    gw.stop().await;
}

/// The database goes away (a chaos proxy in front of PostgreSQL cuts it): creating a
/// batch is 503, not 400 "No such file".
#[actix_rt::test]
async fn creating_a_batch_during_a_database_outage_is_503() {
    let Some(db) = TestDb::pg("creating_a_batch_during_a_database_outage_is_503") else {
        return;
    };
    inference_gateway::store::migrate::run(&db.url()).unwrap();
    let TestDb::Pg {
        url: direct, name, ..
    } = &db
    else {
        unreachable!()
    };
    let host_port = direct.split('@').nth(1).unwrap().split('/').next().unwrap();
    let host_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5432")
    };
    let proxy = crate::common::chaos::ChaosProxy::start(
        host_port.replace("localhost", "127.0.0.1").parse().unwrap(),
    );
    let user = direct
        .split("://")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap();
    let via = format!("postgres://{user}@{}/{name}", proxy.addr);
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = app(&mock)
        .settings(move |s| {
            s.database.url = via;
            s.database.timeout_secs = Seconds::new(nz(2));
            s.batches.enabled = false;
        })
        .start()
        .await;
    let (status, f) = upload(&gw.url, None, "batch", &input(1, "m")).await;
    assert_eq!(status, 200, "{f}");
    proxy.sever();
    let (status, err) = create_batch(&gw.url, None, f["id"].as_str().unwrap()).await;
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "database_unavailable");
    proxy.restore();
    gw.stop().await;
}

/// Issue 19 item 2: output folders removed before the batches finish. A batch whose output
/// cannot be written fails (naming the folder) after bounded retries, cancel works while
/// it is finalizing, and the log is not flooded.
#[actix_rt::test]
async fn an_unwritable_output_folder_fails_the_batch_and_cancel_still_works() {
    let root = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start(Behavior {
        latency: Duration::from_millis(50),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let roots = root.path().display().to_string();
    let gw = app(&mock)
        .env(&[("GATEWAY__BATCHES__ALLOWED_ROOTS", &roots)])
        .settings(|s| {
            s.batches.poll_interval_ms = Millis::new(nz(50));
            s.batches.concurrency_per_batch = NonZero::new(1).unwrap();
        })
        .start()
        .await;
    let input_path = root.path().join("in.jsonl");
    let mut text = String::new();
    for i in 0..5 {
        text.push_str(
            &json!({"messages": [{"role": "user", "content": format!("q{i}")}]}).to_string(),
        );
        text.push('\n');
    }
    std::fs::write(&input_path, text).unwrap();
    let mut ids = Vec::new();
    for name in ["out1", "out2"] {
        let out = root.path().join(name);
        std::fs::create_dir(&out).unwrap();
        let (status, b) = json_call(
            &gw.url,
            "POST",
            "/v1/batches",
            None,
            Some(json!({"input_file_path": input_path, "output_folder_path": out, "model": "m"})),
        )
        .await;
        assert_eq!(status, 200, "{b}");
        std::fs::remove_dir(&out).unwrap();
        ids.push((b["id"].as_str().unwrap().to_string(), out));
    }
    // The first is cancelled while it tries to write its output.
    let (id1, _) = &ids[0];
    wait_batch(&gw.url, None, id1, Duration::from_secs(20), |b| {
        b["status"] == "finalizing" || terminal(b)
    })
    .await;
    let (status, b) = json_call(
        &gw.url,
        "POST",
        &format!("/v1/batches/{id1}/cancel"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "cancel while finalizing: {b}");
    let b = wait_batch(&gw.url, None, id1, Duration::from_secs(20), terminal).await;
    assert_eq!(b["status"], "cancelled", "{b}");
    // The second fails, naming its folder; its results are still there.
    let (id2, out2) = &ids[1];
    let b = wait_batch(&gw.url, None, id2, Duration::from_secs(20), terminal).await;
    assert_eq!(b["status"], "failed", "{b}");
    let message = b["errors"]["data"][0]["message"].as_str().unwrap();
    assert!(message.contains(&out2.display().to_string()), "{message}");
    let out = content_lines(&gw.url, None, b["output_file_id"].as_str().unwrap()).await;
    assert_eq!(out.len(), 5);
    let logs = gw.logs();
    let errors = logs
        .lines()
        .filter(|l| l.contains("\"level\":\"ERRO\""))
        .count();
    assert!(errors <= 2, "{errors} error lines: {logs}");
    gw.stop().await;
}

/// Fair share: one user's batches cannot take every running slot while another user's
/// batch waits.
#[actix_rt::test]
async fn one_users_batches_leave_a_slot_for_another_user() {
    std::env::set_var("IGW_TEST_FAIR_ADMIN", "fair-bootstrap-admin-key-0123");
    let mock = MockUpstream::start(Behavior {
        latency: Duration::from_millis(150),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = app(&mock)
        .env(&[("GATEWAY__AUTH__MODE", "required")])
        .settings(|s| {
            s.auth.admin_key_env = "IGW_TEST_FAIR_ADMIN".into();
            s.batches.poll_interval_ms = Millis::new(nz(50));
            s.batches.max_running = NonZero::new(2).unwrap();
            s.batches.concurrency_per_batch = NonZero::new(1).unwrap();
        })
        .start()
        .await;
    let alice = user_key(&gw.url, "fair-bootstrap-admin-key-0123", "alice").await;
    let bob = user_key(&gw.url, "fair-bootstrap-admin-key-0123", "bob").await;
    let id_of = |b: Value| b["id"].as_str().unwrap().to_string();
    let a1 = id_of(submit_as(&gw.url, Some(&alice), &input(12, "m")).await);
    let a2 = id_of(submit_as(&gw.url, Some(&alice), &input(12, "m")).await);
    wait_batch(&gw.url, Some(&alice), &a1, Duration::from_secs(10), |b| {
        b["status"] != "validating"
    })
    .await;
    let b1 = id_of(submit_as(&gw.url, Some(&bob), &input(12, "m")).await);
    wait_batch(&gw.url, Some(&bob), &b1, Duration::from_secs(30), |b| {
        b["status"] != "validating"
    })
    .await;
    // Bob's batch started before both of alice's had: she never held both slots.
    let (_, x1) = json_call(
        &gw.url,
        "GET",
        &format!("/v1/batches/{a1}"),
        Some(&alice),
        None,
    )
    .await;
    let (_, x2) = json_call(
        &gw.url,
        "GET",
        &format!("/v1/batches/{a2}"),
        Some(&alice),
        None,
    )
    .await;
    let started = [&x1, &x2]
        .iter()
        .filter(|b| b["in_progress_at"].is_number())
        .count();
    assert!(
        started < 2,
        "alice had both slots before bob got one: {x1} {x2}"
    );
    for (id, key) in [(&a1, &alice), (&a2, &alice), (&b1, &bob)] {
        let b = wait_batch(&gw.url, Some(key), id, Duration::from_secs(30), terminal).await;
        assert_eq!(b["status"], "completed", "{b}");
    }
    gw.stop().await;
}

/// The admin view: every user's batches with their owner, filtered by user and status;
/// an admin cancels anyone's batch; users and callers without a key get nothing.
#[actix_rt::test]
async fn admins_list_every_users_batches_and_cancel_any() {
    let admin = "batch-admin-view-key-0123456789";
    std::env::set_var("IGW_TEST_BATCH_ADMIN_VIEW", admin);
    let mock = MockUpstream::start(Behavior {
        latency: Duration::from_millis(100),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = app(&mock)
        .env(&[("GATEWAY__AUTH__MODE", "required")])
        .settings(|s| {
            s.auth.admin_key_env = "IGW_TEST_BATCH_ADMIN_VIEW".into();
            s.batches.poll_interval_ms = Millis::new(nz(50));
            s.batches.concurrency_per_batch = NonZero::new(1).unwrap();
        })
        .start()
        .await;
    let alice = user_key(&gw.url, admin, "alice").await;
    let bob = user_key(&gw.url, admin, "bob").await;
    let mut ids = Vec::new();
    for (key, lines) in [(&alice, 200), (&bob, 1)] {
        let b = submit_as(&gw.url, Some(key), &input(lines, "m")).await;
        ids.push(b["id"].as_str().unwrap().to_string());
    }
    let (alice_batch, bob_batch) = (&ids[0], &ids[1]);
    wait_batch(
        &gw.url,
        Some(&bob),
        bob_batch,
        Duration::from_secs(30),
        terminal,
    )
    .await;

    let (status, all) = json_call(&gw.url, "GET", "/admin/batches", Some(admin), None).await;
    assert_eq!(status, 200, "{all}");
    let owners: Vec<(&str, &str)> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["id"].as_str().unwrap(), b["owner"].as_str().unwrap()))
        .collect();
    assert_eq!(owners.len(), 2, "{all}");
    assert!(owners.contains(&(alice_batch.as_str(), "alice")), "{all}");
    assert!(owners.contains(&(bob_batch.as_str(), "bob")), "{all}");
    let (_, only_bob) =
        json_call(&gw.url, "GET", "/admin/batches?user=bob", Some(admin), None).await;
    assert_eq!(only_bob["data"].as_array().unwrap().len(), 1, "{only_bob}");
    assert_eq!(only_bob["data"][0]["status"], "completed", "{only_bob}");
    let (_, done) = json_call(
        &gw.url,
        "GET",
        "/admin/batches?status=completed",
        Some(admin),
        None,
    )
    .await;
    assert_eq!(done["data"][0]["id"], bob_batch.as_str(), "{done}");
    let (_, page) = json_call(&gw.url, "GET", "/admin/batches?limit=1", Some(admin), None).await;
    assert_eq!(
        (page["data"].as_array().unwrap().len(), &page["has_more"]),
        (1, &json!(true))
    );
    let (status, bad) = json_call(
        &gw.url,
        "GET",
        "/admin/batches?status=running",
        Some(admin),
        None,
    )
    .await;
    assert_eq!(
        (status, bad["error"]["param"].as_str()),
        (400, Some("status")),
        "{bad}"
    );

    let (status, bad) = json_call(
        &gw.url,
        "GET",
        "/admin/batches?colour=red",
        Some(admin),
        None,
    )
    .await;
    assert_eq!(status, 400, "{bad}");
    assert!(
        bad["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Invalid query string") && m.contains("colour")),
        "{bad}"
    );

    // Users see only their own through /v1/batches, and nothing through the admin view.
    let (status, _) = json_call(&gw.url, "GET", "/admin/batches", Some(&alice), None).await;
    assert_eq!(status, 403);
    let (status, _) = json_call(&gw.url, "GET", "/admin/batches", None, None).await;
    assert_eq!(status, 401);
    let path = format!("/admin/batches/{alice_batch}/cancel");
    let (status, _) = json_call(&gw.url, "POST", &path, Some(&bob), None).await;
    assert_eq!(status, 403, "a user may not cancel through the admin view");

    // The admin cancels alice's batch; alice sees it cancelled, with the lines done kept.
    let (status, c) = json_call(&gw.url, "POST", &path, Some(admin), None).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["owner"], "alice", "{c}");
    assert!(
        matches!(c["status"].as_str(), Some("cancelling" | "cancelled")),
        "{c}"
    );
    let b = wait_batch(
        &gw.url,
        Some(&alice),
        alice_batch,
        Duration::from_secs(30),
        terminal,
    )
    .await;
    assert_eq!(b["status"], "cancelled", "{b}");
    let (status, err) = json_call(
        &gw.url,
        "POST",
        &format!("/admin/batches/{bob_batch}/cancel"),
        Some(admin),
        None,
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{err}"
    );
    let (status, _) = json_call(
        &gw.url,
        "POST",
        "/admin/batches/batch_nope/cancel",
        Some(admin),
        None,
    )
    .await;
    assert_eq!(status, 404);
    gw.stop().await;
}
