//! The record of one proxied request: filled in as the request goes, written once when it
//! ends (after the last byte, or when the client went away). Today it goes to the JSON log;
//! the request-log table is fed from the same record.

use std::time::{Duration, Instant};

use crate::proxy::usage::Usage;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The whole response reached the client.
    Complete,
    /// The gateway answered with an error before relaying anything.
    Rejected,
    /// The upstream failed after the response had begun (in-band error sent).
    UpstreamBroke,
    /// The upstream went quiet for longer than the idle timeout.
    IdleTimeout,
    /// The client disconnected before the end.
    ClientGone,
}

impl Ending {
    pub fn name(self) -> &'static str {
        match self {
            Ending::Complete => "complete",
            Ending::Rejected => "rejected",
            Ending::UpstreamBroke => "upstream_broke",
            Ending::IdleTimeout => "idle_timeout",
            Ending::ClientGone => "client_gone",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub request_id: String,
    pub route: &'static str,
    pub model: String,
    pub target: Option<String>,
    pub cluster: Option<String>,
    pub framework: Option<String>,
    pub stream: bool,
    pub status: u16,
    pub error_code: Option<&'static str>,
    pub attempts: u32,
    pub usage: Option<Usage>,
    pub events: u64,
    pub started: Instant,
    pub ttft: Option<Duration>,
    pub client_ip: Option<String>,
    pub ending: Ending,
}

impl RequestRecord {
    pub fn new(request_id: String, route: &'static str, started: Instant) -> Self {
        RequestRecord {
            request_id,
            route,
            model: String::new(),
            target: None,
            cluster: None,
            framework: None,
            stream: false,
            status: 0,
            error_code: None,
            attempts: 0,
            usage: None,
            events: 0,
            started,
            ttft: None,
            client_ip: None,
            ending: Ending::Complete,
        }
    }

    /// Writes the record: one JSON log line.
    pub fn finish(self, log: &slog::Logger) {
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let usage = self.usage.unwrap_or_default();
        slog::info!(log, "request";
            "request_id" => &self.request_id,
            "route" => self.route,
            "model" => &self.model,
            "target" => self.target.as_deref().unwrap_or(""),
            "cluster" => self.cluster.as_deref().unwrap_or(""),
            "framework" => self.framework.as_deref().unwrap_or(""),
            "stream" => self.stream,
            "status" => self.status,
            "error_code" => self.error_code.unwrap_or(""),
            "attempts" => self.attempts,
            "ending" => self.ending.name(),
            "tokens.prompt" => usage.prompt_tokens,
            "tokens.completion" => usage.completion_tokens,
            "tokens.total" => usage.total(),
            "tokens.reported" => self.usage.is_some(),
            "events" => self.events,
            "ttft_ms" => self.ttft.map(|d| d.as_secs_f64() * 1000.0),
            "duration_ms" => duration_ms,
            "client_ip" => self.client_ip.as_deref().unwrap_or(""),
        );
    }
}
