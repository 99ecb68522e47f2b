//! slog JSON logs on stdout (journald under systemd), written off the request path by
//! slog-async. Records carry dotted keys with units in names (`duration_ms`).

use slog::{o, Drain, Level, Logger};

/// Parses a level name as written in `logging.level`.
pub fn parse_level(name: &str) -> Option<Level> {
    match name.to_ascii_lowercase().as_str() {
        "trace" => Some(Level::Trace),
        "debug" => Some(Level::Debug),
        "info" => Some(Level::Info),
        "warn" | "warning" => Some(Level::Warning),
        "error" => Some(Level::Error),
        "critical" => Some(Level::Critical),
        _ => None,
    }
}

/// The process logger and the guard that flushes it when dropped (keep it until exit).
pub fn json_stdout(level: Level) -> (Logger, slog_async::AsyncGuard) {
    let json = slog_json::Json::new(std::io::stdout())
        .add_default_keys()
        .build()
        .fuse();
    let (drain, guard) = slog_async::Async::new(json)
        .chan_size(16 * 1024)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .thread_name("log-writer".into())
        .build_with_guard();
    let drain = drain.filter_level(level).fuse();
    let log = Logger::root(drain, o!("service" => "inference-gateway"));
    (log, guard)
}

/// A logger that drops everything (tests that don't look at logs).
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}
