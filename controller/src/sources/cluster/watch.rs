//! One watcher and reflector store per kind and namespace, reporting only changes that matter
//! to compile.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::resources::{EndpointSlice, GatewayRoute, RateLimitPolicy, Secret, Service};

/// A change that compile must see, stamped with when the watch delivered it.
#[derive(Debug, Clone)]
pub struct Changed {
    /// When the event arrived.
    pub at: Instant,
    /// For a change to one EndpointSlice: its Service, `namespace/name`. Such a change needs
    /// only that Service's endpoint lists refreshed, not a full compile.
    pub endpoints_of: Option<String>,
    /// For a change to one GatewayRoute (created, changed or deleted): its namespace and name.
    /// A batch of only such changes patches the last compile's route list instead of listing
    /// every route again.
    pub route: Option<(String, String)>,
}

/// The part of an object compile reads, hashed: events that leave it alone (our own status
/// writes, resourceVersion-only updates, a re-list after `410 Gone`) trigger nothing.
pub trait Relevant {
    /// Hash of what compile reads.
    fn relevant_digest(&self) -> u64;

    /// For an EndpointSlice, its Service as `namespace/name`.
    fn endpoints_of(&self) -> Option<String> {
        None
    }
}

fn digest_of(parts: &impl Serialize) -> u64 {
    let mut h = DefaultHasher::new();
    // Serialising to JSON is the one stable view of types that do not implement Hash.
    serde_json::to_vec(parts).unwrap_or_default().hash(&mut h);
    h.finish()
}

impl Relevant for GatewayRoute {
    fn relevant_digest(&self) -> u64 {
        let m = &self.metadata;
        digest_of(&(&self.spec, &m.creation_timestamp, &m.generation, &m.uid))
    }
}

impl Relevant for RateLimitPolicy {
    fn relevant_digest(&self) -> u64 {
        let m = &self.metadata;
        digest_of(&(&self.spec, &m.generation, &m.uid))
    }
}

impl Relevant for Service {
    fn relevant_digest(&self) -> u64 {
        let spec = self.spec.as_ref();
        digest_of(&(
            spec.and_then(|s| s.ports.as_ref()),
            spec.and_then(|s| s.type_.as_ref()),
        ))
    }
}

impl Relevant for Secret {
    fn relevant_digest(&self) -> u64 {
        digest_of(&(&self.data, &self.string_data, &self.metadata.uid))
    }
}

impl Relevant for EndpointSlice {
    fn relevant_digest(&self) -> u64 {
        digest_of(&(
            &self.address_type,
            &self.endpoints,
            &self.ports,
            self.labels().get("kubernetes.io/service-name"),
        ))
    }

    fn endpoints_of(&self) -> Option<String> {
        let service = self.labels().get("kubernetes.io/service-name")?;
        Some(format!(
            "{}/{service}",
            self.metadata.namespace.as_deref().unwrap_or("default")
        ))
    }
}

/// An object's namespace and name, as the watches key it.
pub fn key_of(o: &impl ResourceExt) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// The stores of one kind: one per watched namespace, or one for all namespaces.
#[derive(Clone)]
pub struct KindStores<K: Resource<DynamicType = ()> + Clone + 'static> {
    stores: Vec<Store<K>>,
}

