//! A coarse monotonic clock in milliseconds, cheap to store in an atomic: idle connections,
//! ejections and retry budgets keep their times as `u64`s on it.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the first call, never 0 (callers use 0 for "not set").
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let ms = EPOCH.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX).saturating_add(1)
}
