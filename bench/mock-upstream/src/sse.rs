//! The SSE response body: content events, an optional usage event, `[DONE]`; delays between
//! events, a deliberate mid-stream failure, and counting of completed and cancelled streams.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::bodies::{self, Kind};
use crate::state::Shared;

/// The error that aborts a stream on purpose (`Behavior::drop_after_chunks`).
#[derive(Debug)]
pub(crate) struct DroppedMidStream;

impl std::fmt::Display for DroppedMidStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock upstream dropped the stream on purpose")
    }
}

impl std::error::Error for DroppedMidStream {}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// The next poll fails the stream; one `Pending` in between lets actix-web flush the
    /// events already produced, so the peer sees exactly N of them.
    Aborting,
    Completed,
    Aborted,
}

pub(crate) struct SseBody {
    shared: Arc<Shared>,
    kind: Kind,
    model_json: String,
    chunks: usize,
    /// `(prompt, completion)` tokens for the usage event, when one is sent.
    usage: Option<(usize, usize)>,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    drop_after: Option<usize>,
    /// Events produced so far (content and usage).
    sent: usize,
    state: State,
}

impl SseBody {
    pub(crate) fn new(
        shared: Arc<Shared>,
        kind: Kind,
        model_json: String,
        chunks: usize,
        usage: Option<(usize, usize)>,
        delay: Duration,
        drop_after: Option<usize>,
    ) -> Self {
        SseBody {
            shared,
            kind,
            model_json,
            chunks,
            usage,
            delay,
            sleep: None,
            waiting: false,
            drop_after,
            sent: 0,
            state: State::Running,
        }
    }

    fn events_before_done(&self) -> usize {
        self.chunks + usize::from(self.usage.is_some())
    }

    /// Waits `delay` before every event but the first. Ready when the next event may go.
    fn poll_delay(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.sent == 0 || self.delay.is_zero() {
            return Poll::Ready(());
        }
        if !self.waiting {
            let deadline = Instant::now() + self.delay;
            match self.sleep.as_mut() {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.waiting = true;
        }
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        self.waiting = false;
        Poll::Ready(())
    }
}

impl Stream for SseBody {
    type Item = Result<Bytes, DroppedMidStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.state {
            State::Completed | State::Aborted => return Poll::Ready(None),
            State::Aborting => {
                this.state = State::Aborted;
                return Poll::Ready(Some(Err(DroppedMidStream)));
            }
            State::Running => {}
        }
        let done_is_next = this.sent >= this.events_before_done();
        if let Some(n) = this.drop_after {
            if this.sent >= n || done_is_next {
                this.state = State::Aborting;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        if this.poll_delay(cx).is_pending() {
            return Poll::Pending;
        }
        let i = this.sent;
        this.sent += 1;
        if i < this.chunks {
            let mut out = String::with_capacity(192 + this.model_json.len());
            bodies::sse_content(
                this.kind,
                &this.model_json,
                i,
                i + 1 == this.chunks,
                &mut out,
            );
            return Poll::Ready(Some(Ok(Bytes::from(out))));
        }
        if let (Some((prompt, completion)), true) = (this.usage, i == this.chunks) {
            let mut out = String::with_capacity(192 + this.model_json.len());
            bodies::sse_usage(this.kind, &this.model_json, prompt, completion, &mut out);
            return Poll::Ready(Some(Ok(Bytes::from(out))));
        }
        this.state = State::Completed;
        Shared::bump(&this.shared.streams_completed);
        Poll::Ready(Some(Ok(Bytes::from_static(bodies::SSE_DONE.as_bytes()))))
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        // Dropped while still running: actix-web gave up on the body because the peer went
        // away (or the server stopped).
        if matches!(self.state, State::Running) {
            Shared::bump(&self.shared.streams_cancelled);
        }
    }
}
