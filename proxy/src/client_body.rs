//! The client's request body as the gateway reads it: what went wrong reading it (the client's
//! fault, not the backend's), and what happens to the part nobody read.
//!
//! A gateway often stops reading a body before its end: the backend answered early or failed,
//! or the gateway answered itself (401, 429, 504). Closing an HTTP/1.1 connection with unread
//! bytes in its receive buffer makes the kernel reset it, and a client still uploading then
//! sees a broken pipe instead of the answer. As nginx's lingering close does, the rest of such
//! a body is read and thrown away for a bounded time, so that the answer arrives and the
//! connection closes cleanly (or stays open, when the body ends in time).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// How long the unread rest of a body is drained before the connection is given up.
pub const LINGER: Duration = Duration::from_secs(5);

/// What went wrong with a client's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// The client hung up (or reset its stream) before the body ended.
    Closed,
    /// The body's framing is broken (a bad chunk size, more bytes than announced).
    Malformed,
}

impl ClientFault {
    /// Tells the two apart from the error reading the body: hyper reports broken framing as
    /// `InvalidData`/`InvalidInput` and an early end as `UnexpectedEof`; a reset stream or a
    /// dropped connection is a hang-up too.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> ClientFault {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<io::Error>() {
                return match io.kind() {
                    io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
                        ClientFault::Malformed
                    }
                    _ => ClientFault::Closed,
                };
            }
            cause = e.source();
        }
        ClientFault::Closed
    }
}

/// The client's body on its way upstream. Dropped before its end on an HTTP/1 connection, its
/// rest is drained (for at most [`LINGER`]) by a task of its own.
#[derive(Debug)]
pub struct ClientBody {
    inner: Option<Incoming>,
    linger: bool,
}

impl ClientBody {
    /// `body` as read from the client; `linger`: drain what is left when dropped early (HTTP/1
    /// only: HTTP/2 resets the stream instead, which leaves the connection usable).
    pub fn new(body: Incoming, linger: bool) -> Self {
        let inner = (!body.is_end_stream()).then_some(body);
        ClientBody { inner, linger }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            // Ended, or broken: nothing is left to drain.
            self.inner = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        let Some(rest) = self
            .inner
            .take()
            .filter(|b| self.linger && !b.is_end_stream())
        else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(rest));
        }
    }
}

/// Reads `body` to its end, or until [`LINGER`] has passed, throwing the bytes away.
async fn drain(mut body: Incoming) {
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("body error")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn broken_framing_is_malformed_and_an_early_end_is_a_hang_up() {
        let of = |kind| ClientFault::of(&Wrapped(io::Error::new(kind, "x")));
        assert_eq!(of(io::ErrorKind::InvalidData), ClientFault::Malformed);
        assert_eq!(of(io::ErrorKind::InvalidInput), ClientFault::Malformed);
        assert_eq!(of(io::ErrorKind::UnexpectedEof), ClientFault::Closed);
        assert_eq!(of(io::ErrorKind::ConnectionReset), ClientFault::Closed);
        let no_io = std::fmt::Error;
        assert_eq!(ClientFault::of(&no_io), ClientFault::Closed);
    }
}
