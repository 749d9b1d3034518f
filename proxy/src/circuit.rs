//! Circuit limits of a backend (`circuitBreaker`): how many requests may be in flight to it,
//! how many connections may be open to its endpoints, and how many requests may wait for one of
//! those connections. Beyond them the gateway answers 503 with `Retry-After` at once instead of
//! queueing without bound behind a backend that is already saturated.
//!
//! The state is keyed by the backend (Service and port) and its limits, outside the snapshot, so
//! an endpoint refresh or an unrelated edit keeps the counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A backend's limits (`circuitBreaker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CircuitLimits {
    /// Connections open to the backend's endpoints, over every worker.
    pub max_connections: u32,
    /// Requests waiting for a connection when `max_connections` are open.
    pub max_pending_requests: u32,
    /// Requests in flight to the backend.
    pub max_requests: u32,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `maxRequests`.
    Requests,
    /// `maxPendingRequests` (with `maxConnections` reached).
    Pending,
}

/// Counters of refusals.
#[derive(Debug)]
pub(crate) struct CircuitMetrics {
    pub requests: IntCounter,
    pub pending: IntCounter,
}

/// One backend's counts against its limits.
#[derive(Debug)]
pub struct BackendState {
    limits: CircuitLimits,
    requests: AtomicU32,
    pending: AtomicU32,
    connections: Arc<Semaphore>,
    metrics: Option<CircuitMetrics>,
}

impl BackendState {
    pub(crate) fn new(limits: CircuitLimits, metrics: Option<CircuitMetrics>) -> Self {
        BackendState {
            limits,
            requests: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            connections: Arc::new(Semaphore::new(limits.max_connections as usize)),
            metrics,
        }
    }

    /// Requests in flight.
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Admits one request, or says it is over `maxRequests`.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<RequestPermit, Overflow> {
        let before = self.requests.fetch_add(1, Ordering::Relaxed);
        if before >= self.limits.max_requests {
            self.requests.fetch_sub(1, Ordering::Relaxed);
            self.count(Overflow::Requests);
            return Err(Overflow::Requests);
        }
        Ok(RequestPermit(Arc::clone(self)))
    }

    /// A permit to open one more connection: at once while under `maxConnections`, else after
    /// waiting (as one of at most `maxPendingRequests`) for an open one to close.
    pub(crate) async fn connection(&self) -> Result<OwnedSemaphorePermit, Overflow> {
        if let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() {
            return Ok(permit);
        }
        let before = self.pending.fetch_add(1, Ordering::Relaxed);
        if before >= self.limits.max_pending_requests {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            self.count(Overflow::Pending);
            return Err(Overflow::Pending);
        }
        // The semaphore is never closed; the caller's deadline bounds the wait.
        let _pending = Pending(self);
        Arc::clone(&self.connections)
            .acquire_owned()
            .await
            .map_err(|_| Overflow::Pending)
    }

    /// True when requests wait for a connection: a finished one should close, not idle in a
    /// pool, so that a waiter may open its own.
    pub(crate) fn has_waiters(&self) -> bool {
        self.pending.load(Ordering::Relaxed) > 0
    }

    fn count(&self, overflow: Overflow) {
        if let Some(m) = &self.metrics {
            match overflow {
                Overflow::Requests => m.requests.inc(),
                Overflow::Pending => m.pending.inc(),
            }
        }
    }
}

/// Counts a waiter while it waits (also when its request is dropped mid-wait).
struct Pending<'a>(&'a BackendState);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One admitted request; ends with its response.
#[derive(Debug)]
pub struct RequestPermit(Arc<BackendState>);

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(max_connections: u32, pending: u32, requests: u32) -> Arc<BackendState> {
        Arc::new(BackendState::new(
            CircuitLimits {
                max_connections,
                max_pending_requests: pending,
                max_requests: requests,
            },
            None,
        ))
    }

    #[test]
    fn requests_beyond_the_limit_are_refused_until_one_ends() {
        let s = state(10, 10, 2);
        let a = s.admit().expect("first");
        let _b = s.admit().expect("second");
        assert_eq!(s.admit().expect_err("over maxRequests"), Overflow::Requests);
        drop(a);
        assert!(s.admit().is_ok());
    }

    #[tokio::test]
    async fn a_full_pool_queues_up_to_max_pending_then_refuses() {
        let s = state(1, 1, 100);
        let held = s.connection().await.expect("the one connection");
        let waiter = {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.connection().await.map(drop) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(s.has_waiters());
        assert_eq!(
            s.connection().await.expect_err("over maxPendingRequests"),
            Overflow::Pending
        );
        drop(held);
        assert!(
            waiter.await.expect("joined").is_ok(),
            "the waiter got the freed connection"
        );
        assert!(!s.has_waiters());
    }
}
