//! Backend resolution as Kubernetes does it: the route names a Service port; the Service port's
//! name selects the EndpointSlice port, whose number is the pod's target port. Only endpoints
//! with `conditions.ready` (absent counts as ready) that are not terminating receive traffic.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};

use kube::ResourceExt;
use sluice_proxy::Snapshot;
use sluice_proxy::snapshot::Endpoint;

use super::FastMap;
use crate::resources::{EndpointSlice, Service};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The endpoints of one Service port.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// `namespace/name` of the Service: one allocation shared by every backend naming it,
    /// from one compile to the next while some rule has one of its lists.
    pub service: Arc<str>,
    /// Ready endpoints.
    pub ready: Arc<[Endpoint]>,
    /// Known but not ready (or terminating) endpoints.
    pub not_ready: Arc<[SocketAddr]>,
}

type Key<'a> = (&'a str, &'a str);

/// Ready endpoint lists already handed out, by Service (`namespace/name`) and port: when a
/// Service's ready addresses did not change, its list is shared instead of rebuilt, so rules
/// keep one list per Service port and its endpoints keep the state bound to them. Held weakly:
/// a list lives while some rule has it. The route cache keeps these from one compile to the
/// next, so that finding them does not walk the previous snapshot.
#[derive(Default)]
pub struct EndpointLists(FastMap<Arc<str>, FastMap<u16, Weak<[Endpoint]>>>);

impl EndpointLists {
    /// The lists of `snapshot`'s rules.
    pub fn of_snapshot(snapshot: &Snapshot) -> Self {
        let mut lists = EndpointLists::default();
        for backend in snapshot.rules.iter().flat_map(|r| r.backends.iter()) {
            let ports = lists.0.entry(Arc::clone(&backend.service)).or_default();
            ports.insert(backend.port, Arc::downgrade(&backend.endpoints));
        }
        lists
    }

    fn get(&self, service: &str, port: u16) -> Option<Arc<[Endpoint]>> {
        self.0.get(service)?.get(&port)?.upgrade()
    }

    /// Keeps `list` as `service`'s for `port`; the Service's id as kept.
    fn keep(&mut self, service: &str, port: u16, list: &Arc<[Endpoint]>) -> Arc<str> {
        let id = match self.0.get_key_value(service) {
            Some((id, _)) => Arc::clone(id),
            None => {
                let id: Arc<str> = service.into();
                self.0.insert(Arc::clone(&id), FastMap::default());
                id
            }
        };
        if let Some(ports) = self.0.get_mut(service) {
            ports.insert(port, Arc::downgrade(list));
        }
        id
    }

    /// Forgets the lists no rule has any more.
    pub fn prune(&mut self) {
        self.0.retain(|_, ports| {
            ports.retain(|_, list| list.strong_count() > 0);
            !ports.is_empty()
        });
    }
}

/// Services and slices by `(namespace, service)`, with resolutions memoised per port. Built on
/// the first resolution: a recompile that reuses every route resolves nothing.
pub struct EndpointIndex<'a> {
    inputs: (&'a [Arc<Service>], &'a [Arc<EndpointSlice>]),
    built: Option<Indexed<'a>>,
    lists: EndpointLists,
    resolved: FastMap<(Key<'a>, i32), Result<Resolved, String>>,
    /// `namespace/name` of every Service a resolution failed for.
    failed: HashSet<String>,
    /// Failures since the last [`EndpointIndex::take_recent_failures`], repeats included.
    recent: Vec<String>,
}

struct Indexed<'a> {
    /// namespace → name → Service (nested so lookups borrow the caller's strings).
    services: FastMap<&'a str, FastMap<&'a str, &'a Service>>,
    slices: FastMap<Key<'a>, Vec<&'a EndpointSlice>>,
}

fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

impl<'a> EndpointIndex<'a> {
    /// An index over these inputs, sharing the lists in `lists` that are still right.
    pub fn new(
        services: &'a [Arc<Service>],
        slices: &'a [Arc<EndpointSlice>],
        lists: EndpointLists,
    ) -> Self {
        EndpointIndex {
            inputs: (services, slices),
            built: None,
            lists,
            resolved: FastMap::default(),
            failed: HashSet::new(),
            recent: Vec::new(),
        }
    }

