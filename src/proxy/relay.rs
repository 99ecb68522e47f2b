//! The one stream between the upstream body and the client: no channel, so backpressure
//! reaches the upstream by itself. It forwards bytes unchanged (SSE regrouped at event
//! boundaries), reads usage, ends a stream that goes quiet, turns an upstream failure after
//! the first byte into a final in-band SSE error event, and on drop (client gone) drops the
//! upstream connection, releases the lease and writes the request record.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;
use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};

use crate::cache::{CacheKey, ResponseCache};
use crate::error::{code, envelope};
use crate::metrics::Metrics;
use crate::proxy::record::{Ending, RequestRecord};
use crate::proxy::shutdown_cut;
use crate::proxy::sse::SseSplitter;
use crate::proxy::usage::UsageMeter;
use crate::routing::target::{Lease, Verdict};

/// Largest non-streaming body kept aside to read usage from (bodies pass through whole
/// either way; a larger one just goes unmetered).
const METER_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// How the body is framed, which decides how it is metered and how failures are reported.
pub enum Framing {
    /// `text/event-stream`: whole events only; failures become an SSE error event.
    Sse(SseSplitter),
    /// A JSON body: kept aside (bounded) and read for usage at the end. `expected` is the
    /// upstream's Content-Length, checked at the end.
    Json {
        parts: Vec<Bytes>,
        len: usize,
        received: u64,
        expected: Option<u64>,
    },
    /// Anything else: passed through, not metered.
    Opaque,
}

impl Framing {
    pub fn new(content_type: &str, content_length: Option<u64>) -> Framing {
        if content_type.starts_with("text/event-stream") {
            Framing::Sse(SseSplitter::default())
        } else if content_type.contains("json") {
            Framing::Json {
                parts: Vec::new(),
                len: 0,
                received: 0,
                expected: content_length,
            }
        } else {
            Framing::Opaque
        }
    }
}

/// What the relay needs to finish a request: the lease to release and the record to write.
pub struct Finish {
    pub lease: Lease,
    pub record: RequestRecord,
    /// The process logger (lines about the request name `record.request_id()`).
    pub log: slog::Logger,
    pub metrics: std::sync::Arc<Metrics>,
    /// Set for cacheable requests: where a whole, valid JSON body is stored.
    pub cache: Option<CacheStore>,
}

/// Where the relay stores a cacheable answer once it is complete and valid.
pub struct CacheStore {
    pub cache: std::sync::Arc<ResponseCache>,
    pub key: CacheKey,
    pub status: u16,
    pub content_type: String,
}

pin_project! {
    pub struct Relay<S> {
        #[pin]
        upstream: S,
        #[pin]
        idle: Sleep,
        // Wakes the relay when the shutdown grace period ends (see `shutdown_cut`).
        #[pin]
        cut: OwnedNotified,
        idle_timeout: Duration,
        first: Option<Bytes>,
        framing: Framing,
        meter: UsageMeter,
        finish: Option<Finish>,
        done: bool,
        hide_usage: bool,
    }

    impl<S> PinnedDrop for Relay<S> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(finish) = this.finish.take() {
                // Dropped before the end: the client went away (or the server closed the
                // connection at shutdown). The upstream body (and its connection) is
                // dropped with us, so the backend stops generating.
                let ending = if shutdown_cut::is_cut() {
                    Ending::Shutdown
                } else {
                    Ending::ClientGone
                };
                complete(finish, this.meter, ending, Verdict::Neutral);
            }
        }
    }
}

impl<S> Relay<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>>,
{
    /// `first` is the first body chunk, already read (the gateway waits for it before
    /// answering, so an upstream that dies before sending anything can still fail over).
    pub fn new(
        upstream: S,
        first: Option<Bytes>,
        framing: Framing,
        idle_timeout: Duration,
        finish: Finish,
    ) -> Self {
        Relay {
            upstream,
            idle: tokio::time::sleep(idle_timeout),
            cut: shutdown_cut::signal(),
            idle_timeout,
            first,
            framing,
            meter: UsageMeter::default(),
            finish: Some(finish),
            done: false,
            hide_usage: false,
        }
    }

