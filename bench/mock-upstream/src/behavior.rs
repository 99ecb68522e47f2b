//! What the mock does with the next request: [`Behavior`] (changeable at run time) and
//! [`MockOptions`] (fixed when the server starts).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// How the mock answers. Change it at any time with `MockUpstream::set_behavior`; a request
/// reads the behaviour once, when it arrives.
#[derive(Clone, Debug)]
pub struct Behavior {
    /// Status for inference routes (default 200). Non-2xx answers `error_body`.
    pub status: u16,
    /// Delay before the response head (default 0).
    pub latency: Duration,
    /// SSE content chunks when the request has `"stream": true` (default 5). Also the
    /// `completion_tokens` of non-stream answers.
    pub chunks: usize,
    /// Delay between SSE events (default 0).
    pub chunk_delay: Duration,
    /// Mid-stream drop: after N SSE events the body stream fails, so the connection is
    /// aborted without the terminating chunk and without `[DONE]`.
    pub drop_after_chunks: Option<usize>,
    /// Send `Connection: close` and close the connection after every response.
    pub close_after_response: bool,
    /// Body for non-2xx statuses; `None` means an OpenAI error envelope.
    pub error_body: Option<String>,
    /// `Retry-After` seconds sent with non-2xx answers (default none).
    pub retry_after_secs: Option<u64>,
    /// Status of `GET /health` (default 200).
    pub health_status: u16,
    /// Include `usage` (non-stream) or a final usage chunk (stream, only when the request
    /// asks `stream_options.include_usage`). Default true.
    pub usage: bool,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            status: 200,
            latency: Duration::ZERO,
            chunks: 5,
            chunk_delay: Duration::ZERO,
            drop_after_chunks: None,
            close_after_response: false,
            error_body: None,
            retry_after_secs: None,
            health_status: 200,
            usage: true,
        }
    }
}

/// Server settings fixed at start.
#[derive(Clone, Debug)]
pub struct MockOptions {
    /// Address to bind; default `127.0.0.1:0` (a free port).
    pub bind: SocketAddr,
    /// actix-web workers (threads); default 1.
    pub workers: usize,
    /// Record inference requests for [`crate::MockUpstream::requests`]; default true.
    pub record: bool,
    /// How many recorded requests are kept (the newest); default 10,000.
    pub record_limit: usize,
    /// Idle keep-alive of client connections; default 5 s (actix-web's and uvicorn's default).
    pub keep_alive: Duration,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            workers: 1,
            record: true,
            record_limit: 10_000,
            keep_alive: Duration::from_secs(5),
        }
    }
}
