//! The record of one proxied request: filled in as the request goes, written once when it
//! ends (after the last byte, or when the client went away): one JSON log line, and one
//! request-log row handed to the `LogWriter` (a fire-and-forget send; never a wait).

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::error::{code, ApiError};
use crate::metrics::Metrics;
use crate::proxy::usage::Usage;
use crate::quota::Admission;
use crate::routing::target::Target;
use crate::store::log_sink::LogSink;
use crate::store::{unix_ms, LogRow};

/// The caller identity before authentication exists (also the response-cache tenant).
pub const ANONYMOUS: &str = "anonymous";

/// A request-log row id, unique across processes and replicas: a random 128-bit prefix
/// drawn once per process, and a counter (cheaper than a UUID per request).
fn row_id() -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string());
    format!("{prefix}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

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
    /// Still running when the shutdown grace period ended (in-band error sent).
    Shutdown,
}

impl Ending {
    pub fn name(self) -> &'static str {
        match self {
            Ending::Complete => "complete",
            Ending::Rejected => "rejected",
            Ending::UpstreamBroke => "upstream_broke",
            Ending::IdleTimeout => "idle_timeout",
            Ending::ClientGone => "client_gone",
            Ending::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug)]
pub struct RequestRecord {
    request_id: String,
    route: &'static str,
    model: String,
    /// The model is in the catalog (else metrics count it as `unknown`).
    model_known: bool,
    /// The target of the last attempt ([`Self::on_attempt`]): its slug, cluster and
    /// framework are copied into the row only when the record is written.
    target: Option<Arc<Target>>,
    stream: bool,
    status: u16,
    error_code: Option<&'static str>,
    attempts: u32,
    usage: Option<Usage>,
    events: u64,
    started: Instant,
    ttft: Option<Duration>,
    /// The peer's address, formatted only when the record is written (off the request's
    /// critical path).
    client_ip: Option<std::net::IpAddr>,
    ending: Ending,
    /// Wall-clock start (the row's `created_at`).
    started_at: SystemTime,
    /// The caller's user id (`None` until [`Self::on_caller`], read as [`ANONYMOUS`]);
    /// logged and in the request log, never a metric label.
    user: Option<String>,
    org: String,
    /// Size of the request body, for a token estimate when the upstream reports no usage.
    request_bytes: usize,
    /// Where the row goes.
    sink: LogSink,
    /// The request body, kept only when payloads are stored.
    prompt: Option<Bytes>,
    /// The response body as relayed, collected (bounded) only when payloads are stored.
    completion: Option<Vec<u8>>,
    /// Answered from the response cache.
    cached: bool,
    /// Counts the request in flight until the record is finished (`finish`, or the
    /// accounting half of `finish_soon`) or dropped.
    in_flight: Option<crate::metrics::InFlight>,
    /// The quota admission: its in-flight slots are held until the record is finished
    /// (or dropped), and its subjects are charged the request's tokens.
    quota: Option<Admission>,
}

impl RequestRecord {
    pub fn new(request_id: String, route: &'static str, started: Instant) -> Self {
        RequestRecord {
            request_id,
            route,
            model: String::new(),
            model_known: false,
            target: None,
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
            started_at: SystemTime::now(),
            user: None,
            org: String::new(),
            request_bytes: 0,
            sink: LogSink::disabled(),
            prompt: None,
            completion: None,
            cached: false,
            in_flight: None,
            quota: None,
        }
    }

    /// Counted in flight from now; the peer's address is formatted only when the record is
    /// written.
    pub fn on_start(&mut self, in_flight: crate::metrics::InFlight, client_ip: Option<IpAddr>) {
        self.in_flight = Some(in_flight);
        self.client_ip = client_ip;
    }

    /// The caller: the request log's user and org (the user is also the cache tenant).
    pub fn on_caller(&mut self, user: &str, org: Option<&str>) {
        self.user = Some(user.to_string());
        self.org.clear();
        self.org.push_str(org.unwrap_or_default());
    }

    /// The body names `model` and asks for a stream or not.
    pub fn on_parsed(&mut self, model: &str, stream: bool) {
        self.model.clear();
        self.model.push_str(model);
        self.stream = stream;
    }

