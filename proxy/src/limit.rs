//! The `RateLimit` step: every limit of every policy targeting a rule must admit the request.
//!
//! A limit is a token bucket (GCRA) of `requests + burst`, refilled at `requests` per `period`,
//! kept per key (client address, a header, a verified claim, the API key's consumer, or one for
//! the whole target). Buckets live outside the snapshot ([`crate::state`]), keyed by the
//! policy, the limit and its parameters, so a swap keeps them and an edited limit starts afresh.
//! Local buckets are this replica's ([`local`]); global ones are in Redis, shared by every
//! replica ([`shared`]).

mod client;
pub mod local;
mod shared;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use prometheus::IntCounter;
use serde::Serialize;

pub use client::TrustedProxies;
pub use shared::{SharedStore, SharedStoreConfig, StoreError};

use crate::auth::{Identity, claims};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::pipeline::RequestCtx;

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// `requests` per `period`, with room for `burst` more at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rate {
    /// Requests per period.
    pub requests: u64,
    /// The period.
    #[serde(serialize_with = "ser_secs")]
    pub period: Duration,
    /// Extra requests a full bucket admits at once.
    pub burst: u64,
}

/// Most a bucket may hold: governor counts in `u32`.
pub const MAX_CAPACITY: u64 = u32::MAX as u64;

/// Longest an empty bucket may take to refill: ten years.
const MAX_REFILL_SECS: f64 = 10.0 * 365.0 * 86_400.0;

impl Rate {
    /// A rate, if it is one: at least one request, a bucket of at most [`MAX_CAPACITY`], and a
    /// period of at least a millisecond that leaves at least a microsecond per request.
    pub fn new(requests: u64, period: Duration, burst: u64) -> Option<Rate> {
        let rate = Rate {
            requests,
            period,
            burst,
        };
        let valid = requests > 0
            && requests
                .checked_add(burst)
                .is_some_and(|c| c <= MAX_CAPACITY)
            && period >= Duration::from_millis(1)
            && rate.interval() >= Duration::from_micros(1)
            // A full bucket's worth of time must fit GCRA's nanosecond arithmetic with room.
            && rate.interval().as_secs_f64() * rate.capacity() as f64 <= MAX_REFILL_SECS;
        valid.then_some(rate)
    }

    /// Time for one request to come back: `period / requests`.
    pub fn interval(&self) -> Duration {
        self.period / u32::try_from(self.requests).unwrap_or(u32::MAX)
    }

    /// Requests a full bucket admits at once: `requests + burst`.
    pub fn capacity(&self) -> u64 {
        self.requests + self.burst
    }
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What a bucket is counted per.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LimitKey {
    /// The client address (IPv6 by its /64, which one subscriber holds), after
    /// `--trusted-proxies`.
    ClientIp,
    /// A request header's value; requests without it share one bucket.
    Header(#[serde(serialize_with = "crate::snapshot::ser_name")] HeaderName),
    /// A verified JWT claim (name or dotted path); requests without it count by client address.
    Claim(Box<str>),
    /// The consumer of the request's API key; requests without one count by client address.
    ApiKey,
    /// One bucket for the whole target.
    Route,
}

impl LimitKey {
    fn describe(&self) -> Cow<'_, str> {
        match self {
            LimitKey::ClientIp => "ip".into(),
            LimitKey::Header(name) => format!("header={name}").into(),
            LimitKey::Claim(name) => format!("claim={name}").into(),
            LimitKey::ApiKey => "apikey".into(),
            LimitKey::Route => "route".into(),
        }
    }
}

/// Where a limit's buckets are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Scope {
    /// In this replica.
    Local,
    /// In Redis, shared by all replicas; `fail_open` decides while Redis cannot be reached.
    Global {
        /// Admit requests (true) or refuse them with 503 (false) when Redis fails.
        fail_open: bool,
    },
}

/// One compiled limit; its buckets are bound at install.
#[derive(Debug, Serialize)]
pub struct Limit {
    /// `namespace/name` of the policy.
    pub policy: Arc<str>,
    /// The limit's name in the policy.
    pub name: Arc<str>,
    /// Its rate.
    pub rate: Rate,
    /// What a bucket is counted per.
    pub key: LimitKey,
    /// Where the buckets are.
    pub scope: Scope,
    /// Identity of the buckets: the policy, the limit and every parameter that shapes them, so
    /// an unchanged limit finds its buckets after a swap and an edited one starts afresh. Also
    /// the prefix of its Redis keys.
    #[serde(skip)]
    pub(crate) id: Arc<str>,
    #[serde(skip)]
    limit_header: HeaderValue,
    #[serde(skip)]
    policy_header: HeaderValue,
    #[serde(skip)]
    bound: OnceLock<Arc<LimitState>>,
}

