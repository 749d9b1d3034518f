//! What the pipeline knows about one request as it goes.

use std::net::SocketAddr;
use std::time::Instant;

use http::HeaderValue;

use crate::auth::Identity;
use crate::snapshot::RuleId;

/// The client end of a connection, made once per connection.
#[derive(Debug, Clone)]
pub struct Client {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The peer's IP as an `X-Forwarded-For` entry.
    pub ip_header: HeaderValue,
}

impl Client {
    /// The client at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Client {
            addr,
            ip_header: crate::headers::client_ip_header(&addr),
        }
    }
}

/// One request's context, filled in by the phases it passes. `'a` is the snapshot's lifetime:
/// steps may leave references to their configuration here.
#[derive(Debug)]
pub struct RequestCtx<'a> {
    /// The request id sent upstream and returned to the client.
    pub request_id: HeaderValue,
    /// Who sent it.
    pub client: &'a Client,
    /// When it arrived.
    pub started: Instant,
    /// The rule it matched, once routed.
    pub rule: Option<RuleId>,
    /// The verified identity, once authenticated.
    pub identity: Option<Identity>,
    /// The endpoint it was sent to.
    pub endpoint: Option<SocketAddr>,
    /// True when the response is the backend's (not one the gateway made).
    pub upstream_response: bool,
    /// The error kind, when the gateway answered itself.
    pub error: Option<&'static str>,
    /// Why credentials were refused (never the credential).
    pub detail: Option<&'static str>,
    /// Query parameters that may carry a credential, dropped from the upstream target.
    pub hidden_query_params: Vec<&'a str>,
}

impl<'a> RequestCtx<'a> {
    /// The context of a request that just arrived.
    pub fn new(request_id: HeaderValue, started: Instant, client: &'a Client) -> Self {
        RequestCtx {
            request_id,
            client,
            started,
            rule: None,
            identity: None,
            endpoint: None,
            upstream_response: false,
            error: None,
            detail: None,
            hidden_query_params: Vec::new(),
        }
    }
}