impl<K> KindStores<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Relevant + Send + Sync,
    K: 'static,
{
    /// Starts watching `K` in `namespaces` (all when empty), reporting relevant changes on
    /// `changes`. Watch errors back off and re-list; they never end the watch.
    /// The watch tasks are added to `tasks`, for their owner to abort.
    pub fn watch(
        client: &Client,
        namespaces: &[String],
        changes: &mpsc::UnboundedSender<Changed>,
        tasks: &mut Vec<AbortHandle>,
    ) -> Self
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        let mut namespaces = namespaces.to_vec();
        namespaces.sort();
        // `--namespace a,a` must not watch (and serve) everything in `a` twice.
        namespaces.dedup();
        let apis: Vec<(String, Api<K>)> = if namespaces.is_empty() {
            vec![("*".to_owned(), Api::all(client.clone()))]
        } else {
            namespaces
                .iter()
                .map(|ns| (ns.clone(), Api::namespaced(client.clone(), ns)))
                .collect()
        };
        let stores = apis
            .into_iter()
            .map(|(scope, api)| {
                let (store, task) =
                    spawn_watch(api, scope, watcher::Config::default(), changes.clone());
                tasks.push(task);
                store
            })
            .collect();
        KindStores { stores }
    }

    /// Resolves once every store has listed at least once.
    pub async fn synced(&self) {
        for store in &self.stores {
            // Only fails when the writer is dropped, i.e. the watch task ended: nothing to wait for.
            let _ = store.wait_until_ready().await;
        }
    }

    /// The object `namespace/name`, if known.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let key = reflector::ObjectRef::new(name).within(namespace);
        self.stores.iter().find_map(|s| s.get(&key))
    }

    /// Every object currently known.
    pub fn state(&self) -> Vec<Arc<K>> {
        match self.stores.as_slice() {
            [one] => one.state(),
            many => many.iter().flat_map(Store::state).collect(),
        }
    }
}

/// Watches the one Secret `namespace/name` (a list and watch with a `metadata.name` field
/// selector, which RBAC can restrict to named Secrets), reporting its changes on `changes`.
pub fn watch_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    changes: &mpsc::UnboundedSender<Changed>,
) -> (Store<Secret>, AbortHandle) {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    spawn_watch(api, format!("{namespace}/{name}"), config, changes.clone())
}

/// The annotation `kubectl apply` keeps its last applied copy of the object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what the stores need not keep of an object: its managed fields and `kubectl apply`'s
/// copy of it, which nothing here reads and which together are often larger than the rest of
/// the object (each managed-fields entry is a JSON tree of the fields it owns).
fn slim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

fn spawn_watch<K>(
    api: Api<K>,
    scope: String,
    config: watcher::Config,
    changes: mpsc::UnboundedSender<Changed>,
) -> (Store<K>, AbortHandle)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Relevant + Send + Sync,
    K: 'static,
{
    let (store, writer) = reflector::store();
    let kind = K::kind(&());
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff().modify(slim));
    let task = tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut last_error_log: Option<Instant> = None;
        tokio::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    let endpoints_of = match seen.apply(&event) {
                        Touch::Nothing => continue,
                        Touch::Endpoints(service) => Some(service),
                        Touch::Everything => None,
                    };
                    let route = match &event {
                        watcher::Event::Apply(o) | watcher::Event::Delete(o)
                            if kind == "GatewayRoute" =>
                        {
                            Some(key_of(o))
                        }
                        _ => None,
                    };
                    let _ = changes.send(Changed {
                        at: Instant::now(),
                        endpoints_of,
                        route,
                    });
                }
                Err(e) => {
                    // The backoff retries; log at most every 10 s so an outage does not flood.
                    let now = Instant::now();
                    if last_error_log.is_none_or(|t| now - t > Duration::from_secs(10)) {
                        tracing::warn!(kind = %kind, namespace = %scope, error = %e, "watch failed; retrying with backoff");
                        last_error_log = Some(now);
                    }
                }
            }
        }
    });
    (store, task.abort_handle())
}

/// What one watch event means for compile.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Touch {
    /// Nothing compile reads changed.
    Nothing,
    /// Only the endpoints of this Service (`namespace/name`) changed.
    Endpoints(String),
    /// Anything else: a full compile.
    Everything,
}

/// Digests (and, for EndpointSlices, Services) of the objects last reported, to tell real
/// changes from noise.
#[derive(Default)]
struct Seen {
    known: Known,
    relisting: Option<Known>,
    listed_once: bool,
}

