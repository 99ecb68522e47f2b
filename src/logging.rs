//! slog JSON logs on stdout (journald under systemd), written off the request path by
//! slog-async. Records carry dotted keys with units in names (`duration_ms`).
//!
//! Every line passes through [`Redactor`] on the log-writer thread before it is written:
//! values of secret-looking keys, bearer tokens, API-key-shaped strings and e-mail
//! addresses are replaced, wherever they appear (a message, an error, a URL).

use std::io::{self, Write};

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

/// The process logger and the guard that flushes it when dropped (keep it until exit).
pub fn json_stdout(level: Level) -> (Logger, slog_async::AsyncGuard) {
    json_to(Redactor::new(io::stdout()), level)
}

/// Like [`json_stdout`], into any writer (tests read what was written).
pub fn json_to<W: Write + Send + 'static>(
    out: W,
    level: Level,
) -> (Logger, slog_async::AsyncGuard) {
    let json = slog_json::Json::new(out).add_default_keys().build().fuse();
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

/// Replaces e-mail addresses, `Bearer <token>` and `sk-...`/`gw-...` key-shaped words.
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
                || s.contains("gw-") =>
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

/// Lower-case fragments whose absence from a line proves it needs no redaction: every
/// secret-named key, `bearer`, key prefixes and the `@` of an e-mail address. Lines without
/// any (nearly all request records) are written as they are, without a JSON round trip.
const SUSPECT: [&str; 13] = [
    "@",
    "bearer",
    "sk-",
    "gw-",
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

fn suspect(line: &[u8], lower: &mut Vec<u8>) -> bool {
    lower.clear();
    lower.extend(line.iter().map(u8::to_ascii_lowercase));
    match std::str::from_utf8(lower) {
        Ok(text) => SUSPECT.iter().any(|needle| text.contains(needle)),
        Err(_) => true,
    }
}

/// A writer that redacts every JSON line before passing it on. It runs on the log-writer
/// thread (slog-async), off the request path.
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
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.line.push(b);
            if b == b'\n' {
                self.emit()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.line.is_empty() {
            self.emit()?;
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

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

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_lines_are_redacted_and_token_counts_kept() {
        let sink = Sink::default();
        let (log, guard) = json_to(Redactor::new(sink.clone()), Level::Info);
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
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
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
}
