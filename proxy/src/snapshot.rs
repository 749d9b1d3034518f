//! The immutable routing snapshot: plain data compiled by the controller and read by the proxy.
//!
//! A snapshot is built once, swapped in whole, and never mutated afterwards. Its only interior
//! mutability is the balancers' round-robin cursors (harmless to reset on a swap), caches of
//! verified credentials inside a rule's steps (only ever a shortcut), and the handles to
//! long-lived state (endpoint health, circuits, retry budgets, rate-limit buckets), set once
//! when the snapshot is installed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Serialize;
use serde::ser::SerializeStruct;

use crate::balance::{Balancer, Balancing};
use crate::circuit::{BackendState, CircuitLimits};
use crate::health::{ActiveHealth, EndpointState, PassiveHealth};
use crate::pipeline::Step;
use crate::retry::RetryPolicy;
use crate::router::Router;

/// A rule's id, what router candidates point at: stable while the rule is unchanged, so that a
/// change to other routes leaves its candidates alone. [`Snapshot::rule`] finds the rule.
pub type RuleId = u32;

/// One compiled routing configuration.
#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    /// Increases by one with every snapshot a source publishes.
    pub generation: u64,
    /// Every accepted rule of every route, by id. Shared, chunk by chunk, with the next
    /// snapshot where it leaves rules alone.
    pub rules: Rules,
    /// Host and path tables leading to rules, shared by snapshots that differ only in
    /// endpoints.
    pub router: Arc<Router>,
    /// Headers some rule maps verified claims to, beyond the fixed identity headers: stripped
    /// from every client request on every route, so no client can assert them.
    #[serde(serialize_with = "ser_names")]
    pub identity_headers: Box<[HeaderName]>,
    /// Certificates for HTTPS by host, from the routes' `tls` Secrets.
    pub tls: Arc<crate::tls::Certificates>,
}

impl Snapshot {
    /// The rule a router candidate points at.
    pub fn rule(&self, id: RuleId) -> &Rule {
        self.rules
            .get(id)
            .expect("every router candidate points at a rule of its snapshot")
    }
}

/// Ids per chunk of [`Rules`].
const CHUNK: usize = 64;

/// One chunk of [`Rules`]: shared by snapshots until one of them changes a rule in it.
type Chunk = Arc<[Option<Arc<Rule>>]>;

/// A snapshot's rules by [`RuleId`], in chunks of 64 ids that snapshots share: one that changes
/// a few rules copies only the chunks they are in (and the list of chunks), so a change costs
/// what it touches, not what the configuration holds. Iteration goes by id; after a compile
/// from scratch that is route precedence order.
#[derive(Debug, Default, Clone)]
pub struct Rules {
    chunks: Box<[Chunk]>,
    len: usize,
}

impl Rules {
    /// The rule with id `id`.
    pub fn get(&self, id: RuleId) -> Option<&Arc<Rule>> {
        let id = id as usize;
        self.chunks.get(id / CHUNK)?.get(id % CHUNK)?.as_ref()
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there is no rule.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every rule, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Rule>> + '_ {
        self.chunks.iter().flat_map(|c| c.iter().flatten())
    }

