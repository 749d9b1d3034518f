//! Balancers: how a rule picks the endpoint of one attempt.
//!
//! Two levels, both built when the rule is compiled. Across a rule's backends the weights of its
//! `backendRefs` split the traffic (a precomputed smooth weighted schedule: a cursor step for
//! `RoundRobin`, a random or hashed slot otherwise), so a 90/10 canary stays 90/10 whatever the
//! load. Within the chosen backend the balancer picks among its endpoints (EndpointSlices carry
//! no weights, so they share the backend's weight equally): `LeastRequest` (the default) by power
//! of two choices on in-flight counts, `RoundRobin`, `Random`, or `ConsistentHash` through a
//! Maglev table per backend.
//!
//! A pick skips endpoints that are ejected or failing active checks and those the request
//! already tried; when the chosen backend has none left it moves to the others; when every
//! endpoint is bad it balances across all of them rather than refuse. The common case costs a
//! few atomic loads and one or two random numbers.

mod maglev;
mod schedule;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderName;
use serde::Serialize;

pub use maglev::Maglev;
use schedule::Schedule;
pub use schedule::{MAX_SCHEDULE, smooth_weighted_schedule};

use crate::snapshot::{Backend, Endpoint};

/// How a rule picks endpoints (`loadBalancer.type`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub enum Balancing {
    /// Power of two choices on in-flight requests.
    #[default]
    LeastRequest,
    /// Smooth weighted round robin across backends, round robin within one.
    RoundRobin,
    /// Weighted random.
    Random,
    /// The same key goes to the same endpoint while it is eligible.
    ConsistentHash(HashOn),
}

/// Where a consistent-hash key comes from (`loadBalancer.consistentHash`). A request without
/// one is balanced as by `LeastRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HashOn {
    /// A request header's value.
    Header(#[serde(serialize_with = "crate::snapshot::ser_name")] HeaderName),
    /// A cookie's value; a client without it gets one made by the gateway.
    Cookie {
        /// The cookie's name.
        name: Box<str>,
        /// Its `Max-Age`; `None` makes a session cookie.
        ttl: Option<Duration>,
    },
    /// The client's address (through `--trusted-proxies`).
    SourceIp,
    /// A claim of the verified token (dotted path for nested claims).
    Claim(Box<str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    LeastRequest,
    RoundRobin,
    Random,
    ConsistentHash,
}

/// What a rule's balancer keeps: the weighted schedule over its backends, the round-robin
/// cursor, and for `ConsistentHash` one Maglev table per backend.
#[derive(Debug)]
pub(crate) struct Balancer {
    mode: Mode,
    schedule: Schedule,
    cursor: AtomicUsize,
    tables: Box<[Maglev]>,
}

impl Balancer {
    /// The balancer of `backends` (a backend with no ready endpoint gets no share).
    pub(crate) fn new(balancing: &Balancing, backends: &[Backend]) -> Self {
        let weights: Vec<u32> = backends
            .iter()
            .map(|b| if b.endpoints.is_empty() { 0 } else { b.weight })
            .collect();
        let mode = match balancing {
            Balancing::LeastRequest => Mode::LeastRequest,
            Balancing::RoundRobin => Mode::RoundRobin,
            Balancing::Random => Mode::Random,
            Balancing::ConsistentHash(_) => Mode::ConsistentHash,
        };
        let tables = if mode == Mode::ConsistentHash {
            backends.iter().map(|b| Maglev::new(&b.endpoints)).collect()
        } else {
            Box::default()
        };
        Balancer {
            mode,
            schedule: Schedule::of(&weights),
            cursor: AtomicUsize::new(0),
            tables,
        }
    }

    /// True when no backend has a ready endpoint.
    pub(crate) fn is_empty(&self) -> bool {
        self.schedule.len() == 0
    }

    /// The endpoint for one attempt and the index of its backend. `hash` is the request's
    /// consistent-hash key, if any; `tried` the endpoints earlier attempts used, avoided while
    /// another exists.
    pub(crate) fn pick<'b>(
        &self,
        backends: &'b [Backend],
        hash: Option<u64>,
        tried: &[SocketAddr],
    ) -> Option<(usize, &'b Endpoint)> {
        let n = self.schedule.len();
        if n == 0 {
            return None;
        }
        let slot = match (self.mode, hash) {
            (Mode::RoundRobin, _) => self.cursor.fetch_add(1, Ordering::Relaxed) % n,
            (Mode::ConsistentHash, Some(h)) => (mix(h) % n as u64) as usize,
            _ if n == 1 => 0,
            _ => fastrand::usize(..n),
        };
        let first = self.schedule.at(slot);
        let fresh = |e: &Endpoint| !tried.contains(&e.addr);
        let good = |e: &Endpoint| fresh(e) && e.state().eligible();
        let filters: [&dyn Fn(&Endpoint) -> bool; 3] = [&good, &fresh, &|_| true];
        // Eligible and untried first; then untried (every endpoint is bad: balance across all
        // rather than refuse); then anything (a retry with no other endpoint left).
        for ok in filters {
            if let Some(e) = self.within(first, backends, hash, ok) {
                return Some((first, e));
            }
            // The chosen backend has nothing left at this level: health outranks the split.
            for i in (0..backends.len()).filter(|&i| i != first && backends[i].weight > 0) {
                if let Some(e) = self.within(i, backends, hash, ok) {
                    return Some((i, e));
                }
            }
        }
        None
    }

    fn within<'b>(
        &self,
        index: usize,
        backends: &'b [Backend],
        hash: Option<u64>,
        ok: &dyn Fn(&Endpoint) -> bool,
    ) -> Option<&'b Endpoint> {
        let backend = &backends[index];
        let endpoints = &*backend.endpoints;
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        match (self.mode, hash) {
            (Mode::RoundRobin, _) => probe(endpoints, backend.next_turn(), ok),
            (Mode::Random, _) => probe(endpoints, fastrand::usize(..n), ok),
            (Mode::ConsistentHash, Some(h)) => self.tables.get(index)?.lookup(h, endpoints, ok),
            _ => least_request(endpoints, backend.next_turn(), ok),
        }
    }
}

