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
use tokio::time::Instant;

use crate::resources::{EndpointSlice, GatewayRoute, RateLimitPolicy, Service};

/// A change that compile must see, stamped with when the watch delivered it.
#[derive(Debug, Clone)]
pub struct Changed {
    /// When the event arrived.
    pub at: Instant,
    /// For a change to one EndpointSlice: its Service, `namespace/name`. Such a change needs
    /// only that Service's endpoint lists refreshed, not a full compile.
    pub endpoints_of: Option<String>,
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
    pub fn watch(
        client: &Client,
        namespaces: &[String],
        changes: &mpsc::UnboundedSender<Changed>,
    ) -> Self
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
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
            .map(|(scope, api)| spawn_watch(api, scope, changes.clone()))
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

    /// Every object currently known.
    pub fn state(&self) -> Vec<Arc<K>> {
        match self.stores.as_slice() {
            [one] => one.state(),
            many => many.iter().flat_map(Store::state).collect(),
        }
    }
}

fn spawn_watch<K>(api: Api<K>, scope: String, changes: mpsc::UnboundedSender<Changed>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Relevant + Send + Sync,
    K: 'static,
{
    let (store, writer) = reflector::store();
    let kind = K::kind(&());
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut last_error_log: Option<Instant> = None;
        tokio::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if seen.apply(&event) {
                        let endpoints_of = match &event {
                            watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                                o.endpoints_of()
                            }
                            _ => None,
                        };
                        let _ = changes.send(Changed {
                            at: Instant::now(),
                            endpoints_of,
                        });
                    }
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
    store
}

/// Digests of the objects last reported, to tell real changes from noise.
#[derive(Default)]
struct Seen {
    digests: HashMap<(String, String), u64>,
    relisting: Option<HashMap<(String, String), u64>>,
}

impl Seen {
    /// Records `event`; true when compile's view changed.
    fn apply<K: Resource + Relevant>(&mut self, event: &watcher::Event<K>) -> bool {
        let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
        match event {
            watcher::Event::Init => {
                self.relisting = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(o) => {
                if let Some(next) = self.relisting.as_mut() {
                    next.insert(key(o), o.relevant_digest());
                }
                false
            }
            watcher::Event::InitDone => {
                let next = self.relisting.take().unwrap_or_default();
                let changed = next != self.digests;
                self.digests = next;
                // The first list always counts: it is what compile waits for.
                changed || self.digests.is_empty()
            }
            watcher::Event::Apply(o) => {
                let digest = o.relevant_digest();
                self.digests.insert(key(o), digest) != Some(digest)
            }
            watcher::Event::Delete(o) => self.digests.remove(&key(o)).is_some(),
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

    #[test]
    fn only_relevant_changes_are_reported() {
        let mut seen = Seen::default();
        assert!(!seen.apply(&watcher::Event::<Service>::Init));
        assert!(!seen.apply(&watcher::Event::InitApply(service("a", 80, "1"))));
        assert!(
            seen.apply(&watcher::Event::<Service>::InitDone),
            "first list"
        );
        assert!(
            !seen.apply(&watcher::Event::Apply(service("a", 80, "2"))),
            "a new resourceVersion alone is noise"
        );
        assert!(seen.apply(&watcher::Event::Apply(service("a", 81, "3"))));
        // A re-list (after 410 Gone) with the same content changes nothing.
        assert!(!seen.apply(&watcher::Event::<Service>::Init));
        assert!(!seen.apply(&watcher::Event::InitApply(service("a", 81, "9"))));
        assert!(!seen.apply(&watcher::Event::<Service>::InitDone));
        // One that lost an object does.
        assert!(!seen.apply(&watcher::Event::<Service>::Init));
        assert!(seen.apply(&watcher::Event::<Service>::InitDone));
        assert!(!seen.apply(&watcher::Event::Delete(service("a", 81, "9"))));
    }

    #[test]
    fn an_empty_first_list_still_counts_as_synced() {
        let mut seen = Seen::default();
        seen.apply(&watcher::Event::<Service>::Init);
        assert!(seen.apply(&watcher::Event::<Service>::InitDone));
    }
}
