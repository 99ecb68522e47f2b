//! slog JSON logs on stdout (journald under systemd). Records carry dotted keys with
//! units in names (`duration_ms`).
//!
//! A record is formatted where it is logged (a mutex around the JSON drain: a few µs) and
//! passes through [`Redactor`] there: values of secret-looking keys, bearer tokens,
//! API-key-shaped strings and e-mail addresses are replaced, wherever they appear (a
//! message, an error, a URL). Whole lines then wait in a [`Batched`] buffer that the
//! `log-flush` thread writes out with one `write` every [`FLUSH_EVERY`] (sooner once
//! [`FLUSH_BYTES`] are waiting). No request thread ever writes to stdout or waits for it,
//! and no thread is woken per line: a stalled stdout fills the buffer up to
//! [`MAX_PENDING`], past which lines are dropped and counted (one line says how many). A
//! clean exit (the [`LogGuard`] dropped) writes what is left; a `kill -9` may lose the
//! last [`FLUSH_EVERY`] of lines (and the request-log rows not yet batched into the
//! database: see `actors::log_writer`).

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde_json::Value;
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

/// How long a logged line may wait before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Waiting bytes that wake the flush thread before its time.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Waiting bytes past which new lines are dropped (stdout is not keeping up).
pub const MAX_PENDING: usize = 8 * 1024 * 1024;

/// The process logger and the guard that writes out what is left when dropped (keep it
/// until exit).
pub fn json_stdout(level: Level) -> (Logger, LogGuard) {
    json_to(io::stdout(), level)
}

/// Like [`json_stdout`], into any writer (tests read what was written).
pub fn json_to<W: Write + Send + 'static>(out: W, level: Level) -> (Logger, LogGuard) {
    let batched = Batched::start(out, FLUSH_EVERY, MAX_PENDING);
    let guard = batched.guard();
    let json = slog_json::Json::new(Redactor::new(batched))
        .add_default_keys()
        .set_flush(true)
        .build();
    let drain = Mutex::new(json).filter_level(level).fuse();
    let log = Logger::root(drain, o!("service" => "inference-gateway"));
    (log, guard)
}

struct Pending {
    buf: Vec<u8>,
    /// Lines dropped since the last write (the buffer was full).
    dropped: u64,
    closed: bool,
}

struct Shared<W> {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Held while a batch is written, so batches keep their order.
    out: Mutex<W>,
    max_pending: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain buffers: a panic while holding one leaves nothing inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<W: Write> Shared<W> {
    /// Writes what is waiting (and a line counting dropped ones); returns whether the
    /// writer was closed.
    fn write_pending(&self) -> bool {
        let mut out = lock(&self.out);
        let (batch, dropped, closed) = {
            let mut p = lock(&self.pending);
            let batch = std::mem::take(&mut p.buf);
            (batch, std::mem::take(&mut p.dropped), p.closed)
        };
        // Nowhere to report a failed write to stdout; the next batch tries again.
        if !batch.is_empty() {
            let _ = out.write_all(&batch);
        }
        if dropped > 0 {
            let line = serde_json::json!({
                "msg": "log lines dropped: stdout is not keeping up",
                "level": "WARN",
                "service": "inference-gateway",
                "dropped": dropped,
            });
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
        closed
    }
}

/// Keeps the flush thread's buffer; dropping it writes out what is left and ends the
/// thread.
pub struct LogGuard {
    close: Box<dyn Fn() + Send + Sync>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        (self.close)();
    }
}

/// A writer taking whole lines into a buffer that the `log-flush` thread writes out
/// every `every` (see the module docs). Without the thread, lines are written at once.
pub struct Batched<W: Write + Send + 'static> {
    shared: Arc<Shared<W>>,
    threaded: bool,
}

impl<W: Write + Send + 'static> Batched<W> {
    pub fn start(out: W, every: Duration, max_pending: usize) -> Batched<W> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                buf: Vec::with_capacity(FLUSH_BYTES),
                dropped: 0,
                closed: false,
            }),
            wake: Condvar::new(),
            out: Mutex::new(out),
            max_pending,
        });
        let worker = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || loop {
                {
                    let p = lock(&worker.pending);
                    if !p.closed && p.buf.len() < FLUSH_BYTES {
                        let _ = worker.wake.wait_timeout(p, every);
                    }
                }
                if worker.write_pending() {
                    return;
                }
            });
        Batched {
            shared,
            threaded: spawned.is_ok(),
        }
    }

    /// The guard that closes this writer (writing what is left) when dropped.
    pub fn guard(&self) -> LogGuard {
        let shared = Arc::clone(&self.shared);
        LogGuard {
            close: Box::new(move || {
                lock(&shared.pending).closed = true;
                shared.wake.notify_one();
                shared.write_pending();
            }),
        }
    }
}