impl Limit {
    /// A limit of `policy` (`namespace/name`).
    pub fn new(policy: Arc<str>, name: Arc<str>, rate: Rate, key: LimitKey, scope: Scope) -> Self {
        let scope_name = match scope {
            Scope::Local => "local",
            Scope::Global { .. } => "global",
        };
        let id = format!(
            "{policy}/{name}:{}per{}ms+{}:{}:{scope_name}",
            rate.requests,
            rate.period.as_millis(),
            rate.burst,
            key.describe()
        );
        let window = rate.period.as_millis().div_ceil(1000).max(1);
        let policy_header = if rate.burst > 0 {
            format!("{};w={window};burst={}", rate.requests, rate.burst)
        } else {
            format!("{};w={window}", rate.requests)
        };
        Limit {
            policy,
            name,
            rate,
            key,
            scope,
            id: id.into(),
            limit_header: HeaderValue::from(rate.capacity()),
            policy_header: HeaderValue::try_from(policy_header)
                .expect("digits and ';w=' are a valid header value"),
            bound: OnceLock::new(),
        }
    }

    /// Binds the limit's state once; later snapshots sharing the limit keep theirs.
    pub(crate) fn bind(&self, make: impl FnOnce() -> Arc<LimitState>) {
        self.bound.get_or_init(make);
    }
}

/// What a limit keeps outside the snapshot: local buckets or the shared store, and its counters.
pub(crate) struct LimitState {
    pub(crate) buckets: Buckets,
    pub(crate) allowed: IntCounter,
    pub(crate) limited: IntCounter,
    pub(crate) failed: IntCounter,
}

impl std::fmt::Debug for LimitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.buckets {
            Buckets::Local(b) => format!("local, {} keys", b.len()),
            Buckets::Shared(store) => format!("shared, connected: {}", store.is_some()),
        };
        f.debug_struct("LimitState")
            .field("buckets", &kind)
            .finish()
    }
}

pub(crate) enum Buckets {
    Local(local::LocalBuckets),
    /// `None`: sluice runs without `--redis`, so the store is never reachable.
    Shared(Option<Arc<SharedStore>>),
}

/// One bucket's answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The request may pass.
    pub allowed: bool,
    /// Requests the bucket still admits at once.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// Until the next request would be admitted (zero when allowed).
    pub retry_after: Duration,
}

/// The decision whose headers the response carries: the most restrictive limit.
#[derive(Debug, Clone, Copy)]
pub struct LimitOutcome<'a> {
    limit: &'a Limit,
    decision: Decision,
}

impl LimitOutcome<'_> {
    /// `allowed` or `refused`, for the access log.
    pub fn outcome(&self) -> &'static str {
        if self.decision.allowed {
            "allowed"
        } else {
            "refused"
        }
    }
}

/// The rate limits of one rule.
#[derive(Debug, Serialize)]
pub struct RateLimit {
    /// Every limit of every policy targeting the rule, in policy order.
    pub limits: Box<[Limit]>,
}

impl RateLimit {
    /// The step for `limits`.
    pub fn new(limits: Vec<Limit>) -> Self {
        RateLimit {
            limits: limits.into_boxed_slice(),
        }
    }

