//! Entry points for the fuzz targets in `fuzz/`: the crate-private steps a request goes
//! through, callable one at a time. Not an API; nothing in the gateway calls these.

use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use crate::router::Candidate;
use crate::snapshot::Rule;

/// [`crate::headers`]: what the backend receives of the client's headers.
pub fn prepare_upstream(
    headers: &mut HeaderMap,
    upgrade: bool,
    client_ip: &HeaderValue,
    routed_host: Option<HeaderValue>,
    request_id: &HeaderValue,
    extra_identity: &[HeaderName],
    https: bool,
) {
    crate::headers::prepare_upstream(
        headers,
        upgrade,
        client_ip,
        routed_host,
        request_id,
        extra_identity,
        https,
    );
}

/// [`crate::headers`]: whether a request asks to switch to WebSocket.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    crate::headers::is_websocket_upgrade(headers)
}

/// [`crate::headers`]: a response's hop-by-hop headers out, as the gateway relays it.
pub fn strip_response_hop_by_hop(headers: &mut HeaderMap) {
    crate::headers::strip_hop_by_hop(headers, false, &[]);
}

/// The hop-by-hop header names the gateway never forwards.
pub fn hop_by_hop() -> &'static [HeaderName] {
    &crate::headers::HOP_BY_HOP
}

/// [`crate::forward`]: the path and query sent upstream for a request matched by `candidate`.
pub fn upstream_path(
    uri: &Uri,
    normalized: &str,
    rule: &Rule,
    candidate: &Candidate,
) -> Option<PathAndQuery> {
    crate::forward::upstream_path(uri, normalized, rule, candidate, &[])
}

/// [`crate::limit`]: the whole seconds a `Retry-After` or `RateLimit-Reset` shows.
pub fn retry_secs(d: Duration) -> u64 {
    crate::limit::retry_secs(d)
}
