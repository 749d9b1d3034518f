//! The pure compile step: resources in, one immutable snapshot and a status per object out.
//!
//! No I/O, no clock, no tokio: the same inputs give the same snapshot, which is what makes
//! `sluice check`, the directory source and the cluster source agree. An invalid rule is dropped
//! alone with a diagnostic naming the field; every other rule keeps serving.

mod endpoints;
mod policies;
mod routes;
mod status;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use kube::ResourceExt;
use regex::Regex;
use sluice_proxy::Snapshot;
use sluice_proxy::router::RouterBuilder;

use crate::resources::{EndpointSlice, GatewayRoute, RateLimitPolicy, Service};
pub use status::{Condition, StatusReport};

/// Everything compile reads.
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
    /// Conditions for every GatewayRoute and RateLimitPolicy.
    pub statuses: Vec<StatusReport>,
    /// Every problem found, in object order.
    pub diagnostics: Vec<Diagnostic>,
    /// `namespace/name` of the Services some backend reference failed to resolve against.
    pub unresolved_services: HashSet<String>,
}

/// Compiles `inputs` into snapshot `generation`. Regular expressions already compiled in `prev`
/// are reused, so a recompile pays only for what changed.
pub fn compile(inputs: &Inputs, generation: u64, prev: Option<&Snapshot>) -> Compiled {
    let mut regexes = RegexCache::from_snapshot(prev);
    let mut endpoints = endpoints::EndpointIndex::new(&inputs.services, &inputs.slices, prev);
    let mut order: Vec<&GatewayRoute> = inputs.routes.iter().map(|r| &**r).collect();
    // Gateway API tie-break: the oldest route wins, then `namespace/name`.
    order.sort_unstable_by_key(|r| {
        let m = &r.metadata;
        (
            m.creation_timestamp.as_ref().map(|t| t.0),
            m.namespace.as_deref(),
            m.name.as_deref(),
        )
    });

    let mut out = routes::Output {
        rules: Vec::new(),
        router: RouterBuilder::default(),
        statuses: Vec::new(),
        diagnostics: Vec::new(),
    };
    for (rank, route) in order.iter().enumerate() {
        routes::compile_route(route, rank as u64, &mut endpoints, &mut regexes, &mut out);
    }
    policies::compile_policies(
        &inputs.policies,
        &inputs.routes,
        &mut out.statuses,
        &mut out.diagnostics,
    );

    Compiled {
        snapshot: Snapshot {
            generation,
            rules: out.rules.into_iter().map(Arc::new).collect(),
            router: Arc::new(out.router.build()),
        },
        statuses: out.statuses,
        diagnostics: out.diagnostics,
        unresolved_services: endpoints.into_failed(),
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
    let mut index = endpoints::EndpointIndex::new(&touched_services, &touched_slices, Some(prev));
    let mut rules = Vec::with_capacity(prev.rules.len());
    for rule in prev.rules.iter() {
        if !rule.backends.iter().any(|b| services.contains(&*b.service)) {
            rules.push(Arc::clone(rule));
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
        rules.push(Arc::new(rule.with_backends(backends)));
    }
    Some(Snapshot {
        generation,
        rules: rules.into_boxed_slice(),
        router: Arc::clone(&prev.router),
    })
}

/// Compiled regular expressions by their full (anchored) pattern.
#[derive(Default)]
pub(crate) struct RegexCache {
    compiled: HashMap<String, Regex>,
}

/// Largest compiled program accepted for one expression: a manifest must not be able to make the
/// gateway allocate without bound.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

impl RegexCache {
    fn from_snapshot(prev: Option<&Snapshot>) -> Self {
        let compiled = prev
            .map(|s| {
                s.router
                    .regexes()
                    .into_iter()
                    .map(|r| (r.as_str().to_owned(), r.clone()))
                    .collect()
            })
            .unwrap_or_default();
        RegexCache { compiled }
    }

    /// `pattern` anchored at both ends (a regex match is a whole-value match).
    pub(crate) fn anchored(&mut self, pattern: &str) -> Result<Regex, String> {
        let full = format!("^(?:{pattern})$");
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
                e => format!("invalid regular expression: {}", one_line(&e.to_string())),
            })?;
        self.compiled.insert(full, r.clone());
        Ok(r)
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
