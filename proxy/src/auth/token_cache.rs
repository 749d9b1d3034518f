//! Tokens a provider already verified, until they expire: a signature check (tens of
//! microseconds for RS256) is paid once per token, not once per request.
//!
//! Bounded by two generations: lookups try the newer map, then the older one (moving a hit
//! across); when the newer map fills, the older is dropped and the newer becomes it. Memory stays
//! under two maps' worth of entries however many distinct tokens arrive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::jwt::{KeySet, Verified};

/// Entries per generation.
const GENERATION: usize = 4096;

/// Longest a verified token is trusted from the cache, in seconds, whatever its `exp`: a key
/// removed from a JWKS stops being honoured through the cache within this.
const MAX_CACHED_SECS: u64 = 300;

/// Keyed by tokens, which clients choose: a hash seeded per process keeps collisions
/// unpredictable. A lookup compares a presented token only with a cached one of the same hash,
/// so its timing tells a client nothing about tokens it does not already hold.
type Map = HashMap<Box<str>, Entry, foldhash::quality::RandomState>;

struct Entry {
    verified: Arc<Verified>,
    until: u64,
    /// The key set the token verified with: held, so that its address is not reused, and
    /// compared, so that a rotated set (a key withdrawn from a JWKS) re-verifies the token.
    keys: Arc<KeySet>,
}

/// Verified tokens of one provider.
#[derive(Default)]
pub(super) struct TokenCache {
    maps: Mutex<(Map, Map)>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCache")
    }
}

impl TokenCache {
    /// The verification of `token` if it is cached, verified with `keys` (the current set) and
    /// still valid at `now`.
    pub(super) fn get(&self, token: &str, keys: &Arc<KeySet>, now: u64) -> Option<Arc<Verified>> {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let (newer, older) = &mut *maps;
        let fresh = |e: &Entry| now <= e.until && Arc::ptr_eq(&e.keys, keys);
        match newer.get(token) {
            Some(e) => fresh(e).then(|| Arc::clone(&e.verified)),
            None => {
                let (k, e) = older.remove_entry(token)?;
                let hit = fresh(&e).then(|| Arc::clone(&e.verified));
                newer.insert(k, e);
                hit
            }
        }
    }

    /// Remembers that `token` verified as `verified` with `keys` at `now`.
    pub(super) fn insert(
        &self,
        token: &str,
        verified: Arc<Verified>,
        keys: &Arc<KeySet>,
        now: u64,
    ) {
        let until = verified
            .valid_until
            .min(now.saturating_add(MAX_CACHED_SECS));
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let (newer, older) = &mut *maps;
        if newer.len() >= GENERATION {
            *older = std::mem::take(newer);
        }
        newer.insert(
            token.into(),
            Entry {
                verified,
                until,
                keys: Arc::clone(keys),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn verified(valid_until: u64) -> Arc<Verified> {
        Arc::new(Verified {
            claims: Default::default(),
            headers: Box::default(),
            provider_header: HeaderValue::from_static("p"),
            valid_until,
        })
    }

    fn keys() -> Arc<KeySet> {
        Arc::new(KeySet::default())
    }

    #[test]
    fn a_cached_token_is_served_until_it_expires() {
        let cache = TokenCache::default();
        let k = keys();
        cache.insert("t1", verified(1_000), &k, 900);
        assert!(cache.get("t1", &k, 999).is_some());
        assert!(cache.get("t1", &k, 1_001).is_none(), "expired");
        assert!(cache.get("t2", &k, 950).is_none());
    }

    #[test]
    fn a_rotated_key_set_reverifies_cached_tokens() {
        let cache = TokenCache::default();
        let (old, new) = (keys(), keys());
        cache.insert("t", verified(1_000), &old, 0);
        assert!(cache.get("t", &old, 1).is_some());
        assert!(
            cache.get("t", &new, 1).is_none(),
            "verified with a set no longer current"
        );
    }

    #[test]
    fn a_long_lived_token_is_reverified_after_the_cache_limit() {
        let cache = TokenCache::default();
        let k = keys();
        cache.insert("t", verified(u64::MAX), &k, 0);
        assert!(cache.get("t", &k, MAX_CACHED_SECS).is_some());
        assert!(cache.get("t", &k, MAX_CACHED_SECS + 1).is_none());
    }

    #[test]
    fn memory_is_bounded_under_many_distinct_tokens() {
        let cache = TokenCache::default();
        let k = keys();
        for i in 0..(GENERATION * 5) {
            cache.insert(&format!("token-{i}"), verified(10), &k, 0);
        }
        let maps = cache.maps.lock().expect("lock");
        assert!(maps.0.len() + maps.1.len() <= 2 * GENERATION);
        drop(maps);
        // The newest survive; the oldest were dropped with their generation.
        assert!(
            cache
                .get(&format!("token-{}", GENERATION * 5 - 1), &k, 1)
                .is_some()
        );
        assert!(cache.get("token-0", &k, 1).is_none());
    }
}
