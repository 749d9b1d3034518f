//! Caps on what a flood can make the gateway hold: connections per listener and requests in
//! flight. Past a cap the gateway answers at once (503 with `Retry-After`) instead of queueing,
//! so that the clients already being served keep their latency and memory stays bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A count with a cap; a [`Slot`] holds one unit until dropped.
#[derive(Debug)]
pub struct Cap {
    limit: usize,
    used: Arc<AtomicUsize>,
}

/// One admitted connection or request.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Cap {
    /// A cap of `limit` (0: none).
    pub fn new(limit: usize) -> Self {
        Cap {
            limit: if limit == 0 { usize::MAX } else { limit },
            used: Arc::default(),
        }
    }

    /// A slot, or `None` when `limit` are taken.
    pub fn admit(&self) -> Option<Slot> {
        let before = self.used.fetch_add(1, Ordering::Relaxed);
        if before >= self.limit {
            self.used.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(Arc::clone(&self.used)))
    }

    /// Slots taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_admits_up_to_its_limit_and_frees_on_drop() {
        let cap = Cap::new(2);
        let a = cap.admit().expect("first");
        let _b = cap.admit().expect("second");
        assert!(cap.admit().is_none());
        drop(a);
        assert!(cap.admit().is_some());
        assert!(Cap::new(0).admit().is_some(), "0 means no cap");
    }
}
