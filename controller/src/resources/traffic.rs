//! A rule's traffic settings: `loadBalancer`, `retry`, `healthCheck`, `circuitBreaker`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a rule picks endpoints.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    /// `LeastRequest` (default), `RoundRobin`, `Random` or `ConsistentHash`.
    #[serde(rename = "type", default)]
    pub lb_type: LoadBalancerType,
    /// With `ConsistentHash`: where the key comes from (exactly one source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
}

/// Balancing algorithms.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum LoadBalancerType {
    /// Power of two choices on in-flight requests.
    #[default]
    LeastRequest,
    /// Smooth weighted round robin.
    RoundRobin,
    /// Weighted random.
    Random,
    /// The same key to the same endpoint.
    ConsistentHash,
}

/// The source of a consistent-hash key.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHash {
    /// A request header's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// A cookie, set by the gateway when the client has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<HashCookie>,
    /// The client address (through `--trusted-proxies`).
    #[serde(default, rename = "sourceIP", skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<SourceIp>,
    /// A claim of the verified token (dotted path for nested claims).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub claim: Option<String>,
}

/// The affinity cookie.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HashCookie {
    /// The cookie's name.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// Its lifetime (`Max-Age`); absent: a session cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub ttl: Option<String>,
}

/// `sourceIP: {}`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceIp {}

/// When a failed attempt is tried again, on another endpoint.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Retries after the first attempt (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub attempts: Option<i32>,
    /// Base of the jittered exponential backoff (default 25ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub backoff: Option<String>,
    /// Backend statuses retried (default 502, 503, 504).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), inner(range(min = 400, max = 599)))]
    pub codes: Option<Vec<i32>>,
    /// Time of one attempt to the response headers (default: `timeouts.backendRequest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub per_try_timeout: Option<String>,
    /// Retry statuses and timeouts of non-idempotent methods (POST, PATCH) too (default
    /// false; a request that reached no backend is retried whatever its method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_idempotent: Option<bool>,
}

/// Passive and active health checks of the rule's endpoints.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// Outlier detection on live traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveHealthCheck>,
    /// Periodic HTTP probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveHealthCheck>,
}

/// Ejection after consecutive failures (5xx, connection failures, timeouts).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PassiveHealthCheck {
    /// Failures in a row that eject an endpoint (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: Option<i32>,
    /// First ejection's length, doubled for each quick relapse up to 5m (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub ejection_time: Option<String>,
    /// Most endpoints of a backend ejected at once, in percent (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: Option<i32>,
}

/// An HTTP probe of every endpoint.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActiveHealthCheck {
    /// The path probed with GET; 2xx and 3xx are healthy (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub path: Option<String>,
    /// Time between probes (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub interval: Option<String>,
    /// Time a probe may take (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub timeout: Option<String>,
    /// Good probes in a row that bring an endpoint back (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: Option<i32>,
    /// Failed probes in a row that take an endpoint out (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: Option<i32>,
}

/// Limits of each backend of the rule; beyond them, 503 with `Retry-After` at once.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Connections open to the backend's endpoints (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: Option<i32>,
    /// Requests waiting for a connection at `maxConnections` (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_pending_requests: Option<i32>,
    /// Requests in flight to the backend (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_requests: Option<i32>,
}
