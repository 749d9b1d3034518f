//! One request through the gateway: match, rewrite, pick an endpoint, forward, relay.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderName, HeaderValue, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::error::ProxyError;
use crate::path;
use crate::router::{Candidate, RequestView};
use crate::server::{Gateway, Live};
use crate::snapshot::{PathRewrite, Rule};
use crate::upstream::UpstreamBody;

/// Body of every response the gateway sends: the backend's, streamed, or one of its own.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1).
static HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    UPGRADE,
];

/// Identity headers only the gateway may set (from verified credentials): a client never gets
/// to assert who it is by sending them.
static IDENTITY_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("x-user-id"),
    HeaderName::from_static("x-user-roles"),
];

/// What happened to one request, for metrics and the access log.
pub(crate) struct Outcome {
    pub result: Result<Response<UpstreamBody>, ProxyError>,
    pub rule: Option<u32>,
    pub upstream: Option<SocketAddr>,
}

impl Outcome {
    fn failed(error: ProxyError, rule: Option<u32>) -> Self {
        Outcome {
            result: Err(error),
            rule,
            upstream: None,
        }
    }
}

/// Routes and forwards one request on the snapshot `live`.
pub(crate) async fn forward(
    gw: &Gateway,
    live: &Live,
    mut req: Request<Incoming>,
    client_ip: &HeaderValue,
    request_id: &HeaderValue,
    started: Instant,
) -> Outcome {
    if req.method() == http::Method::CONNECT {
        return Outcome::failed(ProxyError::BadRequest("CONNECT is not supported"), None);
    }
    let wants_upgrade = req.version() == Version::HTTP_11 && is_websocket_upgrade(req.headers());
    let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    let Ok(path) = path::normalize(parts.uri.path()) else {
        return Outcome::failed(ProxyError::BadRequest("invalid request path"), None);
    };
    let original_host = match routed_host(&parts) {
        Ok(h) => h,
        Err(why) => return Outcome::failed(ProxyError::BadRequest(why), None),
    };
    let host = original_host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .map(host_for_matching)
        .unwrap_or(Cow::Borrowed(""));
    let snapshot = &live.snapshot;
    let view = RequestView {
        host: &host,
        path: &path,
        query: parts.uri.query(),
        method: &parts.method,
        headers: &parts.headers,
    };
    let Some(candidate) = snapshot.router.find(&view) else {
        return Outcome::failed(ProxyError::NoRoute, None);
    };
    let rule = snapshot.rule(candidate.rule);
    let Some(endpoint) = rule.pick() else {
        return Outcome::failed(ProxyError::NoReadyEndpoint, Some(candidate.rule));
    };
    let Some(path_and_query) = upstream_path(&parts.uri, &path, rule, candidate) else {
        return Outcome::failed(
            ProxyError::BadRequest("rewritten path is not a valid URI"),
            Some(candidate.rule),
        );
    };
    drop(path);

    prepare_headers(
        &mut parts.headers,
        wants_upgrade,
        client_ip,
        original_host,
        request_id,
    );
    rule.request_headers.apply(&mut parts.headers);
    if !parts.headers.contains_key(HOST) {
        // HTTP/1.0 without a Host: name the endpoint, as an HTTP/1.1 request must name one.
        if let Ok(v) = HeaderValue::try_from(endpoint.addr.to_string()) {
            parts.headers.insert(HOST, v);
        }
    }
    parts.uri = Uri::from(path_and_query);
    parts.version = Version::HTTP_11;

    let upstream = Request::from_parts(parts, body);
    let exchange = gw.upstreams.send(endpoint.addr, upstream);
    let result = match deadline(rule, started) {
        Some(limit) => match tokio::time::timeout(limit, exchange).await {
            Ok(r) => r.map_err(ProxyError::Backend),
            Err(_) => Err(ProxyError::BackendTimeout),
        },
        None => exchange.await.map_err(ProxyError::Backend),
    };
    let result = result.and_then(|mut response| {
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // Relay a switch only when it is the one the client asked for; anything else would
            // leave the client and backend speaking different protocols on one connection.
            match client_upgrade {
                Some(client) if is_websocket_upgrade(response.headers()) => {
                    tunnel(client, hyper::upgrade::on(&mut response));
                }
                _ => {
                    return Err(ProxyError::BackendProtocol(
                        "backend switched protocols unasked",
                    ));
                }
            }
        } else {
            strip_hop_by_hop(response.headers_mut(), false, &[]);
        }
        rule.response_headers.apply(response.headers_mut());
        Ok(response)
    });
    Outcome {
        result,
        rule: Some(candidate.rule),
        upstream: Some(endpoint.addr),
    }
}

