//! What `Cache-Control`, `Expires`, `Vary` and the conditional headers say (RFC 9111, RFC 9110
//! section 13), parsed without allocating.

use std::time::{Duration, SystemTime};

use http::StatusCode;
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, COOKIE, EXPIRES, HeaderMap, HeaderName, HeaderValue,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, PRAGMA, SET_COOKIE, VARY,
};

use crate::headers::list_items;

/// The directives of a `Cache-Control` (every line of it) that a shared cache acts on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Directives {
    /// `no-store`
    pub no_store: bool,
    /// `no-cache` (also a request's `Pragma: no-cache`)
    pub no_cache: bool,
    /// `private`
    pub private: bool,
    /// `public`
    pub public: bool,
    /// `must-revalidate` or `proxy-revalidate`
    pub must_revalidate: bool,
    /// `max-age=N` in seconds
    pub max_age: Option<u64>,
    /// `s-maxage=N` in seconds
    pub s_maxage: Option<u64>,
}

impl Directives {
    /// Parses every `Cache-Control` line of `headers`. A directive given a value it cannot
    /// carry (`max-age=soon`) makes the response uncacheable, as RFC 9111 section 4.2.1 asks of
    /// invalid freshness.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut d = Directives::default();
        for item in list_items(headers, &CACHE_CONTROL, ',') {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (item, None),
            };
            // RFC 9111 section 1.2.2: delta-seconds too large to hold are 2^31.
            let seconds = || match value {
                Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => Some(
                    v.parse::<u64>()
                        .map_or(MAX_AGE_SECS, |n| n.min(MAX_AGE_SECS)),
                ),
                _ => Some(0),
            };
            if name.eq_ignore_ascii_case("no-store") {
                d.no_store = true;
            } else if name.eq_ignore_ascii_case("no-cache") {
                d.no_cache = true;
            } else if name.eq_ignore_ascii_case("private") {
                d.private = true;
            } else if name.eq_ignore_ascii_case("public") {
                d.public = true;
            } else if name.eq_ignore_ascii_case("must-revalidate")
                || name.eq_ignore_ascii_case("proxy-revalidate")
            {
                d.must_revalidate = true;
            } else if name.eq_ignore_ascii_case("max-age") {
                d.max_age = seconds();
            } else if name.eq_ignore_ascii_case("s-maxage") {
                d.s_maxage = seconds();
            }
        }
        d
    }
}

/// True when the client asked for a response fresh from the backend: `Cache-Control: no-cache`
/// or `max-age=0`, or `Pragma: no-cache` without a `Cache-Control`.
pub fn request_wants_fresh(headers: &HeaderMap) -> bool {
    let d = Directives::of(headers);
    d.no_store
        || d.no_cache
        || d.max_age == Some(0)
        || (!headers.contains_key(CACHE_CONTROL)
            && list_items(headers, &PRAGMA, ',').any(|p| p.eq_ignore_ascii_case("no-cache")))
}

/// Statuses a cache may store without explicit freshness (RFC 9110 section 15.1, less 206:
/// partial content is not stored).
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Why a response is not stored (for the log of the test, and for reasoning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// A status the cache does not keep.
    Status,
    /// `no-store`, `no-cache` or `private`.
    Forbidden,
    /// It sets a cookie.
    SetCookie,
    /// `Vary: *`, or a `Vary` naming too many headers.
    VaryAll,
    /// The request carried `Authorization` on a rule that does not authenticate, and the
    /// response does not say a shared cache may keep it.
    Authorization,
    /// Already stale.
    NoFreshness,
}

