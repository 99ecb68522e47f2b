//! Shared harness: a real gateway on 127.0.0.1:0 in front of in-process mock upstreams,
//! driven by a real HTTP client. Time-based actor state uses a manual clock.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod app;
pub mod binary;
pub mod chaos;
pub mod db;
pub mod metrics;
pub mod private_pg;
pub mod raw_upstream;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::dev::ServerHandle;
use inference_gateway::actors::gateway::{Gateway, TickAll};
use inference_gateway::actors::log_writer::{Flush, LogWriter};
use inference_gateway::clock::ManualClock;
use inference_gateway::reload::Reloader;
use inference_gateway::store::log_sink::LogStats;
use inference_gateway::store::Store;
use serde_json::{json, Value};

#[allow(unused_imports)]
pub use mock_upstream::{Behavior, MockUpstream};

pub use app::TestApp;

/// One target in a test fixture.
pub struct T<'a> {
    pub slug: &'a str,
    pub cluster: &'a str,
    pub framework: &'a str,
    pub model: &'a str,
    pub base_url: String,
}

pub fn target<'a>(slug: &'a str, model: &'a str, base_url: String) -> T<'a> {
    T {
        slug,
        cluster: "local",
        framework: "vllm",
        model,
        base_url,
    }
}

pub struct TestGateway {
    pub url: String,
    pub gateway: Addr<Gateway>,
    pub clock: Arc<ManualClock>,
    pub(crate) logs: Arc<std::sync::Mutex<Vec<u8>>>,
    pub store: Arc<dyn Store>,
    pub log_writer: Option<Addr<LogWriter>>,
    pub log_stats: Option<Arc<LogStats>>,
    pub reloader: Arc<Reloader>,
    pub quotas: Arc<inference_gateway::quota::QuotaRegistry>,
    pub quota_supervisor: Addr<inference_gateway::quota::actor::QuotaSupervisor>,
    pub batches: Option<Addr<inference_gateway::batch::actor::BatchSupervisor>>,
    pub(crate) handle: ServerHandle,
    pub dir: tempfile::TempDir,
    pub(crate) in_flight: app::InFlight,
}

impl TestGateway {
    pub fn client(&self) -> awc::Client {
        awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish()
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// POSTs JSON and returns status, headers and body.
    pub async fn post(
        &self,
        path: &str,
        body: &Value,
    ) -> (u16, awc::http::header::HeaderMap, Value) {
        let mut res = self
            .client()
            .post(self.at(path))
            .send_json(body)
            .await
            .expect("request failed");
        let bytes = res.body().limit(64 << 20).await.expect("body");
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (res.status().as_u16(), res.headers().clone(), value)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let mut res = self
            .client()
            .get(self.at(path))
            .send()
            .await
            .expect("request failed");
        let bytes = res.body().limit(64 << 20).await.expect("body");
        (
            res.status().as_u16(),
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// The `/health/detailed` entry of one target.
    pub async fn target_state(&self, slug: &str) -> Value {
        let (_, v) = self.get("/health/detailed").await;
        v["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == slug)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Waits (bounded) until a target's detailed state satisfies `pred`.
    pub async fn wait_target(&self, slug: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let state = self.target_state(slug).await;
            if pred(&state) {
                return state;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "target {slug} never reached the expected state; last: {state}"
            );
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Everything the gateway logged so far (JSON lines).
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock().unwrap()).into_owned()
    }

    /// Moves the gateway's clock and makes every backend re-evaluate time-based state.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.gateway.do_send(TickAll);
    }

    /// Waits until the request log has written out every row queued so far.
    pub async fn flush_log(&self) {
        if let Some(writer) = &self.log_writer {
            writer.send(Flush).await.unwrap();
        }
    }

    /// GET with the bootstrap admin key (see [`ADMIN_KEY`]).
    pub async fn get_admin(&self, path: &str) -> (u16, Value) {
        let mut res = self
            .client()
            .get(self.at(path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("request failed");
        let bytes = res.body().limit(64 << 20).await.expect("body");
        (
            res.status().as_u16(),
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Rewrites `endpoints.json` (and `federated_endpoints.json` when `federated` is not
    /// empty) in the fixtures directory; apply with `reloader.reload()` or
    /// `POST /admin/reload`.
    pub fn write_fixtures(&self, targets: &[T<'_>], federated: &[Value]) {
        write_fixtures(self.dir.path(), targets, federated);
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// The admin key a test gateway accepts when started with `GATEWAY__AUTH__ADMIN_KEY_FILE`
/// set to [`admin_key_file`].
pub const ADMIN_KEY: &str = "test-admin-key-0123456789";

/// Writes [`ADMIN_KEY`] to a file in `dir` and returns its path.
pub fn admin_key_file(dir: &std::path::Path) -> String {
    let path = dir.join("admin.key");
    std::fs::write(&path, ADMIN_KEY).unwrap();
    path.display().to_string()
}

pub fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
}

/// The fixture entry of a test target.
pub fn endpoint(i: usize, t: &T<'_>) -> Value {
    json!({"model": "resource_server.endpoint", "pk": i + 1, "fields": {
        "endpoint_slug": t.slug, "cluster": t.cluster, "framework": t.framework,
        "model": t.model, "base_url": t.base_url}})
}

pub fn write_fixtures(dir: &std::path::Path, targets: &[T<'_>], federated: &[Value]) {
    let endpoints: Vec<Value> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"model": "resource_server.endpoint", "pk": i + 1, "fields": {
                "endpoint_slug": t.slug, "cluster": t.cluster, "framework": t.framework,
                "model": t.model, "base_url": t.base_url}})
        })
        .collect();
    std::fs::write(
        dir.join("endpoints.json"),
        serde_json::to_vec(&endpoints).unwrap(),
    )
    .unwrap();
    if !federated.is_empty() {
        std::fs::write(
            dir.join("federated_endpoints.json"),
            serde_json::to_vec(federated).unwrap(),
        )
        .unwrap();
    }
}

/// A `Write` into a shared buffer, to capture the gateway's logs.
pub struct LogBuffer(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A loopback URL nothing listens on (connection refused).
pub fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Reads a whole SSE body and returns its `data:` payloads.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .map(|d| d.trim().to_string())
        })
        .collect()
}

/// Waits (bounded) until `/status` shows `cluster` with scheduler state `want`.
#[allow(dead_code)]
pub async fn wait_scheduler(gw: &TestGateway, cluster: &str, want: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = gw.get("/resource_server/status").await;
        assert_eq!(status, 200);
        if v["clusters"][cluster]["scheduler"] == want {
            return v["clusters"][cluster].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cluster {cluster} never reached scheduler state {want}: {v}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}
