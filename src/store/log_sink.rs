//! The request log's hand-over: [`LogSink`], what handlers hold to pass one row per request
//! to the `LogWriter` actor without waiting, and [`LogStats`], the counters the writer keeps
//! for metrics and tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

use actix::{Message, Recipient};

use crate::store::LogRow;

/// One request's row.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Row(pub LogRow);

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Rows waiting in memory now.
    pub queued: AtomicU64,
    /// Rows inserted directly.
    pub written: AtomicU64,
    /// Rows appended to the spill file.
    pub spilled: AtomicU64,
    /// Rows read back from the spill file and stored.
    pub replayed: AtomicU64,
    /// Rows that could be neither stored nor spilled (disk full and database down).
    pub lost: AtomicU64,
    /// Rows the database refused on their own, kept in the quarantine file.
    pub quarantined: AtomicU64,
    /// Rows deleted by retention.
    pub pruned: AtomicU64,
}

impl LogStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What handlers hold to hand rows to the `LogWriter`: a fire-and-forget send, never a
/// wait. Disabled (`logging.request_log = false`) it does nothing.
#[derive(Clone, Default)]
pub struct LogSink {
    inner: Option<Arc<SinkInner>>,
}

struct SinkInner {
    tx: SyncSender<Box<LogRow>>,
    overflow: Recipient<Row>,
    store_payloads: bool,
    payload_max_bytes: usize,
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSink")
            .field("enabled", &self.is_enabled())
            .field("payload_limit", &self.payload_limit())
            .finish()
    }
}

impl LogSink {
    /// `tx` is [`LogWriter::sender`] of the writer at `addr`.
    pub fn new(
        overflow: Recipient<Row>,
        tx: SyncSender<Box<LogRow>>,
        logging: &crate::config::Logging,
    ) -> Self {
        LogSink {
            inner: Some(Arc::new(SinkInner {
                tx,
                overflow,
                store_payloads: logging.store_payloads,
                payload_max_bytes: logging.payload_max_bytes,
            })),
        }
    }

    pub fn disabled() -> Self {
        LogSink::default()
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The most payload bytes to keep, when prompts and completions are stored.
    pub fn payload_limit(&self) -> Option<usize> {
        self.inner
            .as_ref()
            .filter(|i| i.store_payloads)
            .map(|i| i.payload_max_bytes)
    }

    pub fn send(&self, row: LogRow) {
        if let Some(inner) = &self.inner {
            match inner.tx.try_send(Box::new(row)) {
                Ok(()) => {}
                // Full (the writer is behind): the mailbox takes it, and the writer spills.
                Err(TrySendError::Full(row)) | Err(TrySendError::Disconnected(row)) => {
                    inner.overflow.do_send(Row(*row));
                }
            }
        }
    }
}
