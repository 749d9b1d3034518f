//! Smooth weighted round robin over a rule's backends, precomputed.
//!
//! Nginx's smooth weighted round robin interleaves picks (weights 5,1,1 give a a b a c a a rather
//! than a a a a a b c). Running it per request needs mutable shared state; instead the whole
//! cycle is computed once at compile time and a request only does one atomic increment.

/// Longest schedule kept; larger weight sums are scaled down proportionally (every non-zero weight
/// keeps at least one slot), which bounds memory at about 4 KiB per rule.
pub const MAX_SCHEDULE: u64 = 1024;

/// The full smooth-weighted-round-robin cycle for `weights`, as indices into `weights`. Zero
/// weights never appear; an empty result means nothing may be picked.
pub fn smooth_weighted_schedule(weights: &[u32]) -> Box<[u32]> {
    let mut w: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
    let divisor = w.iter().copied().filter(|&x| x > 0).fold(0, gcd);
    if divisor == 0 {
        return Box::default();
    }
    w.iter_mut().for_each(|x| *x /= divisor);
    let mut total: u64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        w.iter_mut()
            .filter(|x| **x > 0)
            .for_each(|x| *x = (*x * MAX_SCHEDULE / total).max(1));
        total = w.iter().sum();
    }
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &weight) in current.iter_mut().zip(&w) {
            *c += weight as i64;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .filter(|&(i, _)| w[i] > 0)
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
            .expect("at least one non-zero weight");
        current[best] -= total as i64;
        out.push(best as u32);
    }
    out.into_boxed_slice()
}

/// A rule's weighted cycle, as the balancer keeps it. Most rules send to one backend, whose cycle
/// is a single slot: that one is kept inline, since 10,000 such rules would otherwise hold
/// 10,000 allocations of four bytes (each a 32-byte chunk to glibc).
#[derive(Debug)]
pub(crate) enum Schedule {
    One(u32),
    Cycle(Box<[u32]>),
}

impl Schedule {
    /// The schedule of `weights` (see [`smooth_weighted_schedule`]).
    pub(crate) fn of(weights: &[u32]) -> Self {
        let cycle = smooth_weighted_schedule(weights);
        match *cycle {
            [only] => Schedule::One(only),
            _ => Schedule::Cycle(cycle),
        }
    }

    /// Slots in the cycle; 0 when nothing may be picked.
    pub(crate) fn len(&self) -> usize {
        match self {
            Schedule::One(_) => 1,
            Schedule::Cycle(c) => c.len(),
        }
    }

    /// The backend index in `slot` (`slot < len()`).
    pub(crate) fn at(&self, slot: usize) -> usize {
        match self {
            Schedule::One(only) => *only as usize,
            Schedule::Cycle(c) => c[slot] as usize,
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(schedule: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        schedule.iter().for_each(|&i| c[i as usize] += 1);
        c
    }

    #[test]
    fn a_schedule_of_one_slot_is_kept_inline_and_picks_what_the_cycle_would() {
        for weights in [&[3][..], &[0, 5, 0], &[2, 2], &[0, 0], &[]] {
            let cycle = smooth_weighted_schedule(weights);
            let schedule = Schedule::of(weights);
            assert_eq!(schedule.len(), cycle.len(), "{weights:?}");
            assert_eq!(
                matches!(schedule, Schedule::One(_)),
                cycle.len() == 1,
                "{weights:?}"
            );
            for (slot, &index) in cycle.iter().enumerate() {
                assert_eq!(schedule.at(slot), index as usize, "{weights:?} slot {slot}");
            }
        }
    }

    #[test]
    fn smooth_schedule_interleaves_like_nginx() {
        assert_eq!(
            &*smooth_weighted_schedule(&[5, 1, 1]),
            &[0, 0, 1, 0, 2, 0, 0]
        );
    }

    #[test]
    fn shares_follow_weights_after_gcd_reduction() {
        let s = smooth_weighted_schedule(&[300, 100]);
        assert_eq!(counts(&s, 2), vec![3, 1]);
    }

    #[test]
    fn zero_weights_are_never_picked_and_all_zero_is_empty() {
        let s = smooth_weighted_schedule(&[0, 2, 0]);
        assert!(s.iter().all(|&i| i == 1));
        assert!(smooth_weighted_schedule(&[0, 0]).is_empty());
        assert!(smooth_weighted_schedule(&[]).is_empty());
    }

    #[test]
    fn huge_weights_are_scaled_but_keep_every_backend() {
        let s = smooth_weighted_schedule(&[1_000_000, 1, 999_999]);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 3);
        let c = counts(&s, 3);
        assert!(c[1] >= 1, "a tiny weight keeps one slot");
        assert!((c[0] as i64 - c[2] as i64).abs() <= 1);
    }

    #[test]
    fn equal_weights_alternate() {
        assert_eq!(&*smooth_weighted_schedule(&[1, 1, 1]), &[0, 1, 2]);
    }
}
