//! RateLimitPolicy compile. Enforcement is not built yet, so every policy is reported as not
//! accepted rather than silently doing nothing.

use std::sync::Arc;

use super::{Condition, Diagnostic, ObjectRef, StatusReport};
use crate::resources::RateLimitPolicy;

const NOT_ENFORCED: &str =
    "rate limiting is not implemented in this version of sluice; the policy is not enforced";

pub(super) fn compile_policies(
    policies: &[Arc<RateLimitPolicy>],
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
        statuses.push(StatusReport {
            object,
            observed_generation: policy.metadata.generation,
            conditions: vec![Condition::new(
                "Accepted",
                false,
                "Unsupported",
                NOT_ENFORCED,
            )],
        });
    }
}