    /// Hides the `usage` the gateway asked for (`stream_options.include_usage`, to charge
    /// tokens) and the client did not: the usage-only event (`"choices":[]` with `usage`)
    /// is dropped, or relayed without `usage` when it carries more (`timings`). It is
    /// still metered.
    pub fn hide_usage_event(mut self, hide: bool) -> Self {
        self.hide_usage = hide;
        self
    }
}

/// True for the usage-only chunk of an OpenAI stream: `"choices":[]` and a `usage` object.
fn is_usage_only(data: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Chunk<'a> {
        #[serde(borrow)]
        choices: Option<Vec<&'a serde_json::value::RawValue>>,
        usage: Option<&'a serde_json::value::RawValue>,
    }
    serde_json::from_slice::<Chunk>(data).is_ok_and(|c| {
        c.choices.is_some_and(|ch| ch.is_empty()) && c.usage.is_some_and(|u| u.get() != "null")
    })
}

/// Length of the first event in `buf`, its blank line ("\n\n" or "\n\r\n") included.
fn event_end(buf: &[u8]) -> usize {
    for i in 0..buf.len() {
        if buf[i] != b'\n' {
            continue;
        }
        match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => return i + 2,
            (Some(b'\r'), Some(b'\n')) => return i + 3,
            _ => {}
        }
    }
    buf.len()
}

/// The members of a chunk every OpenAI stream event has; a usage-only event with nothing
/// else in it carries no news once its `usage` is gone.
const CHUNK_ENVELOPE: [&str; 8] = [
    "id",
    "object",
    "created",
    "model",
    "system_fingerprint",
    "service_tier",
    "obfuscation",
    "choices",
];

/// A JSON object's members in order, each value as its raw text.
struct Members<'a>(Vec<(std::borrow::Cow<'a, str>, &'a serde_json::value::RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// The usage-only event's JSON without its `usage`, every other byte as the backend sent
/// it; `None` when nothing but the chunk's envelope is left (the event is dropped whole).
/// llama-server, for one, puts `timings` on that event.
fn without_usage(data: &[u8]) -> Option<Vec<u8>> {
    let Members(members) = serde_json::from_slice(data).ok()?;
    let rest: Vec<_> = members.iter().filter(|(k, _)| k != "usage").collect();
    if rest
        .iter()
        .all(|(k, _)| CHUNK_ENVELOPE.contains(&k.as_ref()))
    {
        return None;
    }
    let mut out = Vec::with_capacity(data.len());
    out.push(b'{');
    for (i, (key, value)) in rest.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key.as_ref()).ok()?;
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
    Some(out)
}

/// Whole SSE events without the `usage` the gateway asked for: a usage-only event is
/// dropped, or kept without its `usage` when it carries other fields. `None` when nothing
/// is left. Events without `"usage"` in them pass with no parse and no copy.
fn drop_usage_only_events(events: Bytes) -> Option<Bytes> {
    if !crate::proxy::usage::mentions_usage(&events) {
        return Some(events);
    }
    let mut kept = bytes::BytesMut::with_capacity(events.len());
    let mut rest: &[u8] = &events;
    while !rest.is_empty() {
        let end = event_end(rest);
        let (event, tail) = rest.split_at(end);
        rest = tail;
        let usage_data = event.split(|b| *b == b'\n').find_map(|line| {
            line.strip_prefix(b"data:")
                .map(|d| d.trim_ascii())
                .filter(|d| is_usage_only(d))
        });
        match usage_data {
            None => kept.extend_from_slice(event),
            Some(data) => {
                if let Some(stripped) = without_usage(data) {
                    // `data` lies inside `event`: splice the new JSON in its place.
                    let start = data.as_ptr() as usize - event.as_ptr() as usize;
                    kept.extend_from_slice(&event[..start]);
                    kept.extend_from_slice(&stripped);
                    kept.extend_from_slice(&event[start + data.len()..]);
                }
            }
        }
    }
    (!kept.is_empty()).then(|| kept.freeze())
}

