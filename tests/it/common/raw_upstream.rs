//! A scripted HTTP/1.1 upstream on raw sockets, for what a framework-built mock cannot do:
//! announce `Keep-Alive` and close the connection after every response anyway (as
//! llama-server does after streams), and answer with exactly the bytes a test scripts.
//! Runs on its own thread and runtime, so it works whatever the test's runtime does.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct RawRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What to answer: the status, content type and body chunks (one chunk: sized body;
/// several: chunked transfer encoding).
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub chunks: Vec<Vec<u8>>,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type: "application/json; charset=utf-8",
            chunks: vec![body.into()],
            headers: Vec::new(),
        }
    }

    pub fn sse(events: &[&str]) -> Reply {
        Reply {
            status: 200,
            content_type: "text/event-stream",
            chunks: events
                .iter()
                .map(|e| format!("data: {e}\n\n").into_bytes())
                .collect(),
            headers: Vec::new(),
        }
    }
}

/// When the server closes a connection.
#[derive(Clone, Copy, Debug)]
pub enum Closing {
    /// Keep-alive as announced.
    Never,
    /// Announce `Keep-Alive: timeout=5, max=100`, then close this long after every
    /// response without reading anything more (llama-server after a stream).
    AfterResponse(Duration),
}

type Script = dyn Fn(&RawRequest) -> Reply + Send + Sync;

pub struct RawUpstream {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<RawRequest>>>,
    connections: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawUpstream {
    pub fn start(
        closing: Closing,
        script: impl Fn(&RawRequest) -> Reply + Send + Sync + 'static,
    ) -> RawUpstream {
        Self::start_on("127.0.0.1:0".parse().unwrap(), closing, script)
    }

    pub fn start_on(
        bind: SocketAddr,
        closing: Closing,
        script: impl Fn(&RawRequest) -> Reply + Send + Sync + 'static,
    ) -> RawUpstream {
        let std_listener = std::net::TcpListener::bind(bind).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<RawRequest>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let script: Arc<Script> = Arc::new(script);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (seen, conns) = (requests.clone(), connections.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                let accept = async {
                    loop {
                        let Ok((socket, _)) = listener.accept().await else {
                            continue;
                        };
                        conns.fetch_add(1, Ordering::SeqCst);
                        let (script, seen) = (script.clone(), seen.clone());
                        tokio::spawn(serve(socket, closing, script, seen));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        RawUpstream {
            addr,
            requests,
            connections,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Inference requests (health checks left out).
    pub fn inference_requests(&self) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == "POST")
            .count()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    mut socket: TcpStream,
    closing: Closing,
    script: Arc<Script>,
    seen: Arc<Mutex<Vec<RawRequest>>>,
) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some(request) = read_request(&mut socket, &mut buf).await else {
            return;
        };
        let reply = script(&request);
        seen.lock().unwrap().push(request);
        if write_reply(&mut socket, &reply, closing).await.is_err() {
            return;
        }
        if let Closing::AfterResponse(delay) = closing {
            tokio::time::sleep(delay).await;
            let _ = socket.shutdown().await;
            return;
        }
    }
}

async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<RawRequest> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut start = lines.next()?.split(' ');
    let method = start.next()?.to_string();
    let path = start.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 65536];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Some(RawRequest {
        method,
        path,
        headers,
        body,
    })
}

async fn write_reply(
    socket: &mut TcpStream,
    reply: &Reply,
    closing: Closing,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type
    );
    if matches!(closing, Closing::AfterResponse(_)) {
        out.push_str("Keep-Alive: timeout=5, max=100\r\n");
    }
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    let sized = reply.chunks.len() == 1;
    if sized {
        out.push_str(&format!(
            "Content-Length: {}\r\n\r\n",
            reply.chunks[0].len()
        ));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&reply.chunks[0]);
        return socket.write_all(&bytes).await;
    }
    out.push_str("Transfer-Encoding: chunked\r\n\r\n");
    socket.write_all(out.as_bytes()).await?;
    for chunk in &reply.chunks {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
        socket.write_all(&framed).await?;
    }
    socket.write_all(b"0\r\n\r\n").await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