    /// The catalog serves the model (metrics label it by name rather than `unknown`).
    pub fn on_model_known(&mut self) {
        self.model_known = true;
    }

    /// Admitted by the quotas: the slots are held, and the subjects charged, at the end.
    pub fn on_admitted(&mut self, admission: Admission) {
        self.quota = Some(admission);
    }

    /// Answered from the response cache with `status`.
    pub fn on_cache_hit(&mut self, status: u16) {
        self.cached = true;
        self.status = status;
    }

    /// A relayed answer's head: `status` (its body follows).
    pub fn on_head(&mut self, status: u16) {
        self.status = status;
    }

    /// The usage a whole (not streamed) answer reported.
    pub fn on_usage(&mut self, usage: Option<Usage>) {
        self.usage = usage;
    }

    /// A relayed body ended: how, what usage it reported and how many events it had; an
    /// ending other than complete or the client leaving gets its error code.
    pub fn on_end(&mut self, ending: Ending, usage: Option<Usage>, events: u64) {
        self.ending = ending;
        self.usage = usage;
        self.events = events;
        if !matches!(ending, Ending::Complete | Ending::ClientGone) {
            self.error_code = Some(match ending {
                Ending::IdleTimeout => code::STREAM_IDLE_TIMEOUT,
                Ending::Shutdown => code::GATEWAY_SHUTDOWN,
                _ => code::STREAM_INTERRUPTED,
            });
        }
    }

    /// One more attempt, on `target`.
    pub fn on_attempt(&mut self, target: &Arc<Target>) {
        self.attempts += 1;
        self.target = Some(Arc::clone(target));
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    pub fn route(&self) -> &'static str {
        self.route
    }

    /// The model the body named ("" before it was read).
    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn model_known(&self) -> bool {
        self.model_known
    }

    pub fn user(&self) -> &str {
        self.user.as_deref().unwrap_or(ANONYMOUS)
    }

