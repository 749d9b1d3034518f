//! Retries (`retry`): which failures are retried, when, how often, and the budget that keeps
//! retries from multiplying an outage.
//!
//! A failure that reached no backend (no connection, or a pooled connection that closed before
//! the request was written) is retried for every method: the backend saw nothing. A configured
//! status code or a per-try timeout is retried only for idempotent methods (RFC 9110 section
//! 9.2.2) unless `nonIdempotent` says otherwise, and only when the request body can be sent
//! again (none, or small enough to have been buffered). Every retry goes to an endpoint not
//! tried yet when one exists, after a jittered exponential backoff, and only while the rule's
//! budget allows: retries may add at most a fifth to the requests of the last ten seconds, plus
//! a floor of ten, so a failing backend sees at most about 1.2 times its normal load.

pub(crate) mod body;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::Method;
use prometheus::IntCounter;
use serde::Serialize;

pub(crate) use body::Replay;
pub use body::RequestBody;

use crate::clock::now_ms;

/// Retries add at most this share of the window's requests...
pub const BUDGET_RATIO: f64 = 0.2;
/// ...plus this many per window, so that a quiet rule can still retry.
pub const BUDGET_FLOOR: u32 = 10;
/// The budget's window, in one-second buckets.
const WINDOW_SECS: usize = 10;

/// A rule's retry policy.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Base of the exponential backoff.
    pub backoff: Duration,
    /// Backend statuses that are retried.
    pub codes: Box<[u16]>,
    /// Time of one attempt to the response headers (else the rule's `backendRequest`).
    pub per_try_timeout: Option<Duration>,
    /// Retry statuses and timeouts of non-idempotent methods too.
    pub non_idempotent: bool,
    #[serde(skip)]
    budget: OnceLock<Arc<Budget>>,
}

impl RetryPolicy {
    /// A policy; its budget is bound when the rule is installed.
    pub fn new(
        attempts: u32,
        backoff: Duration,
        codes: Box<[u16]>,
        per_try_timeout: Option<Duration>,
        non_idempotent: bool,
    ) -> Self {
        RetryPolicy {
            attempts,
            backoff,
            codes,
            per_try_timeout,
            non_idempotent,
            budget: OnceLock::new(),
        }
    }

    /// True when a response with `status` is retried (for a method that may be).
    pub fn retries_status(&self, status: u16) -> bool {
        self.codes.contains(&status)
    }

    /// True when a request with `method` may be retried after it reached a backend.
    pub fn may_resend(&self, method: &Method) -> bool {
        self.non_idempotent || is_idempotent(method)
    }

    /// The wait before retry number `retry` (from 1): `backoff` doubled per retry, at most ten
    /// times `backoff`, then jittered to between half and all of it so that clients retrying
    /// together spread out.
    pub fn delay(&self, retry: u32) -> Duration {
        let base = self.backoff;
        if base.is_zero() {
            return base;
        }
        let ceiling = base
            .saturating_mul(1 << retry.saturating_sub(1).min(16))
            .min(base.saturating_mul(10));
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// The rule's budget (made on first use when the rule was never installed).
    pub(crate) fn budget(&self) -> &Budget {
        self.budget.get_or_init(|| Arc::new(Budget::new(None)))
    }

    /// Binds the budget kept for this rule across snapshots.
    pub(crate) fn bind(&self, make: impl FnOnce() -> Arc<Budget>) {
        let _ = self.budget.get_or_init(make);
    }
}

/// RFC 9110 section 9.2.2.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Counters of a rule's retries.
#[derive(Debug)]
pub(crate) struct BudgetMetrics {
    pub retries: IntCounter,
    pub exhausted: IntCounter,
}

/// Requests and retries of the last ten seconds, in one-second buckets.
#[derive(Debug)]
pub struct Budget {
    buckets: [Bucket; WINDOW_SECS],
    metrics: Option<BudgetMetrics>,
}

#[derive(Debug, Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

impl Budget {
    pub(crate) fn new(metrics: Option<BudgetMetrics>) -> Self {
        Budget {
            buckets: Default::default(),
            metrics,
        }
    }

    fn bucket(&self, second: u64) -> &Bucket {
        let b = &self.buckets[(second % WINDOW_SECS as u64) as usize];
        let seen = b.second.load(Ordering::Relaxed);
        if seen != second
            && b.second
                .compare_exchange(seen, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // A bucket is reused ten seconds on; counts racing this reset are lost, which
            // errs by a few either way.
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    /// Counts one request (its first attempt).
    pub(crate) fn record_request(&self) {
        let second = now_ms() / 1000;
        self.bucket(second).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, or says there is none left.
    pub(crate) fn try_retry(&self) -> bool {
        let second = now_ms() / 1000;
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            let s = b.second.load(Ordering::Relaxed);
            if s + (WINDOW_SECS as u64) > second && s <= second {
                requests += u64::from(b.requests.load(Ordering::Relaxed));
                retries += u64::from(b.retries.load(Ordering::Relaxed));
            }
        }
        let allowed = (requests as f64 * BUDGET_RATIO) as u64 + u64::from(BUDGET_FLOOR);
        if retries >= allowed {
            if let Some(m) = &self.metrics {
                m.exhausted.inc();
            }
            return false;
        }
        self.bucket(second).retries.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.retries.inc();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff_ms: u64) -> RetryPolicy {
        RetryPolicy::new(
            2,
            Duration::from_millis(backoff_ms),
            Box::new([503]),
            None,
            false,
        )
    }

    #[test]
    fn only_idempotent_methods_are_resent_unless_asked() {
        let p = policy(25);
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(p.may_resend(&m), "{m}");
        }
        assert!(!p.may_resend(&Method::POST));
        assert!(!p.may_resend(&Method::PATCH));
        let mut p = policy(25);
        p.non_idempotent = true;
        assert!(p.may_resend(&Method::POST));
    }

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        fastrand::seed(7);
        let p = policy(20);
        for retry in 1..=8u32 {
            let ceiling = Duration::from_millis(20 * (1 << (retry - 1)).min(10));
            for _ in 0..50 {
                let d = p.delay(retry);
                assert!(d >= ceiling / 2 && d <= ceiling, "retry {retry}: {d:?}");
            }
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| p.delay(1)).collect();
        assert!(spread.len() > 10, "jittered, not fixed");
        assert_eq!(policy(0).delay(3), Duration::ZERO);
    }

    #[test]
    fn the_budget_allows_a_fifth_of_requests_plus_a_floor() {
        let b = Budget::new(None);
        for _ in 0..100 {
            b.record_request();
        }
        let granted = (0..1000).filter(|_| b.try_retry()).count();
        assert_eq!(granted, 20 + BUDGET_FLOOR as usize);
        let quiet = Budget::new(None);
        assert_eq!(
            (0..100).filter(|_| quiet.try_retry()).count(),
            BUDGET_FLOOR as usize
        );
    }
}
