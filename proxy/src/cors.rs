//! The `Cors` step: preflights answered by the gateway, actual requests dressed with the
//! `Access-Control-*` headers (the Fetch standard's CORS protocol).
//!
//! The step runs first, before authentication: a browser sends a preflight without
//! credentials, and an error the gateway gives (a 401, a 429) must carry the allow headers or
//! the page cannot read it.

use std::time::Duration;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, HeaderMap, HeaderValue, ORIGIN,
    VARY,
};
use http::{Method, Response, StatusCode};
use serde::Serialize;

use crate::body::{self, ProxyBody};
use crate::error::ProxyError;

/// Which origins a rule lets browsers call it from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum OriginPattern {
    /// `*`: any origin.
    Any,
    /// One origin, compared as the browser serialises it (lower-case scheme and host).
    Exact(Box<str>),
    /// `scheme://*.suffix[:port]`: any host with one or more labels before `suffix`.
    Subdomains {
        /// `https://`
        scheme: Box<str>,
        /// `.example.com`
        suffix: Box<str>,
        /// `:8443`, or empty.
        port: Box<str>,
    },
}

impl OriginPattern {
    /// Parses one `allowOrigins` entry; the error says what is wrong with it.
    pub fn parse(entry: &str) -> Result<Self, String> {
        if entry == "*" {
            return Ok(OriginPattern::Any);
        }
        let lower = entry.to_ascii_lowercase();
        let Some((scheme, rest)) = lower.split_once("://") else {
            return Err(format!(
                "{entry:?} is not an origin: write scheme://host[:port], such as https://app.example.com"
            ));
        };
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(format!("{entry:?} has an invalid scheme"));
        }
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "{entry:?} is not an origin: it may not have a path, query or user (no trailing '/')"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
                if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
                    return Err(format!("{entry:?} has an invalid port"));
                }
                (host, &rest[host.len()..])
            }
            _ => (rest, ""),
        };
        if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') || !valid_host(suffix) {
                return Err(format!(
                    "{entry:?}: the part after '*.' must be a host name"
                ));
            }
            return Ok(OriginPattern::Subdomains {
                scheme: format!("{scheme}://").into(),
                suffix: format!(".{suffix}").into(),
                port: port.into(),
            });
        }
        if host.contains('*') {
            return Err(format!(
                "{entry:?}: '*' may only stand for the leftmost labels, as in https://*.example.com"
            ));
        }
        if !valid_host(host) {
            return Err(format!("{entry:?} has an invalid host"));
        }
        Ok(OriginPattern::Exact(lower.into()))
    }

    /// True when `origin` (the request's `Origin`) is allowed by this pattern.
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Any => true,
            OriginPattern::Exact(o) => o.eq_ignore_ascii_case(origin),
            OriginPattern::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                let Some(rest) = strip_prefix_ignore_case(origin, scheme) else {
                    return false;
                };
                let Some(host) = strip_suffix_ignore_case(rest, port) else {
                    return false;
                };
                // The port must be all of what follows the host: `https://a.example.com:8443`
                // is not `https://*.example.com`.
                if port.is_empty() && host.contains(':') {
                    return false;
                }
                let Some(labels) = strip_suffix_ignore_case(host, suffix) else {
                    return false;
                };
                !labels.is_empty() && valid_host(labels)
            }
        }
    }
}

fn valid_host(host: &str) -> bool {
    if host.starts_with('[') && host.ends_with(']') {
        return host[1..host.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn strip_prefix_ignore_case<'s>(s: &'s str, prefix: &str) -> Option<&'s str> {
    (s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix))
    .then(|| &s[prefix.len()..])
}

fn strip_suffix_ignore_case<'s>(s: &'s str, suffix: &str) -> Option<&'s str> {
    let at = s.len().checked_sub(suffix.len())?;
    (s.is_char_boundary(at) && s[at..].eq_ignore_ascii_case(suffix)).then(|| &s[..at])
}

/// A rule's compiled `filters.cors`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// Allowed origins.
    pub origins: Box<[OriginPattern]>,
    /// Methods a preflight may ask for.
    #[serde(serialize_with = "ser_methods")]
    pub methods: Box<[Method]>,
    /// Header names (lower case) a preflight may ask for; `None`: any (`*`).
    pub headers: Option<Box<[Box<str>]>>,
    /// `Access-Control-Expose-Headers`, precomputed.
    #[serde(skip)]
    pub expose: Option<HeaderValue>,
    /// `Access-Control-Allow-Credentials: true`.
    pub credentials: bool,
    /// `Access-Control-Max-Age`.
    pub max_age: Option<Duration>,
    /// `Access-Control-Allow-Methods`, precomputed.
    #[serde(skip)]
    allow_methods: HeaderValue,
    /// `Access-Control-Allow-Headers`, precomputed (absent when any header is allowed: the
    /// request's list is echoed).
    #[serde(skip)]
    allow_headers: Option<HeaderValue>,
}

