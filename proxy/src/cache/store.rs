//! Where entries live: one size-bounded in-memory cache for the whole gateway (every rule's
//! entries, weighed by their bytes), Redis for `shared` rules, and the fills in progress that
//! concurrent misses wait for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderName;
use moka::sync::Cache;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::watch;

use super::entry::Entry;
use crate::limit::SharedStore;

/// Most primary keys whose response `Vary` is remembered.
const VARY_KEYS: u64 = 100_000;

/// A cache key: the first 128 bits of a SHA-256 over its parts (see [`super::key`]).
pub type Key = u128;

/// The gateway's response cache.
pub struct CacheStore {
    entries: Cache<Key, Arc<Entry>>,
    /// Primary key to the header names the response's `Vary` named.
    varies: Cache<Key, Arc<[HeaderName]>>,
    fills: Mutex<HashMap<Key, Arc<watch::Sender<bool>>>>,
    shared: Option<Arc<SharedStore>>,
    counts: IntCounterVec,
}

impl std::fmt::Debug for CacheStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStore")
            .field("entries", &self.entries.entry_count())
            .field("bytes", &self.entries.weighted_size())
            .finish_non_exhaustive()
    }
}

/// Entries expire when they go stale: a stale entry is never served, so it should not hold
/// memory either.
struct StaleAt;

impl moka::Expiry<Key, Arc<Entry>> for StaleAt {
    fn expire_after_create(&self, _: &Key, entry: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(entry.remaining(SystemTime::now()))
    }

    // A refreshed entry (a client's `no-cache`) lives as long as the new response says, not
    // what was left of the old one's time.
    fn expire_after_update(
        &self,
        _: &Key,
        entry: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.remaining(SystemTime::now()))
    }
}

impl CacheStore {
    /// A cache of at most `capacity` bytes; `shared` is the Redis of `shared: true` rules.
    pub fn new(capacity: u64, shared: Option<Arc<SharedStore>>, registry: &Registry) -> Self {
        let entries = Cache::builder()
            .max_capacity(capacity)
            .weigher(|_: &Key, e: &Arc<Entry>| e.weight())
            .expire_after(StaleAt)
            .support_invalidation_closures()
            .build();
        let varies = Cache::builder()
            .max_capacity(VARY_KEYS)
            .time_to_idle(Duration::from_secs(3600))
            .build();
        let counts = IntCounterVec::new(
            Opts::new(
                "sluice_cache_lookups_total",
                "Response cache lookups by result (hit, miss, bypass, coalesced, stored, shared_error)",
            ),
            &["result"],
        )
        .expect("valid metric definition");
        let _ = registry.register(Box::new(counts.clone()));
        CacheStore {
            entries,
            varies,
            fills: Mutex::default(),
            shared,
            counts,
        }
    }

    pub(crate) fn count(&self, result: &str) {
        self.counts.with_label_values(&[result]).inc();
    }

    /// True when `shared` rules have a Redis.
    pub fn has_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The `Vary` names last seen for `primary`.
    pub(crate) fn vary_of(&self, primary: Key) -> Option<Arc<[HeaderName]>> {
        self.varies.get(&primary)
    }

    /// Remembers the `Vary` names of `primary`'s responses.
    pub(crate) fn set_vary(&self, primary: Key, names: Arc<[HeaderName]>) {
        self.varies.insert(primary, names);
    }

    /// The fresh entry stored under `key` by the rule `rule`, locally or (for `shared`) in
    /// Redis; Redis failures are misses.
    pub(crate) async fn get(&self, key: Key, rule: u64, shared: bool) -> Option<Arc<Entry>> {
        let now = SystemTime::now();
        if shared {
            let store = self.shared.as_ref()?;
            match store.get_bytes(&redis_key(key)).await {
                Ok(Some(bytes)) => Entry::decode(bytes)
                    .filter(|e| e.rule == rule && e.is_fresh(now))
                    .map(Arc::new),
                Ok(None) => None,
                Err(_) => {
                    self.count("shared_error");
                    None
                }
            }
        } else {
            self.entries
                .get(&key)
                .filter(|e| e.rule == rule && e.is_fresh(now))
        }
    }

    /// Stores `entry` under `key` in memory.
    pub(crate) fn put_local(&self, key: Key, entry: Entry) {
        self.count("stored");
        self.entries.insert(key, Arc::new(entry));
    }

    /// Stores `entry` under `key` in Redis, for every replica.
    pub(crate) async fn put_shared(&self, key: Key, entry: Entry) {
        let Some(store) = &self.shared else { return };
        self.count("stored");
        let ttl = entry.remaining(SystemTime::now());
        if store
            .set_bytes(&redis_key(key), &entry.encode(), ttl)
            .await
            .is_err()
        {
            self.count("shared_error");
        }
    }

    /// Becomes the filler of `key`, or returns a receiver that says when the current filler
    /// is done (stored or gave up).
    pub(crate) fn fill(self: &Arc<Self>, key: Key) -> Result<FillGuard, watch::Receiver<bool>> {
        let mut fills = self.fills.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fill) = fills.get(&key) {
            return Err(fill.subscribe());
        }
        let (tx, _) = watch::channel(false);
        let tx = Arc::new(tx);
        fills.insert(key, Arc::clone(&tx));
        Ok(FillGuard {
            store: Arc::clone(self),
            key,
            tx,
        })
    }

    /// Drops the entries of rules no longer installed (`live` holds the cache ids of those
    /// that are): a route change purges its rules' entries. Shared entries carry the id in
    /// their key's check and expire in Redis.
    pub(crate) fn purge_except(&self, live: Vec<u64>) {
        let _ = self
            .entries
            .invalidate_entries_if(move |_, e| !live.contains(&e.rule));
    }

    /// Bytes held by entries (after pending evictions are applied).
    pub fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    /// Entries held (after pending evictions are applied).
    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}

fn redis_key(key: Key) -> Vec<u8> {
    format!("sluice:cache:{key:032x}").into_bytes()
}

/// The one request filling a key; followers wait until it is dropped (its response stored,
/// or given up).
pub(crate) struct FillGuard {
    store: Arc<CacheStore>,
    key: Key,
    tx: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for FillGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FillGuard").field("key", &self.key).finish()
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        let mut fills = self.store.fills.lock().unwrap_or_else(|e| e.into_inner());
        if fills
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.tx))
        {
            fills.remove(&self.key);
        }
        drop(fills);
        self.tx.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    fn entry(fresh_for: Duration) -> Entry {
        Entry {
            rule: 1,
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"x"),
            stored_at: SystemTime::now(),
            fresh_for,
            initial_age: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn a_refreshed_entry_lives_as_long_as_its_new_response_says() {
        let store = CacheStore::new(1 << 20, None, &Registry::new());
        store.put_local(7, entry(Duration::from_millis(50)));
        store.put_local(7, entry(Duration::from_secs(60)));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(
            store.get(7, 1, false).await.is_some(),
            "expired on the old entry's clock"
        );
        assert!(
            store.get(7, 2, false).await.is_none(),
            "another rule's id never matches"
        );
    }

    #[tokio::test]
    async fn a_second_filler_waits_and_is_woken_when_the_first_gives_up() {
        let store = Arc::new(CacheStore::new(1 << 20, None, &Registry::new()));
        let first = store.fill(9).expect("the first request fills");
        let Err(mut done) = store.fill(9) else {
            panic!("a second filler was let in");
        };
        drop(first);
        assert!(done.wait_for(|d| *d).await.is_ok());
        assert!(store.fill(9).is_ok(), "the key is free again");
    }
}