    /// Every rule with its id.
    pub fn iter_ids(&self) -> impl Iterator<Item = (RuleId, &Arc<Rule>)> + '_ {
        self.chunks.iter().enumerate().flat_map(|(c, chunk)| {
            chunk.iter().enumerate().filter_map(move |(i, r)| {
                let id = u32::try_from(c * CHUNK + i).unwrap_or(u32::MAX);
                r.as_ref().map(|r| (id, r))
            })
        })
    }

    /// A copy with each `(id, rule)` of `changes` set (`None`: no rule has that id any more),
    /// sharing every chunk the changes leave alone.
    pub fn with(&self, changes: impl IntoIterator<Item = (RuleId, Option<Arc<Rule>>)>) -> Rules {
        let mut chunks = self.chunks.to_vec();
        let mut len = self.len;
        for (id, rule) in changes {
            let (c, i) = (id as usize / CHUNK, id as usize % CHUNK);
            while chunks.len() <= c {
                chunks.push(std::iter::repeat_n(None, CHUNK).collect());
            }
            // Copies a chunk `self` shares the first time it is touched, then edits the copy.
            let slot = &mut Arc::make_mut(&mut chunks[c])[i];
            match (slot.is_some(), rule.is_some()) {
                (false, true) => len += 1,
                (true, false) => len -= 1,
                _ => {}
            }
            *slot = rule;
        }
        Rules {
            chunks: chunks.into(),
            len,
        }
    }

    /// The rules of the chunks `earlier` does not share with this: every rule new since it, and
    /// the neighbours of those.
    pub fn not_shared_with<'a>(
        &'a self,
        earlier: &'a Rules,
    ) -> impl Iterator<Item = &'a Arc<Rule>> {
        self.chunks
            .iter()
            .enumerate()
            .filter(move |(i, chunk)| {
                earlier
                    .chunks
                    .get(*i)
                    .is_none_or(|old| !Arc::ptr_eq(chunk, old))
            })
            .flat_map(|(_, chunk)| chunk.iter().flatten())
    }
}

impl FromIterator<(RuleId, Arc<Rule>)> for Rules {
    fn from_iter<I: IntoIterator<Item = (RuleId, Arc<Rule>)>>(iter: I) -> Self {
        Rules::default().with(iter.into_iter().map(|(id, r)| (id, Some(r))))
    }
}

impl Serialize for Rules {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
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
    /// The balancer over `backends`, built with them (see [`crate::balance`]).
    #[serde(skip)]
    balancer: Balancer,
}

/// What a rule does with a request, apart from where it sends it: built once per compiled rule
/// and shared, untouched, by an endpoint refresh.
#[derive(Debug, Default, Serialize)]
pub struct RulePolicy {
    /// `namespace/name` of the route, used as the metric and log label.
    pub route: Arc<str>,
    /// The rule's name (its `name` field, or its index).
    pub name: Arc<str>,
    /// Optional path rewrite (boxed: few rules have one, every rule has the field).
    pub rewrite: Option<Box<PathRewrite>>,
    /// Request and backend timeouts.
    pub timeouts: Timeouts,
    /// The rule's pipeline steps, in request order (see [`crate::pipeline`]).
    pub steps: Box<[Step]>,
    /// Balancing, retries, health checks and circuit limits: most rules have the defaults,
    /// which they share (see [`Traffic::shared`]).
    pub traffic: Arc<Traffic>,
    /// Plain HTTP requests get a 301 to HTTPS (the route's `httpsRedirect`).
    pub https_redirect: bool,
    /// The rule's metric handles, bound on its first response, or at install when a rule of
    /// the same route and name had them (see [`crate::metrics`]).
    #[serde(skip)]
    pub stats: OnceLock<Arc<crate::metrics::RuleStats>>,
}

/// How a rule's requests are spread over its endpoints and what happens when one fails.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Traffic {
    /// How an endpoint is picked (`loadBalancer`).
    pub balancing: Balancing,
    /// Retries (`retry`); without one, a request that reached no backend is still sent once
    /// more to another endpoint.
    pub retry: Option<RetryPolicy>,
    /// Outlier detection (`healthCheck.passive`).
    pub passive: Option<PassiveHealth>,
    /// Probes (`healthCheck.active`).
    pub active: Option<ActiveHealth>,
    /// Limits of each backend (`circuitBreaker`).
    pub circuit: Option<CircuitLimits>,
}

impl Traffic {
    /// This, shared: the defaults (most rules' traffic) are one allocation for every rule
    /// instead of 200 bytes each.
    pub fn shared(self) -> Arc<Traffic> {
        static DEFAULT: std::sync::LazyLock<Arc<Traffic>> =
            std::sync::LazyLock::new(|| Arc::new(Traffic::default()));
        // Every field named, so that a new one cannot be left out of the test.
        let Traffic {
            balancing,
            retry,
            passive,
            active,
            circuit,
        } = &self;
        let default = matches!(balancing, Balancing::LeastRequest)
            && retry.is_none()
            && passive.is_none()
            && active.is_none()
            && circuit.is_none();
        if default {
            Arc::clone(&DEFAULT)
        } else {
            Arc::new(self)
        }
    }
}