/// Per `(namespace, name)`: the digest of what compile reads and, for a slice, its Service.
type Known = HashMap<(String, String), (u64, Option<String>)>;

impl Seen {
    /// Records `event` and says what it changed.
    fn apply<K: Resource + Relevant>(&mut self, event: &watcher::Event<K>) -> Touch {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(HashMap::new());
                Touch::Nothing
            }
            watcher::Event::InitApply(o) => {
                if let Some(next) = self.relisting.as_mut() {
                    next.insert(key_of(o), (o.relevant_digest(), o.endpoints_of()));
                }
                Touch::Nothing
            }
            watcher::Event::InitDone => {
                let next = self.relisting.take().unwrap_or_default();
                let changed = next != self.known;
                self.known = next;
                // The first list always counts, even an empty one: it is what compile waits for.
                let first = !self.listed_once;
                self.listed_once = true;
                if changed || first {
                    Touch::Everything
                } else {
                    Touch::Nothing
                }
            }
            watcher::Event::Apply(o) => {
                let digest = o.relevant_digest();
                let service = o.endpoints_of();
                match self.known.insert(key_of(o), (digest, service.clone())) {
                    Some((old, _)) if old == digest => Touch::Nothing,
                    // A slice moving to another Service changes two Services' endpoints.
                    Some((_, old_service)) if old_service != service => Touch::Everything,
                    _ => service.map_or(Touch::Everything, Touch::Endpoints),
                }
            }
            watcher::Event::Delete(o) => match self.known.remove(&key_of(o)) {
                None => Touch::Nothing,
                Some((_, Some(service))) => Touch::Endpoints(service),
                Some((_, None)) => Touch::Everything,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use kube::api::ObjectMeta;

    fn service(name: &str, port: i32, rv: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("ns".to_owned()),
                resource_version: Some(rv.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    port,
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    fn changed(seen: &mut Seen, event: &watcher::Event<Service>) -> bool {
        seen.apply(event) != Touch::Nothing
    }

    fn slice(name: &str, service: &str, ready: bool) -> EndpointSlice {
        let mut s = EndpointSlice {
            address_type: "IPv4".to_owned(),
            endpoints: Some(vec![k8s_openapi::api::discovery::v1::Endpoint {
                addresses: vec!["10.0.0.1".to_owned()],
                conditions: Some(k8s_openapi::api::discovery::v1::EndpointConditions {
                    ready: Some(ready),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        };
        s.metadata.name = Some(name.to_owned());
        s.metadata.namespace = Some("ns".to_owned());
        s.metadata.labels = Some(
            [("kubernetes.io/service-name".to_owned(), service.to_owned())]
                .into_iter()
                .collect(),
        );
        s
    }

    #[test]
    fn slice_changes_name_their_service_and_a_move_between_services_is_a_full_change() {
        let mut seen = Seen::default();
        seen.apply(&watcher::Event::<EndpointSlice>::Init);
        assert_eq!(
            seen.apply(&watcher::Event::<EndpointSlice>::InitDone),
            Touch::Everything
        );
        assert_eq!(
            seen.apply(&watcher::Event::Apply(slice("a-1", "a", true))),
            Touch::Endpoints("ns/a".to_owned())
        );
        assert_eq!(
            seen.apply(&watcher::Event::Apply(slice("a-1", "a", false))),
            Touch::Endpoints("ns/a".to_owned())
        );
        assert_eq!(
            seen.apply(&watcher::Event::Apply(slice("a-1", "b", false))),
            Touch::Everything,
            "relabelled: both Services changed"
        );
        assert_eq!(
            seen.apply(&watcher::Event::Delete(slice("a-1", "b", false))),
            Touch::Endpoints("ns/b".to_owned())
        );
    }

    #[test]
    fn re_listing_an_empty_kind_is_not_a_change() {
        let mut seen = Seen::default();
        seen.apply(&watcher::Event::<Service>::Init);
        assert!(
            changed(&mut seen, &watcher::Event::<Service>::InitDone),
            "first list"
        );
        seen.apply(&watcher::Event::<Service>::Init);
        assert!(!changed(&mut seen, &watcher::Event::<Service>::InitDone));
    }

    #[test]
    fn only_relevant_changes_are_reported() {
        let mut seen = Seen::default();
        assert!(!changed(&mut seen, &watcher::Event::<Service>::Init));
        assert!(!changed(
            &mut seen,
            &watcher::Event::InitApply(service("a", 80, "1"))
        ));
        assert!(
            changed(&mut seen, &watcher::Event::<Service>::InitDone),
            "first list"
        );
        assert!(
            !changed(&mut seen, &watcher::Event::Apply(service("a", 80, "2"))),
            "a new resourceVersion alone is noise"
        );
        assert!(changed(
            &mut seen,
            &watcher::Event::Apply(service("a", 81, "3"))
        ));
        // A re-list (after 410 Gone) with the same content changes nothing.
        assert!(!changed(&mut seen, &watcher::Event::<Service>::Init));
        assert!(!changed(
            &mut seen,
            &watcher::Event::InitApply(service("a", 81, "9"))
        ));
        assert!(!changed(&mut seen, &watcher::Event::<Service>::InitDone));
        // One that lost an object does.
        assert!(!changed(&mut seen, &watcher::Event::<Service>::Init));
        assert!(changed(&mut seen, &watcher::Event::<Service>::InitDone));
        assert!(!changed(
            &mut seen,
            &watcher::Event::Delete(service("a", 81, "9"))
        ));
    }

    /// A route as `kubectl apply` leaves it after the status writer's first write.
    const APPLIED_ROUTE: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: GatewayRoute
metadata:
  name: r1
  namespace: default
  annotations:
    team: payments
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"sluice.dev/v1alpha1","kind":"GatewayRoute","metadata":{"annotations":{"team":"payments"},"name":"r1","namespace":"default"},"spec":{"rules":[{"backendRefs":[{"name":"up","port":80}],"matches":[{"path":{"type":"PathPrefix","value":"/r1/"}}],"name":"main"}]}}
  managedFields:
  - apiVersion: sluice.dev/v1alpha1
    fieldsType: FieldsV1
    fieldsV1: {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}, "f:team": {}}}, "f:spec": {".": {}, "f:rules": {}}}
    manager: kubectl-client-side-apply
    operation: Update
    time: "2026-12-04T00:00:00Z"
  - apiVersion: sluice.dev/v1alpha1
    fieldsType: FieldsV1
    fieldsV1: {"f:status": {".": {}, "f:conditions": {}, "f:observedGeneration": {}}}
    manager: sluice
    operation: Update
    subresource: status
    time: "2026-12-04T00:00:01Z"
spec:
  rules:
  - name: main
    matches: [{path: {type: PathPrefix, value: /r1/}}]
    backendRefs: [{name: up, port: 80}]
"#;

    #[test]
    fn the_stores_keep_neither_managed_fields_nor_kubectls_last_applied_copy() {
        let mut route: crate::resources::GatewayRoute =
            serde_yaml::from_str(APPLIED_ROUTE).expect("route");
        let spec = route.spec.clone();
        slim(&mut route);
        assert_eq!(route.metadata.managed_fields, None);
        let annotations = route.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(annotations.len(), 1, "{annotations:?}");
        assert_eq!(annotations["team"], "payments");
        assert_eq!(route.spec, spec);
        assert_eq!(route.metadata.name.as_deref(), Some("r1"));
        // With kubectl's copy the only annotation, none are left.
        route.metadata.annotations = Some([(LAST_APPLIED.to_owned(), "{}".to_owned())].into());
        slim(&mut route);
        assert_eq!(route.metadata.annotations, None);
    }
}