    /// The request phase: each limit takes one request from its bucket; any refusal answers
    /// 429 (or 503, from a `Closed` limit whose store is down).
    pub(crate) async fn on_request<'a>(
        &'a self,
        ctx: &mut RequestCtx<'a>,
        headers: &HeaderMap,
    ) -> Result<(), ProxyError> {
        let mut shown: Option<LimitOutcome<'a>> = None;
        let mut refused: Option<LimitOutcome<'a>> = None;
        let mut unavailable = false;
        let mut client: Option<IpAddr> = None;
        for limit in self.limits.iter() {
            let Some(state) = limit.bound.get() else {
                // Not bound: only a snapshot that was never installed; nothing to count in.
                continue;
            };
            let key = key_value(limit, ctx, headers, &mut client);
            let decision = match &state.buckets {
                Buckets::Local(buckets) => Some(buckets.check(buckets.key(key.parts()))),
                Buckets::Shared(store) => {
                    let result = match store {
                        Some(store) => {
                            let mut redis_key = Vec::with_capacity(limit.id.len() + 96);
                            redis_key.extend_from_slice(b"sluice:rl:");
                            redis_key.extend_from_slice(limit.id.as_bytes());
                            key.write_shared(&mut redis_key);
                            store.check(&redis_key, &limit.rate).await.ok()
                        }
                        None => None,
                    };
                    if result.is_none() {
                        state.failed.inc();
                        if limit.scope == (Scope::Global { fail_open: false }) {
                            unavailable = true;
                        }
                    }
                    result
                }
            };
            let Some(decision) = decision else { continue };
            let outcome = LimitOutcome { limit, decision };
            if decision.allowed {
                state.allowed.inc();
                if shown.is_none_or(|s| more_restrictive(&outcome, &s)) {
                    shown = Some(outcome);
                }
            } else {
                state.limited.inc();
                // The first refusal answers: later limits (the compiler puts shared `Route`
                // buckets last) are not charged for a request that will not pass.
                refused = Some(outcome);
                break;
            }
        }
        if let Some(refused) = refused {
            ctx.limit = Some(refused);
            return Err(ProxyError::RateLimited(retry_secs(
                refused.decision.retry_after,
            )));
        }
        ctx.limit = shown;
        if unavailable {
            return Err(ProxyError::LimitUnavailable);
        }
        Ok(())
    }

    /// The response phase: the most restrictive limit's headers, on every response.
    pub(crate) fn on_response(ctx: &RequestCtx<'_>, response: &mut Response<ProxyBody>) {
        let Some(LimitOutcome { limit, decision }) = ctx.limit else {
            return;
        };
        let h = response.headers_mut();
        let remaining = HeaderValue::from(decision.remaining);
        let reset = HeaderValue::from(retry_secs(decision.reset));
        h.insert(&RATELIMIT_LIMIT, limit.limit_header.clone());
        h.insert(&RATELIMIT_REMAINING, remaining.clone());
        h.insert(&RATELIMIT_RESET, reset.clone());
        h.insert(&RATELIMIT_POLICY, limit.policy_header.clone());
        h.insert(&X_RATELIMIT_LIMIT, limit.limit_header.clone());
        h.insert(&X_RATELIMIT_REMAINING, remaining);
        h.insert(&X_RATELIMIT_RESET, reset);
        if !decision.allowed {
            h.insert(
                RETRY_AFTER,
                HeaderValue::from(retry_secs(decision.retry_after)),
            );
        }
    }
}

/// Fewer requests left is more restrictive; at a tie, the smaller bucket.
fn more_restrictive(a: &LimitOutcome<'_>, b: &LimitOutcome<'_>) -> bool {
    (a.decision.remaining, a.limit.rate.capacity())
        < (b.decision.remaining, b.limit.rate.capacity())
}

/// Whole seconds, rounded up: a client waiting this long is never early.
pub(crate) fn retry_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The key of one request under one limit.
enum KeyValue<'r> {
    /// A client address: 16 bytes (IPv4 mapped into IPv6, IPv6 cut to its /64).
    Ip([u8; 16]),
    /// A value read from the request, tagged by where it came from.
    Text(&'static [u8], Cow<'r, [u8]>),
    /// The one bucket of the target.
    Whole,
}

impl KeyValue<'_> {
    fn parts(&self) -> impl Iterator<Item = &[u8]> {
        let (tag, value): (&[u8], &[u8]) = match self {
            KeyValue::Ip(ip) => (b"ip", ip),
            KeyValue::Text(tag, value) => (tag, value),
            KeyValue::Whole => (b"all", b""),
        };
        [tag, value].into_iter()
    }
}

impl KeyValue<'_> {
    /// The key's tail in Redis: a client address in hex, a value read from the request as its
    /// SHA-256 (fixed length whatever the client sends, and never a credential in the clear).
    fn write_shared(&self, out: &mut Vec<u8>) {
        fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for b in bytes {
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        out.push(b':');
        match self {
            KeyValue::Ip(ip) => {
                out.extend_from_slice(b"ip:");
                hex(out, ip);
            }
            KeyValue::Text(tag, value) => {
                out.extend_from_slice(tag);
                out.push(b':');
                hex(
                    out,
                    ring::digest::digest(&ring::digest::SHA256, value).as_ref(),
                );
            }
            KeyValue::Whole => out.extend_from_slice(b"all"),
        }
    }
}

fn ip_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            o
        }
    }
}

