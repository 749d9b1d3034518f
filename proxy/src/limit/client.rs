//! The client address a limit counts: the socket peer, or, when the peer is a trusted proxy,
//! the right-most address in `X-Forwarded-For` that is not one. Anything else lets a client
//! pick its own key by sending the header.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::headers::X_FORWARDED_FOR;

/// The peers whose `X-Forwarded-For` is believed (`--trusted-proxies`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Box<[IpNet]>);

impl TrustedProxies {
    /// Trusts the peers in `nets`.
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets.into_boxed_slice())
    }

    /// Parses `10.0.0.0/8,192.168.1.1` (a bare address is a one-address network).
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{item:?} is not a CIDR like 10.0.0.0/8 or an address"))?;
            nets.push(net.trunc());
        }
        Ok(Self::new(nets))
    }

    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client of a request from `peer` whose forwarding chain, as the gateway forwards it,
    /// is `headers`' `X-Forwarded-For` (the peer already appended as its last hop).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        // Raw bytes, not `to_str`: one non-ASCII byte must not hide the whole chain (the client
        // would then count as the trusted proxy itself). A hop that does not parse ends the walk.
        let hops: Vec<&[u8]> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = std::str::from_utf8(hop).ok().and_then(parse_hop) else {
                // Garbage from a trusted hop's client: the last good address is all we know.
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<std::net::SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn xff(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static(v));
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").expect("parse");
        let h = xff("1.1.1.1, 192.0.2.9");
        assert_eq!(trusted.client(ip("192.0.2.9"), &h), ip("192.0.2.9"));
        let none = TrustedProxies::default();
        assert_eq!(
            none.client(ip("10.0.0.1"), &xff("1.1.1.1, 10.0.0.1")),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn a_trusted_peer_names_the_right_most_untrusted_hop() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 172.16.0.1").expect("parse");
        // The client spoofed 6.6.6.6; the load balancers appended what they saw.
        let h = xff("6.6.6.6, 203.0.113.5, 172.16.0.1, 10.1.2.3");
        assert_eq!(trusted.client(ip("10.1.2.3"), &h), ip("203.0.113.5"));
        // Every hop trusted: the left-most is the best there is.
        let h = xff("10.9.9.9, 10.1.2.3");
        assert_eq!(trusted.client(ip("10.1.2.3"), &h), ip("10.9.9.9"));
        // Ports and IPv4-mapped IPv6 spellings are the same addresses.
        let h = xff("[2001:db8::7]:4711, ::ffff:10.1.2.3");
        assert_eq!(trusted.client(ip("::ffff:10.1.2.3"), &h), ip("2001:db8::7"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_good_hop() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").expect("parse");
        let h = xff("203.0.113.5, not-an-ip, 10.0.0.2, 10.0.0.1");
        assert_eq!(trusted.client(ip("10.0.0.1"), &h), ip("10.0.0.2"));
    }

    #[test]
    fn a_byte_that_is_not_ascii_does_not_hide_the_chain() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").expect("parse");
        let mut h = HeaderMap::new();
        h.insert(
            &X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"\xff, 203.0.113.5, 10.0.0.1").expect("obs-text is allowed"),
        );
        assert_eq!(trusted.client(ip("10.0.0.1"), &h), ip("203.0.113.5"));
    }

    #[test]
    fn bad_lists_are_refused_with_the_item() {
        let e = TrustedProxies::parse("10.0.0.0/8,10.0.0.0/33").expect_err("bad prefix");
        assert!(e.contains("10.0.0.0/33"), "{e}");
        assert!(TrustedProxies::parse("").expect("empty").0.is_empty());
    }
}