/// Releases the lease with its verdict and writes the record.
fn complete(mut finish: Finish, meter: &UsageMeter, ending: Ending, verdict: Verdict) {
    finish.record.on_end(ending, meter.usage(), meter.events());
    finish.lease.set_verdict(verdict);
    let Finish {
        lease,
        record,
        log,
        metrics,
        ..
    } = finish;
    drop(lease);
    record.finish_soon(log, &metrics);
}

/// Adds bytes sent to the client to the record's completion (when payloads are stored).
fn capture(finish: &mut Option<Finish>, out: &Bytes) {
    if let Some(f) = finish {
        f.record.capture(out);
    }
}

/// The final event of a stream the upstream broke: an OpenAI error object, which the SDKs
/// raise as an exception.
fn sse_error_event(message: &str, code: &str) -> Bytes {
    let body = envelope(message, "server_error", None, code);
    Bytes::from(format!("data: {body}\n\n"))
}

impl<S> Relay<S> {
    /// Meters one chunk and decides what of it to send now.
    fn accept(
        framing: &mut Framing,
        meter: &mut UsageMeter,
        hide_usage: bool,
        chunk: Bytes,
    ) -> Option<Bytes> {
        match framing {
            Framing::Sse(splitter) => {
                let events = splitter.push(chunk)?;
                meter.observe_events(&events);
                if hide_usage {
                    drop_usage_only_events(events)
                } else {
                    Some(events)
                }
            }
            Framing::Json {
                parts,
                len,
                received,
                ..
            } => {
                *received += chunk.len() as u64;
                if *len + chunk.len() <= METER_BODY_LIMIT {
                    *len += chunk.len();
                    parts.push(chunk.clone());
                } else {
                    parts.clear();
                    *len = usize::MAX / 2;
                }
                Some(chunk)
            }
            Framing::Opaque => Some(chunk),
        }
    }
}

