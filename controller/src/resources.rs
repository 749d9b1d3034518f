//! The custom resources (`sluice.dev/v1alpha1`) and the Kubernetes kinds Sluice reads.
//!
//! Specs deny unknown fields: a field Sluice does not implement is an error, never silently
//! ignored. Schema attributes carry what the API server can check itself (enums, bounds,
//! patterns), so `kubectl apply` rejects nonsense before the controller sees it.

mod auth;
mod duration;
mod edge;
mod policy;
mod route;
mod traffic;

pub use auth::*;
pub use duration::{DURATION_PATTERN, parse_duration};
pub use edge::*;
pub use k8s_openapi::api::core::v1::{Secret, Service};
pub use k8s_openapi::api::discovery::v1::EndpointSlice;
pub use policy::*;
pub use route::*;
pub use traffic::*;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of Sluice's resources.
pub const GROUP: &str = "sluice.dev";
/// API version of Sluice's resources.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "sluice.dev/v1alpha1";

/// Status shared by Sluice's resources: the generation it describes and its conditions.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    /// The `metadata.generation` these conditions were computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs`, `PartiallyInvalid`, `Programmed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

// An object's `ObjectStatus`, boxed: most routes read from files have none, and inline it was
// 40 bytes of every route kept. Its doc comment is the schema's description of `status`.
/// Status shared by Sluice's resources: the generation it describes and its conditions.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(transparent)]
pub struct BoxedStatus(pub Box<ObjectStatus>);

impl std::ops::Deref for BoxedStatus {
    type Target = ObjectStatus;
    fn deref(&self) -> &ObjectStatus {
        &self.0
    }
}

/// The CRD manifests, in a stable order, as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    [GatewayRoute::crd(), RateLimitPolicy::crd()]
        .iter()
        .map(|crd| serde_yaml::to_string(crd).expect("a CRD always serialises"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// One CRD per file, as kept in `crds/`: `(file name, YAML)`.
pub fn crd_files() -> Vec<(String, String)> {
    [GatewayRoute::crd(), RateLimitPolicy::crd()]
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml = serde_yaml::to_string(crd).expect("a CRD always serialises");
            (format!("{name}.yaml"), yaml)
        })
        .collect()
}
