//! The body of every response the gateway sends.

use bytes::Bytes;
use http_body_util::{Either, Full};

use crate::upstream::UpstreamBody;

/// The backend's body, streamed, or one the gateway wrote itself (errors, early answers).
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// A body the gateway wrote itself.
pub fn local(bytes: impl Into<Bytes>) -> ProxyBody {
    ProxyBody::Right(Full::new(bytes.into()))
}
