//! Support for Sluice's cross-crate integration tests: real hyper backends on 127.0.0.1, an
//! in-process gateway fed by a real manifest directory, a fake Kubernetes API server speaking
//! the real protocol for cluster mode, and small client helpers.

#![forbid(unsafe_code)]

pub mod backend;
pub mod client;
pub mod cluster;
pub mod fake_api;
pub mod harness;
pub mod jwks;
pub mod manifests;
pub mod otlp;
pub mod process;
pub mod redis;
pub mod tls;
pub mod tokens;

use std::future::Future;
use std::time::Duration;

/// Polls `check` until it returns true or `timeout` passes; returns whether it became true.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