fn ser_methods<S: serde::Serializer>(methods: &[Method], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(methods.iter().map(Method::as_str))
}

/// A preflight's answer, or nothing when the request is not one.
pub(crate) enum Preflight {
    /// Not a preflight: an actual request.
    No,
    /// Allowed: the gateway's 204.
    Allowed(Box<Response<ProxyBody>>),
}

static VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

/// True when the request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(ORIGIN)
        && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

impl Cors {
    /// Builds the step; `headers: None` allows any request header.
    pub fn new(
        origins: Vec<OriginPattern>,
        methods: Vec<Method>,
        headers: Option<Vec<String>>,
        expose: Vec<String>,
        credentials: bool,
        max_age: Option<Duration>,
    ) -> Result<Self, String> {
        let methods = if methods.is_empty() {
            vec![Method::GET, Method::HEAD, Method::POST]
        } else {
            methods
        };
        let join = |items: &mut dyn Iterator<Item = &str>| items.collect::<Vec<_>>().join(", ");
        let allow_methods = HeaderValue::try_from(join(&mut methods.iter().map(Method::as_str)))
            .map_err(|_| "allowMethods do not make a valid header value".to_owned())?;
        let headers: Option<Box<[Box<str>]>> =
            headers.map(|h| h.iter().map(|n| n.to_ascii_lowercase().into()).collect());
        let allow_headers = match &headers {
            Some(h) if !h.is_empty() => Some(
                HeaderValue::try_from(join(&mut h.iter().map(|n| &**n)))
                    .map_err(|_| "allowHeaders do not make a valid header value".to_owned())?,
            ),
            _ => None,
        };
        let expose = (!expose.is_empty())
            .then(|| HeaderValue::try_from(join(&mut expose.iter().map(String::as_str))))
            .transpose()
            .map_err(|_| "exposeHeaders do not make a valid header value".to_owned())?;
        Ok(Cors {
            origins: origins.into(),
            methods: methods.into(),
            headers,
            expose,
            credentials,
            max_age,
            allow_methods,
            allow_headers,
        })
    }

    fn allows_origin(&self, origin: &str) -> bool {
        self.origins.iter().any(|p| p.matches(origin))
    }

