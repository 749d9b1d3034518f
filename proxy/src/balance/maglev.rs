//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of a prime size in
//! which every endpoint owns an almost equal share of slots, filled from per-endpoint
//! permutations so that adding or removing one of N endpoints moves about 1/N of the keys.
//! Built once with the rule; a lookup is one array read.

use std::net::SocketAddr;

use crate::snapshot::Endpoint;

/// The table size: a prime (so every skip walks the whole table), the same for every endpoint
/// count (a size that grew with the count would remap every key when it changed), and at least
/// 100 times the endpoints of any usual backend, for an even spread (Maglev's advice).
pub const TABLE_SIZE: usize = 65_537;

/// Slots probed past an ineligible endpoint's slot before falling back to a scan.
const PROBES: usize = 8;

/// A Maglev table over one backend's endpoints.
#[derive(Debug, Default)]
pub struct Maglev {
    /// Endpoint index per slot.
    table: Box<[u16]>,
}

impl Maglev {
    /// The table for `endpoints` (at most 65,534 take part; more are reached only by fallback).
    /// Indices are `u16`: a table costs 128 KiB.
    pub fn new(endpoints: &[Endpoint]) -> Self {
        let n = endpoints.len().min(usize::from(u16::MAX) - 1);
        if n == 0 {
            return Maglev::default();
        }
        let size = TABLE_SIZE;
        let perms: Vec<(usize, usize)> = endpoints[..n]
            .iter()
            .map(|e| {
                let offset = addr_hash(&e.addr, 0x9e37_79b9) as usize % size;
                let skip = addr_hash(&e.addr, 0x85eb_ca6b) as usize % (size - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0usize; n];
        let mut table = vec![u16::MAX; size];
        let mut filled = 0;
        'fill: loop {
            for (i, &(offset, skip)) in perms.iter().enumerate() {
                let mut slot = (offset + next[i] * skip) % size;
                while table[slot] != u16::MAX {
                    next[i] += 1;
                    slot = (offset + next[i] * skip) % size;
                }
                table[slot] = i as u16;
                next[i] += 1;
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        Maglev {
            table: table.into_boxed_slice(),
        }
    }

    /// The endpoint owning `hash`, or the next eligible one when it is not `ok`: the slots
    /// after it first (so a key's fallback is as stable as its owner), then the endpoints in
    /// order.
    pub(crate) fn lookup<'e>(
        &self,
        hash: u64,
        endpoints: &'e [Endpoint],
        ok: &dyn Fn(&Endpoint) -> bool,
    ) -> Option<&'e Endpoint> {
        let m = self.table.len();
        if m == 0 {
            return None;
        }
        let slot = (hash % m as u64) as usize;
        for i in 0..PROBES.min(m) {
            let e = endpoints.get(usize::from(self.table[(slot + i) % m]))?;
            if ok(e) {
                return Some(e);
            }
        }
        super::probe(endpoints, usize::from(self.table[slot]), ok)
    }

    /// The slot count (for tests and `/debug/snapshot` sizing).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when the table has no endpoints.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

fn addr_hash(addr: &SocketAddr, seed: u64) -> u64 {
    let mut bytes = [0u8; 18];
    match addr.ip() {
        std::net::IpAddr::V4(ip) => bytes[..4].copy_from_slice(&ip.octets()),
        std::net::IpAddr::V6(ip) => bytes[..16].copy_from_slice(&ip.octets()),
    }
    bytes[16..].copy_from_slice(&addr.port().to_be_bytes());
    super::hash_bytes(&bytes) ^ super::mix(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| {
                Endpoint::new(SocketAddr::from((
                    [10, 0, (i / 250) as u8, (i % 250) as u8],
                    8080,
                )))
            })
            .collect()
    }

    fn owner(m: &Maglev, eps: &[Endpoint], key: u64) -> SocketAddr {
        m.lookup(key, eps, &|_| true).expect("an owner").addr
    }

    #[test]
    fn every_endpoint_owns_an_almost_equal_share() {
        let eps = endpoints(10);
        let m = Maglev::new(&eps);
        assert_eq!(m.len(), TABLE_SIZE);
        let mut counts = vec![0usize; 10];
        for &i in m.table.iter() {
            counts[usize::from(i)] += 1;
        }
        let (min, max) = (
            counts.iter().min().expect("n>0"),
            counts.iter().max().expect("n>0"),
        );
        assert!(max - min <= 1, "slot shares {counts:?}");
    }

    #[test]
    fn adding_one_of_n_endpoints_moves_about_one_nth_of_keys() {
        for n in [3usize, 10, 50] {
            let before = endpoints(n);
            let after = endpoints(n + 1);
            let (a, b) = (Maglev::new(&before), Maglev::new(&after));
            let keys = 20_000u64;
            let moved = (0..keys)
                .map(super::super::mix)
                .filter(|&k| owner(&a, &before, k) != owner(&b, &after, k))
                .count();
            let ideal = keys as f64 / (n + 1) as f64;
            assert!(
                (moved as f64) < ideal * 1.6,
                "n={n}: {moved} of {keys} keys moved, ideal {ideal:.0}"
            );
        }
    }

    #[test]
    fn an_ineligible_owner_hands_its_keys_to_a_stable_successor() {
        let eps = endpoints(5);
        let m = Maglev::new(&eps);
        let down = eps[2].addr;
        let ok = |e: &Endpoint| e.addr != down;
        for k in (0..2000u64).map(super::super::mix) {
            let first = m.lookup(k, &eps, &ok).expect("someone").addr;
            assert_ne!(first, down);
            assert_eq!(m.lookup(k, &eps, &ok).expect("someone").addr, first);
        }
        assert!(m.lookup(1, &eps, &|_| false).is_none());
    }
}
