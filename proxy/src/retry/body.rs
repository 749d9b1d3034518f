//! The request body sent upstream: the client's, streamed through (sent once), or a small one
//! buffered so that a retry can send it again.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// A request body on its way to a backend.
#[derive(Debug)]
pub enum RequestBody {
    /// The client's body, streamed: it can be sent only once.
    Streamed(Incoming),
    /// A buffered body (possibly empty), sent in one frame.
    Buffered(Option<Bytes>),
}

impl RequestBody {
    /// True when the body can be sent again by a retry.
    pub fn is_replayable(&self) -> bool {
        matches!(self, RequestBody::Buffered(_))
    }
}

/// What a retry needs to send a request again: the buffered body.
#[derive(Debug, Clone)]
pub(crate) struct Replay(Bytes);

impl Replay {
    /// A fresh body with the same bytes.
    pub(crate) fn body(&self) -> RequestBody {
        RequestBody::Buffered((!self.0.is_empty()).then(|| self.0.clone()))
    }
}

/// `body` buffered when it is known to be empty or at most `cap` bytes (by `Content-Length`,
/// or the end of stream already seen); otherwise handed back to be streamed. An error reading
/// it is the client's.
pub(crate) async fn buffer_small(
    body: Incoming,
    cap: u64,
) -> Result<Result<Replay, Incoming>, hyper::Error> {
    if body.is_end_stream() {
        return Ok(Ok(Replay(Bytes::new())));
    }
    match body.size_hint().upper() {
        Some(n) if n <= cap => Ok(Ok(Replay(body.collect().await?.to_bytes()))),
        _ => Ok(Err(body)),
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
