//! Circuit limits of a backend (`circuitBreaker`): how many requests may be in flight to it,
//! how many connections to its endpoints may be in use at once, and how many requests may wait
//! (each at most the connect timeout) for one of those. Beyond them the gateway answers 503
//! with `Retry-After` at once instead of queueing without bound behind a backend that is
//! already saturated.
//!
//! A connection counts while it carries a request (HTTP/1.1 carries one at a time), not while
//! it sits idle: the idle pools are per worker thread and per endpoint, and an idle connection
//! that held a slot could starve a request on another worker, or to another endpoint, for as
//! long as it idled.
//!
//! The state is keyed by the backend (Service and port) and its limits, outside the snapshot, so
//! an endpoint refresh or an unrelated edit keeps the counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A backend's limits (`circuitBreaker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CircuitLimits {
    /// Connections to the backend's endpoints in use at once, over every worker.
    pub max_connections: u32,
    /// Requests waiting for a connection when `max_connections` are in use.
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

    /// A permit to use one connection: at once while under `maxConnections`, else after
    /// waiting (as one of at most `maxPendingRequests`, for at most `wait`) for one in use to
    /// be done.
    pub(crate) async fn connection(
        &self,
        wait: Duration,
    ) -> Result<OwnedSemaphorePermit, Overflow> {
        if let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() {
            return Ok(permit);
        }
        let before = self.pending.fetch_add(1, Ordering::Relaxed);
        if before >= self.limits.max_pending_requests {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            self.count(Overflow::Pending);
            return Err(Overflow::Pending);
        }
        let _pending = Pending(self);
        match tokio::time::timeout(wait, Arc::clone(&self.connections).acquire_owned()).await {
            // The semaphore is never closed.
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                self.count(Overflow::Pending);
                Err(Overflow::Pending)
            }
        }
    }

    /// Requests waiting for a connection right now.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
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
        let wait = Duration::from_secs(5);
        let s = state(1, 1, 100);
        let held = s.connection(wait).await.expect("the one connection");
        let waiter = {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.connection(wait).await.map(drop) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(s.pending(), 1);
        assert_eq!(
            s.connection(wait)
                .await
                .expect_err("over maxPendingRequests"),
            Overflow::Pending
        );
        drop(held);
        assert!(
            waiter.await.expect("joined").is_ok(),
            "the waiter got the freed connection"
        );
        assert_eq!(s.pending(), 0);
    }

    #[tokio::test]
    async fn a_waiter_gives_up_after_its_wait() {
        let s = state(1, 5, 100);
        let _held = s
            .connection(Duration::from_secs(5))
            .await
            .expect("the one connection");
        let started = std::time::Instant::now();
        assert_eq!(
            s.connection(Duration::from_millis(50))
                .await
                .expect_err("timed out"),
            Overflow::Pending
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(s.pending(), 0, "the waiter that gave up no longer counts");
    }
}