impl Rule {
    /// Builds a rule and its balancer over the backends. A backend with no ready endpoint gets
    /// no share: it goes to the others.
    pub fn new(policy: Arc<RulePolicy>, backends: Vec<Backend>) -> Self {
        let balancer = Balancer::new(&policy.traffic.balancing, &backends);
        Rule {
            policy,
            backends: backends.into_boxed_slice(),
            balancer,
        }
    }

    /// The same rule with other backends (the balancer rebuilt for them).
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

    /// Picks the endpoint of one attempt, with the backend it belongs to: see
    /// [`crate::balance`]. `hash` is the request's consistent-hash key; `tried` the endpoints
    /// of earlier attempts, avoided while another exists. `None` when no endpoint is ready.
    pub fn pick(&self, hash: Option<u64>, tried: &[SocketAddr]) -> Option<(&Backend, &Endpoint)> {
        self.balancer
            .pick(&self.backends, hash, tried)
            .map(|(i, e)| (&self.backends[i], e))
    }

    /// True when some backend has a ready endpoint.
    pub fn has_endpoints(&self) -> bool {
        !self.balancer.is_empty()
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

pub(crate) fn ser_pairs<S: serde::Serializer>(
    pairs: &[(HeaderName, HeaderValue)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        pairs
            .iter()
            .map(|(n, v)| (n.as_str(), String::from_utf8_lossy(v.as_bytes()))),
    )
}

pub(crate) fn ser_names<S: serde::Serializer>(
    names: &[HeaderName],
    s: S,
) -> Result<S::Ok, S::Error> {
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
    /// Counts against the rule's `circuitBreaker`, bound at install.
    #[serde(skip)]
    circuit: OnceLock<Arc<BackendState>>,
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
            circuit: OnceLock::new(),
        }
    }

    /// The next round-robin turn within the backend.
    pub(crate) fn next_turn(&self) -> usize {
        self.cursor.fetch_add(1, Ordering::Relaxed)
    }

    /// The circuit state, when the rule has `circuitBreaker` and was installed.
    pub fn circuit(&self) -> Option<&Arc<BackendState>> {
        self.circuit.get()
    }

    pub(crate) fn bind_circuit(&self, make: impl FnOnce() -> Arc<BackendState>) {
        let _ = self.circuit.get_or_init(make);
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
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The pod (or local process) address.
    pub addr: SocketAddr,
    /// Its long-lived state (in flight, failures, health), shared by every rule and snapshot
    /// naming the address; bound at install.
    state: OnceLock<Arc<EndpointState>>,
}

impl Endpoint {
    /// An endpoint at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            state: OnceLock::new(),
        }
    }

    /// Its state (made on first use when the snapshot was never installed).
    pub fn state(&self) -> &Arc<EndpointState> {
        self.state
            .get_or_init(|| Arc::new(EndpointState::new(self.addr, None)))
    }

    pub(crate) fn bind(&self, make: impl FnOnce() -> Arc<EndpointState>) {
        let _ = self.state.get_or_init(make);
    }
}

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let state = self.state();
        let mut out = s.serialize_struct("Endpoint", 3)?;
        out.serialize_field("addr", &self.addr)?;
        out.serialize_field("health", &state.health())?;
        out.serialize_field("inFlight", &state.in_flight())?;
        out.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_traffic_is_one_allocation_and_any_other_its_own() {
        let a = Traffic::default().shared();
        let b = Traffic::default().shared();
        assert!(Arc::ptr_eq(&a, &b));
        let round_robin = Traffic {
            balancing: Balancing::RoundRobin,
            ..Traffic::default()
        }
        .shared();
        assert!(!Arc::ptr_eq(&a, &round_robin));
        assert_eq!(round_robin.balancing, Balancing::RoundRobin);
        let limited = Traffic {
            circuit: Some(CircuitLimits {
                max_connections: 1,
                max_pending_requests: 1,
                max_requests: 1,
            }),
            ..Traffic::default()
        }
        .shared();
        assert!(!Arc::ptr_eq(&a, &limited) && limited.circuit.is_some());
    }
}
