//! The immutable routing snapshot: plain data compiled by the controller and read by the proxy.
//!
//! A snapshot is built once, swapped in whole, and never mutated afterwards (the only interior
//! mutability is the balancers' round-robin cursors, which are harmless to reset on a swap).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Serialize;

use crate::balance;
use crate::router::Router;

/// Index of a [`Rule`] in [`Snapshot::rules`].
pub type RuleId = u32;

/// One compiled routing configuration.
#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    /// Increases by one with every snapshot a source publishes.
    pub generation: u64,
    /// Every accepted rule of every route; candidates in the router point here. Shared with
    /// the next snapshot when an endpoint change leaves a rule alone.
    pub rules: Box<[Arc<Rule>]>,
    /// Host and path tables leading to rules, shared by snapshots that differ only in
    /// endpoints.
    pub router: Arc<Router>,
}

impl Snapshot {
    /// The rule a router candidate points at.
    pub fn rule(&self, id: RuleId) -> &Rule {
        &self.rules[id as usize]
    }
}

/// One accepted rule of a route: what happens to a request once it matched.
#[derive(Debug, Serialize)]
pub struct Rule {
    /// `namespace/name` of the route, used as the metric and log label.
    pub route: Arc<str>,
    /// The rule's name (its `name` field, or its index).
    pub name: Arc<str>,
    /// Optional path rewrite.
    pub rewrite: Option<PathRewrite>,
    /// Header changes applied to the request before it goes upstream.
    pub request_headers: HeaderFilter,
    /// Header changes applied to the response before it goes to the client.
    pub response_headers: HeaderFilter,
    /// Request and backend timeouts.
    pub timeouts: Timeouts,
    /// Weighted backends with their ready endpoints.
    pub backends: Box<[Backend]>,
    /// Smooth weighted round-robin order over `backends`, precomputed (see [`balance`]).
    #[serde(skip)]
    schedule: Box<[u32]>,
    #[serde(skip)]
    cursor: AtomicUsize,
}

impl Rule {
    /// Builds a rule and precomputes its balancing schedule from the backends' weights. A backend
    /// with no ready endpoint is left out of the schedule: its share goes to the others.
    pub fn new(
        route: Arc<str>,
        name: Arc<str>,
        rewrite: Option<PathRewrite>,
        request_headers: HeaderFilter,
        response_headers: HeaderFilter,
        timeouts: Timeouts,
        backends: Vec<Backend>,
    ) -> Self {
        let weights: Vec<u32> = backends
            .iter()
            .map(|b| if b.endpoints.is_empty() { 0 } else { b.weight })
            .collect();
        Rule {
            route,
            name,
            rewrite,
            request_headers,
            response_headers,
            timeouts,
            backends: backends.into_boxed_slice(),
            schedule: balance::smooth_weighted_schedule(&weights),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The same rule with other backends (the balancing schedule recomputed for them).
    pub fn with_backends(&self, backends: Vec<Backend>) -> Self {
        Rule::new(
            self.route.clone(),
            self.name.clone(),
            self.rewrite.clone(),
            self.request_headers.clone(),
            self.response_headers.clone(),
            self.timeouts,
            backends,
        )
    }

    /// Picks the next endpoint: smooth weighted round robin across backends, then round robin
    /// across the chosen backend's ready endpoints. `None` when no endpoint is ready.
    pub fn pick(&self) -> Option<&Endpoint> {
        if self.schedule.is_empty() {
            return None;
        }
        let turn = self.cursor.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
        self.backends[self.schedule[turn] as usize].pick()
    }
}

/// How the path is rewritten before forwarding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PathRewrite {
    /// Replace the whole path.
    ReplaceFullPath(Box<str>),
    /// Replace the prefix the request matched (the candidate's prefix) with this value.
    ReplacePrefixMatch(Box<str>),
}

/// Request or response header changes, validated at compile time.
#[derive(Debug, Default, Clone, Serialize)]
pub struct HeaderFilter {
    /// Headers to set, replacing any existing value.
    #[serde(serialize_with = "ser_pairs")]
    pub set: Box<[(HeaderName, HeaderValue)]>,
    /// Headers to append.
    #[serde(serialize_with = "ser_pairs")]
    pub add: Box<[(HeaderName, HeaderValue)]>,
    /// Headers to remove.
    #[serde(serialize_with = "ser_names")]
    pub remove: Box<[HeaderName]>,
}

impl HeaderFilter {
    /// True when applying the filter would change nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies removals, then sets, then additions.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

fn ser_pairs<S: serde::Serializer>(
    pairs: &[(HeaderName, HeaderValue)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        pairs
            .iter()
            .map(|(n, v)| (n.as_str(), String::from_utf8_lossy(v.as_bytes()))),
    )
}

fn ser_names<S: serde::Serializer>(names: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(names.iter().map(HeaderName::as_str))
}

/// Timeouts of a rule; `None` means no limit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// From the request's arrival to the response headers.
    pub request: Option<Duration>,
    /// One upstream attempt, from sending to the response headers.
    pub backend_request: Option<Duration>,
}

/// A backend reference resolved to endpoints.
#[derive(Debug, Serialize)]
pub struct Backend {
    /// `namespace/name` of the Service.
    pub service: Arc<str>,
    /// The Service port the route named.
    pub port: u16,
    /// Relative share of the rule's requests.
    pub weight: u32,
    /// Endpoints that receive new requests (ready); shared by every rule naming the same port.
    pub endpoints: Arc<[Endpoint]>,
    /// Endpoints known but not ready (shown in `/debug/snapshot`, never picked).
    pub not_ready: Arc<[SocketAddr]>,
    #[serde(skip)]
    cursor: AtomicUsize,
}

impl Backend {
    /// A backend with its ready and not-ready endpoints.
    pub fn new(
        service: Arc<str>,
        port: u16,
        weight: u32,
        endpoints: Arc<[Endpoint]>,
        not_ready: Arc<[SocketAddr]>,
    ) -> Self {
        Backend {
            service,
            port,
            weight,
            endpoints,
            not_ready,
            cursor: AtomicUsize::new(0),
        }
    }

    fn pick(&self) -> Option<&Endpoint> {
        if self.endpoints.is_empty() {
            return None;
        }
        let turn = self.cursor.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        Some(&self.endpoints[turn])
    }
}

impl Clone for Backend {
    /// A copy sharing the endpoint lists, with its own round-robin cursor.
    fn clone(&self) -> Self {
        Backend::new(
            self.service.clone(),
            self.port,
            self.weight,
            self.endpoints.clone(),
            self.not_ready.clone(),
        )
    }
}

/// One ready endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// The pod (or local process) address.
    pub addr: SocketAddr,
}

impl Endpoint {
    /// An endpoint at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Endpoint { addr }
    }
}
