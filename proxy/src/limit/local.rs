//! Local (per-replica) buckets: governor's GCRA over a keyed store whose size is bounded.
//!
//! Keys are client data, so the store must hold up under a flood of distinct ones: it keeps 64-bit
//! keyed hashes (never the key text), at most `max_keys` of them, and evicts the entry nearest
//! to a full bucket when a shard is full. Idle keys, whose bucket has refilled and is no
//! different from a fresh one, are swept periodically ([`LocalBuckets::sweep`]).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::{Decision, Rate};

/// Shards of the store: few enough to stay small for small limits, enough that the workers of a
/// busy replica rarely meet on one lock.
const SHARDS: usize = 32;

/// How many entries an eviction looks at to pick the one nearest to a full bucket.
const EVICTION_SAMPLE: usize = 8;

/// Keys are already keyed hashes: a fixed fast hash only spreads them over the table.
type Shard = HashMap<u64, u64, foldhash::fast::FixedState>;

/// A keyed GCRA state store holding at most a fixed number of keys.
pub struct BoundedStore {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

impl BoundedStore {
    /// A store for at most `max_keys` keys.
    pub fn new(max_keys: usize) -> Self {
        BoundedStore {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The low bits: the map's own hash of the key is independent of them.
        self.shards[(key as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl StateStore for BoundedStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut shard = self.shard(*key);
        let (outcome, next) = f(shard.get(key).copied().map(Nanos::from))?;
        if let Some(tat) = shard.get_mut(key) {
            *tat = next.as_u64();
            return Ok(outcome);
        }
        if shard.len() >= self.per_shard {
            // The smallest theoretical arrival time of a sample: the bucket nearest to full,
            // whose client loses least by starting afresh.
            let victim = shard
                .iter()
                .take(EVICTION_SAMPLE)
                .min_by_key(|(_, tat)| **tat)
                .map(|(k, _)| *k);
            if let Some(victim) = victim {
                shard.remove(&victim);
            }
        }
        shard.insert(*key, next.as_u64());
        Ok(outcome)
    }
}

impl ShrinkableKeyedStateStore<u64> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|_, tat| *tat >= drop_below);
            // Give memory back after a flood, not after every sweep.
            if shard.capacity() > 64 && shard.len() < shard.capacity() / 4 {
                shard.shrink_to_fit();
            }
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The buckets of one local limit, shared by every rule the limit applies to and kept across
/// snapshots while the limit is unchanged.
pub struct LocalBuckets<C: Clock = DefaultClock> {
    limiter: RateLimiter<u64, BoundedStore, C, StateInformationMiddleware>,
    /// Keyed per process: a client cannot aim its key at another's bucket.
    hasher: RandomState,
    interval: Duration,
    capacity: u64,
}

impl LocalBuckets {
    /// Buckets for `rate`, at most `max_keys` of them.
    pub fn new(rate: &Rate, max_keys: usize) -> Self {
        Self::with_clock(rate, max_keys, DefaultClock::default())
    }
}

impl<C: Clock> LocalBuckets<C> {
    /// Like [`LocalBuckets::new`], on `clock` (tests advance a fake one).
    pub fn with_clock(rate: &Rate, max_keys: usize, clock: C) -> Self {
        let interval = rate.interval();
        let capacity = NonZeroU32::new(u32::try_from(rate.capacity()).unwrap_or(u32::MAX))
            .unwrap_or(NonZeroU32::MIN);
        // `Rate` guarantees a non-zero interval; one nanosecond is the floor either way.
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(capacity);
        LocalBuckets {
            limiter: RateLimiter::new(quota, BoundedStore::new(max_keys), clock),
            hasher: RandomState::new(),
            interval,
            capacity: u64::from(capacity.get()),
        }
    }

    /// The bucket key of `parts`, hashed without copying them.
    pub fn key<'p>(&self, parts: impl IntoIterator<Item = &'p [u8]>) -> u64 {
        use std::hash::Hasher;
        let mut h = self.hasher.build_hasher();
        for part in parts {
            h.write(part);
            h.write_u8(0xff);
        }
        h.finish()
    }

    /// Takes one request from the bucket of `key`, if it has one.
    pub fn check(&self, key: u64) -> Decision {
        match self.limiter.check_key(&key) {
            Ok(state) => {
                let remaining = u64::from(state.remaining_burst_capacity());
                Decision {
                    allowed: true,
                    remaining,
                    reset: self.interval * self.capacity.saturating_sub(remaining) as u32,
                    retry_after: Duration::ZERO,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Decision {
                    allowed: false,
                    remaining: 0,
                    reset: wait + self.interval * self.capacity.saturating_sub(1) as u32,
                    retry_after: wait,
                }
            }
        }
    }

    /// Forgets keys whose bucket is full again (indistinguishable from a new one).
    pub fn sweep(&self) {
        self.limiter.retain_recent();
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn rate(requests: u64, period: Duration, burst: u64) -> Rate {
        Rate::new(requests, period, burst).expect("valid rate")
    }

    #[test]
    fn a_full_bucket_admits_requests_plus_burst_then_one_per_interval() {
        let clock = FakeRelativeClock::default();
        let buckets =
            LocalBuckets::with_clock(&rate(10, Duration::from_secs(60), 5), 1000, clock.clone());
        let key = buckets.key([&b"client"[..]]);
        let allowed = (0..40).filter(|_| buckets.check(key).allowed).count();
        assert_eq!(allowed, 15, "requests + burst at once");
        // One request comes back every period / requests = 6 s.
        clock.advance(Duration::from_secs(5));
        assert!(!buckets.check(key).allowed);
        clock.advance(Duration::from_secs(1));
        assert!(buckets.check(key).allowed);
        assert!(!buckets.check(key).allowed);
        // A whole period refills `requests`, not more.
        clock.advance(Duration::from_secs(60));
        let allowed = (0..40).filter(|_| buckets.check(key).allowed).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn remaining_reset_and_retry_after_follow_the_bucket() {
        let clock = FakeRelativeClock::default();
        let buckets =
            LocalBuckets::with_clock(&rate(3, Duration::from_secs(30), 0), 1000, clock.clone());
        let key = buckets.key([&b"k"[..]]);
        let first = buckets.check(key);
        assert_eq!((first.allowed, first.remaining), (true, 2));
        assert_eq!(first.reset, Duration::from_secs(10));
        assert_eq!(buckets.check(key).remaining, 1);
        let last = buckets.check(key);
        assert_eq!((last.remaining, last.reset), (0, Duration::from_secs(30)));
        let refused = buckets.check(key);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(10));
        assert_eq!(refused.reset, Duration::from_secs(30));
        clock.advance(Duration::from_secs(4));
        assert_eq!(buckets.check(key).retry_after, Duration::from_secs(6));
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let buckets = LocalBuckets::with_clock(
            &rate(2, Duration::from_secs(60), 0),
            1000,
            FakeRelativeClock::default(),
        );
        let a = buckets.key([&b"a"[..]]);
        let b = buckets.key([&b"b"[..]]);
        assert_ne!(a, b);
        assert!(buckets.check(a).allowed && buckets.check(a).allowed);
        assert!(!buckets.check(a).allowed);
        assert!(buckets.check(b).allowed, "b is not charged for a");
        // Parts are delimited: ("ab", "") and ("a", "b") are different keys.
        assert_ne!(
            buckets.key([&b"ab"[..], &b""[..]]),
            buckets.key([&b"a"[..], &b"b"[..]])
        );
    }

    #[test]
    fn a_million_distinct_keys_stay_within_the_bound() {
        let clock = FakeRelativeClock::default();
        let buckets = LocalBuckets::with_clock(
            &rate(5, Duration::from_secs(3600), 0),
            50_000,
            clock.clone(),
        );
        for i in 0u64..1_000_000 {
            let key = buckets.key([&i.to_le_bytes()[..]]);
            assert!(
                buckets.check(key).allowed,
                "a new key starts with a full bucket"
            );
        }
        assert!(
            buckets.len() <= 50_000 + SHARDS,
            "{} keys kept",
            buckets.len()
        );
        assert!(buckets.len() >= 40_000, "the bound is used, not emptied");
    }

    #[test]
    fn idle_keys_are_swept_once_their_bucket_is_full_again() {
        let clock = FakeRelativeClock::default();
        let buckets =
            LocalBuckets::with_clock(&rate(1, Duration::from_secs(10), 1), 1000, clock.clone());
        for i in 0u8..100 {
            buckets.check(buckets.key([&[i][..]]));
        }
        let busy = buckets.key([&b"busy"[..]]);
        buckets.check(busy);
        assert_eq!(buckets.len(), 101);
        // The busy key keeps drawing on its bucket; the others are left alone.
        clock.advance(Duration::from_secs(5));
        buckets.check(busy);
        clock.advance(Duration::from_secs(10));
        buckets.check(busy);
        clock.advance(Duration::from_secs(6));
        buckets.sweep();
        assert_eq!(buckets.len(), 1, "only the key still paying back is kept");
        clock.advance(Duration::from_secs(60));
        buckets.sweep();
        assert_eq!(buckets.len(), 0);
    }
}
