//! The Secrets routes reference, each watched on its own by name.
//!
//! Least privilege: the gateway never lists or watches every Secret of a namespace. Each Secret
//! a route names (`keySecretRef`, `apiKey.secretRefs`) gets a list and watch with the field
//! selector `metadata.name=<name>`, which RBAC authorises against `resourceNames`; a Secret no
//! route names any more stops being watched, and its data leaves memory with the next compile.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::reflector::Store;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::watch::{Changed, watch_secret};
use crate::compile::route_secret_names;
use crate::resources::{GatewayRoute, Secret};

/// How long a compile waits for a newly referenced Secret's first list: past it, the compile
/// goes ahead with the Secret missing (its rules fail closed) and the watch keeps trying.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(5);

/// One watch per referenced Secret.
pub struct SecretWatches {
    client: Client,
    changes: mpsc::UnboundedSender<Changed>,
    watches: HashMap<(String, String), (Store<Secret>, AbortHandle)>,
}

impl SecretWatches {
    /// No watches yet; changes to watched Secrets will be reported on `changes`.
    pub fn new(client: Client, changes: mpsc::UnboundedSender<Changed>) -> Self {
        SecretWatches {
            client,
            changes,
            watches: HashMap::new(),
        }
    }

    /// Watches exactly the Secrets `routes` reference, waiting (boundedly) for new watches to
    /// list once.
    pub async fn follow(&mut self, routes: &[Arc<GatewayRoute>]) {
        let wanted: HashSet<(String, String)> = routes
            .iter()
            .flat_map(|r| {
                let ns = r.metadata.namespace.as_deref().unwrap_or("default");
                route_secret_names(r).map(move |name| (ns.to_owned(), name.to_owned()))
            })
            .collect();
        self.watches.retain(|key, (_, task)| {
            let keep = wanted.contains(key);
            if !keep {
                task.abort();
            }
            keep
        });
        let mut new = Vec::new();
        for key in wanted {
            if self.watches.contains_key(&key) {
                continue;
            }
            let (store, task) = watch_secret(&self.client, &key.0, &key.1, &self.changes);
            new.push(store.clone());
            self.watches.insert(key, (store, task));
        }
        let listed = async {
            for store in &new {
                let _ = store.wait_until_ready().await;
            }
        };
        if tokio::time::timeout(FIRST_LIST_WAIT, listed).await.is_err() {
            tracing::warn!(
                "a referenced Secret could not be listed in time (is the gateway allowed to read it?); its rules refuse requests until it can"
            );
        }
    }

    /// Every watched Secret that exists.
    pub fn state(&self) -> Vec<Arc<Secret>> {
        self.watches
            .values()
            .flat_map(|(store, _)| store.state())
            .collect()
    }
}

impl Drop for SecretWatches {
    fn drop(&mut self) {
        for (_, task) in self.watches.values() {
            task.abort();
        }
    }
}