/// How long a response stays fresh, or why it is not stored. `default_ttl` applies when the
/// backend gives no freshness; `now` reads `Expires` against the clock.
pub fn freshness(
    status: StatusCode,
    request: &HeaderMap,
    response: &HeaderMap,
    authenticated_rule: bool,
    default_ttl: Duration,
    now: SystemTime,
) -> Result<Duration, NotStored> {
    if !heuristically_cacheable(status) {
        return Err(NotStored::Status);
    }
    let d = Directives::of(response);
    if d.no_store || d.no_cache || d.private {
        return Err(NotStored::Forbidden);
    }
    if response.contains_key(SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if vary_names(response).is_none() {
        return Err(NotStored::VaryAll);
    }
    // RFC 9111 section 3.5: a shared cache keeps a response to an authorised request only when
    // the response says so. On a rule that authenticates, the verified identity is part of
    // the key instead.
    // A cookie is a credential the backend may check itself: the same rule, without the
    // backend's leave, as for `Authorization`.
    if !authenticated_rule
        && (request.contains_key(AUTHORIZATION) || request.contains_key(COOKIE))
        && !(d.public || d.s_maxage.is_some() || d.must_revalidate)
    {
        return Err(NotStored::Authorization);
    }
    // The response's `Age` (clamped, RFC 9111 section 1.2.2) is time already spent.
    let age = Duration::from_secs(
        response
            .get(http::header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
            .min(MAX_AGE_SECS),
    );
    let lifetime = match (d.s_maxage, d.max_age) {
        (Some(s), _) => Duration::from_secs(s),
        (None, Some(m)) => Duration::from_secs(m),
        (None, None) => match response.get(EXPIRES) {
            // An invalid `Expires` (often "0") means already expired.
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|v| httpdate::parse_http_date(v).ok())
                .and_then(|at| at.duration_since(now).ok())
                .unwrap_or(Duration::ZERO),
            None => default_ttl,
        },
    };
    // Found by the `cache_control` fuzz target: an `Expires` in the year 9999 (or a
    // `max-age` beyond u64) overflowed the wire form's milliseconds; 2^31 s is the cap.
    let fresh = lifetime
        .min(Duration::from_secs(MAX_AGE_SECS))
        .saturating_sub(age);
    if fresh.is_zero() {
        return Err(NotStored::NoFreshness);
    }
    Ok(fresh)
}

/// Largest `Age` taken at its word (2^31 seconds, as RFC 9111 section 1.2.2 allows).
pub const MAX_AGE_SECS: u64 = 1 << 31;

/// Most header names a response's `Vary` may name before the cache gives up on it.
const MAX_VARY: usize = 8;

/// The header names of the response's `Vary`, lower-cased and sorted; `None` for `Vary: *` or
/// for more than a few names (each is part of the key).
pub fn vary_names(response: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for item in list_items(response, &VARY, ',') {
        if item.is_empty() {
            continue;
        }
        if item == "*" {
            return None;
        }
        let name = HeaderName::from_bytes(item.as_bytes()).ok()?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.len() > MAX_VARY {
        return None;
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Some(names)
}

/// True when the request's `If-None-Match` (or, without one, `If-Modified-Since`) is met by a
/// stored response with `etag` and `last_modified`: the client's copy is current and a `304`
/// answers it (RFC 9110 section 13.1, weak comparison for `If-None-Match`).
pub fn not_modified(
    request: &HeaderMap,
    etag: Option<&HeaderValue>,
    last_modified: Option<&HeaderValue>,
) -> bool {
    if request.contains_key(IF_NONE_MATCH) {
        let Some(etag) = etag.and_then(|e| e.to_str().ok()) else {
            return false;
        };
        fn opaque(tag: &str) -> &str {
            let tag = tag.trim();
            tag.strip_prefix("W/").unwrap_or(tag)
        }
        let ours = opaque(etag);
        return list_items(request, &IF_NONE_MATCH, ',').any(|t| t == "*" || opaque(t) == ours);
    }
    let (Some(since), Some(modified)) = (request.get(IF_MODIFIED_SINCE), last_modified) else {
        return false;
    };
    let date = |v: &HeaderValue| {
        v.to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s).ok())
    };
    matches!((date(since), date(modified)), (Some(since), Some(modified)) if modified <= since)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    const TTL: Duration = Duration::from_secs(30);

    fn fresh(response: &[(&'static str, &'static str)]) -> Result<Duration, NotStored> {
        freshness(
            StatusCode::OK,
            &HeaderMap::new(),
            &headers(response),
            false,
            TTL,
            SystemTime::now(),
        )
    }

    #[test]
    fn freshness_follows_the_backend_then_the_ttl() {
        assert_eq!(fresh(&[]), Ok(TTL));
        assert_eq!(
            fresh(&[("cache-control", "max-age=5")]),
            Ok(Duration::from_secs(5))
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=5, s-maxage=60")]),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=0")]),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=soon")]),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(fresh(&[("expires", "0")]), Err(NotStored::NoFreshness));
        // Time the response already spent upstream counts against its lifetime.
        assert_eq!(
            fresh(&[("cache-control", "max-age=60"), ("age", "50")]),
            Ok(Duration::from_secs(10))
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=60"), ("age", "120")]),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(
            fresh(&[("age", "18446744073709551615")]),
            Err(NotStored::NoFreshness),
            "a huge Age is clamped, not overflowed"
        );
    }

    /// Found by the `cache_control` fuzz target: such lifetimes overflowed the milliseconds
    /// of the shared cache's wire form.
    #[test]
    fn lifetimes_past_2_to_the_31_seconds_are_2_to_the_31() {
        let cap = Ok(Duration::from_secs(MAX_AGE_SECS));
        assert_eq!(
            fresh(&[("cache-control", "s-maxage=18446737094407551616")]),
            cap
        );
        assert_eq!(fresh(&[("cache-control", "max-age=99999999999999")]), cap);
        assert_eq!(fresh(&[("expires", "Fri, 31 Dec 9999 23:59:59 GMT")]), cap);
        assert_eq!(
            fresh(&[("cache-control", "max-age=-1")]),
            Err(NotStored::NoFreshness),
            "not delta-seconds: invalid, so stale"
        );
    }

    #[test]
    fn what_must_not_be_stored_is_not() {
        for (h, why) in [
            (("cache-control", "no-store"), NotStored::Forbidden),
            (("cache-control", "public, no-cache"), NotStored::Forbidden),
            (
                ("cache-control", "private, max-age=60"),
                NotStored::Forbidden,
            ),
            (("set-cookie", "s=1"), NotStored::SetCookie),
            (("vary", "accept, *"), NotStored::VaryAll),
        ] {
            assert_eq!(fresh(&[h]), Err(why), "{h:?}");
        }
        let status = freshness(
            StatusCode::PARTIAL_CONTENT,
            &HeaderMap::new(),
            &HeaderMap::new(),
            false,
            TTL,
            SystemTime::now(),
        );
        assert_eq!(status, Err(NotStored::Status));
    }

    #[test]
    fn authorised_requests_need_the_backends_permission_unless_the_rule_authenticates() {
        let request = headers(&[("authorization", "Bearer x")]);
        let run = |response: &[(&'static str, &'static str)], authenticated| {
            freshness(
                StatusCode::OK,
                &request,
                &headers(response),
                authenticated,
                TTL,
                SystemTime::now(),
            )
        };
        assert_eq!(run(&[], false), Err(NotStored::Authorization));
        assert_eq!(run(&[("cache-control", "public")], false), Ok(TTL));
        assert_eq!(run(&[], true), Ok(TTL));
    }

    #[test]
    fn clients_can_ask_for_a_fresh_response() {
        assert!(request_wants_fresh(&headers(&[(
            "cache-control",
            "no-cache"
        )])));
        assert!(request_wants_fresh(&headers(&[(
            "cache-control",
            "max-age=0"
        )])));
        assert!(request_wants_fresh(&headers(&[("pragma", "no-cache")])));
        assert!(!request_wants_fresh(&headers(&[(
            "cache-control",
            "max-age=60"
        )])));
    }

    #[test]
    fn vary_names_are_normalised() {
        assert_eq!(
            vary_names(&headers(&[
                ("vary", "Accept-Encoding, accept-language"),
                ("vary", "Accept-Encoding")
            ])),
            Some(vec![
                HeaderName::from_static("accept-encoding"),
                HeaderName::from_static("accept-language")
            ])
        );
        assert_eq!(vary_names(&headers(&[("vary", "*")])), None);
    }

    #[test]
    fn conditionals_compare_weakly() {
        let etag = HeaderValue::from_static("\"v1\"");
        assert!(not_modified(
            &headers(&[("if-none-match", "W/\"v1\"")]),
            Some(&etag),
            None
        ));
        assert!(not_modified(
            &headers(&[("if-none-match", "\"v0\", \"v1\"")]),
            Some(&etag),
            None
        ));
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"v2\"")]),
            Some(&etag),
            None
        ));
        let modified = HeaderValue::from_static("Wed, 02 Dec 2026 07:00:00 GMT");
        assert!(not_modified(
            &headers(&[("if-modified-since", "Wed, 02 Dec 2026 08:00:00 GMT")]),
            None,
            Some(&modified)
        ));
        assert!(!not_modified(
            &headers(&[("if-modified-since", "Wed, 02 Dec 2026 06:00:00 GMT")]),
            None,
            Some(&modified)
        ));
        // If-None-Match wins over If-Modified-Since.
        assert!(!not_modified(
            &headers(&[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", "Wed, 02 Dec 2026 08:00:00 GMT")
            ]),
            Some(&etag),
            Some(&modified)
        ));
    }
}