impl<S> Stream for Relay<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>>,
{
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if shutdown_cut::is_cut() {
            return Self::cut_short(this.framing, this.meter, this.finish, this.done);
        }
        if let Some(first) = this.first.take() {
            if let Some(out) = Self::accept(this.framing, this.meter, *this.hide_usage, first) {
                capture(this.finish, &out);
                return Poll::Ready(Some(Ok(out)));
            }
        }
        loop {
            match this.upstream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.idle
                        .as_mut()
                        .reset(Instant::now() + *this.idle_timeout);
                    if let Some(out) =
                        Self::accept(this.framing, this.meter, *this.hide_usage, chunk)
                    {
                        capture(this.finish, &out);
                        return Poll::Ready(Some(Ok(out)));
                    }
                    // Only part of an event: wait for the rest.
                }
                Poll::Ready(None) => {
                    *this.done = true;
                    // awc ends the body quietly when the connection drops between chunks,
                    // so check that the body really is whole before calling it complete.
                    let (tail, broken) = match this.framing {
                        Framing::Sse(splitter) => {
                            if !splitter.is_clean() {
                                (None, Some("stream ended in the middle of an event"))
                            } else if !this.meter.saw_terminal() {
                                (None, Some("stream ended without its final event"))
                            } else {
                                (splitter.finish(), None)
                            }
                        }
                        Framing::Json {
                            parts,
                            len,
                            received,
                            expected,
                        } => {
                            let whole = *len <= METER_BODY_LIMIT;
                            // One part (the usual case) is read in place; more are joined.
                            let joined;
                            let body: &[u8] = match parts.as_slice() {
                                [one] if whole => one,
                                _ if whole => {
                                    joined = parts.concat();
                                    &joined
                                }
                                _ => &[],
                            };
                            if expected.is_some_and(|n| n != *received) {
                                (None, Some("body shorter than its Content-Length"))
                            } else if expected.is_none()
                                && whole
                                && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err()
                            {
                                // Chunked, so no length to check: a cut body is bad JSON.
                                (None, Some("body is cut-off JSON"))
                            } else {
                                this.meter.observe_json(body);
                                let store = this.finish.as_mut().and_then(|f| f.cache.take());
                                if let Some(store) = store {
                                    if whole {
                                        store.cache.insert(
                                            store.key,
                                            store.status,
                                            store.content_type,
                                            Bytes::copy_from_slice(body),
                                        );
                                    }
                                }
                                (None, None)
                            }
                        }
                        Framing::Opaque => (None, None),
                    };
                    if let Some(cause) = broken {
                        return Poll::Ready(Self::fail(
                            this.framing,
                            this.meter,
                            this.finish,
                            Ending::UpstreamBroke,
                            format!("upstream {cause}"),
                        ));
                    }
                    if let Some(tail) = &tail {
                        capture(this.finish, tail);
                    }
                    if let Some(finish) = this.finish.take() {
                        let ttfb = finish.record.ttft().unwrap_or_default();
                        complete(
                            finish,
                            this.meter,
                            Ending::Complete,
                            Verdict::Success { ttfb },
                        );
                    }
                    return Poll::Ready(tail.map(Ok));
                }
                Poll::Ready(Some(Err(e))) => {
                    *this.done = true;
                    let message = format!("upstream stream failed: {e}");
                    return Poll::Ready(Self::fail(
                        this.framing,
                        this.meter,
                        this.finish,
                        Ending::UpstreamBroke,
                        message,
                    ));
                }
                Poll::Pending => {
                    if this.cut.as_mut().poll(cx).is_ready() {
                        return Self::cut_short(this.framing, this.meter, this.finish, this.done);
                    }
                    if this.idle.as_mut().poll(cx).is_ready() {
                        *this.done = true;
                        let message = format!(
                            "upstream sent nothing for {} s",
                            this.idle_timeout.as_secs()
                        );
                        return Poll::Ready(Self::fail(
                            this.framing,
                            this.meter,
                            this.finish,
                            Ending::IdleTimeout,
                            message,
                        ));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S> Relay<S> {
    /// Ends the response because the shutdown grace period is over (the flag was already
    /// set when the relay was polled, or its `cut` signal fired while it waited).
    fn cut_short(
        framing: &mut Framing,
        meter: &UsageMeter,
        finish: &mut Option<Finish>,
        done: &mut bool,
    ) -> Poll<Option<Result<Bytes, actix_web::Error>>> {
        *done = true;
        Poll::Ready(Self::fail(
            framing,
            meter,
            finish,
            Ending::Shutdown,
            String::new(),
        ))
    }

    /// Ends the response after an upstream failure: an SSE stream gets a final error event
    /// (partial events were held back, so it is well-formed); any other body is cut off,
    /// which the client sees as an incomplete response.
    fn fail(
        framing: &mut Framing,
        meter: &UsageMeter,
        finish: &mut Option<Finish>,
        ending: Ending,
        cause: String,
    ) -> Option<Result<Bytes, actix_web::Error>> {
        let (client_message, code) = match ending {
            Ending::IdleTimeout => (
                "The model stopped sending output before finishing.",
                code::STREAM_IDLE_TIMEOUT,
            ),
            Ending::Shutdown => (
                "The gateway is restarting; the output is incomplete. Retry the request.",
                code::GATEWAY_SHUTDOWN,
            ),
            _ => (
                "The model's response was interrupted; the output is incomplete.",
                code::STREAM_INTERRUPTED,
            ),
        };
        if let Some(f) = finish.take() {
            if ending == Ending::Shutdown {
                // Not the target's fault.
                slog::warn!(f.log, "stream ended by shutdown";
                    "request_id" => f.record.request_id(), "target" => f.record.target_slug());
                complete(f, meter, ending, Verdict::Neutral);
            } else {
                slog::warn!(f.log, "upstream failed mid-response";
                    "request_id" => f.record.request_id(), "target" => f.record.target_slug(),
                    "error" => &cause);
                complete(f, meter, ending, Verdict::Failure { error: cause });
            }
        }
        match framing {
            Framing::Sse(_) => Some(Ok(sse_error_event(client_message, code))),
            _ => Some(Err(actix_web::error::ErrorBadGateway(client_message))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::TargetSpec;
    use crate::routing::target::Target;
    use futures_util::{stream, StreamExt};
    use std::sync::Arc;
    use std::time::Instant as StdInstant;

    fn lease() -> (Arc<Target>, Lease) {
        let spec = TargetSpec::for_test("t", "c");
        let target = Arc::new(Target::new(spec, None, Duration::from_secs(1)));
        let lease = target.try_lease().unwrap();
        (target, lease)
    }

    fn finish(lease: Lease) -> Finish {
        Finish {
            lease,
            metrics: Arc::new(Metrics::new()),
            cache: None,
            record: RequestRecord::new("rid".into(), "chat", StdInstant::now()),
            log: crate::logging::discard(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_ends_with_an_idle_timeout_event() {
        let (target, lease) = lease();
        let upstream = stream::iter(vec![Ok::<_, PayloadError>(Bytes::from_static(
            b"data: {\"a\":1}\n\n",
        ))])
        .chain(stream::pending());
        let relay = Relay::new(
            upstream,
            None,
            Framing::new("text/event-stream", None),
            Duration::from_secs(120),
            finish(lease),
        );
        let started = Instant::now();
        let items: Vec<_> = relay.collect().await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(120),
            "ends exactly at the idle timeout"
        );
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[0].as_ref().unwrap(),
            &Bytes::from_static(b"data: {\"a\":1}\n\n")
        );
        let last = String::from_utf8(items[1].as_ref().unwrap().to_vec()).unwrap();
        assert!(last.starts_with("data: {\"error\""), "{last}");
        assert!(last.contains("stream_idle_timeout"));
        assert_eq!(target.in_flight(), 0, "lease released");
        assert_eq!(
            target.failures_total(),
            1,
            "idle timeout counts as a target failure"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_keep_a_slow_stream_alive() {
        let (target, lease) = lease();
        let upstream = stream::iter(0..5)
            .then(|i| async move {
                tokio::time::sleep(Duration::from_secs(100)).await;
                Ok::<_, PayloadError>(Bytes::from(format!("data: {{\"i\":{i}}}\n\n")))
            })
            .chain(stream::once(async {
                Ok(Bytes::from_static(b"data: [DONE]\n\n"))
            }));
        let relay = Relay::new(
            upstream,
            None,
            Framing::new("text/event-stream", None),
            Duration::from_secs(120),
            finish(lease),
        );
        let items: Vec<_> = relay.collect().await;
        assert_eq!(items.len(), 6);
        assert!(items.iter().all(|i| i.is_ok()));
        assert_eq!(target.failures_total(), 0);
    }

    #[tokio::test]
    async fn json_body_shorter_than_content_length_is_cut_off() {
        let (target, lease) = lease();
        let upstream = stream::iter(vec![Ok::<_, PayloadError>(Bytes::from_static(
            b"{\"id\":1",
        ))]);
        let relay = Relay::new(
            upstream,
            None,
            Framing::new("application/json", Some(100)),
            Duration::from_secs(5),
            finish(lease),
        );
        let items: Vec<_> = relay.collect().await;
        assert!(items[0].is_ok());
        assert!(
            items[1].is_err(),
            "the client must see an incomplete response"
        );
        assert_eq!(target.failures_total(), 1);
    }

    #[tokio::test]
    async fn chunked_json_cut_short_is_cut_off() {
        let (target, lease) = lease();
        let upstream = stream::iter(vec![
            Ok::<_, PayloadError>(Bytes::from_static(b"{\"id\":1,")),
            Ok(Bytes::from_static(b"\"usage\":{\"prompt")),
        ]);
        let relay = Relay::new(
            upstream,
            None,
            Framing::new("application/json", None),
            Duration::from_secs(5),
            finish(lease),
        );
        let items: Vec<_> = relay.collect().await;
        assert!(items[0].is_ok() && items[1].is_ok());
        assert!(items[2].is_err());
        assert_eq!(target.failures_total(), 1);
    }

    #[tokio::test]
    async fn whole_chunked_json_is_metered() {
        let (target, lease) = lease();
        let upstream = stream::iter(vec![
            Ok::<_, PayloadError>(Bytes::from_static(b"{\"id\":1,")),
            Ok(Bytes::from_static(
                b"\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3,\"total_tokens\":5}}",
            )),
        ]);
        let relay = Relay::new(
            upstream,
            None,
            Framing::new("application/json", None),
            Duration::from_secs(5),
            finish(lease),
        );
        let items: Vec<_> = relay.collect().await;
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|i| i.is_ok()));
        assert_eq!(target.failures_total(), 0);
    }

    #[test]
    fn only_the_usage_only_event_is_hidden() {
        let content = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n";
        let usage = "data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n";
        let done = "data: [DONE]\n\n";
        let all = Bytes::from(format!("{content}{usage}{done}"));
        assert_eq!(
            drop_usage_only_events(all).unwrap(),
            Bytes::from(format!("{content}{done}"))
        );
        assert_eq!(drop_usage_only_events(Bytes::from(usage)), None);
        let plain = Bytes::from(content);
        assert_eq!(drop_usage_only_events(plain.clone()).unwrap(), plain);
        let crlf = content.replace("\n\n", "\r\n\r\n");
        let all = Bytes::from(format!("{crlf}{}", usage.replace("\n\n", "\r\n\r\n")));
        assert_eq!(drop_usage_only_events(all).unwrap(), Bytes::from(crlf));
    }

    #[test]
    fn a_usage_event_with_more_in_it_loses_only_its_usage() {
        let usage = "data: {\"choices\":[],\"id\":\"x\",\"usage\":{\"total_tokens\":3},\"timings\":{\"predicted_ms\":1.25e0},\"model\":\"m\"}\r\n\r\n";
        assert_eq!(
            drop_usage_only_events(Bytes::from(usage)).unwrap(),
            Bytes::from_static(
                b"data: {\"choices\":[],\"id\":\"x\",\"timings\":{\"predicted_ms\":1.25e0},\"model\":\"m\"}\r\n\r\n"
            )
        );
    }

    #[tokio::test]
    async fn the_relay_drops_the_hidden_usage_event() {
        let (_target, lease) = lease();
        let upstream = stream::iter(vec![Ok::<_, PayloadError>(Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":5,\"total_tokens\":9}}\n\ndata: [DONE]\n\n",
        ))]);
        let relay = Relay::new(
            upstream,
            None,
            Framing::new("text/event-stream", None),
            Duration::from_secs(5),
            finish(lease),
        )
        .hide_usage_event(true);
        let body: Vec<u8> = relay.map(|b| b.unwrap().to_vec()).concat().await;
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "data: {\"choices\":[{\"delta\":{}}]}\n\ndata: [DONE]\n\n"
        );
    }

    #[tokio::test]
    async fn dropping_the_relay_releases_the_lease_without_blame() {
        let (target, lease) = lease();
        let relay = Relay::new(
            stream::pending::<Result<Bytes, PayloadError>>(),
            None,
            Framing::new("text/event-stream", None),
            Duration::from_secs(5),
            finish(lease),
        );
        assert_eq!(target.in_flight(), 1);
        drop(relay);
        assert_eq!(target.in_flight(), 0);
        assert_eq!(target.failures_total(), 0);
    }
}
