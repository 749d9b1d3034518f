//! Sluice's control plane and the `sluice` binary.
//!
//! ```text
//!  sources (kube watchers | manifest directory)
//!         │  typed objects: GatewayRoute, RateLimitPolicy, EndpointSlice, Service, Secret
//!         ▼
//!  reconcile: debounce, then compile(inputs, previous snapshot) ──► Snapshot + statuses
//!         │  (compile is pure, no I/O)     Gateway::install (one ArcSwap store)
//!         ▼
//!  proxy: each request loads the current snapshot once, matches, balances, forwards
//! ```

#![forbid(unsafe_code)]

pub mod cli;
pub mod compile;
pub mod compile_thread;
pub mod reconcile;
pub mod resources;
pub mod sources;
