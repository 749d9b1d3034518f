//! Manifests as a user writes them, for local backends.

use std::net::SocketAddr;

/// A Service `name` (port `port`, port name `http`) with one EndpointSlice per backend, so that
/// backends on different local ports can sit behind one Service, as pods do.
pub fn service(name: &str, port: u16, backends: &[(SocketAddr, bool)]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports: [{{name: http, port: {port}, targetPort: 8080}}]\n"
    );
    for (i, (addr, ready)) in backends.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{i}\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: {}, protocol: TCP}}]\nendpoints:\n- addresses: [\"{}\"]\n  conditions: {{ready: {ready}}}\n",
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