fn key_value<'r>(
    limit: &Limit,
    ctx: &'r RequestCtx<'_>,
    headers: &'r HeaderMap,
    client: &mut Option<IpAddr>,
) -> KeyValue<'r> {
    let mut by_client = || {
        let ip = *client.get_or_insert_with(|| ctx.client.ip(headers));
        KeyValue::Ip(ip_key(ip))
    };
    match &limit.key {
        LimitKey::ClientIp => by_client(),
        LimitKey::Route => KeyValue::Whole,
        LimitKey::Header(name) => match headers.get(name) {
            Some(v) => KeyValue::Text(b"h", Cow::Borrowed(v.as_bytes())),
            None => KeyValue::Text(b"absent", Cow::Borrowed(b"")),
        },
        LimitKey::Claim(name) => {
            let value = ctx
                .identity
                .as_ref()
                .and_then(Identity::claims)
                .and_then(|c| claims::lookup(c, name));
            match value {
                Some(serde_json::Value::String(s)) => {
                    KeyValue::Text(b"c", Cow::Borrowed(s.as_bytes()))
                }
                Some(serde_json::Value::Null) | None => by_client(),
                Some(other) => KeyValue::Text(b"c", Cow::Owned(other.to_string().into_bytes())),
            }
        }
        LimitKey::ApiKey => match &ctx.identity {
            Some(Identity::ApiKey(consumer)) => {
                KeyValue::Text(b"k", Cow::Borrowed(consumer.as_bytes()))
            }
            _ => by_client(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_must_admit_something_in_a_real_period() {
        assert!(Rate::new(0, Duration::from_secs(1), 5).is_none());
        assert!(Rate::new(1, Duration::ZERO, 0).is_none());
        assert!(
            Rate::new(10_000, Duration::from_millis(1), 0).is_none(),
            "0.1 µs each"
        );
        assert!(Rate::new(MAX_CAPACITY, Duration::from_secs(86_400), 1).is_none());
        // 1 a day with a burst of a million: 2,700 years to refill, past GCRA's arithmetic.
        assert!(Rate::new(1, Duration::from_secs(86_400), 1_000_000).is_none());
        let r = Rate::new(100, Duration::from_secs(60), 20).expect("valid");
        assert_eq!(r.capacity(), 120);
        assert_eq!(r.interval(), Duration::from_millis(600));
    }

    #[test]
    fn headers_describe_the_limit() {
        let rate = Rate::new(100, Duration::from_secs(60), 0).expect("valid");
        let l = Limit::new(
            "shop/p".into(),
            "l".into(),
            rate,
            LimitKey::ClientIp,
            Scope::Local,
        );
        assert_eq!(l.policy_header, "100;w=60");
        assert_eq!(l.limit_header, "100");
        let rate = Rate::new(5, Duration::from_millis(1500), 2).expect("valid");
        let l = Limit::new(
            "shop/p".into(),
            "l".into(),
            rate,
            LimitKey::Route,
            Scope::Local,
        );
        assert_eq!(l.policy_header, "5;w=2;burst=2");
        assert_eq!(l.limit_header, "7");
    }

    #[test]
    fn bucket_identity_changes_with_every_parameter() {
        let rate = Rate::new(100, Duration::from_secs(60), 0).expect("valid");
        let id = |rate, key| Limit::new("ns/p".into(), "l".into(), rate, key, Scope::Local).id;
        let base = id(rate, LimitKey::ClientIp);
        assert_eq!(base, id(rate, LimitKey::ClientIp));
        let more = Rate::new(101, Duration::from_secs(60), 0).expect("valid");
        assert_ne!(base, id(more, LimitKey::ClientIp));
        let burst = Rate::new(100, Duration::from_secs(60), 1).expect("valid");
        assert_ne!(base, id(burst, LimitKey::ClientIp));
        assert_ne!(base, id(rate, LimitKey::Route));
        let global = Limit::new(
            "ns/p".into(),
            "l".into(),
            rate,
            LimitKey::ClientIp,
            Scope::Global { fail_open: true },
        );
        assert_ne!(
            base, global.id,
            "Local and Global buckets are different state"
        );
        assert_ne!(
            id(rate, LimitKey::Claim("sub".into())),
            id(rate, LimitKey::Claim("tenant".into()))
        );
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_ipv4_apart_from_it() {
        let a = ip_key("2001:db8:1:2:aaaa::1".parse().expect("ip"));
        let b = ip_key("2001:db8:1:2:bbbb::9".parse().expect("ip"));
        let c = ip_key("2001:db8:1:3::1".parse().expect("ip"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(
            ip_key("192.0.2.1".parse().expect("ip")),
            ip_key("192.0.2.2".parse().expect("ip"))
        );
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_secs(Duration::ZERO), 0);
    }
}
