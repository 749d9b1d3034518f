//! The pure compile step: resources in, one immutable snapshot and a status per object out.
//!
//! No I/O, no clock, no tokio: the same inputs give the same snapshot, which is what makes
//! `sluice check`, the directory source and the cluster source agree. An invalid rule is dropped
//! alone with a diagnostic naming the field; every other rule keeps serving.

mod auth;
mod cache;
mod edge;
mod endpoints;
mod policies;
mod routes;
mod status;
#[cfg(test)]
mod tests;
mod traffic;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use kube::ResourceExt;
use regex::Regex;
use sluice_proxy::Snapshot;

use crate::resources::{EndpointSlice, GatewayRoute, RateLimitPolicy, Secret, Service};
pub use cache::{RouteCache, RuleChanges};
pub use status::{Condition, StatusReport};

/// Everything compile reads. Each object at most once by kind, namespace and name: the API
/// server holds one, and standalone mode keeps the first copy of an object defined twice; two
/// copies would be compiled in no set order (found by the `manifests` fuzz target).
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// GatewayRoutes.
    pub routes: Vec<Arc<GatewayRoute>>,
    /// RateLimitPolicies.
    pub policies: Vec<Arc<RateLimitPolicy>>,
    /// Services the routes may name.
    pub services: Vec<Arc<Service>>,
    /// EndpointSlices of those Services.
    pub slices: Vec<Arc<EndpointSlice>>,
    /// Secrets the routes may reference (JWT keys, API keys).
    pub secrets: Vec<Arc<Secret>>,
    /// The gateway has a Redis for `Global` rate limits (`--redis`); without one their status
    /// says they are not programmed.
    pub shared_store: bool,
    /// Nothing reads the statuses (standalone mode): [`Compiled::statuses`] is left empty,
    /// which spares a pass over every route.
    pub skip_statuses: bool,
    /// When the source knows: the route objects that came and went since the inputs of the
    /// last compile with the same cache (every other route being the same object as then).
    pub routes_delta: Option<RoutesDelta>,
}

/// See [`Inputs::routes_delta`].
#[derive(Debug, Clone, Default)]
pub struct RoutesDelta {
    /// Route objects in these inputs that the last ones did not have.
    pub added: Vec<Arc<GatewayRoute>>,
    /// Addresses of route objects the last inputs had and these do not.
    pub removed: Vec<usize>,
}

/// Identity of an object in diagnostics and statuses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// `GatewayRoute`, `RateLimitPolicy`, ...
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectRef {
    /// The reference of a namespaced resource.
    pub fn of<K: kube::Resource<DynamicType = ()>>(obj: &K) -> Self {
        ObjectRef {
            kind: kind_name::<K>(),
            namespace: obj.namespace().unwrap_or_else(|| "default".to_owned()),
            name: obj.name_any(),
        }
    }
}

fn kind_name<K: kube::Resource<DynamicType = ()>>() -> &'static str {
    match &*K::kind(&()) {
        "GatewayRoute" => "GatewayRoute",
        "RateLimitPolicy" => "RateLimitPolicy",
        "Service" => "Service",
        "EndpointSlice" => "EndpointSlice",
        "Secret" => "Secret",
        _ => "Object",
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// One problem found in one object: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The object.
    pub object: ObjectRef,
    /// Path of the field, e.g. `spec.rules[1].matches[0].path.value`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.reason)
    }
}

/// What compile produces.
#[derive(Debug)]
pub struct Compiled {
    /// The snapshot to serve.
    pub snapshot: Snapshot,
    /// Conditions for every GatewayRoute and RateLimitPolicy (shared with the route cache, so a
    /// recompile does not copy the statuses of routes that did not change); empty when the
    /// inputs said [`Inputs::skip_statuses`].
    pub statuses: Vec<Arc<StatusReport>>,
    /// Every problem found, in object order.
    pub diagnostics: Vec<Diagnostic>,
    /// `namespace/name` of the Services some backend reference failed to resolve against.
    pub unresolved_services: HashSet<String>,
    /// Rules added, removed and compiled anew since the last compile with the same cache.
    pub changes: RuleChanges,
}

