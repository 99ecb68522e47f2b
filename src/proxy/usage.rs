//! Reads token usage out of response bodies without changing them: OpenAI chat and
//! completions (`usage.prompt_tokens`...), the Responses API (`response.usage` in the
//! `response.completed` event, `input_tokens`/`output_tokens`) and Anthropic Messages
//! (`message.usage` in `message_start`, `usage` in `message_delta`).

use std::sync::OnceLock;

use memchr::memmem;
use serde::Deserialize;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default, alias = "input_tokens")]
    pub prompt_tokens: u64,
    #[serde(default, alias = "output_tokens")]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

impl Usage {
    /// Merges a later report: counts only grow within one response, so keep the largest.
    fn merge(&mut self, other: Usage) {
        self.prompt_tokens = self.prompt_tokens.max(other.prompt_tokens);
        self.completion_tokens = self.completion_tokens.max(other.completion_tokens);
        self.total_tokens = self.total_tokens.max(other.total_tokens);
    }

    pub fn total(&self) -> u64 {
        self.total_tokens
            .max(self.prompt_tokens + self.completion_tokens)
    }
}

/// Event types that end a stream properly: Anthropic Messages, the Responses API, and an
/// upstream's own in-band error. OpenAI chat and completions end with `data: [DONE]`.
const TERMINAL_EVENTS: [&[u8]; 5] = [
    b"message_stop",
    b"response.completed",
    b"response.failed",
    b"response.incomplete",
    b"error",
];

/// Accumulates usage and counts events over one response, and notes whether the stream
/// reached its proper end (a stream cut at an event boundary looks complete otherwise).
#[derive(Debug, Default, Clone)]
pub struct UsageMeter {
    usage: Option<Usage>,
    events: u64,
    terminal: bool,
}

impl UsageMeter {
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// True once the stream sent its final event (`[DONE]`, `message_stop`, ...).
    pub fn saw_terminal(&self) -> bool {
        self.terminal
    }

    /// Data events seen in a stream (excluding `[DONE]`).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Reads usage from one JSON document (a whole body, or one SSE event's data): every
    /// object member named `usage`, at any depth (top level for OpenAI, `response.usage`
    /// for the Responses API, `message.usage` for Anthropic), found by a SIMD search and
    /// deserialized alone, so the rest of the body is never parsed. A `"usage"` found by
    /// the search is a member name exactly when a `{` or `,` comes before it and a `:`
    /// after (whitespace aside): inside a JSON string every quote is escaped, so the
    /// byte before it would be a backslash.
    pub fn observe_json(&mut self, json: &[u8]) {
        for at in usage_finder().find_iter(json) {
            let before = json[..at].trim_ascii_end().last();
            let after = json[at + USAGE_KEY.len()..].trim_ascii_start();
            let (Some(b'{' | b','), Some((b':', value))) = (before, after.split_first()) else {
                continue;
            };
            let mut de = serde_json::Deserializer::from_slice(value);
            if let Ok(Some(usage)) = Option::<Usage>::deserialize(&mut de) {
                match &mut self.usage {
                    Some(u) => u.merge(usage),
                    None => self.usage = Some(usage),
                }
            }
        }
    }

    /// Reads complete SSE events (as forwarded by the splitter).
    pub fn observe_events(&mut self, events: &[u8]) {
        for line in events.split(|b| *b == b'\n') {
            if let Some(name) = line.strip_prefix(b"event:") {
                if TERMINAL_EVENTS.contains(&trim_ascii(name)) {
                    self.terminal = true;
                }
                continue;
            }
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = trim_ascii(data);
            if data == b"[DONE]" {
                self.terminal = true;
                continue;
            }
            if data.is_empty() {
                continue;
            }
            if data.starts_with(b"{\"error\"") {
                self.terminal = true;
            }
            self.events += 1;
            self.observe_json(data);
        }
    }
}