    /// The value of `Access-Control-Allow-Origin` for an allowed `origin`: `*` only when any
    /// origin is allowed and credentials are not (a browser refuses `*` with credentials).
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if !self.credentials && self.origins.contains(&OriginPattern::Any) {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// The request phase: a preflight is answered here (allowed: 204; refused: 403), anything
    /// else goes on.
    pub(crate) fn on_request(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Preflight, ProxyError> {
        if !is_preflight(method, headers) {
            return Ok(Preflight::No);
        }
        let origin = headers.get(ORIGIN).expect("a preflight has an Origin");
        if !origin.to_str().is_ok_and(|o| self.allows_origin(o)) {
            return Err(ProxyError::CorsRefused("origin not allowed"));
        }
        let asked = headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .expect("a preflight names its method");
        let method_allowed = self
            .methods
            .iter()
            .any(|m| m.as_str().as_bytes() == asked.as_bytes());
        if !method_allowed {
            return Err(ProxyError::CorsRefused("method not allowed"));
        }
        let requested = crate::headers::list_items(headers, &ACCESS_CONTROL_REQUEST_HEADERS, ',')
            .filter(|h| !h.is_empty());
        if let Some(allowed) = &self.headers {
            for name in requested {
                if !allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                    return Err(ProxyError::CorsRefused("request header not allowed"));
                }
            }
        }
        let mut response = Response::new(body::local(""));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin));
        out.insert(ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
        match &self.allow_headers {
            Some(v) => {
                out.insert(ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
            }
            // Any header allowed: echo what was asked (a literal `*` means "any" only without
            // credentials, so the echo works in both cases).
            None if self.headers.is_none() => {
                if let Some(v) = headers.get(ACCESS_CONTROL_REQUEST_HEADERS) {
                    out.insert(ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
                }
            }
            None => {}
        }
        if self.credentials {
            out.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(age) = self.max_age {
            out.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age.as_secs()));
        }
        out.insert(VARY, VARY_PREFLIGHT.clone());
        Ok(Preflight::Allowed(Box::new(response)))
    }

    /// The response phase of an actual request (and of a refused preflight): the allow headers
    /// when the origin is allowed, replacing any the backend sent, and always `Vary: Origin`.
    pub(crate) fn on_response(
        &self,
        request_origin: Option<&HeaderValue>,
        response: &mut Response<ProxyBody>,
    ) {
        let out = response.headers_mut();
        for name in [
            &ACCESS_CONTROL_ALLOW_ORIGIN,
            &ACCESS_CONTROL_ALLOW_CREDENTIALS,
            &ACCESS_CONTROL_EXPOSE_HEADERS,
        ] {
            out.remove(name);
        }
        if !out.get_all(VARY).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("origin") || t.trim() == "*")
            })
        }) {
            out.append(VARY, HeaderValue::from_static("Origin"));
        }
        let Some(origin) = request_origin else { return };
        if !origin.to_str().is_ok_and(|o| self.allows_origin(o)) {
            return;
        }
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin));
        if self.credentials {
            out.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose {
            out.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> OriginPattern {
        OriginPattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn exact_origins_compare_without_case() {
        let p = pattern("https://App.example.com");
        assert!(p.matches("https://app.example.com"));
        assert!(!p.matches("https://app.example.com:8443"));
        assert!(!p.matches("http://app.example.com"));
        assert!(!p.matches("https://app.example.com.evil.net"));
    }

    #[test]
    fn subdomain_patterns_need_a_label_and_keep_the_port() {
        let p = pattern("https://*.example.com");
        assert!(p.matches("https://a.example.com"));
        assert!(p.matches("https://a.b.example.com"));
        assert!(!p.matches("https://example.com"));
        assert!(!p.matches("https://.example.com"));
        assert!(!p.matches("https://evilexample.com"));
        assert!(!p.matches("https://a.example.com:8443"));
        assert!(!p.matches("http://a.example.com"));
        assert!(!p.matches("https://a.example.com.evil.net"));
        assert!(!p.matches("https://a/b.example.com"));
        let p = pattern("https://*.example.com:8443");
        assert!(p.matches("https://a.example.com:8443"));
        assert!(!p.matches("https://a.example.com"));
    }

    #[test]
    fn malformed_entries_say_why() {
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://*",
            "https://a.*.example.com",
            "https://app.example.com:x",
            "https://user@app.example.com",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    fn cors(credentials: bool, origins: &[&str]) -> Cors {
        Cors::new(
            origins.iter().map(|o| pattern(o)).collect(),
            vec![Method::GET, Method::POST],
            Some(vec!["Authorization".into(), "Content-Type".into()]),
            vec!["X-Request-Id".into()],
            credentials,
            Some(Duration::from_secs(600)),
        )
        .expect("valid cors")
    }

    fn preflight(origin: &str, method: &str, headers: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, HeaderValue::from_str(origin).expect("origin"));
        h.insert(
            ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_str(method).expect("method"),
        );
        if !headers.is_empty() {
            h.insert(
                ACCESS_CONTROL_REQUEST_HEADERS,
                HeaderValue::from_str(headers).expect("headers"),
            );
        }
        h
    }

    #[test]
    fn an_allowed_preflight_is_answered_with_the_allow_headers() {
        let c = cors(true, &["https://app.example.com"]);
        let h = preflight(
            "https://app.example.com",
            "POST",
            "content-type, authorization",
        );
        let Ok(Preflight::Allowed(r)) = c.on_request(&Method::OPTIONS, &h) else {
            panic!("preflight refused");
        };
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let g = |n| {
            r.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        assert_eq!(g(ACCESS_CONTROL_ALLOW_ORIGIN), "https://app.example.com");
        assert_eq!(g(ACCESS_CONTROL_ALLOW_METHODS), "GET, POST");
        assert_eq!(
            g(ACCESS_CONTROL_ALLOW_HEADERS),
            "authorization, content-type"
        );
        assert_eq!(g(ACCESS_CONTROL_ALLOW_CREDENTIALS), "true");
        assert_eq!(g(ACCESS_CONTROL_MAX_AGE), "600");
        assert!(g(VARY).contains("Origin"));
    }

    #[test]
    fn preflights_outside_the_policy_are_refused() {
        let c = cors(false, &["https://app.example.com"]);
        for (origin, method, headers) in [
            ("https://evil.example.net", "GET", ""),
            ("https://app.example.com", "DELETE", ""),
            ("https://app.example.com", "GET", "x-secret"),
        ] {
            let h = preflight(origin, method, headers);
            assert!(
                matches!(
                    c.on_request(&Method::OPTIONS, &h),
                    Err(ProxyError::CorsRefused(_))
                ),
                "{origin} {method} {headers} allowed"
            );
        }
        // Not a preflight at all: goes on.
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, HeaderValue::from_static("https://evil.example.net"));
        assert!(matches!(
            c.on_request(&Method::OPTIONS, &h),
            Ok(Preflight::No)
        ));
    }

    #[test]
    fn any_origin_without_credentials_answers_star() {
        let c = cors(false, &["*"]);
        let mut r = Response::new(body::local(""));
        r.headers_mut().insert(
            ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("https://backend-said"),
        );
        c.on_response(Some(&HeaderValue::from_static("https://x.test")), &mut r);
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(r.headers()[ACCESS_CONTROL_EXPOSE_HEADERS], "X-Request-Id");
        assert_eq!(r.headers()[VARY], "Origin");
    }

    #[test]
    fn an_actual_request_from_another_origin_gets_no_allow_headers() {
        let c = cors(true, &["https://app.example.com"]);
        let mut r = Response::new(body::local(""));
        r.headers_mut()
            .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        c.on_response(Some(&HeaderValue::from_static("https://evil.test")), &mut r);
        assert!(!r.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(r.headers()[VARY], "Origin");
    }
}