/// The first endpoint from `start` on (wrapping) that is `ok`.
fn probe<'e>(
    endpoints: &'e [Endpoint],
    start: usize,
    ok: &dyn Fn(&Endpoint) -> bool,
) -> Option<&'e Endpoint> {
    let n = endpoints.len();
    (0..n).map(|i| &endpoints[(start + i) % n]).find(|e| ok(e))
}

/// Power of two choices: two distinct endpoints, the one with fewer requests in flight. The
/// first is the next in turn, the second one of the others at random: on a tie (an idle
/// gateway) the turn wins, so light traffic spreads as evenly as round robin, and under load
/// the random second choice does what power of two choices needs.
fn least_request<'e>(
    endpoints: &'e [Endpoint],
    turn: usize,
    ok: &dyn Fn(&Endpoint) -> bool,
) -> Option<&'e Endpoint> {
    let n = endpoints.len();
    if n == 1 {
        return Some(&endpoints[0]).filter(|e| ok(e));
    }
    let a = turn % n;
    let mut b = fastrand::usize(..n - 1);
    if b >= a {
        b += 1;
    }
    let (ea, eb) = (&endpoints[a], &endpoints[b]);
    match (ok(ea), ok(eb)) {
        (true, true) if eb.state().in_flight() < ea.state().in_flight() => Some(eb),
        (true, _) => Some(ea),
        (false, true) => Some(eb),
        (false, false) => probe(endpoints, a, ok),
    }
}

/// The consistent-hash key of a request, hashed; `None` when the request has none (it is then
/// balanced as by `LeastRequest`). A client without the affinity cookie gets one made now, to be
/// set on the response.
pub(crate) fn request_key(
    on: &HashOn,
    ctx: &mut crate::pipeline::RequestCtx<'_>,
    headers: &http::HeaderMap,
) -> Option<u64> {
    match on {
        HashOn::Header(name) => headers.get(name).map(|v| hash_bytes(v.as_bytes())),
        HashOn::SourceIp => Some(match ctx.client.ip(headers) {
            std::net::IpAddr::V4(ip) => hash_bytes(&ip.octets()),
            std::net::IpAddr::V6(ip) => hash_bytes(&ip.octets()),
        }),
        HashOn::Claim(name) => {
            let claims = ctx.identity.as_ref()?.claims()?;
            match crate::auth::claims::lookup(claims, name)? {
                serde_json::Value::String(s) => Some(hash_bytes(s.as_bytes())),
                serde_json::Value::Null => None,
                other => Some(hash_bytes(other.to_string().as_bytes())),
            }
        }
        HashOn::Cookie { name, ttl } => {
            if let Some(value) = cookie(headers, name) {
                return Some(hash_bytes(value));
            }
            let value = format!("{:016x}", fastrand::u64(..));
            let mut set = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
            if let Some(ttl) = ttl {
                set.push_str(&format!("; Max-Age={}", ttl.as_secs().max(1)));
            }
            ctx.affinity_cookie = http::HeaderValue::try_from(set).ok();
            Some(hash_bytes(value.as_bytes()))
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (RFC 6265 section 5.4).
fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
        .filter(|v| !v.is_empty())
}

/// A key's 64-bit hash: FNV-1a, then mixed. Fixed, not seeded per process, so every replica
/// sends a key to the same endpoint.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// SplitMix64's finaliser: spreads every input bit over the output.
pub(crate) fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests;
