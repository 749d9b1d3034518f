//! Sluice's data plane.
//!
//! The controller compiles resources into an immutable [`Snapshot`]; the [`Gateway`] serves every
//! request from the snapshot it loaded at the start of that request, and a new snapshot is
//! swapped in atomically with [`Gateway::install`]. Nothing here knows about Kubernetes: the
//! snapshot is plain data, so the proxy can be tested and benchmarked on its own.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod balance;
pub mod body;
pub mod cache;
pub mod circuit;
pub mod client_body;
mod clock;
pub mod cors;
pub mod error;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod headers;
pub mod health;
pub mod host;
pub mod limit;
pub mod metrics;
pub mod overload;
pub mod path;
pub mod pipeline;
pub mod retry;
pub mod router;
pub mod security_headers;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod tls;
pub mod trace;
pub mod upstream;

pub use error::ProxyError;
pub use gateway::Gateway;
pub use server::{ProxyConfig, serve};
pub use snapshot::Snapshot;

/// Maps keyed by configuration, never by request data: a fast hash is safe.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
