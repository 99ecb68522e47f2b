//! The record of one proxied request: filled in as the request goes, written once when it
//! ends (after the last byte, or when the client went away). Today it goes to the JSON log;
//! the request-log table is fed from the same record.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::proxy::usage::Usage;

/// The caller identity before authentication exists (also the response-cache tenant).
pub const ANONYMOUS: &str = "anonymous";

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

#[derive(Debug)]
pub struct RequestRecord {
    pub request_id: String,
    pub route: &'static str,
    /// The caller (user id, or [`ANONYMOUS`]); logged, never a metric label.
    pub user: Cow<'static, str>,
    pub model: String,
    /// The model is in the catalog (else metrics count it as `unknown`).
    pub model_known: bool,
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
    /// Answered from the response cache.
    pub cached: bool,
    /// Counts the request in flight until the record is written or dropped.
    pub in_flight: Option<crate::metrics::InFlight>,
}

impl RequestRecord {
    pub fn new(request_id: String, route: &'static str, started: Instant) -> Self {
        RequestRecord {
            request_id,
            route,
            user: Cow::Borrowed(ANONYMOUS),
            model: String::new(),
            model_known: false,
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
            cached: false,
            in_flight: None,
        }
    }

    /// Writes the record: counts it in the metrics and writes one JSON log line on the
    /// request's own logger (which carries `request_id`).
    pub fn finish(self, log: &slog::Logger, metrics: &Metrics) {
        metrics.observe_request(&self);
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let usage = self.usage.unwrap_or_default();
        slog::info!(log, "request";
            "route" => self.route,
            "user" => self.user.as_ref(),
            "model" => &self.model,
            "target" => self.target.as_deref().unwrap_or(""),
            "cluster" => self.cluster.as_deref().unwrap_or(""),
            "framework" => self.framework.as_deref().unwrap_or(""),
            "stream" => self.stream,
            "status" => self.status,
            "error_code" => self.error_code.unwrap_or(""),
            "attempts" => self.attempts,
            "ending" => self.ending.name(),
            "cache" => if self.cached { "hit" } else { "" },
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
