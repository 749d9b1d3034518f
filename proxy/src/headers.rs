//! Header work every request gets, whatever its rule: hop-by-hop and identity stripping, the
//! forwarding headers, and request ids.

use std::net::SocketAddr;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONNECTION, HOST, HeaderName, HeaderValue, UPGRADE};

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1).
pub(crate) static HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    UPGRADE,
];

/// `X-User-Id`: the verified subject.
pub static X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
/// `X-User-Roles`: the verified roles, joined with `,`.
pub static X_USER_ROLES: HeaderName = HeaderName::from_static("x-user-roles");
/// `X-Consumer`: the API key's consumer.
pub static X_CONSUMER: HeaderName = HeaderName::from_static("x-consumer");
/// `X-Auth-Provider`: which provider (or `apiKey`) authenticated the request.
pub static X_AUTH_PROVIDER: HeaderName = HeaderName::from_static("x-auth-provider");

/// Identity headers only the gateway may set (from verified credentials): a client never gets
/// to assert who it is by sending them. Headers a route maps claims to are added to these per
/// snapshot ([`crate::Snapshot::identity_headers`]).
pub static IDENTITY_HEADERS: [&HeaderName; 4] =
    [&X_USER_ID, &X_USER_ROLES, &X_CONSUMER, &X_AUTH_PROVIDER];

/// The comma- (or `sep`-) separated items of every `name` header, trimmed; values that are not
/// visible ASCII are skipped.
pub(crate) fn list_items<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
    sep: char,
) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(move |v| v.split(sep))
        .map(str::trim)
}

/// A WebSocket handshake (RFC 6455): the only protocol switch the gateway relays. Other
/// `Upgrade` offers (h2c, TLS) are dropped as hop-by-hop and the request proxied as plain HTTP.
pub(crate) fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    list_items(headers, &UPGRADE, ',').any(|p| {
        let name = p.split('/').next().unwrap_or("");
        name.eq_ignore_ascii_case("websocket")
    }) && list_items(headers, &CONNECTION, ',').any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including any the `Connection` header names, and the headers in
/// `also`. For an upgrade, `Connection: upgrade` and `Upgrade` are end-to-end in effect and are
/// kept. Returns whether some header name holds a `_`.
pub(crate) fn strip_hop_by_hop<const N: usize>(
    headers: &mut HeaderMap,
    keep_upgrade: bool,
    also: &[&HeaderName; N],
) -> bool {
    let dropped = || HOP_BY_HOP.iter().chain(also.iter().copied());
    // One pass over the names finds which of them are present: most messages carry none or
    // only `Connection`, and a hashed remove per name would cost more than the scan.
    debug_assert!(HOP_BY_HOP.len() + also.len() <= 16 && HOP_BY_HOP[0] == CONNECTION);
    let mut present = 0u16;
    let mut underscore = false;
    for name in headers.keys() {
        // Two scans of fixed-size arrays: a chained iterator, or a slice of unknown length, cost
        // 1-2 % more per request.
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        } else if let Some(i) = also.iter().position(|h| *h == name) {
            present |= 1 << (HOP_BY_HOP.len() + i);
        } else {
            underscore |= name.as_str().as_bytes().contains(&b'_');
        }
    }
    if present == 0 && !keep_upgrade {
        return underscore;
    }
    if present & 1 != 0 {
        // `Connection` is present. Its usual tokens (`keep-alive`, `close`, `upgrade`) name
        // nothing beyond the fixed set.
        let named: Vec<HeaderName> = list_items(headers, &CONNECTION, ',')
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
    underscore
}

