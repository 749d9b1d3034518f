//! `GatewayRoute`: where a request goes and what happens to it on the way.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
// The strings every route has (hostnames, rule names, paths, Service names) are `SmolStr`s:
// short ones are kept inline, so 10,000 routes do not hold 40,000 small allocations of a few
// bytes each (each a 32-byte chunk to glibc).
use smol_str::SmolStr;

use super::{
    Authentication, Authorization, BoxedStatus, Cache, CircuitBreaker, Cors, HealthCheck,
    LoadBalancer, Retry, RouteTls, SecurityHeaders,
};

/// Where a request goes. Field names follow the Gateway API's HTTPRoute.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "GatewayRoute",
    derive = "PartialEq",
    plural = "gatewayroutes",
    namespaced,
    status = "BoxedStatus",
    shortname = "gr",
    category = "sluice",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hostnames"}"#,
    printcolumn = r#"{"name":"Rules","type":"string","jsonPath":".spec.rules[*].name"}"#,
    printcolumn = r#"{"name":"Backends","type":"string","jsonPath":".spec.rules[*].backendRefs[*].name"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayRouteSpec {
    /// Hosts this route serves: exact names or `*.suffix` wildcards. Empty: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(
            length(min = 1, max = 253),
            regex(
                pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
            )
        )
    )]
    pub hostnames: Vec<SmolStr>,
    /// Certificates served over HTTPS (`--listen-tls`), chosen by SNI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub tls: Vec<RouteTls>,
    /// Answer plain HTTP requests with a 301 to the same URL over HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<bool>,
    /// Default authentication of every rule; a rule's own replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Box<Authentication>>,
    /// Rules, each with matches, filters and backends.
    #[schemars(length(min = 1, max = 64))]
    pub rules: Vec<RouteRule>,
}

/// One rule: requests matching any of `matches` go to `backendRefs`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// Used in status, metrics and logs; defaults to the rule's index. Unique within the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: Option<SmolStr>,
    /// Any match selects the rule. Empty: every request (path prefix `/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub matches: Vec<RouteMatch>,
    /// Changes applied on the way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Box<RouteFilters>>,
    /// Services that receive the requests, weighted.
    #[schemars(length(min = 1, max = 16))]
    pub backend_refs: Vec<BackendRef>,
    /// Request and backend timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Box<RouteTimeouts>>,
    /// Who may call; replaces the route's `authentication`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Box<Authentication>>,
    /// What the verified identity must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Box<Authorization>>,
    /// How endpoints are picked (default `LeastRequest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<Box<LoadBalancer>>,
    /// Retries of failed attempts, always to another endpoint when one exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Box<Retry>>,
    /// Passive (outlier detection) and active health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Box<HealthCheck>>,
    /// Limits of each backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<Box<CircuitBreaker>>,
    /// A response cache for `GET` and `HEAD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Box<Cache>>,
}

/// Conditions a request must all meet.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// Path condition; absent: prefix `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Method condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// Header conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub query_params: Vec<QueryParamMatch>,
}

/// A path condition.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    /// How `value` is compared.
    #[serde(rename = "type", default)]
    pub match_type: PathMatchType,
    /// The path, prefix or regular expression.
    #[serde(default = "root_path")]
    #[schemars(length(min = 1, max = 1024))]
    pub value: SmolStr,
}

fn root_path() -> SmolStr {
    SmolStr::new_static("/")
}

/// Path comparison.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum PathMatchType {
    /// The whole path.
    Exact,
    /// A prefix, on `/` boundaries (`/api` matches `/api` and `/api/x`, not `/apix`).
    #[default]
    PathPrefix,
    /// A regular expression (Rust `regex` syntax) matching the whole path.
    RegularExpression,
}

/// Value comparison for headers and query parameters.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ValueMatchType {
    /// Equal.
    #[default]
    Exact,
    /// A regular expression matching the whole value.
    RegularExpression,
}

/// HTTP methods a rule can match. `CONNECT` is absent on purpose: the gateway does not tunnel.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum HttpMethod {
    GET,
    HEAD,
    POST,
    PUT,
    DELETE,
    OPTIONS,
    TRACE,
    PATCH,
}

/// A header condition.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    /// How `value` is compared.
    #[serde(rename = "type", default)]
    pub match_type: ValueMatchType,
    /// Header name (case-insensitive).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Expected value or expression.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A query parameter condition.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryParamMatch {
    /// How `value` is compared.
    #[serde(rename = "type", default)]
    pub match_type: ValueMatchType,
    /// Parameter name (exact, case-sensitive).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Expected value or expression.
    #[schemars(length(max = 1024))]
    pub value: String,
}

/// Changes applied to requests and responses of a rule.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteFilters {
    /// Rewrite of the path before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    /// Header changes on the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderModifier>,
    /// Header changes on the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderModifier>,
    /// Cross-origin resource sharing, preflights answered by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// Browser security headers on every response (`{}`: the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_headers: Option<SecurityHeaders>,
}

/// A URL rewrite.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    /// The path rewrite.
    pub path: PathModifier,
}

/// How the path is rewritten.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifier {
    /// `ReplacePrefixMatch` (needs `PathPrefix` matches) or `ReplaceFullPath`.
    #[serde(rename = "type")]
    pub modifier_type: PathModifierType,
    /// With `ReplacePrefixMatch`: what replaces the matched prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub replace_prefix_match: Option<String>,
    /// With `ReplaceFullPath`: the new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub replace_full_path: Option<String>,
}

/// Kinds of path rewrite.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum PathModifierType {
    /// Replace the matched prefix.
    ReplacePrefixMatch,
    /// Replace the whole path.
    ReplaceFullPath,
}

/// Header changes: removals first, then sets, then additions.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    /// Headers set to a value, replacing existing ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub set: Vec<HeaderValuePair>,
    /// Headers appended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub add: Vec<HeaderValuePair>,
    /// Header names removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderValuePair {
    /// Header name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Header value.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A Service in the route's namespace.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    /// Service name.
    #[schemars(length(min = 1, max = 253))]
    pub name: SmolStr,
    /// A port of the Service (its `port`, not its `targetPort`).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Relative share of the rule's requests; 0 sends none. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub weight: Option<i32>,
}

/// Timeouts of a rule (GEP-2257 durations such as `15s` or `250ms`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTimeouts {
    /// From the request's arrival to the response headers; the client gets 504 after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub request: Option<String>,
    /// One attempt to the backend, to the response headers; at most `request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub backend_request: Option<String>,
}