/// Compiles `inputs` into snapshot `generation`. Regular expressions already compiled in `prev`
/// are reused, so a recompile pays only for what changed.
pub fn compile(inputs: &Inputs, generation: u64, prev: Option<&Snapshot>) -> Compiled {
    compile_cached(inputs, generation, prev, &mut RouteCache::default())
}

/// Maps keyed by configuration, never by request data: a fast hash is safe.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The names of the Secrets `route` references (route-level and per-rule authentication), in
/// order, repeats included.
pub fn route_secret_names(route: &GatewayRoute) -> impl Iterator<Item = &str> {
    let tls = route.spec.tls.iter().map(|t| t.secret_name.as_str());
    let auths = route.spec.authentication.as_deref().into_iter().chain(
        route
            .spec
            .rules
            .iter()
            .filter_map(|r| r.authentication.as_deref()),
    );
    auths
        .flat_map(|a| {
            let jwt = a
                .jwt
                .iter()
                .flat_map(|j| &j.providers)
                .filter_map(|p| p.key_secret_ref.as_ref().map(|s| s.name.as_str()));
            let keys = a
                .api_key
                .iter()
                .flat_map(|k| &k.secret_refs)
                .map(|s| s.name.as_str());
            jwt.chain(keys)
        })
        .chain(tls)
}

/// [`compile`], reusing from `cache` the output of every route that is the same object as last
/// time and whose Services (and their EndpointSlices), Secrets and RateLimitPolicies are the
/// same objects too, and patching the routes compiled anew into the last compile's router; the
/// cache is updated for the next call. In a large configuration a one-route change then costs
/// about what that route costs, plus what its host and path buckets hold.
pub fn compile_cached(
    inputs: &Inputs,
    generation: u64,
    prev: Option<&Snapshot>,
    cache: &mut RouteCache,
) -> Compiled {
    let mut compiled = compile_cached_without_route_statuses(inputs, generation, prev, cache);
    if !inputs.skip_statuses {
        compiled.statuses = cache.statuses_with(std::mem::take(&mut compiled.statuses));
    }
    compiled
}

/// [`compile_cached`] with only the RateLimitPolicies' statuses in [`Compiled::statuses`]:
/// the routes' are [`RouteCache::statuses_with`] them, to be collected after the snapshot is
/// installed. (A pass over every cached route, 2 ms at 10,000 routes, that need not delay
/// the snapshot.)
pub fn compile_cached_without_route_statuses(
    inputs: &Inputs,
    generation: u64,
    prev: Option<&Snapshot>,
    cache: &mut RouteCache,
) -> Compiled {
    let mut regexes = RegexCache::from_snapshot(prev);
    let mut endpoints =
        endpoints::EndpointIndex::new(&inputs.services, &inputs.slices, cache.take_lists());
    let mut secrets = auth::SecretIndex::new(&inputs.secrets);
    let policies = policies::PolicyIndex::new(&inputs.policies);
    let mut names = Names::default();
    let update = cache.update(inputs, &policies, |route| {
        let output = routes::compile_route(
            route,
            &mut endpoints,
            &mut regexes,
            &mut secrets,
            &policies,
            &mut names,
            !inputs.skip_statuses,
        );
        (output, endpoints.take_recent_failures())
    });
    let placement = cache.place(update);
    let rules = placement.rules;

    let mut out = Assembly {
        diagnostics: Vec::new(),
        failed: HashSet::new(),
        tls: sluice_proxy::tls::Certificates::default(),
    };
    // Only routes with problems, certificates or unresolved Services have anything here.
    for route in cache.notable() {
        out.place(route);
    }
    let Assembly {
        mut diagnostics,
        mut failed,
        tls,
    } = out;
    let mut policy_statuses = Vec::new();
    if !inputs.policies.is_empty() {
        let limited: HashSet<(&str, &str)> = rules
            .iter()
            .filter(|r| {
                r.policy
                    .steps
                    .iter()
                    .any(|s| matches!(s, sluice_proxy::pipeline::Step::RateLimit(_)))
            })
            .map(|r| (&**r.route(), &**r.name()))
            .collect();
        policies.statuses(
            &inputs.routes,
            &limited,
            inputs.shared_store,
            &mut policy_statuses,
            &mut diagnostics,
        );
    }
    let statuses = policy_statuses.into_iter().map(Arc::new).collect();
    let (unresolved, lists) = endpoints.into_parts();
    failed.extend(unresolved);
    cache.keep_lists(lists);

    Compiled {
        snapshot: Snapshot {
            generation,
            rules,
            router: placement.router,
            identity_headers: placement.identity_headers,
            tls: Arc::new(tls),
        },
        statuses,
        diagnostics,
        unresolved_services: failed,
        changes: placement.changes,
    }
}