/// The tighter of the rule's request timeout (counted from arrival) and its backend timeout.
fn deadline(rule: &Rule, started: Instant) -> Option<Duration> {
    let request = rule
        .timeouts
        .request
        .map(|t| t.saturating_sub(started.elapsed()));
    match (request, rule.timeouts.backend_request) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The path and query sent upstream: the client's own bytes when nothing changed, so the common
/// case allocates nothing.
fn upstream_path(
    uri: &Uri,
    normalized: &str,
    rule: &Rule,
    candidate: &Candidate,
) -> Option<PathAndQuery> {
    let new_path: Cow<'_, str> = match &rule.rewrite {
        None => Cow::Borrowed(normalized),
        Some(PathRewrite::ReplaceFullPath(p)) => Cow::Borrowed(p),
        Some(PathRewrite::ReplacePrefixMatch(r)) => {
            Cow::Owned(replace_prefix(normalized, candidate.prefix_len(), r))
        }
    };
    if let Some(pq) = uri.path_and_query().filter(|_| new_path == uri.path()) {
        return Some(pq.clone());
    }
    let mut s = String::with_capacity(new_path.len() + uri.query().map_or(0, |q| q.len() + 1));
    s.push_str(&new_path);
    if let Some(q) = uri.query() {
        s.push('?');
        s.push_str(q);
    }
    PathAndQuery::try_from(s).ok()
}

/// Gateway API `ReplacePrefixMatch`: `/foo/bar` with prefix `/foo` and replacement `/xyz` gives
/// `/xyz/bar`; a replacement of `/` gives `/bar`; never a doubled or missing slash.
pub fn replace_prefix(path: &str, prefix_len: usize, replacement: &str) -> String {
    let rest = path.get(prefix_len..).unwrap_or("");
    let head = replacement.trim_end_matches('/');
    let mut out = String::with_capacity(head.len() + rest.len() + 1);
    out.push_str(head);
    if !rest.is_empty() && !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    out
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

/// The host the request is routed on: the target's authority (absolute-form or HTTP/2
/// `:authority`) over `Host`. Several `Host` fields, or an HTTP/2 `Host` naming another
/// authority, make the request malformed (RFC 9112 section 3.2, RFC 9113 section 8.3.1):
/// routing on one name while the backend reads another is how virtual-host checks get skipped.
fn routed_host(parts: &http::request::Parts) -> Result<Option<HeaderValue>, &'static str> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    let Some(authority) = parts.uri.authority() else {
        return Ok(host_header.cloned());
    };
    if parts.version == Version::HTTP_2
        && host_header.is_some_and(|h| {
            !h.as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes())
        })
    {
        return Err("Host header differs from :authority");
    }
    HeaderValue::from_str(authority.as_str())
        .map(Some)
        .map_err(|_| "invalid authority")
}

