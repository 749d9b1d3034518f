//! Sluice's data plane.
//!
//! The controller compiles resources into an immutable [`Snapshot`]; the [`Gateway`] serves every
//! request from the snapshot it loaded at the start of that request, and a new snapshot is
//! swapped in atomically with [`Gateway::install`]. Nothing here knows about Kubernetes: the
//! snapshot is plain data, so the proxy can be tested and benchmarked on its own.

#![forbid(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod error;
pub mod forward;
pub mod metrics;
pub mod path;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod upstream;

pub use error::ProxyError;
pub use server::{Gateway, ProxyConfig, serve};
pub use snapshot::Snapshot;
