//! Endpoint health: the state each endpoint address keeps across snapshots (requests in flight,
//! consecutive failures, ejection, the verdict of active checks), the passive and active check
//! settings of a rule, and the rules of ejection.
//!
//! Passive checks (outlier detection) count consecutive failures (a 5xx, a refused or reset
//! connection, a timeout); at `consecutiveFailures` the endpoint is ejected for `ejectionTime`,
//! doubling with each ejection that follows soon after the last one (up to five minutes), but
//! never beyond `maxEjectionPercent` of the endpoints of the backend it was picked from. An
//! ejection ends lazily: the first pick after it expires puts the endpoint back. Active checks
//! ([`checker`]) probe an HTTP path and mark an endpoint down after `unhealthyThreshold` failed
//! probes, up again after `healthyThreshold` good ones. EndpointSlice readiness decides which
//! endpoints a backend has; health decides which of them get new requests.

pub(crate) mod checker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use serde::Serialize;

use crate::circuit::RequestPermit;
use crate::clock::now_ms;
use crate::snapshot::Endpoint;

/// Longest ejection, however often an endpoint is ejected.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// A rule's passive check (`healthCheck.passive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PassiveHealth {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// How long the first ejection lasts.
    pub ejection_time: Duration,
    /// Most endpoints of a backend ejected at once, in percent (rounded down).
    pub max_ejection_percent: u8,
}

/// A rule's active check (`healthCheck.active`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveHealth {
    /// The path probed with `GET`; a 2xx or 3xx answer is healthy.
    pub path: Box<str>,
    /// Time between probes (jittered by up to a tenth either way).
    pub interval: Duration,
    /// Time a probe may take.
    pub timeout: Duration,
    /// Good probes in a row that bring an unhealthy endpoint back.
    pub healthy_threshold: u32,
    /// Failed probes in a row that take an endpoint out.
    pub unhealthy_threshold: u32,
}

/// What `/debug/snapshot` says of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Health {
    /// Gets new requests.
    Healthy,
    /// Ejected by the passive check.
    Ejected,
    /// Failing its active check.
    Unhealthy,
}

/// The metric handles of one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointMetrics {
    pub healthy: IntGauge,
    pub ejections: IntCounter,
}

/// The long-lived state of one endpoint address.
#[derive(Debug)]
pub struct EndpointState {
    addr: SocketAddr,
    in_flight: AtomicU32,
    failures: AtomicU32,
    /// End of the current ejection on [`now_ms`]'s clock; 0 when not ejected.
    ejected_until: AtomicU64,
    /// Ejections in a row, each soon after the previous one ended (sets the next duration).
    streak: AtomicU32,
    /// When the last ejection ended.
    returned_at: AtomicU64,
    active_down: AtomicBool,
    metrics: Option<EndpointMetrics>,
}

impl EndpointState {
    /// Fresh state: healthy, nothing in flight.
    pub(crate) fn new(addr: SocketAddr, metrics: Option<EndpointMetrics>) -> Self {
        if let Some(m) = &metrics {
            m.healthy.set(1);
        }
        EndpointState {
            addr,
            in_flight: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            streak: AtomicU32::new(0),
            returned_at: AtomicU64::new(0),
            active_down: AtomicBool::new(false),
            metrics,
        }
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests sent to it whose response has not ended.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Consecutive failures counted so far.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// True when it may get new requests: not ejected, not failing active checks.
    pub fn eligible(&self) -> bool {
        !self.active_down.load(Ordering::Relaxed) && !self.ejected()
    }

    /// What `/debug/snapshot` shows.
    pub fn health(&self) -> Health {
        if self.ejected() {
            Health::Ejected
        } else if self.active_down.load(Ordering::Relaxed) {
            Health::Unhealthy
        } else {
            Health::Healthy
        }
    }

    /// True while an ejection lasts; the first call after it expired ends it.
    fn ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        let now = now_ms();
        if now < until {
            return true;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            // Quiet time counts from the end of the ejection, not from when a pick noticed it.
            self.returned_at.store(until, Ordering::Relaxed);
            self.failures.store(0, Ordering::Relaxed);
            self.update_gauge();
            tracing::info!(endpoint = %self.addr, "ejection over: endpoint gets requests again");
        }
        false
    }

