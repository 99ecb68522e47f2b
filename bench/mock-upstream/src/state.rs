//! State shared by the handle and every worker: the current behaviour, counters and the
//! bounded request record. No lock here is ever held across an await.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use actix_web::HttpRequest;
use bytes::Bytes;

use crate::Behavior;

/// One inference request as the mock received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Header names are lowercase; values that are not UTF-8 are converted lossily.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// `fail_next` packs the remaining count (high bits) and the status (low 16 bits), so a
/// request takes one failure with a single compare-and-swap.
const STATUS_BITS: u32 = 16;
const MAX_FAIL_COUNT: u64 = (1 << (64 - STATUS_BITS)) - 1;

pub(crate) struct Shared {
    behavior: RwLock<Arc<Behavior>>,
    fail_next: AtomicU64,
    record: AtomicBool,
    record_limit: usize,
    recorded: Mutex<VecDeque<RecordedRequest>>,
    pub(crate) requests: AtomicUsize,
    pub(crate) health_checks: AtomicUsize,
    pub(crate) streams_completed: AtomicUsize,
    pub(crate) streams_cancelled: AtomicUsize,
    pub(crate) connections_opened: AtomicUsize,
    /// While set, every request (inference and health) waits without answering.
    frozen: AtomicBool,
}

impl Shared {
    pub(crate) fn new(behavior: Behavior, record: bool, record_limit: usize) -> Self {
        Shared {
            behavior: RwLock::new(Arc::new(behavior)),
            fail_next: AtomicU64::new(0),
            record: AtomicBool::new(record),
            record_limit: record_limit.max(1),
            recorded: Mutex::new(VecDeque::new()),
            requests: AtomicUsize::new(0),
            health_checks: AtomicUsize::new(0),
            streams_completed: AtomicUsize::new(0),
            streams_cancelled: AtomicUsize::new(0),
            connections_opened: AtomicUsize::new(0),
            frozen: AtomicBool::new(false),
        }
    }

    pub(crate) fn behavior(&self) -> Arc<Behavior> {
        Arc::clone(&self.behavior.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn set_behavior(&self, behavior: Behavior) {
        *self
            .behavior
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(behavior);
    }

    pub(crate) fn fail_next(&self, n: usize, status: u16) {
        let n = (n as u64).min(MAX_FAIL_COUNT);
        self.fail_next
            .store((n << STATUS_BITS) | u64::from(status), Ordering::SeqCst);
    }

    /// Takes one forced failure, if any is left.
    pub(crate) fn take_failure(&self) -> Option<u16> {
        if self.fail_next.load(Ordering::Relaxed) >> STATUS_BITS == 0 {
            return None;
        }
        self.fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                (v >> STATUS_BITS > 0).then(|| v - (1 << STATUS_BITS))
            })
            .ok()
            .map(|prev| (prev & 0xffff) as u16)
    }

    pub(crate) fn set_frozen(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }

    /// Returns once the mock is not frozen (polls: a frozen mock is a test's fault state).
    pub(crate) async fn wait_thawed(&self) {
        while self.frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub(crate) fn set_recording(&self, on: bool) {
        self.record.store(on, Ordering::Relaxed);
    }

    pub(crate) fn record(&self, req: &HttpRequest, body: &Bytes) {
        if !self.record.load(Ordering::Relaxed) {
            return;
        }
        let entry = RecordedRequest {
            method: req.method().as_str().to_owned(),
            path: req.path().to_owned(),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.clone(),
        };
        let mut recorded = self.recorded();
        if recorded.len() >= self.record_limit {
            recorded.pop_front();
        }
        recorded.push_back(entry);
    }

    pub(crate) fn recorded(&self) -> MutexGuard<'_, VecDeque<RecordedRequest>> {
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn count(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }

    pub(crate) fn bump(counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_next_counts_down_then_stops() {
        let s = Shared::new(Behavior::default(), false, 10);
        assert_eq!(s.take_failure(), None);
        s.fail_next(2, 503);
        assert_eq!(s.take_failure(), Some(503));
        assert_eq!(s.take_failure(), Some(503));
        assert_eq!(s.take_failure(), None);
        s.fail_next(1, 429);
        s.fail_next(0, 500);
        assert_eq!(s.take_failure(), None);
    }
}
