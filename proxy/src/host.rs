//! The request's host: which one is routed on, and whether it is a host at all.
//!
//! Host validation is a security check. A backend that reads `user:pw@api.example.com` or
//! `api.example.com/x` as `api.example.com` while the gateway routed the whole string to a
//! catch-all route would let a client skip that host's authentication. Anything that is not a
//! DNS-style name, an IPv4 address or a bracketed IPv6 address, with an optional numeric port,
//! is refused, and the one value validated is both routed on and forwarded.

use std::borrow::Cow;

use http::header::{HOST, HeaderValue};
use http::{Version, request};

/// The host the request is routed on and forwarded with, validated: the target's authority
/// (absolute-form or HTTP/2 `:authority`) over `Host`. `Ok(None)` only for HTTP/1.0 without a
/// `Host`. Several `Host` fields, an HTTP/2 `Host` naming another authority, or an HTTP/1.1
/// request without a host make the request malformed (RFC 9112 section 3.2, RFC 9113 section
/// 8.3.1).
pub(crate) fn routed_host(parts: &request::Parts) -> Result<Option<HeaderValue>, &'static str> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    let host = match parts.uri.authority() {
        None => match host_header {
            Some(h) => h.clone(),
            None if parts.version <= Version::HTTP_10 => return Ok(None),
            None => return Err("missing Host header"),
        },
        Some(authority) => {
            if parts.version == Version::HTTP_2
                && host_header.is_some_and(|h| {
                    !h.as_bytes()
                        .eq_ignore_ascii_case(authority.as_str().as_bytes())
                })
            {
                return Err("Host header differs from :authority");
            }
            HeaderValue::from_str(authority.as_str()).map_err(|_| "invalid host")?
        }
    };
    if !is_valid_host(host.as_bytes()) {
        return Err("invalid host");
    }
    Ok(Some(host))
}

/// `name[:port]`, `ipv4[:port]` or `[ipv6][:port]`, with a port of 1 to 5 digits up to 65535.
/// Names use letters, digits, `-`, `_` and dots between non-empty labels (one trailing dot
/// allowed): no userinfo, no path, no spaces, no percent-escapes.
pub fn is_valid_host(raw: &[u8]) -> bool {
    let (host, port) = if raw.first() == Some(&b'[') {
        let Some(end) = raw.iter().position(|&b| b == b']') else {
            return false;
        };
        let Ok(inner) = std::str::from_utf8(&raw[1..end]) else {
            return false;
        };
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match &raw[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (&raw[..=end], Some(port)),
            _ => return false,
        }
    } else {
        match raw.iter().rposition(|&b| b == b':') {
            Some(colon) => (&raw[..colon], Some(&raw[colon + 1..])),
            None => (raw, None),
        }
    };
    if let Some(port) = port {
        let numeric = (1..=5).contains(&port.len()) && port.iter().all(u8::is_ascii_digit);
        if !numeric
            || std::str::from_utf8(port)
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                .is_none()
        {
            return false;
        }
    }
    if host.first() == Some(&b'[') {
        return true;
    }
    let name = host.strip_suffix(b".").unwrap_or(host);
    (1..=253).contains(&name.len())
        && name.split(|&b| b == b'.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Lower-case host without port or trailing dot: `API.Example.com:8080` → `api.example.com`.
pub fn host_for_matching(raw: &str) -> Cow<'_, str> {
    let host = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn parts(version: Version, uri: &str, hosts: &[&'static str]) -> request::Parts {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn host_is_lowercased_without_port_or_trailing_dot() {
        assert_eq!(host_for_matching("API.Example.com:8080"), "api.example.com");
        assert_eq!(host_for_matching("example.com."), "example.com");
        assert_eq!(host_for_matching("[::1]:8080"), "[::1]");
        assert!(matches!(host_for_matching("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn routed_host_prefers_the_authority_and_refuses_ambiguity() {
        let one = parts(Version::HTTP_11, "/x", &["a.example"]);
        assert_eq!(
            routed_host(&one),
            Ok(Some(HeaderValue::from_static("a.example")))
        );
        let two = parts(Version::HTTP_11, "/x", &["a.example", "b.example"]);
        assert_eq!(routed_host(&two), Err("more than one Host header"));
        // Absolute-form: the target wins over Host (RFC 9112 section 3.2.2).
        let absolute = parts(Version::HTTP_11, "http://b.example/x", &["a.example"]);
        assert_eq!(
            routed_host(&absolute),
            Ok(Some(HeaderValue::from_static("b.example")))
        );
        let h2_same = parts(Version::HTTP_2, "http://A.example/x", &["a.example"]);
        assert_eq!(
            routed_host(&h2_same),
            Ok(Some(HeaderValue::from_static("A.example")))
        );
        let h2_other = parts(Version::HTTP_2, "http://a.example/x", &["admin.internal"]);
        assert_eq!(
            routed_host(&h2_other),
            Err("Host header differs from :authority")
        );
    }

    #[test]
    fn http11_needs_a_host_and_http10_does_not() {
        assert_eq!(
            routed_host(&parts(Version::HTTP_11, "/x", &[])),
            Err("missing Host header")
        );
        assert_eq!(routed_host(&parts(Version::HTTP_10, "/x", &[])), Ok(None));
    }

    #[test]
    fn hosts_that_a_backend_could_read_differently_are_refused() {
        for bad in [
            "user:pw@api.example.local",
            "api.example.local:abc",
            "api.example.local/x",
            "exa mple.com",
            "api.example.local:",
            "api.example.local:99999",
            "api.example.local:123456",
            "api..example.local",
            ".api.example.local",
            "api.example.local%2f",
            "[::1",
            "[::1]x",
            "[fe80::1%25eth0]",
            "a.example\\b",
            "",
            ":80",
        ] {
            assert!(!is_valid_host(bad.as_bytes()), "{bad:?} was accepted");
        }
        for good in [
            "api.example.local",
            "API.Example.Local:8080",
            "example.com.",
            "10.0.0.1",
            "10.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:8443",
            "localhost",
            "under_score.internal",
        ] {
            assert!(is_valid_host(good.as_bytes()), "{good:?} was refused");
        }
    }

    #[test]
    fn an_absolute_form_target_with_userinfo_is_refused() {
        let p = parts(
            Version::HTTP_11,
            "http://user:pw@admin.example/x",
            &["public.example"],
        );
        assert_eq!(routed_host(&p), Err("invalid host"));
    }
}
