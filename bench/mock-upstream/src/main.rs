//! `mock-upstream --port N`: the mock OpenAI server as a process, for `bench/run.sh`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use mock_upstream::{Behavior, MockOptions, MockUpstream};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser, Debug)]
#[command(version, about = "Mock OpenAI-compatible inference server")]
struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// actix-web worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// SSE content chunks for `"stream": true` (and completion tokens otherwise).
    #[arg(long, default_value_t = 20)]
    chunks: usize,
    /// Delay between SSE events, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Delay before the response head, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Idle keep-alive of client connections, in seconds.
    #[arg(long, default_value_t = 5)]
    keep_alive_secs: u64,
    /// Do not record requests (counters still run).
    #[arg(long)]
    no_record: bool,
}

#[actix_rt::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let behavior = Behavior {
        chunks: args.chunks,
        chunk_delay: Duration::from_millis(args.chunk_delay_ms),
        latency: Duration::from_millis(args.latency_ms),
        ..Behavior::default()
    };
    let options = MockOptions {
        bind: SocketAddr::new(args.host, args.port),
        workers: args.workers,
        record: !args.no_record,
        keep_alive: Duration::from_secs(args.keep_alive_secs),
        ..MockOptions::default()
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mock = MockUpstream::start_with_options(behavior, options).await?;
    eprintln!("listening on {}", mock.url());
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!(
        "stopping: {} inference requests, {} streams completed, {} cancelled, {} connections",
        mock.request_count(),
        mock.streams_completed(),
        mock.streams_cancelled(),
        mock.connections_opened()
    );
    mock.stop().await;
    Ok(())
}
