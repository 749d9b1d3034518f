//! The client's headers on their way to the backend: hop-by-hop headers (and any the
//! `Connection` header names) never pass, identity headers only the gateway may set never
//! pass in any spelling, the forwarding headers say what the gateway saw; and the client
//! address a rate limit counts is the peer or an address from the forwarding chain, never
//! anything else a client can write. The first byte picks upgrade / HTTPS.
#![no_main]

use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sluice_proxy::fuzzing;
use sluice_proxy::limit::TrustedProxies;

const IDENTITY: [&str; 5] = [
    "x-user-id",
    "x-user-roles",
    "x-consumer",
    "x-auth-provider",
    "x-tenant",
];
// What the gateway itself writes after stripping.
const SET_BY_GATEWAY: [&str; 5] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let original = sluice_fuzz::header_map(rest);
    let mut headers = original.clone();
    let upgrade = flags & 1 != 0 && fuzzing::is_websocket_upgrade(&original);
    let https = flags & 2 != 0;
    let client_ip = HeaderValue::from_static("192.0.2.7");
    let request_id = HeaderValue::from_static("rid-1");
    let tenant = [HeaderName::from_static("x-tenant")];
    fuzzing::prepare_upstream(
        &mut headers,
        upgrade,
        &client_ip,
        Some(HeaderValue::from_static("fuzz.example")),
        &request_id,
        &tenant,
        https,
    );

    for name in fuzzing::hop_by_hop() {
        if upgrade && (name == "connection" || name == "upgrade") {
            continue;
        }
        assert!(!headers.contains_key(name), "hop-by-hop {name} passed");
    }
    if upgrade {
        assert_eq!(headers.get_all("connection").iter().count(), 1);
        assert_eq!(headers["connection"], "upgrade");
    }
    // Every header the client's `Connection` named is gone, unless the gateway set it anew.
    for token in original
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        let Ok(named) = HeaderName::from_bytes(token.as_bytes()) else {
            continue;
        };
        // An upgrade keeps `Upgrade` and gets `Connection: upgrade` from the gateway.
        let kept = SET_BY_GATEWAY.contains(&named.as_str())
            || (upgrade && (named == "upgrade" || named == "connection"));
        if !kept && named != "close" {
            assert!(
                !headers.contains_key(&named),
                "{named} was named by Connection and passed"
            );
        }
    }
    for name in headers.keys() {
        let dashed = name.as_str().replace('_', "-");
        assert!(
            !IDENTITY.contains(&dashed.as_str()),
            "identity header {name} passed"
        );
    }
    let forwarded: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(
        forwarded.last(),
        Some(&&b"192.0.2.7"[..]),
        "the peer is the last hop"
    );
    assert_eq!(headers["x-request-id"], "rid-1");
    assert_eq!(headers["host"], "fuzz.example");
    assert_eq!(
        headers["x-forwarded-proto"],
        if https { "https" } else { "http" }
    );

    // The client a limit counts.
    let trusted = TrustedProxies::parse("192.0.2.0/24, 10.0.0.0/8").expect("trusted");
    let peer: IpAddr = "192.0.2.7".parse().expect("ip");
    let client = trusted.client(peer, &headers);
    let hop_ips: Vec<IpAddr> = forwarded
        .iter()
        .filter_map(|h| std::str::from_utf8(h).ok())
        .filter_map(|h| {
            h.parse::<IpAddr>()
                .ok()
                .or_else(|| h.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        })
        .map(|ip| ip.to_canonical())
        .collect();
    assert!(
        client == peer || hop_ips.contains(&client),
        "{client} came from nowhere"
    );
    let stranger: IpAddr = "203.0.113.9".parse().expect("ip");
    assert_eq!(
        trusted.client(stranger, &headers),
        stranger,
        "an untrusted peer is the client"
    );

    // A response's hop-by-hop headers never reach the client either.
    let mut response = original;
    fuzzing::strip_response_hop_by_hop(&mut response);
    for name in fuzzing::hop_by_hop() {
        assert!(
            !response.contains_key(name),
            "hop-by-hop {name} relayed to the client"
        );
    }
});