    /// The status answered (0 before any).
    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn ttft(&self) -> Option<Duration> {
        self.ttft
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    pub fn ending(&self) -> Ending {
        self.ending
    }

    /// Time since the request arrived.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The slug of the last attempt's target ("" before any).
    pub fn target_slug(&self) -> &str {
        self.target.as_ref().map_or("", |t| t.slug())
    }

    /// The request was refused with `error` before (or instead of) an answer.
    pub fn on_rejected(&mut self, error: &ApiError) {
        self.status = actix_web::ResponseError::status_code(error).as_u16();
        self.error_code = Some(error.code());
        self.ending = Ending::Rejected;
    }

    /// An answer's head arrived `ttft` after its attempt started.
    pub fn on_first_byte(&mut self, ttft: Duration) {
        self.ttft = Some(ttft);
    }

    /// The answer (whole, not streamed) is `status`.
    pub fn on_answer(&mut self, status: u16) {
        self.status = status;
        self.ending = Ending::Complete;
    }

    /// Sends rows to `sink`; starts collecting the completion when payloads are stored.
    pub fn log_to(&mut self, sink: LogSink) {
        if sink.payload_limit().is_some() {
            self.completion = Some(Vec::new());
        }
        self.sink = sink;
    }

    /// Keeps the request body as the prompt, when payloads are stored.
    pub fn keep_prompt(&mut self, body: &Bytes) {
        self.request_bytes = body.len();
        if let Some(limit) = self.sink.payload_limit() {
            self.prompt = Some(body.slice(..body.len().min(limit)));
        }
    }

    /// Adds relayed bytes to the completion (up to the payload limit), when collecting.
    pub fn capture(&mut self, chunk: &[u8]) {
        if let (Some(buf), Some(limit)) = (&mut self.completion, self.sink.payload_limit()) {
            let room = limit.saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
    }

    /// Tokens for the row: the upstream's own usage when it reported some (exact); else,
    /// for a relayed answer, an estimate (prompt: request bytes / 4; completion: one token
    /// per streamed event); else none. The bool says whether they are estimated.
    pub fn tokens(&self) -> (u64, u64, u64, bool) {
        if let Some(u) = self.usage {
            return (u.prompt_tokens, u.completion_tokens, u.total(), false);
        }
        let relayed = (200..300).contains(&self.status) && self.target.is_some();
        if !relayed {
            return (0, 0, 0, false);
        }
        let prompt = (self.request_bytes as u64).div_ceil(4);
        let completion = self.events;
        (prompt, completion, prompt + completion, true)
    }

    /// The request-log row of this record, built by moving its strings (no copies: the
    /// record is finished with).
    fn into_row(self, latency: Duration, client_ip: Option<String>) -> LogRow {
        let (prompt_tokens, completion_tokens, total_tokens, tokens_estimated) = self.tokens();
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        LogRow {
            id: row_id(),
            created_at: unix_ms(self.started_at),
            status: i32::from(self.status),
            error_code: self.error_code.map(Cow::Borrowed),
            prompt_tokens: to_i64(prompt_tokens),
            completion_tokens: to_i64(completion_tokens),
            total_tokens: to_i64(total_tokens),
            tokens_estimated,
            latency_ms: latency.as_secs_f64() * 1000.0,
            ttft_ms: self.ttft.map(|d| d.as_secs_f64() * 1000.0),
            stream: self.stream,
            attempts: i32::try_from(self.attempts).unwrap_or(i32::MAX),
            ending: Cow::Borrowed(self.ending.name()),
            route: Cow::Borrowed(self.route),
            prompt: self.prompt.as_deref().map(text),
            completion: self.completion.as_deref().map(text),
            request_id: self.request_id,
            user_id: self.user.unwrap_or_else(|| ANONYMOUS.to_string()),
            org_id: self.org,
            model: self.model,
            cluster: self
                .target
                .as_ref()
                .map(|t| t.spec.cluster.clone())
                .unwrap_or_default(),
            framework: self
                .target
                .as_ref()
                .map(|t| t.spec.framework.clone())
                .unwrap_or_default(),
            target: self
                .target
                .as_ref()
                .map(|t| t.spec.slug.clone())
                .unwrap_or_default(),
            client_ip,
        }
    }

    /// Writes the record: counts it in the metrics, charges the tokens (reported, else
    /// estimated) to the quota subjects, freeing their slots, writes one JSON log line
    /// ([`AccessLine`]), and sends one row to the request log.
    pub fn finish(mut self, log: &slog::Logger, metrics: &Metrics) {
        let duration = self.account(metrics);
        self.write(log, duration);
    }

    /// [`finish`](Self::finish) for a response whose last bytes are about to be written:
    /// the accounting (metrics, quota charge, slots, in-flight) now, the log line and the
    /// row once the current task yields, i.e. after the dispatcher has flushed the response
    /// to the client. Formatting them is most of `finish`'s cost (≈ 13k of 15k
    /// instructions), which would otherwise sit between the last upstream byte and the
    /// client's. The records wait in a per-thread queue that one task on the thread's
    /// arbiter writes out (spawned by a record that finds no writer due, so a busy worker
    /// spawns one task for many records). Without an arbiter, or with one that has
    /// stopped, the task cannot start and is dropped, and its drop writes the queue at
    /// once: nothing waits for a task that will never run.
    pub fn finish_soon(mut self, log: slog::Logger, metrics: &Metrics) {
        let duration = self.account(metrics);
        DEFERRED.with_borrow_mut(|queue| queue.push_back((self, log, duration)));
        if !WRITER_DUE.replace(true) {
            let writer = WriteDeferred::new();
            // `ArbiterHandle::spawn`, not `spawn_local`: it returns (and drops the task)
            // where `spawn_local` would panic, e.g. while a worker shuts down.
            match actix_rt::Arbiter::try_current() {
                Some(arbiter) => {
                    arbiter.spawn(async move { drop(writer) });
                }
                None => drop(writer),
            }
        }
    }

    /// Counts the request in the metrics, charges its tokens and frees its quota slots and
    /// its in-flight count; returns how long it took.
    fn account(&mut self, metrics: &Metrics) -> Duration {
        let duration = self.started.elapsed();
        metrics.observe_request(self);
        if let Some(admission) = self.quota.take() {
            admission.charge(self.tokens().2);
        }
        self.in_flight = None;
        duration
    }

    fn write(mut self, log: &slog::Logger, duration: Duration) {
        let client_ip = self.client_ip.map(|ip| ip.to_string());
        slog::info!(log, "request"; AccessLine {
            record: &self,
            duration,
            client_ip: client_ip.as_deref(),
        });
        let sink = std::mem::replace(&mut self.sink, LogSink::disabled());
        if sink.is_enabled() {
            sink.send(self.into_row(duration, client_ip));
        }
    }
}

thread_local! {
    /// This thread's records waiting for their log line and row
    /// ([`RequestRecord::finish_soon`]).
    static DEFERRED: RefCell<VecDeque<(RequestRecord, slog::Logger, Duration)>> =
        const { RefCell::new(VecDeque::new()) };
    /// A [`WriteDeferred`] is on its way for this thread's queue.
    static WRITER_DUE: Cell<bool> = const { Cell::new(false) };
}

/// [`WriteDeferred`]s not yet done, in every thread: while there are any, some answered
/// request has not handed its row to the `LogWriter` yet (its `Flush` waits for none).
static WRITERS_DUE: AtomicU64 = AtomicU64::new(0);

/// Whether every answered request has handed over its log line and row (see
/// [`RequestRecord::finish_soon`]).
pub fn deferred_written() -> bool {
    WRITERS_DUE.load(Ordering::Acquire) == 0
}

/// Writes this thread's deferred records, in order, when dropped: when its task runs, or
/// when the task is dropped unrun.
struct WriteDeferred;

impl WriteDeferred {
    fn new() -> Self {
        WRITERS_DUE.fetch_add(1, Ordering::AcqRel);
        WriteDeferred
    }
}

/// Counts a writer done when dropped: after its queue is written, or while unwinding.
struct WriterDone;

impl Drop for WriterDone {
    fn drop(&mut self) {
        WRITERS_DUE.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for WriteDeferred {
    fn drop(&mut self) {
        let _done = WriterDone;
        // Cleared first: if a write panicked half-way, the next record schedules another
        // writer for what is left.
        WRITER_DUE.set(false);
        // One at a time, the queue not borrowed while a record is written.
        while let Some((record, log, duration)) = DEFERRED.with_borrow_mut(VecDeque::pop_front) {
            record.write(&log, duration);
        }
    }
}

/// The `request` log line's fields, `request_id` first. A field with nothing to say (no
/// target chosen, no error, no cache hit, no first token, no events, no peer address) is
/// left out rather than written empty: each field costs the JSON drain as much as a short
/// string copy, on every request.
struct AccessLine<'a> {
    record: &'a RequestRecord,
    duration: Duration,
    client_ip: Option<&'a str>,
}

impl slog::KV for AccessLine<'_> {
    fn serialize(&self, _: &slog::Record, s: &mut dyn slog::Serializer) -> slog::Result {
        let r = self.record;
        fn some(s: &mut dyn slog::Serializer, key: slog::Key, value: Option<&str>) -> slog::Result {
            match value {
                Some(v) if !v.is_empty() => s.emit_str(key, v),
                _ => Ok(()),
            }
        }
        s.emit_str("request_id", &r.request_id)?;
        s.emit_str("route", r.route)?;
        s.emit_str("user", r.user())?;
        some(s, "model", Some(&r.model))?;
        let target = r.target.as_ref().map(|t| &t.spec);
        some(s, "target", target.map(|t| t.slug.as_str()))?;
        some(s, "cluster", target.map(|t| t.cluster.as_str()))?;
        some(s, "framework", target.map(|t| t.framework.as_str()))?;
        s.emit_bool("stream", r.stream)?;
        s.emit_u16("status", r.status)?;
        some(s, "error_code", r.error_code)?;
        s.emit_u32("attempts", r.attempts)?;
        s.emit_str("ending", r.ending.name())?;
        if r.cached {
            s.emit_str("cache", "hit")?;
        }
        let usage = r.usage.unwrap_or_default();
        s.emit_u64("tokens.prompt", usage.prompt_tokens)?;
        s.emit_u64("tokens.completion", usage.completion_tokens)?;
        s.emit_u64("tokens.total", usage.total())?;
        s.emit_bool("tokens.reported", r.usage.is_some())?;
        if r.events > 0 {
            s.emit_u64("events", r.events)?;
        }
        if let Some(ttft) = r.ttft {
            s.emit_f64("ttft_ms", ttft.as_secs_f64() * 1000.0)?;
        }
        s.emit_f64("duration_ms", self.duration.as_secs_f64() * 1000.0)?;
        some(s, "client_ip", self.client_ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target_t() -> Arc<Target> {
        let spec = crate::fixtures::TargetSpec::for_test("t", "c");
        Arc::new(Target::new(spec, None, Duration::from_secs(1)))
    }

    fn record() -> RequestRecord {
        let mut r = RequestRecord::new("rid".into(), "chat", Instant::now());
        r.model = "llama".into();
        r.request_bytes = 41;
        r
    }

    #[test]
    fn reported_usage_is_exact() {
        let mut r = record();
        r.status = 200;
        r.on_attempt(&target_t());
        r.usage = Some(Usage {
            prompt_tokens: 5,
            completion_tokens: 7,
            total_tokens: 0,
        });
        assert_eq!(r.tokens(), (5, 7, 12, false));
        let row = r.into_row(Duration::from_millis(3), None);
        assert_eq!(
            (row.prompt_tokens, row.completion_tokens, row.total_tokens),
            (5, 7, 12)
        );
        assert!(!row.tokens_estimated);
        assert_eq!(row.latency_ms, 3.0);
        assert_eq!(
            (row.model.as_str(), row.target.as_str(), row.status),
            ("llama", "t", 200)
        );
    }

    #[test]
    fn relayed_answers_without_usage_are_estimated_and_rejections_count_nothing() {
        let mut r = record();
        r.status = 200;
        r.on_attempt(&target_t());
        r.events = 9;
        assert_eq!(r.tokens(), (11, 9, 20, true));
        let mut rejected = record();
        rejected.status = 404;
        rejected.error_code = Some("model_not_found");
        assert_eq!(rejected.tokens(), (0, 0, 0, false));
        let row = rejected.into_row(Duration::ZERO, None);
        assert_eq!(row.error_code.as_deref(), Some("model_not_found"));
        assert_eq!(row.target, "");
    }

    /// The one `request` line `finish` writes for `r`, parsed.
    fn access_line(r: RequestRecord) -> serde_json::Map<String, serde_json::Value> {
        let sink = crate::logging::Captured::default();
        let (log, guard) = crate::logging::json_to(sink.clone(), slog::Level::Info);
        r.finish(&log, &Metrics::new());
        drop((log, guard));
        let text = sink.text();
        let mut lines = text.lines();
        let line = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert!(lines.next().is_none(), "{text}");
        line
    }

    #[test]
    fn the_access_line_names_the_request_and_leaves_out_what_did_not_happen() {
        let mut r = record();
        r.status = 404;
        r.error_code = Some("model_not_found");
        r.ending = Ending::Rejected;
        let line = access_line(r);
        assert_eq!(line["msg"], "request");
        assert_eq!(line["request_id"], "rid");
        assert_eq!(line["model"], "llama");
        assert_eq!(line["status"], 404);
        assert_eq!(line["error_code"], "model_not_found");
        assert_eq!(line["ending"], "rejected");
        assert_eq!(line["tokens.total"], 0);
        for absent in [
            "target",
            "cluster",
            "framework",
            "cache",
            "events",
            "ttft_ms",
            "client_ip",
        ] {
            assert!(!line.contains_key(absent), "{absent} in {line:?}");
        }

        let mut r = record();
        r.status = 200;
        r.on_attempt(&target_t());
        r.stream = true;
        r.events = 3;
        r.ttft = Some(Duration::from_millis(2));
        r.cached = true;
        r.client_ip = Some(std::net::Ipv4Addr::LOCALHOST.into());
        r.usage = Some(Usage {
            prompt_tokens: 5,
            completion_tokens: 7,
            total_tokens: 0,
        });
        let line = access_line(r);
        assert_eq!(
            (&line["target"], &line["cluster"], &line["framework"]),
            (&"t".into(), &"c".into(), &"vllm".into())
        );
        assert_eq!(
            (&line["cache"], &line["events"]),
            (&"hit".into(), &3.into())
        );
        assert_eq!(line["ttft_ms"], 2.0);
        assert_eq!(line["client_ip"], "127.0.0.1");
        assert_eq!(
            (&line["tokens.total"], &line["tokens.reported"]),
            (&12.into(), &true.into())
        );
        assert!(!line.contains_key("error_code"));
        assert_eq!(line.keys().filter(|k| *k == "request_id").count(), 1);
    }

    /// A drain counting the lines logged through it, as they are logged.
    struct Count(std::sync::Arc<AtomicU64>);

    impl slog::Drain for Count {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, _: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn counting() -> (slog::Logger, std::sync::Arc<AtomicU64>) {
        let lines = std::sync::Arc::new(AtomicU64::new(0));
        let log = slog::Logger::root(Count(lines.clone()), slog::o!());
        (log, lines)
    }

    /// Yields (ten times at most) until `lines` lines were logged; asserts they were.
    async fn yield_until(lines: &AtomicU64, n: u64) {
        for _ in 0..10 {
            if lines.load(Ordering::SeqCst) == n {
                break;
            }
            actix_rt::task::yield_now().await;
        }
        assert_eq!(lines.load(Ordering::SeqCst), n);
    }

    #[actix_rt::test]
    async fn finish_soon_accounts_at_once_and_writes_once_the_task_yields() {
        let (log, lines) = counting();
        let metrics = Metrics::new();
        let mut r = record();
        r.in_flight = Some(crate::metrics::InFlight::new(&metrics.in_flight));
        assert_eq!(metrics.in_flight.get(), 1);
        r.finish_soon(log, &metrics);
        assert_eq!(metrics.in_flight.get(), 0, "accounted before the line");
        assert_eq!(
            lines.load(Ordering::SeqCst),
            0,
            "the line waits for a yield"
        );
        yield_until(&lines, 1).await;
    }

    #[actix_rt::test]
    async fn many_deferred_records_are_written_by_one_task() {
        let (log, lines) = counting();
        let metrics = Metrics::new();
        for _ in 0..3 {
            record().finish_soon(log.clone(), &metrics);
        }
        assert_eq!(DEFERRED.with_borrow(VecDeque::len), 3);
        assert_eq!(lines.load(Ordering::SeqCst), 0);
        yield_until(&lines, 3).await;
        assert_eq!(DEFERRED.with_borrow(VecDeque::len), 0);
    }

    #[test]
    fn finish_soon_outside_an_arbiter_and_an_unrun_writer_write_at_once() {
        let (log, lines) = counting();
        record().finish_soon(log.clone(), &Metrics::new());
        assert_eq!(lines.load(Ordering::SeqCst), 1);
        // What a dropped, never-run writer task leaves behind is written by its drop.
        DEFERRED.with_borrow_mut(|q| q.push_back((record(), log, Duration::ZERO)));
        drop(WriteDeferred::new());
        assert_eq!(lines.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_writer_handed_to_a_stopped_arbiter_writes_at_once() {
        let (log, lines) = counting();
        actix_rt::System::new().block_on(async move {
            let arbiter = actix_rt::Arbiter::new();
            let handle = arbiter.handle();
            arbiter.stop();
            arbiter.join().unwrap();
            DEFERRED.with_borrow_mut(|q| q.push_back((record(), log, Duration::ZERO)));
            let writer = WriteDeferred::new();
            assert!(!handle.spawn(async move { drop(writer) }));
        });
        assert_eq!(lines.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn payloads_are_kept_only_when_asked_and_bounded() {
        let mut r = record();
        r.keep_prompt(&Bytes::from_static(b"{\"model\":\"llama\"}"));
        r.capture(b"data: hi");
        assert_eq!(r.request_bytes, 17);
        let row = r.into_row(Duration::ZERO, None);
        assert_eq!((row.prompt, row.completion), (None, None));
    }
}
