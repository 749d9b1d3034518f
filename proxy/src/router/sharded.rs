//! A string-keyed map split into shards that copies share, so that a copy with a few keys
//! changed copies only the shards those keys are in: a route change at 10,000 routes then
//! copies a few hundred entries of the path table, not all of it.

use std::hash::BuildHasher;
use std::sync::Arc;

use serde::Serialize;

use super::Map;

/// Entries per shard a map aims for.
const PER_SHARD: usize = 256;

/// One shard: shared by copies until one of them changes it.
type Shard<V> = Arc<Map<Arc<str>, V>>;

/// See the module documentation. Lookups hash the key twice (shard, then entry), a few
/// nanoseconds for the short keys of a router.
#[derive(Debug, Clone)]
pub(super) struct Sharded<V> {
    shards: Box<[Shard<V>]>,
    /// Picks the shard; configuration keys only, so a fixed per-map seed is safe.
    picker: foldhash::fast::RandomState,
    len: usize,
}

impl<V> Default for Sharded<V> {
    fn default() -> Self {
        Sharded {
            shards: Box::new([Arc::new(Map::default())]),
            picker: foldhash::fast::RandomState::default(),
            len: 0,
        }
    }
}

impl<V: Clone> Sharded<V> {
    /// The entries of `map`, in as many shards as its size calls for.
    pub(super) fn from_map(map: Map<Arc<str>, V>) -> Self {
        let count = (map.len() / PER_SHARD).max(1).next_power_of_two();
        let mut shards: Vec<Map<Arc<str>, V>> = (0..count).map(|_| Map::default()).collect();
        let picker = foldhash::fast::RandomState::default();
        let len = map.len();
        for (k, v) in map {
            let i = pick(&picker, count, &k);
            shards[i].insert(k, v);
        }
        Sharded {
            shards: shards.into_iter().map(Arc::new).collect(),
            picker,
            len,
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&V> {
        self.shards[pick(&self.picker, self.shards.len(), key)].get(key)
    }

    /// Sets `key`; the shard it is in is copied first if another map shares it.
    pub(super) fn insert(&mut self, key: Arc<str>, value: V) {
        let i = pick(&self.picker, self.shards.len(), &key);
        if Arc::make_mut(&mut self.shards[i])
            .insert(key, value)
            .is_none()
        {
            self.len += 1;
            if self.len > self.shards.len() * PER_SHARD * 4 {
                *self = Self::from_map(self.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
            }
        }
    }

    pub(super) fn remove(&mut self, key: &str) {
        let i = pick(&self.picker, self.shards.len(), key);
        if self.shards[i].contains_key(key) {
            Arc::make_mut(&mut self.shards[i]).remove(key);
            self.len -= 1;
        }
    }
}

impl<V> Sharded<V> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }
}

fn pick(picker: &foldhash::fast::RandomState, shards: usize, key: &str) -> usize {
    if shards == 1 {
        return 0;
    }
    // `shards` is a power of two; the high bits are the best mixed.
    (picker.hash_one(key) >> 32) as usize & (shards - 1)
}

impl<V: Serialize> Serialize for Sharded<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_shares_the_shards_its_changes_leave_alone() {
        let map: Map<Arc<str>, u32> = (0..5_000).map(|i| (format!("/p{i}").into(), i)).collect();
        let original = Sharded::from_map(map);
        assert!(
            original.shards.len() > 8,
            "{} shards",
            original.shards.len()
        );
        let mut copy = original.clone();
        copy.insert("/new".into(), 1);
        copy.remove("/p7");
        let shared = original
            .shards
            .iter()
            .zip(copy.shards.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(shared >= original.shards.len() - 2, "{shared} shared");
        assert_eq!((original.len(), copy.len()), (5_000, 5_000));
        assert_eq!(original.get("/p7"), Some(&7));
        assert_eq!(copy.get("/p7"), None);
        assert_eq!(copy.get("/new"), Some(&1));
        assert_eq!(original.get("/new"), None);
    }

    #[test]
    fn a_map_that_grows_by_inserts_takes_more_shards() {
        let mut map: Sharded<u32> = Sharded::default();
        for i in 0..10_000 {
            map.insert(format!("/p{i}").into(), i);
        }
        assert!(map.shards.len() >= 8, "{} shards", map.shards.len());
        assert_eq!(map.len(), 10_000);
        assert!((0..10_000).all(|i| map.get(&format!("/p{i}")) == Some(&i)));
    }
}