impl<W: Write + Send + 'static> Write for Batched<W> {
    /// Takes whole lines (the [`Redactor`] only hands over whole lines).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let wake = {
            let mut p = lock(&self.shared.pending);
            if p.buf.len() + buf.len() > self.shared.max_pending {
                p.dropped += 1;
                return Ok(buf.len());
            }
            let before = p.buf.len();
            p.buf.extend_from_slice(buf);
            before < FLUSH_BYTES && p.buf.len() >= FLUSH_BYTES
        };
        if !self.threaded {
            self.shared.write_pending();
        } else if wake {
            self.shared.wake.notify_one();
        }
        Ok(buf.len())
    }

    /// Lines are written by the flush thread; nothing to do per record.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A logger that drops everything (tests that don't look at logs).
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}

const REDACTED: &str = "[redacted]";
const REDACTED_EMAIL: &str = "[redacted-email]";

/// Whether a key names a secret (its value is never written).
fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    let k = k.rsplit('.').next().unwrap_or(&k);
    [
        "authorization",
        "api_key",
        "apikey",
        "password",
        "passwd",
        "secret",
        "cookie",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
        || k == "token"
        || k.ends_with("_token")
        || k.ends_with("-token")
}

fn is_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-".contains(c)
}

fn is_domain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '-'
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~+/=".contains(c)
}

