//! A gateway in cluster mode against the fake API server, and the objects tests apply to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_controller::reconcile::Debounce;
use sluice_controller::sources::cluster::{self, ClusterOptions, leader::LeaderConfig};
use sluice_proxy::{Gateway, ProxyConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::fake_api::FakeApi;
use crate::harness::{Listening, QUICK_DEBOUNCE, serve_in_background};

/// `group/version/plural` of the kinds the controller reads, as the fake API names them.
pub const ROUTES: &str = "sluice.dev/v1alpha1/gatewayroutes";
/// RateLimitPolicies.
pub const POLICIES: &str = "sluice.dev/v1alpha1/ratelimitpolicies";
/// Services.
pub const SERVICES: &str = "/v1/services";
/// EndpointSlices.
pub const SLICES: &str = "discovery.k8s.io/v1/endpointslices";
/// Secrets.
pub const SECRETS: &str = "/v1/secrets";
/// Leases.
pub const LEASES: &str = "coordination.k8s.io/v1/leases";
/// Events.
pub const EVENTS: &str = "events.k8s.io/v1/events";

/// One replica: proxy, admin and controller, talking to one listener of the fake API server.
pub struct Replica {
    /// Proxy address.
    pub addr: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// The gateway.
    pub gateway: Arc<Gateway>,
    stop: watch::Sender<bool>,
    controller: Option<JoinHandle<()>>,
}

impl Replica {
    /// Starts replica `identity` against listener `listener` of `api`, with a short Lease so
    /// that failover happens within a test's patience.
    pub async fn start(api: &FakeApi, listener: usize, identity: &str) -> Self {
        Self::start_with(api, listener, identity, QUICK_DEBOUNCE).await
    }

    /// Like [`Replica::start`] with a given debounce.
    pub async fn start_with(
        api: &FakeApi,
        listener: usize,
        identity: &str,
        debounce: Debounce,
    ) -> Self {
        let gateway = Gateway::with_access_log(ProxyConfig::default(), None);
        let Listening {
            addr,
            admin,
            stop,
            stop_rx,
            ..
        } = serve_in_background(&gateway).await;
        let mut leader = LeaderConfig::new("sluice-system".to_owned(), identity.to_owned());
        leader.lease_duration = Duration::from_secs(2);
        leader.retry_period = Duration::from_millis(200);
        let options = ClusterOptions {
            namespaces: Vec::new(),
            debounce,
            leader,
        };
        let controller = tokio::spawn(cluster::run(
            api.client(listener),
            gateway.clone(),
            options,
            stop_rx,
        ));
        Replica {
            addr,
            admin,
            gateway,
            stop,
            controller: Some(controller),
        }
    }

    /// Stops gracefully (the Lease is released) and waits for the controller to end.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(c) = self.controller.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
        }
    }

    /// Dies without a goodbye: the controller and every task it started are aborted before
    /// anything is told to stop, so the Lease is not released and must expire.
    pub async fn kill(mut self) {
        if let Some(c) = self.controller.take() {
            c.abort();
            let _ = c.await;
        }
        let _ = self.stop.send(true);
    }

    /// Generation of the snapshot being served.
    pub fn generation(&self) -> u64 {
        self.gateway.snapshot().generation
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(c) = self.controller.take() {
            c.abort();
        }
        let _ = self.stop.send(true);
    }
}

/// A Service `name` in `default` (port 80 named `http`).
pub fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    })
}

/// EndpointSlice `slice` of Service `service` with one endpoint at `addr`.
pub fn slice(service: &str, slice: &str, addr: SocketAddr, ready: bool) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": slice, "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": addr.port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": ready}}],
    })
}

/// A GatewayRoute in `default` sending `prefix` to `service:80`.
pub fn prefix_route(name: &str, prefix: &str, service: &str) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "GatewayRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
            "backendRefs": [{"name": service, "port": 80}],
        }]},
    })
}

/// A Secret in `default` as the API server returns it: `data` base64-encoded.
pub fn secret(name: &str, entries: &[(&str, &str)]) -> Value {
    use base64::Engine as _;
    let data: serde_json::Map<String, Value> = entries
        .iter()
        .map(|(k, v)| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(v);
            ((*k).to_owned(), Value::String(encoded))
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": "Opaque",
        "data": data,
    })
}

/// The condition `type_` of an object's status.
pub fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}
