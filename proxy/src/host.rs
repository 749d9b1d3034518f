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

/// A validated host: the value routed on and forwarded, and where its name ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoutedHost {
    /// The host as received (name and optional port).
    pub value: HeaderValue,
    /// Length of the name, before any `:port`.
    name_len: usize,
}

impl RoutedHost {
    /// The name as routes match it: lower-case, without port or trailing dot.
    pub fn for_matching(&self) -> Cow<'_, str> {
        let name = self.value.to_str().map_or("", |s| &s[..self.name_len]);
        lowercase(name.strip_suffix('.').unwrap_or(name))
    }
}

/// The host the request is routed on and forwarded with, validated: the target's authority
/// (absolute-form or HTTP/2 `:authority`) over `Host`. `Ok(None)` only for HTTP/1.0 without a
/// `Host`. Several `Host` fields, an HTTP/2 `Host` naming another authority, or an HTTP/1.1
/// request without a host make the request malformed (RFC 9112 section 3.2, RFC 9113 section
/// 8.3.1).
pub(crate) fn routed_host(parts: &request::Parts) -> Result<Option<RoutedHost>, &'static str> {
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
    let name_len = name_len(host.as_bytes()).ok_or("invalid host")?;
    Ok(Some(RoutedHost {
        value: host,
        name_len,
    }))
}

/// The length of the name part of a valid host, `None` for anything else. A host is
/// `name[:port]`, `ipv4[:port]` or `[ipv6][:port]`, with a port of 1 to 5 digits up to 65535.
/// Names use letters, digits, `-`, `_` and dots between labels of 1 to 63 characters, 253 at
/// most (one trailing dot allowed): no userinfo, no path, no spaces, no percent-escapes. One
/// pass over the bytes: it runs on every request.
fn name_len(raw: &[u8]) -> Option<usize> {
    if raw.first() == Some(&b'[') {
        let end = raw.iter().position(|&b| b == b']')?;
        std::str::from_utf8(&raw[1..end])
            .ok()?
            .parse::<std::net::Ipv6Addr>()
            .ok()?;
        return match &raw[end + 1..] {
            [] => Some(end + 1),
            [b':', port @ ..] => valid_port(port).then_some(end + 1),
            _ => None,
        };
    }
    let mut label = 0usize;
    let mut end = raw.len();
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => {
                label += 1;
                if label > 63 {
                    return None;
                }
            }
            b'.' if label > 0 => label = 0,
            b':' => {
                end = i;
                break;
            }
            _ => return None,
        }
    }
    // A trailing dot leaves `label` at 0: allowed once, after a label.
    let name = if label == 0 { end.checked_sub(1)? } else { end };
    if name == 0 || name > 253 {
        return None;
    }
    if end < raw.len() && !valid_port(&raw[end + 1..]) {
        return None;
    }
    Some(end)
}

fn valid_port(port: &[u8]) -> bool {
    if !(1..=5).contains(&port.len()) {
        return false;
    }
    let mut n = 0u32;
    for &b in port {
        if !b.is_ascii_digit() {
            return false;
        }
        n = n * 10 + u32::from(b - b'0');
    }
    n <= 65535
}

fn lowercase(host: &str) -> Cow<'_, str> {
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

    fn value(r: Result<Option<RoutedHost>, &'static str>) -> Result<Option<String>, &'static str> {
        r.map(|h| h.map(|h| h.value.to_str().expect("ascii").to_owned()))
    }

    #[test]
    fn the_matched_name_is_lower_case_without_port_or_trailing_dot() {
        for (raw, name) in [
            ("API.Example.com:8080", "api.example.com"),
            ("example.com.", "example.com"),
            ("example.com.:80", "example.com"),
            ("[::1]:8080", "[::1]"),
            ("10.0.0.1", "10.0.0.1"),
        ] {
            let p = parts(Version::HTTP_11, "/", &[raw]);
            let host = routed_host(&p).expect("valid").expect("a host");
            assert_eq!(host.for_matching(), name, "{raw}");
            assert_eq!(host.value, raw);
        }
    }

    #[test]
    fn routed_host_prefers_the_authority_and_refuses_ambiguity() {
        let one = parts(Version::HTTP_11, "/x", &["a.example"]);
        assert_eq!(value(routed_host(&one)), Ok(Some("a.example".to_owned())));
        let two = parts(Version::HTTP_11, "/x", &["a.example", "b.example"]);
        assert_eq!(routed_host(&two), Err("more than one Host header"));
        // Absolute-form: the target wins over Host (RFC 9112 section 3.2.2).
        let absolute = parts(Version::HTTP_11, "http://b.example/x", &["a.example"]);
        assert_eq!(
            value(routed_host(&absolute)),
            Ok(Some("b.example".to_owned()))
        );
        let h2_same = parts(Version::HTTP_2, "http://A.example/x", &["a.example"]);
        assert_eq!(
            value(routed_host(&h2_same)),
            Ok(Some("A.example".to_owned()))
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
            ".",
            "a..",
            "a.:80:80",
            "a:80:80",
        ] {
            assert!(name_len(bad.as_bytes()).is_none(), "{bad:?} was accepted");
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
            "a.b.c.d.e",
            "x:65535",
        ] {
            assert!(name_len(good.as_bytes()).is_some(), "{good:?} was refused");
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
