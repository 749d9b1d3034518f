//! The fake API server as a process, for scripts that run the `sluice` binary in cluster mode
//! (`scripts/symbol-order.sh`): `fake-api KUBECONFIG FILE...` serves the objects of the YAML
//! manifests FILEs (the same ones standalone mode reads), writes a kubeconfig for itself to
//! KUBECONFIG, and runs until killed.

use std::process::ExitCode;

use serde::Deserialize;
use serde_json::Value;
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
                eprintln!("fake-api: {file}: an object without apiVersion and kind");
                return ExitCode::FAILURE;
            };
            api.apply(&resource, object);
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

/// `group/version/plural` of an object (`/v1/services` for the core group), the plural as the
/// API server derives it for the kinds Sluice reads.
fn resource_of(object: &Value) -> Option<String> {
    let api_version = object["apiVersion"].as_str()?;
    let kind = object["kind"].as_str()?.to_ascii_lowercase();
    let plural = match kind.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{kind}s"),
    };
    let prefix = if api_version.contains('/') { "" } else { "/" };
    Some(format!("{prefix}{api_version}/{plural}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::resource_of;

    #[test]
    fn an_object_is_served_under_the_path_the_api_server_gives_its_kind() {
        let of = |api_version: &str, kind: &str| {
            resource_of(&json!({"apiVersion": api_version, "kind": kind}))
        };
        assert_eq!(of("v1", "Service").as_deref(), Some("/v1/services"));
        assert_eq!(
            of("discovery.k8s.io/v1", "EndpointSlice").as_deref(),
            Some("discovery.k8s.io/v1/endpointslices")
        );
        assert_eq!(
            of("sluice.dev/v1alpha1", "RateLimitPolicy").as_deref(),
            Some("sluice.dev/v1alpha1/ratelimitpolicies")
        );
        assert_eq!(resource_of(&json!({"kind": "Service"})), None);
    }
}