/// Removes headers whose names equal an identity header once `_` is read as `-`
/// (`X_User_Id`): CGI, WSGI and PHP backends see both spellings as `HTTP_X_USER_ID`.
fn strip_underscore_spellings(headers: &mut HeaderMap, extra_identity: &[HeaderName]) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            n.contains('_') && {
                let dashed = n.replace('_', "-");
                IDENTITY_HEADERS
                    .iter()
                    .copied()
                    .chain(extra_identity)
                    .any(|h| h.as_str() == dashed)
            }
        })
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// Prepares the client's headers for the backend: hop-by-hop and identity headers out (plus
/// `extra_identity`, the headers some route maps claims to), forwarding headers and the request
/// id in, `Host` set to the host the route was chosen on.
pub(crate) fn prepare_upstream(
    headers: &mut HeaderMap,
    upgrade: bool,
    client_ip: &HeaderValue,
    routed_host: Option<HeaderValue>,
    request_id: &HeaderValue,
    extra_identity: &[HeaderName],
    https: bool,
) {
    if strip_hop_by_hop(headers, upgrade, &IDENTITY_HEADERS) {
        strip_underscore_spellings(headers, extra_identity);
    }
    for name in extra_identity {
        headers.remove(name);
    }
    // Several `X-Forwarded-For` lines are one list (RFC 9110 section 5.3), in order; the peer
    // goes last.
    let mut prior = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    let forwarded_for = match prior.peek() {
        Some(_) => {
            let mut list = Vec::with_capacity(64);
            for line in prior {
                list.extend_from_slice(line.as_bytes());
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_maybe_shared(Bytes::from(list)).ok()
        }
        None => Some(client_ip.clone()),
    };
    if let Some(v) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    let proto = if https { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(host) = routed_host {
        // Always the host the route was chosen on: HTTP/2 carries it in `:authority`, an
        // absolute-form target overrides `Host`, and the backend must see what was routed.
        headers.insert(HOST, host.clone());
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
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

static X_SLUICE_ATTEMPTS: HeaderName = HeaderName::from_static("x-sluice-attempts");

/// The response header saying how many upstream attempts a request took.
pub fn attempts_header() -> &'static HeaderName {
    &X_SLUICE_ATTEMPTS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `prepare_upstream` for a plain request from `client` with request id `rid`.
    fn prepare(h: &mut HeaderMap, client: &str, host: Option<HeaderValue>, extra: &[HeaderName]) {
        let client = client_ip_header(&client.parse().expect("addr"));
        prepare_upstream(
            h,
            false,
            &client,
            host,
            &HeaderValue::from_static("rid"),
            extra,
            false,
        );
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
        h.insert("x-consumer", HeaderValue::from_static("partner"));
        h.insert("x-auth-provider", HeaderValue::from_static("corp"));
        h.insert("x-tenant", HeaderValue::from_static("acme"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        prepare(
            &mut h,
            "192.0.2.7:5555",
            Some(HeaderValue::from_static("a.example")),
            &[HeaderName::from_static("x-tenant")],
        );
        for name in ["x-user-id", "x-consumer", "x-auth-provider", "x-tenant"] {
            assert!(!h.contains_key(name), "{name}");
        }
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
        assert_eq!(h["host"], "a.example");
        assert_eq!(h["x-request-id"], "rid");
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
    fn underscore_spellings_of_identity_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("x_user_id", HeaderValue::from_static("root"));
        h.insert("x_user_roles", HeaderValue::from_static("admin"));
        h.insert("x_tenant", HeaderValue::from_static("acme"));
        h.insert("x_kept_header", HeaderValue::from_static("1"));
        prepare(
            &mut h,
            "192.0.2.7:5555",
            None,
            &[HeaderName::from_static("x-tenant")],
        );
        for name in ["x_user_id", "x_user_roles", "x_tenant"] {
            assert!(!h.contains_key(name), "{name}");
        }
        assert!(
            h.contains_key("x_kept_header"),
            "other underscore names pass"
        );
    }

    #[test]
    fn identity_headers_go_even_when_no_hop_by_hop_header_is_present() {
        let mut h = HeaderMap::new();
        h.insert("x-user-roles", HeaderValue::from_static("admin"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        prepare(&mut h, "[2001:db8::1]:5555", None, &[]);
        assert!(!h.contains_key("x-user-roles"));
        assert!(h.contains_key("x-kept"));
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
    }

    #[test]
    fn routed_host_replaces_what_the_client_sent() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("admin.internal"));
        prepare(
            &mut h,
            "192.0.2.7:5555",
            Some(HeaderValue::from_static("b.example")),
            &[],
        );
        assert_eq!(h["host"], "b.example");
    }
}
