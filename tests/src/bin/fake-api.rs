//! The fake API server as a process, for scripts that run the `sluice` binary in cluster mode
//! (`scripts/symbol-order.sh`): `fake-api KUBECONFIG FILE...` serves the objects of the YAML
//! manifests FILEs (the same ones standalone mode reads), writes a kubeconfig for itself to
//! KUBECONFIG, and runs until killed.

use std::process::ExitCode;

use serde::Deserialize;
use serde_json::Value;
use sluice_tests::cluster;
use sluice_tests::fake_api::FakeApi;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((kubeconfig, files)) = args.split_first() else {
        eprintln!("usage: fake-api KUBECONFIG FILE...");
        return ExitCode::from(2);
    };
    let api = FakeApi::start().await;
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("fake-api: {file}: {e}");
                return ExitCode::FAILURE;
            }
        };
        for document in serde_yaml::Deserializer::from_str(&text) {
            let object = match Value::deserialize(document) {
                Ok(Value::Null) => continue,
                Ok(object) => object,
                Err(e) => {
                    eprintln!("fake-api: {file}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let Some(resource) = resource_of(&object) else {
                eprintln!(
                    "fake-api: {file}: kind {} is not one the controller reads",
                    object["kind"]
                );
                return ExitCode::FAILURE;
            };
            api.apply(resource, object);
        }
    }
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"http://{}\"}}}}]\n\
         users: [{{name: fake, user: {{}}}}]\n\
         contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: default}}}}]\n\
         current-context: fake\n",
        api.addr(0)
    );
    if let Err(e) = std::fs::write(kubeconfig, config) {
        eprintln!("fake-api: {kubeconfig}: {e}");
        return ExitCode::FAILURE;
    }
    println!("http://{}", api.addr(0));
    std::future::pending::<()>().await;
    ExitCode::SUCCESS
}

/// The collection the fake API serves an object of this kind under (the names the cluster tests
/// use); `None` for a kind the controller does not read.
fn resource_of(object: &Value) -> Option<&'static str> {
    Some(match object["kind"].as_str()? {
        "GatewayRoute" => cluster::ROUTES,
        "RateLimitPolicy" => cluster::POLICIES,
        "Service" => cluster::SERVICES,
        "EndpointSlice" => cluster::SLICES,
        "Secret" => cluster::SECRETS,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{cluster, resource_of};

    #[test]
    fn an_object_is_served_where_the_controller_watches_its_kind() {
        let of = |kind: &str| resource_of(&json!({"apiVersion": "v1", "kind": kind}));
        assert_eq!(of("Service"), Some(cluster::SERVICES));
        assert_eq!(of("EndpointSlice"), Some(cluster::SLICES));
        assert_eq!(of("GatewayRoute"), Some(cluster::ROUTES));
        assert_eq!(of("RateLimitPolicy"), Some(cluster::POLICIES));
        assert_eq!(of("Ingress"), None);
        assert_eq!(resource_of(&json!({"apiVersion": "v1"})), None);
    }
}