    /// Counts one request as started on this endpoint, and on its backend's circuit when it
    /// has one; the guard ends it.
    pub(crate) fn start(self: &Arc<Self>, permit: Option<RequestPermit>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: Arc::clone(self),
            _permit: permit,
            _connection: None,
        }
    }

    /// Records an attempt's outcome for the passive check of the rule that made it; `peers`
    /// are the endpoints of the backend it was picked from (for `maxEjectionPercent`).
    pub(crate) fn record(&self, failed: bool, passive: Option<&PassiveHealth>, peers: &[Endpoint]) {
        if !failed {
            // Read first: a healthy endpoint's line is not written on every request.
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if let Some(passive) = passive
            && failures >= passive.consecutive_failures
        {
            self.try_eject(passive, peers);
        }
    }

    fn try_eject(&self, passive: &PassiveHealth, peers: &[Endpoint]) {
        if self.ejected() {
            return;
        }
        let allowed = peers.len() * usize::from(passive.max_ejection_percent) / 100;
        let ejected = peers
            .iter()
            .filter(|e| e.addr != self.addr && e.state().ejected())
            .count();
        if ejected >= allowed {
            return;
        }
        let now = now_ms();
        let base = passive.ejection_time;
        // An endpoint ejected again soon after it came back has not recovered: each such
        // ejection lasts twice the one before.
        let quiet = now.saturating_sub(self.returned_at.load(Ordering::Relaxed));
        let streak = if quiet > duration_ms(base).saturating_mul(4) {
            0
        } else {
            self.streak.load(Ordering::Relaxed)
        };
        let factor = 1u32 << streak.min(16);
        let length = base.saturating_mul(factor).min(MAX_EJECTION.max(base));
        let until = now.saturating_add(duration_ms(length)).max(now + 1);
        if self
            .ejected_until
            .compare_exchange(0, until, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // Two endpoints ejected at once on two workers could each have seen room for one:
        // count again now that this one is out, and step back if that went past the limit.
        let others = peers
            .iter()
            .filter(|e| e.addr != self.addr && e.state().ejected())
            .count();
        if others >= allowed {
            self.ejected_until.store(0, Ordering::Relaxed);
            return;
        }
        self.streak
            .store(streak.saturating_add(1), Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.ejections.inc();
        }
        self.update_gauge();
        tracing::warn!(
            endpoint = %self.addr,
            failures = passive.consecutive_failures,
            seconds = length.as_secs_f64(),
            "endpoint ejected after consecutive failures"
        );
    }

    /// Sets the active check's verdict.
    pub(crate) fn set_active_down(&self, down: bool) {
        if self.active_down.swap(down, Ordering::Relaxed) != down {
            self.update_gauge();
            if down {
                tracing::warn!(endpoint = %self.addr, "endpoint failed its health checks");
            } else {
                tracing::info!(endpoint = %self.addr, "endpoint passed its health checks again");
            }
        }
    }

    fn update_gauge(&self) {
        if let Some(m) = &self.metrics {
            let down = self.active_down.load(Ordering::Relaxed)
                || self.ejected_until.load(Ordering::Relaxed) != 0;
            m.healthy.set(i64::from(!down));
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One request in flight on an endpoint (and on its backend's circuit, and on one of its
/// connection slots); dropped when the response has ended (a WebSocket tunnel: when it
/// closes), or with the attempt that failed.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<EndpointState>,
    _permit: Option<RequestPermit>,
    _connection: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl InFlight {
    /// Holds a `maxConnections` slot as long as the request.
    pub(crate) fn with_connection(
        mut self,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Self {
        self._connection = slot;
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: u8) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint::new(SocketAddr::from(([10, 0, 0, i], 80))))
            .collect()
    }

    fn passive(ms: u64, percent: u8) -> PassiveHealth {
        PassiveHealth {
            consecutive_failures: 3,
            ejection_time: Duration::from_millis(ms),
            max_ejection_percent: percent,
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let eps = endpoints(4);
        let p = passive(60_000, 50);
        let s = eps[0].state();
        s.record(true, Some(&p), &eps);
        s.record(true, Some(&p), &eps);
        s.record(false, Some(&p), &eps);
        s.record(true, Some(&p), &eps);
        s.record(true, Some(&p), &eps);
        assert!(s.eligible(), "the success in between reset the count");
        s.record(true, Some(&p), &eps);
        assert!(!s.eligible());
        assert_eq!(s.health(), Health::Ejected);
    }

    #[test]
    fn without_a_passive_check_failures_only_count() {
        let eps = endpoints(2);
        for _ in 0..100 {
            eps[0].state().record(true, None, &eps);
        }
        assert!(eps[0].state().eligible());
        assert_eq!(eps[0].state().failures(), 100);
    }

    #[test]
    fn at_most_max_ejection_percent_of_a_backend_is_ejected() {
        let eps = endpoints(4);
        let p = passive(60_000, 50);
        for e in &eps {
            for _ in 0..3 {
                e.state().record(true, Some(&p), &eps);
            }
        }
        let ejected = eps.iter().filter(|e| !e.state().eligible()).count();
        assert_eq!(ejected, 2, "50% of 4");
        let one = endpoints(1);
        for _ in 0..10 {
            one[0].state().record(true, Some(&p), &one);
        }
        assert!(one[0].state().eligible(), "50% of one endpoint is none");
    }

    #[test]
    fn an_ejection_ends_after_its_time_and_a_quick_relapse_lasts_longer() {
        let eps = endpoints(2);
        let p = passive(40, 100);
        let s = eps[0].state();
        for _ in 0..3 {
            s.record(true, Some(&p), &eps);
        }
        assert!(!s.eligible());
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.eligible(), "back after 40 ms");
        for _ in 0..3 {
            s.record(true, Some(&p), &eps);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert!(!s.eligible(), "the second ejection in a row lasts 80 ms");
        std::thread::sleep(Duration::from_millis(40));
        assert!(s.eligible());
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let eps = endpoints(1);
        let s = eps[0].state();
        let a = s.start(None);
        let b = s.start(None);
        assert_eq!(s.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(s.in_flight(), 0);
    }
}
