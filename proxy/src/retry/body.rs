//! The request body sent upstream: the client's, streamed through (sent once), or a small one
//! buffered so that a retry can send it again.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use crate::client_body::{ClientBody, ClientFault};

/// A request body on its way to a backend.
#[derive(Debug)]
pub enum RequestBody {
    /// The client's body, streamed: it can be sent only once.
    Streamed(ClientBody),
    /// A buffered body (possibly empty), sent in one frame.
    Buffered(Option<Bytes>),
}

impl RequestBody {
    /// True when the body can be sent again by a retry.
    pub fn is_replayable(&self) -> bool {
        matches!(self, RequestBody::Buffered(_))
    }
}

/// Most bytes buffered for retries at once, over every request: past it a body streams (and
/// is not replayed) rather than let many slow clients hold memory.
pub const MAX_BUFFERED: u64 = 64 << 20;

static BUFFERED: AtomicU64 = AtomicU64::new(0);

/// What a retry needs to send a request again: the buffered body (counted against
/// [`MAX_BUFFERED`] until dropped).
#[derive(Debug)]
pub(crate) struct Replay {
    bytes: Bytes,
    reserved: u64,
}

impl Replay {
    /// A fresh body with the same bytes.
    pub(crate) fn body(&self) -> RequestBody {
        RequestBody::Buffered((!self.bytes.is_empty()).then(|| self.bytes.clone()))
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        BUFFERED.fetch_sub(self.reserved, Ordering::Relaxed);
    }
}

/// Why a body could not be buffered.
#[derive(Debug)]
pub(crate) enum BufferError {
    /// Reading it failed: the client hung up, or its framing is broken.
    Read(ClientFault),
    /// It did not arrive within the wait.
    Timeout,
}

/// `body` buffered when it is known to be empty or at most `cap` bytes (by `Content-Length`,
/// or the end of stream already seen) and the gateway-wide [`MAX_BUFFERED`] has room;
/// otherwise handed back to be streamed. A client that takes longer than `wait` to send it
/// gets [`BufferError::Timeout`].
pub(crate) async fn buffer_small(
    body: ClientBody,
    cap: u64,
    wait: Duration,
) -> Result<Result<Replay, ClientBody>, BufferError> {
    if body.is_end_stream() {
        return Ok(Ok(Replay {
            bytes: Bytes::new(),
            reserved: 0,
        }));
    }
    let Some(n) = body.size_hint().upper().filter(|&n| n <= cap) else {
        return Ok(Err(body));
    };
    if BUFFERED.fetch_add(n, Ordering::Relaxed).saturating_add(n) > MAX_BUFFERED {
        BUFFERED.fetch_sub(n, Ordering::Relaxed);
        return Ok(Err(body));
    }
    // Reserved from here on: the guard gives it back on every path.
    let mut replay = Replay {
        bytes: Bytes::new(),
        reserved: n,
    };
    match tokio::time::timeout(wait, body.collect()).await {
        Ok(Ok(collected)) => {
            replay.bytes = collected.to_bytes();
            Ok(Ok(replay))
        }
        Ok(Err(e)) => Err(BufferError::Read(ClientFault::of(&e))),
        Err(_) => Err(BufferError::Timeout),
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Streamed(inner) => Pin::new(inner).poll_frame(cx),
            RequestBody::Buffered(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streamed(inner) => inner.is_end_stream(),
            RequestBody::Buffered(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streamed(inner) => inner.size_hint(),
            RequestBody::Buffered(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
