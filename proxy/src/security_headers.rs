//! The `SecurityHeaders` step: helmet-like browser security headers on every response of a
//! rule, the gateway's own answers included.

use http::Response;
use http::header::{HeaderName, HeaderValue, STRICT_TRANSPORT_SECURITY};
use serde::Serialize;

use crate::body::ProxyBody;

/// A rule's compiled `filters.securityHeaders`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityHeaders {
    /// Headers sent on every response.
    #[serde(serialize_with = "crate::snapshot::ser_pairs")]
    pub headers: Box<[(HeaderName, HeaderValue)]>,
    /// `Strict-Transport-Security`, sent on HTTPS responses only: over plain HTTP a browser
    /// ignores it, and an attacker in the middle could strip it anyway.
    #[serde(serialize_with = "ser_value")]
    pub hsts: Option<HeaderValue>,
    /// Replace what the backend set (otherwise the backend's value is kept).
    pub override_backend: bool,
}

fn ser_value<S: serde::Serializer>(v: &Option<HeaderValue>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_some(&v.as_ref().map(|v| String::from_utf8_lossy(v.as_bytes())))
}

/// The defaults, in the order they are sent: `(header, value)`.
pub const DEFAULTS: [(&str, &str); 5] = [
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
];

impl SecurityHeaders {
    /// The response phase.
    pub(crate) fn on_response(&self, https: bool, response: &mut Response<ProxyBody>) {
        let out = response.headers_mut();
        let hsts = self
            .hsts
            .as_ref()
            .filter(|_| https)
            .map(|v| (&STRICT_TRANSPORT_SECURITY, v));
        for (name, value) in self.headers.iter().map(|(n, v)| (n, v)).chain(hsts) {
            if self.override_backend || !out.contains_key(name) {
                out.insert(name.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(override_backend: bool) -> SecurityHeaders {
        SecurityHeaders {
            headers: DEFAULTS[1..]
                .iter()
                .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
                .collect(),
            hsts: Some(HeaderValue::from_static(DEFAULTS[0].1)),
            override_backend,
        }
    }

    #[test]
    fn hsts_only_over_https_and_the_backend_keeps_its_own() {
        let mut r = Response::new(crate::body::local(""));
        r.headers_mut()
            .insert("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
        step(false).on_response(false, &mut r);
        assert_eq!(r.headers()["x-frame-options"], "SAMEORIGIN");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert!(!r.headers().contains_key(STRICT_TRANSPORT_SECURITY));
        step(true).on_response(true, &mut r);
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        assert_eq!(
            r.headers()[STRICT_TRANSPORT_SECURITY],
            "max-age=31536000; includeSubDomains"
        );
    }
}