/// Replaces e-mail addresses, `Bearer <token>` and `sk-...`/`gw-...`/`igw_...` key-shaped
/// words.
pub fn redact_text(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        // "Bearer <token>" (any case).
        if chars.len() - i > 7
            && chars[i..i + 7]
                .iter()
                .collect::<String>()
                .eq_ignore_ascii_case("bearer ")
        {
            let mut j = i + 7;
            while j < chars.len() && is_token_char(chars[j]) {
                j += 1;
            }
            if j > i + 7 {
                out.push_str("Bearer ");
                out.push_str(REDACTED);
                i = j;
                continue;
            }
        }
        // Key-shaped words: sk-..., gw-... (16+ token characters) at a word start.
        let word_start = i == 0 || !is_token_char(chars[i - 1]);
        if word_start
            && chars.len() - i > 3
            && matches!(
                (chars[i], chars[i + 1], chars[i + 2]),
                ('s', 'k', '-') | ('g', 'w', '-')
            )
        {
            let mut j = i + 3;
            while j < chars.len() && is_token_char(chars[j]) {
                j += 1;
            }
            if j - i >= 19 {
                out.push_str(REDACTED);
                i = j;
                continue;
            }
        }
        // The gateway's own API keys: igw_ and 64 hex digits (16+ alphanumerics here).
        if word_start && chars[i..].starts_with(&['i', 'g', 'w', '_']) {
            let mut j = i + 4;
            while j < chars.len() && chars[j].is_ascii_alphanumeric() {
                j += 1;
            }
            if j - i >= 20 {
                out.push_str(REDACTED);
                i = j;
                continue;
            }
        }
        if chars[i] == '@' {
            let mut start = out.len();
            let local: usize = out
                .chars()
                .rev()
                .take_while(|c| is_local_char(*c))
                .map(char::len_utf8)
                .sum();
            start -= local;
            let mut j = i + 1;
            while j < chars.len() && is_domain_char(chars[j]) {
                j += 1;
            }
            let domain: String = chars[i + 1..j].iter().collect();
            let domain = domain.trim_end_matches(['.', '-']);
            if local > 0 && domain.contains('.') && !domain.starts_with('.') {
                out.truncate(start);
                out.push_str(REDACTED_EMAIL);
                i += 1 + domain.chars().count();
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Redacts one parsed log record in place.
pub fn redact_value(value: &mut Value) {
    match value {
        Value::String(s)
            if s.contains('@')
                || s.contains("earer")
                || s.contains("EARER")
                || s.contains("sk-")
                || s.contains("gw-")
                || s.contains("igw_") =>
        {
            *s = redact_text(s);
        }
        Value::Array(items) => items.iter_mut().for_each(redact_value),
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if secret_key(k) && !v.is_null() && *v != Value::Bool(false) {
                    *v = Value::String(REDACTED.into());
                } else {
                    redact_value(v);
                }
            }
        }
        _ => {}
    }
}

/// Lower-case fragments whose absence from a line proves it needs no redaction: the `@` of
/// an e-mail address (first: [`suspect`] looks for it apart), every secret-named key,
/// `bearer` and key prefixes. Lines without
/// any (nearly all request records) are written as they are, without a JSON round trip.
const SUSPECT: [&str; 14] = [
    "@",
    "bearer",
    "sk-",
    "gw-",
    "igw_",
    "authoriz",
    "api_key",
    "apikey",
    "password",
    "passwd",
    "secret",
    "cookie",
    "credential",
    "token\"",
];

/// Whether a line holds any [`SUSPECT`] fragment, in any case, or is not UTF-8: the line
/// lower-cased into `lower`, then one SIMD pass for the `@` and one multi-pattern pass
/// (aho-corasick's packed "Teddy" search) for the rest: half the cost of twelve separate
/// substring searches. The `@` stays apart because a one-byte pattern would turn the
/// packed search off.
fn suspect(line: &[u8], lower: &mut Vec<u8>) -> bool {
    static FRAGMENTS: OnceLock<Fragments> = OnceLock::new();
    lower.clear();
    lower.extend_from_slice(line);
    // In place over the whole slice: vectorised, unlike a byte-wise map into the Vec.
    lower.make_ascii_lowercase();
    memchr::memchr(b'@', lower).is_some()
        || FRAGMENTS.get_or_init(Fragments::new).found_in(lower)
        || std::str::from_utf8(line).is_err()
}

/// The multi-byte [`SUSPECT`] fragments, searched in one pass.
enum Fragments {
    /// SIMD (Teddy), where the CPU has it.
    Packed(aho_corasick::packed::Searcher),
    /// Elsewhere, the automaton (slower, still one pass); if even that could not be
    /// built, every line is suspect (redacted the slow way, never leaked).
    Automaton(Option<aho_corasick::AhoCorasick>),
}

impl Fragments {
    fn new() -> Fragments {
        let patterns = &SUSPECT[1..];
        match aho_corasick::packed::Searcher::new(patterns.iter()) {
            Some(packed) => Fragments::Packed(packed),
            None => Fragments::Automaton(aho_corasick::AhoCorasick::new(patterns).ok()),
        }
    }

    fn found_in(&self, haystack: &[u8]) -> bool {
        match self {
            Fragments::Packed(s) => s.find(haystack).is_some(),
            Fragments::Automaton(a) => a.as_ref().is_none_or(|a| a.is_match(haystack)),
        }
    }
}

/// A writer that redacts every JSON line before passing it on, on the thread that logs
/// it (a few µs only for the rare line that needs it).
pub struct Redactor<W: Write> {
    inner: W,
    line: Vec<u8>,
    lower: Vec<u8>,
}

impl<W: Write> Redactor<W> {
    pub fn new(inner: W) -> Self {
        Redactor {
            inner,
            line: Vec::with_capacity(1024),
            lower: Vec::with_capacity(1024),
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        if !suspect(&self.line, &mut self.lower) {
            self.inner.write_all(&self.line)?;
            self.line.clear();
            return Ok(());
        }
        let line = std::mem::take(&mut self.line);
        let out = match serde_json::from_slice::<Value>(&line) {
            Ok(mut v) => {
                redact_value(&mut v);
                let mut bytes = serde_json::to_vec(&v).map_err(io::Error::other)?;
                bytes.push(b'\n');
                bytes
            }
            // Not JSON: redact it as text.
            Err(_) => redact_text(&String::from_utf8_lossy(&line)).into_bytes(),
        };
        self.line = line;
        self.line.clear();
        self.inner.write_all(&out)
    }
}

impl<W: Write> Write for Redactor<W> {
    /// Gathers a record; the JSON drain calls `flush` at the end of each one.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    /// Passes on the gathered record (one line: the drain ends each with a newline).
    fn flush(&mut self) -> io::Result<()> {
        if self.line.is_empty() {
            return Ok(());
        }
        self.emit()
    }
}

/// A writer into a shared buffer, for tests that read what was logged.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl Captured {
    /// Everything written so far, as text (panics if it is not UTF-8).
    pub(crate) fn text(&self) -> String {
        String::from_utf8(lock(&self.0).clone())
            .unwrap_or_else(|e| panic!("log output is not UTF-8: {e}"))
    }
}

#[cfg(test)]
impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_redaction_catches_emails_bearers_and_keys() {
        assert_eq!(
            redact_text("mail alice.b+x@example.org now"),
            "mail [redacted-email] now"
        );
        assert_eq!(
            redact_text("auth: Bearer abc.DEF-123 end"),
            "auth: Bearer [redacted] end"
        );
        assert_eq!(
            redact_text("key sk-abcdefghijklmnop1234 used"),
            "key [redacted] used"
        );
        let ours = format!("igw_{}", "0123456789abcdef".repeat(4));
        assert_eq!(
            redact_text(&format!("refused key {ours}, again:{ours}")),
            "refused key [redacted], again:[redacted]"
        );
        assert_eq!(redact_text("igw_short"), "igw_short");
        // Things that only look a little like secrets stay.
        assert_eq!(
            redact_text("user@localhost sk-short"),
            "user@localhost sk-short"
        );
        assert_eq!(redact_text("tokens.prompt"), "tokens.prompt");
    }

    #[test]
    fn only_suspect_lines_take_the_slow_path() {
        let mut buf = Vec::new();
        assert!(!suspect(
            br#"{"msg":"request","tokens.prompt":3,"client_ip":"127.0.0.1"}"#,
            &mut buf
        ));
        for line in [
            &br#"{"user":"a@b.org"}"#[..],
            br#"{"Authorization":"x"}"#,
            br#"{"access_token":"x"}"#,
            br#"{"e":"BEARER x"}"#,
        ] {
            assert!(suspect(line, &mut buf), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn every_fragment_is_found_by_both_searches() {
        let fallback = Fragments::Automaton(aho_corasick::AhoCorasick::new(&SUSPECT[1..]).ok());
        let fast = Fragments::new();
        for fragment in &SUSPECT[1..] {
            // Anywhere in a line longer than one SIMD block, and in a short one.
            let long = format!(
                "{{\"k\":\"{}{fragment}{}\"}}",
                "x".repeat(40),
                "y".repeat(40)
            );
            for line in [long.as_str(), fragment] {
                assert!(fast.found_in(line.as_bytes()), "{line}");
                assert!(fallback.found_in(line.as_bytes()), "{line}");
            }
        }
        let clean = br#"{"msg":"request","tokens.prompt":3,"ending":"complete"}"#;
        assert!(!fast.found_in(clean) && !fallback.found_in(clean));
        assert!(
            Fragments::Automaton(None).found_in(clean),
            "no searcher: all suspect"
        );
    }

    use super::Captured as Sink;

    #[test]
    fn log_lines_are_redacted_and_token_counts_kept() {
        let sink = Sink::default();
        let (log, guard) = json_to(sink.clone(), Level::Info);
        let child = log.new(o!("request_id" => "r1"));
        slog::info!(child, "request";
            "user" => "bob@example.com",
            "authorization" => "Bearer sk-verysecretvalue123456",
            "upstream.api_key" => "abc",
            "access_token" => "xyz",
            "tokens.prompt" => 12u64,
            "error" => "failed for carol@example.net with Bearer zzz");
        drop(child);
        drop(log);
        drop(guard);
        let text = sink.text();
        let v: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["request_id"], "r1");
        assert_eq!(v["user"], "[redacted-email]");
        assert_eq!(v["authorization"], "[redacted]");
        assert_eq!(v["upstream.api_key"], "[redacted]");
        assert_eq!(v["access_token"], "[redacted]");
        assert_eq!(v["tokens.prompt"], 12);
        assert_eq!(
            v["error"],
            "failed for [redacted-email] with Bearer [redacted]"
        );
        assert!(
            !text.contains("secret") && !text.contains("example"),
            "{text}"
        );
    }

    #[test]
    fn batched_lines_arrive_whole_and_in_order_and_the_guard_writes_the_rest() {
        let sink = Sink::default();
        // A long interval: only the guard can have written these.
        let mut out = Batched::start(sink.clone(), Duration::from_secs(3600), 1 << 20);
        let guard = out.guard();
        for i in 0..1000 {
            out.write_all(format!("{{\"n\":{i}}}\n").as_bytes())
                .unwrap();
        }
        drop(guard);
        let text = sink.text();
        let got: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_buffer_drops_lines_and_says_how_many() {
        let sink = Sink::default();
        let mut out = Batched::start(sink.clone(), Duration::from_secs(3600), 100);
        let guard = out.guard();
        let line = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(30));
        for _ in 0..5 {
            out.write_all(line.as_bytes()).unwrap();
        }
        drop(guard);
        let text = sink.text();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // 100 bytes hold two 41-byte lines; the other three are counted.
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[2]["dropped"], 3);
        assert_eq!(lines[2]["level"], "WARN");
    }

    #[test]
    fn the_flush_thread_writes_without_being_asked() {
        let sink = Sink::default();
        let mut out = Batched::start(sink.clone(), Duration::from_millis(5), 1 << 20);
        let _guard = out.guard();
        out.write_all(b"{\"a\":1}\n").unwrap();
        // Bounded wait for the thread (it writes every 5 ms).
        for _ in 0..2000 {
            if !sink.0.lock().unwrap().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(&sink.0.lock().unwrap()[..], b"{\"a\":1}\n");
    }
}
