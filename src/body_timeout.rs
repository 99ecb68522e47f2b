//! The request-body idle timeout (`server.body_read_timeout_ms`): `server::edges` wraps
//! the payload of every request that declares a body in [`IdleTimeout`]. When no chunk
//! arrives for the timeout, the stream yields an error (whatever handler reads it fails)
//! and marks [`Fired`]; `edges` then answers 408 `request_timeout` with
//! `Connection: close`, so a client that sends headers and half a body cannot hold a
//! connection and its file descriptor. The timer is armed only while the body is pending.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::dev::ServiceRequest;
use actix_web::error::PayloadError;
use actix_web::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use actix_web::HttpMessage;
use bytes::Bytes;
use futures_util::Stream;

/// Set when a request's body timed out.
pub type Fired = Rc<Cell<bool>>;

pub struct IdleTimeout<S> {
    inner: S,
    timeout: Duration,
    sleep: Option<Pin<Box<actix_rt::time::Sleep>>>,
    fired: Fired,
}

impl<S> Stream for IdleTimeout<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.fired.get() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                // A chunk (or the end) arrived: the next wait starts a new timer.
                this.sleep = None;
                Poll::Ready(item)
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(actix_rt::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
                this.fired.set(true);
                Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request body stopped arriving",
                )))))
            }
        }
    }
}

/// Wraps the request's payload when it declares a body; returns the flag to check after
/// the handler answered.
pub fn wrap(req: &mut ServiceRequest, timeout: Duration) -> Option<Fired> {
    let headers = req.headers();
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    if !has_body {
        return None;
    }
    let fired: Fired = Rc::new(Cell::new(false));
    let inner = req.take_payload();
    let stream = IdleTimeout {
        inner,
        timeout,
        sleep: None,
        fired: Rc::clone(&fired),
    };
    req.set_payload(actix_web::dev::Payload::Stream {
        payload: Box::pin(stream),
    });
    Some(fired)
}