    fn build(services: &'a [Arc<Service>], slices: &'a [Arc<EndpointSlice>]) -> Indexed<'a> {
        let mut by_name: FastMap<&'a str, FastMap<&'a str, &'a Service>> = FastMap::default();
        for s in services {
            if let Some(name) = s.metadata.name.as_deref() {
                by_name
                    .entry(namespace_of(&s.metadata))
                    .or_default()
                    .insert(name, &**s);
            }
        }
        let mut by_service: FastMap<Key<'a>, Vec<&'a EndpointSlice>> = FastMap::default();
        for slice in slices {
            if let Some(service) = slice.labels().get(SERVICE_NAME_LABEL) {
                by_service
                    .entry((namespace_of(&slice.metadata), service.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        Indexed {
            services: by_name,
            slices: by_service,
        }
    }

    /// The endpoints behind Service `namespace/name` port `port`, or why there are none to have.
    pub fn resolve(&mut self, namespace: &str, name: &str, port: i32) -> Result<Resolved, String> {
        let (services, slices) = self.inputs;
        let index = self
            .built
            .get_or_insert_with(|| Self::build(services, slices));
        let found = index
            .services
            .get_key_value(namespace)
            .and_then(|(&ns, by_name)| {
                by_name
                    .get_key_value(name)
                    .map(|(&name, &service)| ((ns, name), service))
            });
        let Some((key, service)) = found else {
            self.note_failure(namespace, name);
            return Err(format!("Service {namespace}/{name} not found"));
        };
        let result = match self.resolved.get(&(key, port)) {
            Some(hit) => hit.clone(),
            None => {
                let result = index.resolve_uncached(key, service, port, &mut self.lists);
                self.resolved.insert((key, port), result.clone());
                result
            }
        };
        if result.is_err() {
            self.note_failure(namespace, name);
        }
        result
    }

    fn note_failure(&mut self, namespace: &str, name: &str) {
        let id = format!("{namespace}/{name}");
        self.recent.push(id.clone());
        self.failed.insert(id);
    }

    /// `namespace/name` of the Services whose resolution failed since the last call: the
    /// failures of one route, when called after each.
    pub fn take_recent_failures(&mut self) -> Vec<String> {
        let mut recent = std::mem::take(&mut self.recent);
        recent.sort_unstable();
        recent.dedup();
        recent
    }

    /// `namespace/name` of every Service a resolution failed for (a change to one of them may
    /// bring a dropped rule back, which only a full compile does), and the endpoint lists, for
    /// the next compile to share.
    pub fn into_parts(self) -> (HashSet<String>, EndpointLists) {
        (self.failed, self.lists)
    }
}

impl<'a> Indexed<'a> {
    fn resolve_uncached(
        &self,
        key: Key<'a>,
        service: &Service,
        port: i32,
        lists: &mut EndpointLists,
    ) -> Result<Resolved, String> {
        let (namespace, name) = key;
        let spec = service.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return Err(format!(
                "Service {namespace}/{name} is of type ExternalName, which is not supported"
            ));
        }
        let Some(service_port) = spec.and_then(|s| s.ports.as_ref()).and_then(|ports| {
            // A Service may expose the same number over UDP too; HTTP needs the TCP one.
            ports.iter().find(|p| {
                p.port == port && p.protocol.as_deref().is_none_or(|proto| proto == "TCP")
            })
        }) else {
            return Err(format!("Service {namespace}/{name} has no TCP port {port}"));
        };
        let port_name = service_port.name.as_deref().unwrap_or("");
        let slices = self.slices.get(&key).map(Vec::as_slice).unwrap_or_default();

        let mut ready = Vec::new();
        let mut not_ready = Vec::new();
        let mut slices_with_port = 0;
        let mut slices_with_endpoints = 0;
        for slice in slices {
            // Slices without endpoints carry no port list worth checking: a Service scaled to
            // zero has one, and it must answer 503, not reject the route.
            if slice.address_type == "FQDN" || slice.endpoints.as_ref().is_none_or(Vec::is_empty) {
                continue;
            }
            slices_with_endpoints += 1;
            let number = slice.ports.iter().flatten().find_map(|p| {
                let same_name = p.name.as_deref().unwrap_or("") == port_name;
                let tcp = p.protocol.as_deref().is_none_or(|proto| proto == "TCP");
                (same_name && tcp).then_some(p.port).flatten()
            });
            let Some(number) = number.and_then(|n| u16::try_from(n).ok()) else {
                continue;
            };
            slices_with_port += 1;
            for endpoint in slice.endpoints.iter().flatten() {
                // Kubernetes: consumers may use only the first address; all are fungible.
                let Some(ip) = endpoint
                    .addresses
                    .first()
                    .and_then(|a| a.parse::<IpAddr>().ok())
                else {
                    continue;
                };
                let conditions = endpoint.conditions.as_ref();
                let is_ready = conditions.and_then(|c| c.ready).unwrap_or(true)
                    && !conditions.and_then(|c| c.terminating).unwrap_or(false);
                let addr = SocketAddr::new(ip, number);
                if is_ready {
                    ready.push(addr);
                } else {
                    not_ready.push(addr);
                }
            }
        }
        if slices_with_endpoints > 0 && slices_with_port == 0 {
            let shown = if port_name.is_empty() {
                "(unnamed)"
            } else {
                port_name
            };
            return Err(format!(
                "no EndpointSlice of Service {namespace}/{name} has the port named {shown} \
                 that Service port {port} uses"
            ));
        }
        // A pod can sit in two slices while they are being rebalanced; count it once.
        ready.sort_unstable();
        ready.dedup();
        not_ready.sort_unstable();
        not_ready.dedup();
        not_ready.retain(|a| ready.binary_search(a).is_err());
        let service_id = format!("{namespace}/{name}");
        let port = u16::try_from(port).unwrap_or(0);
        let unchanged = lists
            .get(&service_id, port)
            .filter(|old| old.iter().map(|e| e.addr).eq(ready.iter().copied()));
        let ready = match unchanged {
            Some(old) => old,
            None => ready.into_iter().map(Endpoint::new).collect(),
        };
        Ok(Resolved {
            service: lists.keep(&service_id, port, &ready),
            ready,
            not_ready: not_ready.into(),
        })
    }
}