fn trim_ascii(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

const USAGE_KEY: &[u8] = b"\"usage\"";

/// The prebuilt SIMD search for `"usage"` (it runs on every body and every batch of stream
/// events).
fn usage_finder() -> &'static memmem::Finder<'static> {
    static FINDER: OnceLock<memmem::Finder<'static>> = OnceLock::new();
    FINDER.get_or_init(|| memmem::Finder::new(USAGE_KEY))
}

/// Whether `"usage"` occurs in `haystack`.
pub fn mentions_usage(haystack: &[u8]) -> bool {
    usage_finder().find(haystack).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_body_usage() {
        let mut m = UsageMeter::default();
        m.observe_json(br#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#);
        assert_eq!(
            m.usage(),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 5,
                total_tokens: 8
            })
        );
    }

    #[test]
    fn stream_final_usage_chunk_and_event_count() {
        let mut m = UsageMeter::default();
        m.observe_events(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1,\"total_tokens\":3}}\n\ndata: [DONE]\n\n");
        assert_eq!(m.events(), 2);
        assert_eq!(m.usage().unwrap().total(), 3);
    }

    #[test]
    fn terminal_events_are_noticed() {
        let mut m = UsageMeter::default();
        m.observe_events(b"data: {\"choices\":[]}\n\n");
        assert!(!m.saw_terminal());
        m.observe_events(b"data: [DONE]\n\n");
        assert!(m.saw_terminal());
        for stream in [
            &b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"[..],
            b"event: response.completed\ndata: {}\n\n",
            b"data: {\"error\":{\"message\":\"x\"}}\n\n",
        ] {
            let mut m = UsageMeter::default();
            m.observe_events(stream);
            assert!(m.saw_terminal(), "{}", String::from_utf8_lossy(stream));
        }
    }

    #[test]
    fn usage_is_looked_for_only_where_mentioned() {
        assert!(mentions_usage(br#"{"a":1,"usage":{}}"#));
        assert!(!mentions_usage(br#"{"a":1,"usages":{},"usage_x":2}"#));
        assert!(!mentions_usage(b""));
    }

    #[test]
    fn only_member_names_count_whatever_the_spacing() {
        let mut m = UsageMeter::default();
        m.observe_json(
            br#"{ "id" : "x" ,  "usage"  :  { "prompt_tokens" : 2, "completion_tokens": 3 } }"#,
        );
        assert_eq!(m.usage().map(|u| u.total()), Some(5));
        for body in [
            // In a string: the quotes are escaped.
            &br#"{"choices":[{"message":{"content":"say \"usage\": {\"total_tokens\": 99}"}}]}"#[..],
            br#"{"choices":[{"message":{"content":"{\"usage\":{\"total_tokens\":99}}"}}]}"#,
            // A string value or an array element, not a member name.
            br#"{"kind":"usage","x":{"total_tokens":99}}"#,
            br#"{"tags":["a","usage"],"x":1}"#,
            // Broken JSON after the name.
            br#"{"usage":{"total_tokens":"#,
        ] {
            let mut m = UsageMeter::default();
            m.observe_json(body);
            assert_eq!(m.usage(), None, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn unknown_usage_fields_are_ignored_and_the_rest_is_not_read() {
        let mut m = UsageMeter::default();
        // The usage object is read alone: garbage after it does not matter.
        m.observe_json(br#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_tokens_details":{"cached_tokens":0}},"x":]"#);
        assert_eq!(m.usage().map(|u| u.total()), Some(3));
    }

    #[test]
    fn null_usage_is_ignored() {
        let mut m = UsageMeter::default();
        m.observe_events(b"data: {\"choices\":[],\"usage\":null}\n\n");
        assert_eq!(m.usage(), None);
    }

    #[test]
    fn responses_api_and_anthropic_shapes() {
        let mut m = UsageMeter::default();
        m.observe_events(b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":4,\"output_tokens\":6,\"total_tokens\":10}}}\n\n");
        assert_eq!(m.usage().unwrap().total(), 10);

        let mut m = UsageMeter::default();
        m.observe_events(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n");
        let u = m.usage().unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total()),
            (7, 9, 16)
        );
    }
}
