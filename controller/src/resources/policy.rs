//! `RateLimitPolicy`: how much traffic a route or rule may take. The schema is fixed by
//! DESIGN.md; `compile::policies` validates it and places the limits in the targeted rules.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::BoxedStatus;

/// How much traffic a target may take.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    derive = "PartialEq",
    plural = "ratelimitpolicies",
    namespaced,
    status = "BoxedStatus",
    shortname = "rlp",
    category = "sluice",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Scope","type":"string","jsonPath":".spec.scope"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitPolicySpec {
    /// The route (and optionally rule) limited.
    pub target_ref: PolicyTargetRef,
    /// Limits, all of which apply.
    #[schemars(length(min = 1, max = 16))]
    pub limits: Vec<Limit>,
    /// Per replica or shared through Redis.
    #[serde(default)]
    pub scope: LimitScope,
    /// With `Global`: what to do when Redis cannot be reached.
    #[serde(default)]
    pub failure_mode: FailureMode,
}

/// What a policy applies to.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetRef {
    /// Always `GatewayRoute`.
    pub kind: TargetKind,
    /// Route name, in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// A rule name of the route; absent: the whole route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// Kinds a policy can target.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum TargetKind {
    /// A `GatewayRoute`.
    GatewayRoute,
}

/// One limit: `requests` per `period`, with `burst` extra, per `key`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limit {
    /// Name used in headers and metrics.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Requests allowed per period.
    #[schemars(range(min = 1))]
    pub requests: i64,
    /// The period, as a GEP-2257 duration.
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub period: String,
    /// Extra requests allowed at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub burst: Option<i64>,
    /// What a bucket is counted per.
    pub key: LimitKey,
}

/// What a bucket is counted per.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitKey {
    /// Kind of key.
    #[serde(rename = "type")]
    pub key_type: LimitKeyType,
    /// Header or claim name, for `Header` and `Claim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Kinds of rate-limit key.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum LimitKeyType {
    /// The client address.
    ClientIP,
    /// A request header's value.
    Header,
    /// A JWT claim.
    Claim,
    /// The API key's identity.
    ApiKey,
    /// One bucket for the whole target.
    Route,
}

/// Where buckets live.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum LimitScope {
    /// Per replica.
    #[default]
    Local,
    /// Shared by all replicas through Redis.
    Global,
}

/// Behaviour when the shared store cannot be reached.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum FailureMode {
    /// Allow the request.
    #[default]
    Open,
    /// Refuse the request.
    Closed,
}
