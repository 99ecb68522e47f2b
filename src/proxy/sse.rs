//! Splits a server-sent-events byte stream at event boundaries, so the client only ever
//! receives whole events. If the upstream dies mid-event, the half event is dropped and the
//! in-band error event that follows is well-formed. Bytes are never changed, only regrouped;
//! a chunk that already ends at a boundary passes through without a copy.

use bytes::{Bytes, BytesMut};

#[derive(Debug, Default)]
pub struct SseSplitter {
    pending: BytesMut,
}

/// Index just past the last event boundary (a blank line: "\n\n" or "\n\r\n").
fn last_boundary(buf: &[u8]) -> Option<usize> {
    let mut i = buf.len();
    while i >= 2 {
        if buf[i - 1] == b'\n' {
            if buf[i - 2] == b'\n' {
                return Some(i);
            }
            if i >= 3 && buf[i - 2] == b'\r' && buf[i - 3] == b'\n' {
                return Some(i);
            }
        }
        i -= 1;
    }
    None
}

impl SseSplitter {
    /// Feeds one upstream chunk; returns the complete events it finishes, if any.
    pub fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        if self.pending.is_empty() {
            match last_boundary(&chunk) {
                Some(end) if end == chunk.len() => return Some(chunk),
                Some(end) => {
                    self.pending.extend_from_slice(&chunk[end..]);
                    return Some(chunk.slice(..end));
                }
                None => {
                    self.pending.extend_from_slice(&chunk);
                    return None;
                }
            }
        }
        self.pending.extend_from_slice(&chunk);
        let end = last_boundary(&self.pending)?;
        Some(self.pending.split_to(end).freeze())
    }

    /// True when no partial event is held back.
    pub fn is_clean(&self) -> bool {
        self.pending.is_empty()
    }

    /// At a clean end of stream: whatever is left (an unterminated last event).
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.pending.is_empty()).then(|| self.pending.split().freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_events_pass_through_unchanged() {
        let mut s = SseSplitter::default();
        let chunk = Bytes::from_static(b"data: {\"a\":1}\n\ndata: [DONE]\n\n");
        assert_eq!(s.push(chunk.clone()), Some(chunk));
        assert!(s.is_clean());
    }

    #[test]
    fn partial_events_are_held_until_complete() {
        let mut s = SseSplitter::default();
        assert_eq!(s.push(Bytes::from_static(b"data: {\"a\"")), None);
        assert_eq!(
            s.push(Bytes::from_static(b":1}\n\ndata: {\"b")),
            Some(Bytes::from_static(b"data: {\"a\":1}\n\n"))
        );
        assert!(!s.is_clean());
        assert_eq!(
            s.push(Bytes::from_static(b"\":2}\r\n\r\n")),
            Some(Bytes::from_static(b"data: {\"b\":2}\r\n\r\n"))
        );
        assert!(s.is_clean());
    }

    #[test]
    fn finish_returns_an_unterminated_tail() {
        let mut s = SseSplitter::default();
        assert_eq!(s.push(Bytes::from_static(b"data: x\n")), None);
        assert_eq!(s.finish(), Some(Bytes::from_static(b"data: x\n")));
        assert_eq!(s.finish(), None);
    }
}
