//! The immutable routing snapshot: plain data compiled by the controller and read by the proxy.
//!
//! A snapshot is built once, swapped in whole, and never mutated afterwards (the only interior
//! mutability is the balancers' round-robin cursors, which are harmless to reset on a swap, and
//! caches of verified credentials inside a rule's steps, which are only ever a shortcut).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Serialize;

use crate::balance;
use crate::pipeline::Step;
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
    /// Headers some rule maps verified claims to, beyond the fixed identity headers: stripped
    /// from every client request on every route, so no client can assert them.
    #[serde(serialize_with = "ser_names")]
    pub identity_headers: Box<[HeaderName]>,
}

impl Snapshot {
    /// The rule a router candidate points at.
    pub fn rule(&self, id: RuleId) -> &Rule {
        &self.rules[id as usize]
    }
}

/// One accepted rule of a route: what it does ([`RulePolicy`], shared by every snapshot in which
/// the rule's configuration is unchanged) and where it sends requests (its backends, rebuilt by
/// an endpoint refresh).
#[derive(Debug, Serialize)]
pub struct Rule {
    /// What happens to a request on this rule.
    #[serde(flatten)]
    pub policy: Arc<RulePolicy>,
    /// Weighted backends with their ready endpoints.
    pub backends: Box<[Backend]>,
    /// Smooth weighted round-robin order over `backends`, precomputed (see [`balance`]).
    #[serde(skip)]
    schedule: Box<[u32]>,
    #[serde(skip)]
    cursor: AtomicUsize,
}

/// What a rule does with a request, apart from where it sends it: built once per compiled rule
/// and shared, untouched, by an endpoint refresh.
#[derive(Debug, Serialize)]
pub struct RulePolicy {
    /// `namespace/name` of the route, used as the metric and log label.
    pub route: Arc<str>,
    /// The rule's name (its `name` field, or its index).
    pub name: Arc<str>,
    /// Optional path rewrite.
    pub rewrite: Option<PathRewrite>,
    /// Request and backend timeouts.
    pub timeouts: Timeouts,
    /// The rule's pipeline steps, in request order (see [`crate::pipeline`]).
    pub steps: Box<[Step]>,
}

impl Rule {
    /// Builds a rule and precomputes its balancing schedule from the backends' weights. A backend
    /// with no ready endpoint is left out of the schedule: its share goes to the others.
    pub fn new(policy: Arc<RulePolicy>, backends: Vec<Backend>) -> Self {
        let weights: Vec<u32> = backends
            .iter()
            .map(|b| if b.endpoints.is_empty() { 0 } else { b.weight })
            .collect();
        Rule {
            policy,
            backends: backends.into_boxed_slice(),
            schedule: balance::smooth_weighted_schedule(&weights),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The same rule with other backends (the balancing schedule recomputed for them).
    pub fn with_backends(&self, backends: Vec<Backend>) -> Self {
        Rule::new(Arc::clone(&self.policy), backends)
    }

    /// `namespace/name` of the rule's route.
    pub fn route(&self) -> &Arc<str> {
        &self.policy.route
    }

    /// The rule's name.
    pub fn name(&self) -> &Arc<str> {
        &self.policy.name
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

/// Serialises one header name as its string.
pub(crate) fn ser_name<S: serde::Serializer>(name: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name.as_str())
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