/// The headers any rule copies claims to, beyond the fixed identity headers: every client
/// request loses them, on every route.
pub(super) fn identity_headers(rules: &sluice_proxy::snapshot::Rules) -> Box<[http::HeaderName]> {
    let authenticators = || {
        rules
            .iter()
            .flat_map(|r| r.policy.steps.iter())
            .filter_map(|s| match s {
                sluice_proxy::pipeline::Step::Authenticate(a) => Some(a),
                _ => None,
            })
    };
    // A header some rule reads a credential from is never stripped everywhere, even if another
    // rule maps a claim to it: that would take the credential away before it is read. The rule
    // mapping the claim still overwrites it on its own requests.
    let credentials: Vec<&http::HeaderName> = authenticators()
        .flat_map(|a| a.sources())
        .filter_map(|from| match from {
            sluice_proxy::auth::CredentialFrom::Header { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    let mut out: Vec<http::HeaderName> = Vec::new();
    for rule in rules.iter() {
        for step in rule.policy.steps.iter() {
            let sluice_proxy::pipeline::Step::Authenticate(auth) = step else {
                continue;
            };
            for claim in auth.jwt.iter().flat_map(|p| p.claim_to_headers.iter()) {
                let fixed = sluice_proxy::headers::IDENTITY_HEADERS.contains(&&claim.header);
                let credential = credentials.contains(&&claim.header);
                if !fixed && !credential && !out.contains(&claim.header) {
                    out.push(claim.header.clone());
                }
            }
        }
    }
    out.into_boxed_slice()
}

/// The snapshot's parts besides rules and router, filled route by route in precedence order.
struct Assembly {
    diagnostics: Vec<Diagnostic>,
    failed: HashSet<String>,
    tls: sluice_proxy::tls::Certificates,
}

impl Assembly {
    /// Adds one placed route's problems, certificates and unresolved Services.
    fn place(&mut self, route: &cache::CachedRoute) {
        self.diagnostics.extend(route.diagnostics().iter().cloned());
        for served in route.certificates() {
            // The oldest route keeps a host's certificate, as it keeps its paths.
            if !self.tls.insert(
                &served.host,
                Arc::clone(&served.key),
                Arc::clone(&served.secret),
            ) {
                self.diagnostics.push(Diagnostic {
                    object: ObjectRef::of(&*route.source),
                    field: "spec.tls".to_owned(),
                    reason: format!(
                        "{} already has a certificate from an older route; this one is not served for it",
                        served.host
                    ),
                });
            }
        }
        self.failed.extend(route.failed().iter().cloned());
    }
}

/// A snapshot that differs from `prev` only in the endpoints of `services` (`namespace/name`):
/// every other rule, and the router, are shared with `prev`, so an endpoint flip costs what the
/// affected rules cost, not what the whole configuration does.
///
/// Returns `None` when that is not enough and a full [`compile`] is needed: a backend of these
/// Services no longer resolves. The caller must also fall back to a full compile when a
/// Service in `services` was among the previous compile's `unresolved_services`, or when
/// anything but EndpointSlices changed.
pub fn refresh_endpoints(
    inputs: &Inputs,
    services: &HashSet<String>,
    generation: u64,
    prev: &Snapshot,
) -> Option<Snapshot> {
    let in_scope = |namespace: Option<&str>, name: &str| {
        services.contains(&format!("{}/{name}", namespace.unwrap_or("default")))
    };
    let touched_services: Vec<Arc<crate::resources::Service>> = inputs
        .services
        .iter()
        .filter(|s| {
            in_scope(
                s.metadata.namespace.as_deref(),
                s.metadata.name.as_deref().unwrap_or(""),
            )
        })
        .cloned()
        .collect();
    let touched_slices: Vec<Arc<crate::resources::EndpointSlice>> = inputs
        .slices
        .iter()
        .filter(|s| {
            s.labels()
                .get(endpoints::SERVICE_NAME_LABEL)
                .is_some_and(|svc| in_scope(s.metadata.namespace.as_deref(), svc))
        })
        .cloned()
        .collect();
    let mut index = endpoints::EndpointIndex::new(
        &touched_services,
        &touched_slices,
        endpoints::EndpointLists::of_snapshot(prev),
    );
    let mut changed = Vec::new();
    for (id, rule) in prev.rules.iter_ids() {
        if !rule.backends.iter().any(|b| services.contains(&*b.service)) {
            continue;
        }
        let mut backends = Vec::with_capacity(rule.backends.len());
        for b in rule.backends.iter() {
            if !services.contains(&*b.service) {
                backends.push(b.clone());
                continue;
            }
            let (namespace, name) = b.service.split_once('/')?;
            let resolved = index.resolve(namespace, name, i32::from(b.port)).ok()?;
            backends.push(sluice_proxy::snapshot::Backend::new(
                b.service.clone(),
                b.port,
                b.weight,
                resolved.ready,
                resolved.not_ready,
            ));
        }
        changed.push((id, Some(Arc::new(rule.with_backends(backends)))));
    }
    Some(Snapshot {
        generation,
        rules: prev.rules.with(changed),
        router: Arc::clone(&prev.router),
        identity_headers: prev.identity_headers.clone(),
        tls: Arc::clone(&prev.tls),
    })
}

/// Rule names, one allocation per distinct name among the routes of one compile: most rules
/// are called `main`, `api` or, unnamed, by their index.
#[derive(Default)]
pub(crate) struct Names(HashSet<Arc<str>, foldhash::fast::RandomState>);

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.0.get(name) {
            return Arc::clone(known);
        }
        let name: Arc<str> = name.into();
        self.0.insert(Arc::clone(&name));
        name
    }
}

/// Compiled regular expressions by their full (anchored) pattern.
#[derive(Default)]
pub(crate) struct RegexCache<'a> {
    compiled: HashMap<String, Regex>,
    /// Where earlier expressions come from, read only when an expression is first needed: a
    /// recompile that compiles no regex route does not walk the router for them.
    prev: Option<&'a Snapshot>,
}

