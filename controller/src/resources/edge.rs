//! A route's edge settings: `tls`, `cache`, and the `cors` and `securityHeaders` filters.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Certificates the route serves over HTTPS, chosen by SNI.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTls {
    /// Hosts the certificate serves (exact names or `*.suffix`); empty: the route's
    /// `hostnames`.
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
    pub hosts: Vec<smol_str::SmolStr>,
    /// A `kubernetes.io/tls` Secret in the route's namespace (`tls.crt`, `tls.key`).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// Cross-origin resource sharing: the gateway answers preflights and dresses actual requests.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cors {
    /// Origins allowed: `https://app.example.com`, patterns such as `https://*.example.com`,
    /// or `*` for any.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 253)))]
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for (default: GET, HEAD, POST).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 32)))]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for (`*`: any, without credentials).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub allow_headers: Vec<String>,
    /// Response headers the browser lets the page read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub expose_headers: Vec<String>,
    /// Allow cookies and credentials (never together with a `*` origin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// How long the browser may cache a preflight's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub max_age: Option<String>,
}

/// Browser security headers with helmet-like defaults; each can be given another value or
/// removed.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityHeaders {
    /// `Strict-Transport-Security`, on HTTPS responses only (default
    /// `max-age=31536000; includeSubDomains`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub strict_transport_security: Option<String>,
    /// `X-Content-Type-Options` (default `nosniff`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub content_type_options: Option<String>,
    /// `X-Frame-Options` (default `DENY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub frame_options: Option<String>,
    /// `Referrer-Policy` (default `no-referrer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub referrer_policy: Option<String>,
    /// `Cross-Origin-Opener-Policy` (default `same-origin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub cross_origin_opener_policy: Option<String>,
    /// `Content-Security-Policy` (none by default: an API's responses are rarely pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub content_security_policy: Option<String>,
    /// `Permissions-Policy` (none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub permissions_policy: Option<String>,
    /// Defaults not to send, by header name (e.g. `X-Frame-Options`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 64)))]
    pub remove: Vec<String>,
    /// Replace the value the backend set (default: the backend's header is kept).
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_backend: Option<bool>,
}

/// A response cache for the rule's `GET` and `HEAD` requests.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cache {
    /// Freshness when the backend's `Cache-Control` gives none (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub ttl: Option<String>,
    /// Largest response body stored, as a size such as `1Mi` or `512Ki` (default 1Mi); larger
    /// responses are streamed through and not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,10}(Ki|Mi|Gi|k|M|G)?$"))]
    pub max_entry_size: Option<String>,
    /// Request headers whose values separate entries (beyond the response's own `Vary`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 256)))]
    pub vary: Vec<String>,
    /// Store entries in Redis (`--redis`), shared by every replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
}

/// A byte count with an optional Kubernetes-style suffix (`Ki`, `Mi`, `Gi`, `k`, `M`, `G`).
pub fn parse_size(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s.get(..digits)?.parse().ok()?;
    let unit: u64 = match &s[digits..] {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(unit)
}
