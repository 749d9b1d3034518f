//! Manifests as a user writes them, for local backends.

use std::net::SocketAddr;

/// A Service `name` (port `port`, port name `http`) with one EndpointSlice per backend, so that
/// backends on different local ports can sit behind one Service, as pods do.
pub fn service(name: &str, port: u16, backends: &[(SocketAddr, bool)]) -> String {
    let conditions: Vec<(SocketAddr, &str)> = backends
        .iter()
        .map(|&(addr, ready)| {
            (
                addr,
                if ready {
                    "{ready: true}"
                } else {
                    "{ready: false}"
                },
            )
        })
        .collect();
    service_with(name, port, &conditions)
}

/// Conditions of an endpoint that is shutting down: still serving what it has, not ready.
pub const TERMINATING: &str = "{ready: false, serving: true, terminating: true}";

/// Like [`service`], with each endpoint's `conditions` written out (YAML flow style).
pub fn service_with(name: &str, port: u16, backends: &[(SocketAddr, &str)]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports: [{{name: http, port: {port}, targetPort: 8080}}]\n"
    );
    for (i, (addr, conditions)) in backends.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{i}\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: {}, protocol: TCP}}]\nendpoints:\n- addresses: [\"{}\"]\n  conditions: {conditions}\n",
            addr.port(),
            addr.ip()
        ));
    }
    out
}

/// A GatewayRoute `name` in `default` with the given `spec:` body (indented two spaces).
pub fn route(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}\n"
    )
}

/// A route sending prefix `prefix` to `service:80`.
pub fn prefix_route(name: &str, prefix: &str, service: &str) -> String {
    route(
        name,
        &format!(
            "  rules:\n  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    backendRefs: [{{name: {service}, port: 80}}]"
        ),
    )
}