/// Largest compiled program accepted for one expression: a manifest must not be able to make the
/// gateway allocate without bound.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

impl<'a> RegexCache<'a> {
    fn from_snapshot(prev: Option<&'a Snapshot>) -> Self {
        RegexCache {
            compiled: HashMap::new(),
            prev,
        }
    }

    fn load_previous(&mut self) {
        if let Some(prev) = self.prev.take() {
            self.compiled.extend(
                prev.router
                    .regexes()
                    .into_iter()
                    .map(|r| (r.as_str().to_owned(), r.clone())),
            );
        }
    }

    /// `pattern` anchored at both ends (a regex match is a whole-value match).
    pub(crate) fn anchored(&mut self, pattern: &str) -> Result<Regex, String> {
        let full = format!("^(?:{pattern})$");
        self.load_previous();
        if let Some(r) = self.compiled.get(&full) {
            return Ok(r.clone());
        }
        let r = regex::RegexBuilder::new(&full)
            .size_limit(REGEX_SIZE_LIMIT)
            // The lazy DFA's cache grows while matching, per thread; bound it so thousands of
            // regex routes cannot add up to gigabytes under traffic.
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(_) => "regular expression is too large".to_owned(),
                e => syntax_error(pattern).unwrap_or_else(|| {
                    format!("invalid regular expression: {}", one_line(&e.to_string()))
                }),
            })?;
        self.compiled.insert(full, r.clone());
        Ok(r)
    }
}

/// What is wrong with the user's own `pattern` (not the anchored form compiled), and where:
/// `invalid regular expression "/items/([0-9]+": unclosed group at character 8`.
fn syntax_error(pattern: &str) -> Option<String> {
    let e = regex_syntax::Parser::new().parse(pattern).err()?;
    let (kind, column) = match &e {
        regex_syntax::Error::Parse(e) => (e.kind().to_string(), e.span().start.column),
        regex_syntax::Error::Translate(e) => (e.kind().to_string(), e.span().start.column),
        _ => return None,
    };
    Some(format!(
        "invalid regular expression {pattern:?}: {kind} at character {column}"
    ))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
