//! An OpenAI-compatible mock inference server for the gateway's integration tests and for
//! the benchmark (`bench/run.sh`, binary `mock-upstream`).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use mock_upstream::{Behavior, MockUpstream};
//! let mock = MockUpstream::start(Behavior { chunks: 3, ..Behavior::default() }).await?;
//! // point the gateway at mock.url() ...
//! mock.fail_next(2, 503);
//! assert_eq!(mock.request_count(), 0);
//! mock.stop().await;
//! # Ok(()) }
//! ```
//!
//! Routes: `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/rerank`,
//! `/v1/responses`, `/v1/messages`; `GET /health`, `GET /v1/models`. Anything else is a 404
//! in the OpenAI error envelope.

mod behavior;
mod bodies;
mod handlers;
mod sse;
mod state;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer};
use tokio::task::JoinHandle;

pub use behavior::{Behavior, MockOptions};
pub use state::RecordedRequest;

use state::Shared;

/// A running mock. Dropping it without [`MockUpstream::stop`] also stops the server, in the
/// background.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    handle: ServerHandle,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl MockUpstream {
    /// Binds `127.0.0.1:0` and serves in the background on the current tokio (or actix)
    /// runtime, with one worker thread.
    pub async fn start(behavior: Behavior) -> std::io::Result<MockUpstream> {
        Self::start_with_options(behavior, MockOptions::default()).await
    }

    pub async fn start_with_workers(
        behavior: Behavior,
        workers: usize,
    ) -> std::io::Result<MockUpstream> {
        Self::start_with_options(
            behavior,
            MockOptions {
                workers,
                ..MockOptions::default()
            },
        )
        .await
    }

    pub async fn start_with_options(
        behavior: Behavior,
        options: MockOptions,
    ) -> std::io::Result<MockUpstream> {
        let shared = Arc::new(Shared::new(behavior, options.record, options.record_limit));
        let listener = TcpListener::bind(options.bind)?;
        let addr = listener.local_addr()?;

        let app_shared = Arc::clone(&shared);
        let conn_shared = Arc::clone(&shared);
        let server = HttpServer::new(move || {
            App::new().configure(handlers::configure(Arc::clone(&app_shared)))
        })
        .workers(options.workers.max(1))
        .keep_alive(options.keep_alive)
        // A client that closes its side mid-stream is gone: drop the body at once (this is
        // what `streams_cancelled` observes).
        .h1_allow_half_closed(false)
        .disable_signals()
        .shutdown_timeout(1)
        .on_connect(move |_, _| Shared::bump(&conn_shared.connections_opened))
        .listen(listener)?
        .run();
        let handle = server.handle();
        let task = tokio::spawn(server);
        Ok(MockUpstream {
            addr,
            shared,
            handle,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_behavior(&self, b: Behavior) {
        self.shared.set_behavior(b);
    }

    pub fn behavior(&self) -> Behavior {
        Behavior::clone(&self.shared.behavior())
    }

    /// The next `n` inference requests answer `status` (after `latency`), then the behaviour
    /// applies again. Replaces any earlier `fail_next`.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.shared.fail_next(n, status);
    }

    /// Freezes the mock, like `kill -STOP` of a server process: connections are still
    /// accepted and requests read and counted, but none is answered (health checks
    /// included) until [`MockUpstream::thaw`]. Streams already sending continue.
    pub fn freeze(&self) {
        self.shared.set_frozen(true);
    }

    /// Ends a [`MockUpstream::freeze`]: the waiting requests are answered.
    pub fn thaw(&self) {
        self.shared.set_frozen(false);
    }

    /// Turns recording of inference requests on or off (counters always run).
    pub fn set_recording(&self, on: bool) {
        self.shared.set_recording(on);
    }

    /// The recorded inference requests, oldest first (at most `MockOptions::record_limit`,
    /// the newest).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.recorded().iter().cloned().collect()
    }

    /// Forgets the recorded requests (counters keep counting).
    pub fn clear_requests(&self) {
        self.shared.recorded().clear();
    }

    /// Inference requests received since start (not bounded by the record limit).
    pub fn request_count(&self) -> usize {
        Shared::count(&self.shared.requests)
    }

    /// `GET /health` requests received.
    pub fn health_checks(&self) -> usize {
        Shared::count(&self.shared.health_checks)
    }

    /// SSE bodies sent to the end (`[DONE]` handed to the connection).
    pub fn streams_completed(&self) -> usize {
        Shared::count(&self.shared.streams_completed)
    }

    /// SSE bodies dropped unfinished because the peer went away (deliberate
    /// `drop_after_chunks` aborts are not counted).
    pub fn streams_cancelled(&self) -> usize {
        Shared::count(&self.shared.streams_cancelled)
    }

    /// TCP connections accepted.
    pub fn connections_opened(&self) -> usize {
        self.shared.connections_opened.load(Ordering::SeqCst)
    }

    /// Polls `what` every ~5 ms until it holds or `timeout` passes; returns the last result.
    pub async fn wait_for<F: Fn(&MockUpstream) -> bool>(&self, what: F, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if what(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops accepting, closes every connection (open streams are cut) and waits, bounded,
    /// for the server task to end.
    pub async fn stop(mut self) {
        self.handle.stop(false).await;
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if self.task.is_some() {
            // The command is queued when `stop` is called; the server task acts on it.
            drop(self.handle.stop(false));
        }
    }
}
