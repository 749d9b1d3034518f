//! RateLimitPolicy compile. Enforcement is not built yet, so every policy is reported as not
//! accepted rather than silently doing nothing.

use std::sync::Arc;

use super::{Condition, Diagnostic, ObjectRef, StatusReport};
use crate::resources::{GatewayRoute, RateLimitPolicy};

const NOT_ENFORCED: &str =
    "rate limiting is not implemented in this version of sluice; the policy is not enforced";

pub(super) fn compile_policies(
    policies: &[Arc<RateLimitPolicy>],
    routes: &[Arc<GatewayRoute>],
    statuses: &mut Vec<StatusReport>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    for policy in policies {
        let object = ObjectRef::of(&**policy);
        diagnostics.push(Diagnostic {
            object: object.clone(),
            field: "spec".to_owned(),
            reason: NOT_ENFORCED.to_owned(),
        });
        let target = &policy.spec.target_ref.name;
        let target_exists = routes.iter().any(|r| {
            r.metadata.name.as_deref() == Some(target.as_str())
                && r.metadata.namespace.as_deref().unwrap_or("default") == object.namespace
        });
        let resolved = if target_exists {
            Condition::new(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                format!("GatewayRoute {}/{target} exists", object.namespace),
            )
        } else {
            Condition::new(
                "ResolvedRefs",
                false,
                "TargetNotFound",
                format!(
                    "spec.targetRef.name: GatewayRoute {}/{target} not found",
                    object.namespace
                ),
            )
        };
        statuses.push(StatusReport {
            object,
            observed_generation: policy.metadata.generation,
            conditions: vec![
                Condition::new("Accepted", false, "Unsupported", NOT_ENFORCED),
                resolved,
            ],
        });
    }
}