/// A WebSocket handshake (RFC 6455): the only protocol switch the gateway relays. Other
/// `Upgrade` offers (h2c, TLS) are dropped as hop-by-hop and the request proxied as plain HTTP.
fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            let name = p.trim().split('/').next().unwrap_or("");
            name.eq_ignore_ascii_case("websocket")
        })
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including any the `Connection` header names, and the headers in
/// `also`. For an upgrade, `Connection: upgrade` and `Upgrade` are end-to-end in effect and are
/// kept.
fn strip_hop_by_hop<const N: usize>(
    headers: &mut HeaderMap,
    keep_upgrade: bool,
    also: &[HeaderName; N],
) {
    let dropped = || HOP_BY_HOP.iter().chain(also);
    // One pass over the names finds which of them are present: most messages carry none or
    // only `Connection`, and a hashed remove per name would cost more than the scan.
    debug_assert!(HOP_BY_HOP.len() + also.len() <= 16 && HOP_BY_HOP[0] == CONNECTION);
    let mut present = 0u16;
    for name in headers.keys() {
        // Two scans of fixed-size arrays: a chained iterator, or a slice of unknown length, cost
        // 1-2 % more per request.
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        } else if let Some(i) = also.iter().position(|h| h == name) {
            present |= 1 << (HOP_BY_HOP.len() + i);
        }
    }
    if present == 0 && !keep_upgrade {
        return;
    }
    if present & 1 != 0 {
        // `Connection` is present. Its usual tokens (`keep-alive`, `close`, `upgrade`) name
        // nothing beyond the fixed set.
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.eq_ignore_ascii_case("close")
                    && !HOP_BY_HOP
                        .iter()
                        .any(|h| t.eq_ignore_ascii_case(h.as_str()))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in dropped().enumerate() {
        let kept = keep_upgrade && (*name == CONNECTION || *name == UPGRADE);
        if present & (1 << i) != 0 && !kept {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn prepare_headers(
    headers: &mut HeaderMap,
    upgrade: bool,
    client_ip: &HeaderValue,
    original_host: Option<HeaderValue>,
    request_id: &HeaderValue,
) {
    strip_hop_by_hop(headers, upgrade, &IDENTITY_HEADERS);
    let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
        Some(prior) => {
            let mut list = Vec::with_capacity(prior.len() + 2 + client_ip.len());
            list.extend_from_slice(prior.as_bytes());
            list.extend_from_slice(b", ");
            list.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_maybe_shared(Bytes::from(list)).ok()
        }
        None => Some(client_ip.clone()),
    };
    if let Some(v) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(host) = original_host {
        // Always the host the route was chosen on: HTTP/2 carries it in `:authority`, an
        // absolute-form target overrides `Host`, and the backend must see what was routed.
        headers.insert(HOST, host.clone());
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
}

/// Splices the client and backend connections once both sides have switched protocols.
fn tunnel(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut backend = TokioIo::new(backend);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}

/// The client's `X-Request-Id` when it is sane (1–128 of `[A-Za-z0-9._:-]`), a new one otherwise.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if (1..=128).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
        {
            return v.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let mut bits = fastrand::u128(..);
    for digit in id.iter_mut().rev() {
        *digit = HEX[(bits & 0xf) as usize];
        bits >>= 4;
    }
    HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
}

/// A client's address as an `X-Forwarded-For` entry: made once per connection, not per request.
pub fn client_ip_header(remote: &SocketAddr) -> HeaderValue {
    HeaderValue::try_from(remote.ip().to_string()).expect("an IP address is a valid header value")
}

/// The header carrying the request id.
pub fn request_id_header() -> &'static HeaderName {
    &X_REQUEST_ID
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_prefix_follows_gateway_api_examples() {
        assert_eq!(replace_prefix("/foo/bar", 4, "/xyz"), "/xyz/bar");
        assert_eq!(replace_prefix("/foo/bar", 4, "/xyz/"), "/xyz/bar");
        assert_eq!(replace_prefix("/foo", 4, "/xyz"), "/xyz");
        assert_eq!(replace_prefix("/foo/", 4, "/xyz"), "/xyz/");
        assert_eq!(replace_prefix("/foo/bar", 4, "/"), "/bar");
        assert_eq!(replace_prefix("/foo", 4, "/"), "/");
        assert_eq!(replace_prefix("/foo", 0, "/api"), "/api/foo");
    }

    #[test]
    fn host_is_lowercased_without_port_or_trailing_dot() {
        assert_eq!(host_for_matching("API.Example.com:8080"), "api.example.com");
        assert_eq!(host_for_matching("example.com."), "example.com");
        assert_eq!(host_for_matching("[::1]:8080"), "[::1]");
        assert!(matches!(host_for_matching("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false, &[]);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upgrade_keeps_connection_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_websocket_upgrade(&h));
        strip_hop_by_hop(&mut h, true, &[]);
        assert_eq!(
            h.get(CONNECTION).map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
        assert_eq!(
            h.get(UPGRADE).map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
    }

    #[test]
    fn sane_request_ids_are_kept_and_others_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123.x_y:z"));
        assert_eq!(request_id(&h), "abc-123.x_y:z");
        h.insert("x-request-id", HeaderValue::from_static("bad id<script>"));
        let generated = request_id(&h);
        assert_eq!(generated.len(), 32);
        assert_ne!(generated, request_id(&HeaderMap::new()), "ids are random");
    }

    #[test]
    fn client_identity_headers_are_stripped_and_forwarding_headers_set() {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", HeaderValue::from_static("admin"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let client = client_ip_header(&"192.0.2.7:5555".parse().expect("addr"));
        let id = HeaderValue::from_static("rid");
        prepare_headers(
            &mut h,
            false,
            &client,
            Some(HeaderValue::from_static("a.example")),
            &id,
        );
        assert!(!h.contains_key("x-user-id"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
        assert_eq!(h["host"], "a.example");
        assert_eq!(h["x-request-id"], "rid");
    }

    fn parts(version: Version, uri: &str, hosts: &[&'static str]) -> http::request::Parts {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).expect("request").into_parts().0
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
        assert_eq!(routed_host(&parts(Version::HTTP_11, "/x", &[])), Ok(None));
    }

    #[test]
    fn only_websocket_counts_as_an_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_websocket_upgrade(&h));
        h.insert(UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(is_websocket_upgrade(&h));
        h.remove(CONNECTION);
        assert!(!is_websocket_upgrade(&h), "Connection must name upgrade");
    }

    #[test]
    fn generated_request_ids_are_32_hex_digits_and_differ() {
        let a = request_id(&HeaderMap::new());
        let b = request_id(&HeaderMap::new());
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a, b);
        let mut sane = HeaderMap::new();
        sane.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&sane), "abc-123");
    }

    #[test]
    fn identity_headers_go_even_when_no_hop_by_hop_header_is_present() {
        let mut h = HeaderMap::new();
        h.insert("x-user-roles", HeaderValue::from_static("admin"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let client = client_ip_header(&"[2001:db8::1]:5555".parse().expect("addr"));
        prepare_headers(
            &mut h,
            false,
            &client,
            None,
            &HeaderValue::from_static("rid"),
        );
        assert!(!h.contains_key("x-user-roles"));
        assert!(h.contains_key("x-kept"));
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
    }

    #[test]
    fn routed_host_replaces_what_the_client_sent() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("admin.internal"));
        let client = client_ip_header(&"192.0.2.7:5555".parse().expect("addr"));
        let id = HeaderValue::from_static("rid");
        prepare_headers(
            &mut h,
            false,
            &client,
            Some(HeaderValue::from_static("b.example")),
            &id,
        );
        assert_eq!(h["host"], "b.example");
    }
}
