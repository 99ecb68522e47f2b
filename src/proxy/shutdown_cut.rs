//! Ending the streams still open when the shutdown grace period runs out, in band.
//!
//! At SIGTERM the server stops accepting and lets running requests finish for
//! `server.shutdown_grace_secs`. Streams still open then are [`cut`]: each [`Relay`] ends
//! its response with a final SSE error event (code `gateway_shutdown`) and writes its
//! record with `ending = shutdown`, instead of being dropped by the server a moment later,
//! which the client would see as a connection reset and the log as `client_gone`.
//!
//! Relays wait on their own thread's [`Notify`] (no lock shared between workers on the
//! request path); [`cut`] sets a process-wide flag, then wakes every thread's relays. The
//! flag is process-wide: one gateway runs per process (tests that run several in one
//! process never cut).
//!
//! [`Relay`]: crate::proxy::relay::Relay

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// How long the server waits after the cut before it closes what is still open (a stream
/// whose client does not read its final event).
pub const CUT_SECS: u64 = 2;

static CUT: AtomicBool = AtomicBool::new(false);
static THREADS: Mutex<Vec<Arc<Notify>>> = Mutex::new(Vec::new());

thread_local! {
    static THIS_THREAD: Arc<Notify> = {
        let notify = Arc::new(Notify::new());
        if let Ok(mut threads) = THREADS.lock() {
            threads.push(Arc::clone(&notify));
        }
        notify
    };
}

/// A relay's wake-up at the cut: created with the relay, on the thread that polls it.
pub fn signal() -> OwnedNotified {
    THIS_THREAD.with(|n| Arc::clone(n).notified_owned())
}

/// True once the grace period is over and open streams are being ended.
pub fn is_cut() -> bool {
    CUT.load(Ordering::Acquire)
}

/// Ends every open stream now (called once, at the end of the grace period).
pub fn cut() {
    CUT.store(true, Ordering::Release);
    if let Ok(threads) = THREADS.lock() {
        for notify in threads.iter() {
            notify.notify_waiters();
        }
    }
}
