//! What the pipeline knows about one request as it goes.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderValue};

use crate::auth::Identity;
use crate::limit::{LimitOutcome, TrustedProxies};
use crate::snapshot::RuleId;

/// The client end of a connection, made once per connection.
#[derive(Debug, Clone)]
pub struct Client {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The peer's IP as an `X-Forwarded-For` entry.
    pub ip_header: HeaderValue,
    /// The TLS version, when the connection is HTTPS (`TLSv1.3`, `TLSv1.2`).
    pub tls: Option<&'static str>,
    /// The trusted proxies, when the peer is one: then `X-Forwarded-For` names the client.
    proxies: Option<Arc<TrustedProxies>>,
}

impl Client {
    /// The client at `addr`, whose forwarding headers are not believed.
    pub fn new(addr: SocketAddr) -> Self {
        Client {
            addr,
            ip_header: crate::headers::client_ip_header(&addr),
            tls: None,
            proxies: None,
        }
    }

    /// The client at `addr`, whose `X-Forwarded-For` is believed if `trusted` holds `addr`.
    pub fn behind(addr: SocketAddr, trusted: &Arc<TrustedProxies>) -> Self {
        let mut client = Self::new(addr);
        if trusted.trusts(addr.ip().to_canonical()) {
            client.proxies = Some(Arc::clone(trusted));
        }
        client
    }

    /// The client's address for a request with `headers` as forwarded upstream: the peer, or
    /// the right-most untrusted hop when the peer is a trusted proxy.
    pub fn ip(&self, headers: &HeaderMap) -> IpAddr {
        match &self.proxies {
            Some(trusted) => trusted.client(self.addr.ip(), headers),
            None => self.addr.ip().to_canonical(),
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
    /// Its place in a trace (the client's, continued, or a new one).
    pub trace: crate::trace::TraceContext,
    /// When the rule's `request` timeout runs out.
    pub deadline: Option<Instant>,
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
    /// The most restrictive rate limit's decision, for the response headers.
    pub limit: Option<LimitOutcome<'a>>,
    /// Upstream attempts made (retries included).
    pub attempts: u32,
    /// A consistent-hash cookie the gateway made for a client that had none.
    pub affinity_cookie: Option<HeaderValue>,
    /// The request's `Origin`, kept by a `Cors` step for the response phase.
    pub origin: Option<HeaderValue>,
    /// A `Cors` step answered the request as a preflight.
    pub preflight: bool,
    /// What the response cache did.
    pub cache: Option<crate::cache::CacheState>,
}

impl<'a> RequestCtx<'a> {
    /// The context of a request that just arrived.
    pub fn new(request_id: HeaderValue, started: Instant, client: &'a Client) -> Self {
        Self::traced(request_id, started, client, &HeaderMap::new())
    }

    /// The context of a request that just arrived with `headers` (its trace headers read).
    pub fn traced(
        request_id: HeaderValue,
        started: Instant,
        client: &'a Client,
        headers: &HeaderMap,
    ) -> Self {
        RequestCtx {
            request_id,
            client,
            trace: crate::trace::TraceContext::from_request(headers),
            deadline: None,
            started,
            rule: None,
            identity: None,
            endpoint: None,
            upstream_response: false,
            error: None,
            detail: None,
            hidden_query_params: Vec::new(),
            limit: None,
            attempts: 0,
            affinity_cookie: None,
            origin: None,
            preflight: false,
            cache: None,
        }
    }

    /// Time left before the rule's `request` timeout, when it has one.
    pub fn remaining(&self) -> Option<std::time::Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}
