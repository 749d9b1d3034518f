//! The running data plane: the current snapshot and everything that outlives snapshots (the
//! upstream pools, metrics, long-lived state, the access log). A swap replaces only the
//! snapshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use prometheus::IntCounter;

use crate::access_log::{AccessLog, Sink};
use crate::body::ProxyBody;
use crate::limit::SharedStore;
use crate::metrics::{Metrics, RuleStats};
use crate::pipeline::{self, Client, Env, Live};
use crate::server::ProxyConfig;
use crate::snapshot::Snapshot;
use crate::state::{Limits, State};
use crate::upstream::Upstreams;

/// The running data plane.
pub struct Gateway {
    live: ArcSwap<Live>,
    upstreams: Upstreams,
    metrics: Metrics,
    unmatched: RuleStats,
    state: State,
    access_log: AccessLog,
    ready: AtomicBool,
    pub(crate) config: ProxyConfig,
}

impl Gateway {
    /// A gateway serving an empty snapshot (every request 404) until [`Gateway::install`]; its
    /// access log (when `config.access_log`) goes to stdout.
    pub fn new(config: ProxyConfig) -> Arc<Self> {
        let sink: Option<Sink> = config
            .access_log
            .then(|| Box::new(std::io::stdout()) as Sink);
        Self::with_access_log(config, sink)
    }

    /// Like [`Gateway::new`] with the access log written to `sink` (`None`: no access log).
    pub fn with_access_log(config: ProxyConfig, sink: Option<Sink>) -> Arc<Self> {
        let upstreams = Upstreams {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.pool_idle_timeout,
            max_idle_per_endpoint: config.pool_max_idle_per_endpoint,
        };
        let metrics = Metrics::new();
        let unmatched = metrics.unmatched();
        let shared = config.shared_store.as_ref().and_then(|store| {
            match SharedStore::new(store, metrics.registry()) {
                Ok(store) => Some(Arc::new(store)),
                Err(e) => {
                    // The command line checks the URL first; this is a library caller's mistake.
                    tracing::error!(error = %e, "no shared store: Global rate limits follow their failureMode");
                    None
                }
            }
        });
        let limits = Limits::new(shared, config.limit_keys, metrics.registry());
        let access_log = match sink {
            Some(sink) => {
                let dropped = IntCounter::new(
                    "sluice_access_log_dropped_total",
                    "Access log lines dropped because the output could not keep up",
                )
                .expect("valid metric definition");
                if let Err(e) = metrics.registry().register(Box::new(dropped.clone())) {
                    tracing::warn!(error = %e, "access log metric not registered");
                }
                AccessLog::to(sink, dropped)
            }
            None => AccessLog::off(),
        };
        let state = State::new(config.jwks, limits, metrics.registry());
        Arc::new(Gateway {
            live: ArcSwap::from_pointee(Live {
                snapshot: Arc::new(Snapshot::default()),
                stats: Box::default(),
            }),
            upstreams,
            metrics,
            unmatched,
            state,
            access_log,
            ready: AtomicBool::new(false),
            config,
        })
    }

    /// Makes `snapshot` the one new requests use; requests in flight finish on the one they
    /// loaded. Metric handles and long-lived state are bound to its rules first. The gateway
    /// counts as ready from the first install on.
    pub fn install(&self, snapshot: Snapshot) {
        let stats = self.metrics.bind(&snapshot);
        self.state.bind(&snapshot);
        self.live.store(Arc::new(Live {
            snapshot: Arc::new(snapshot),
            stats,
        }));
        self.ready.store(true, Ordering::Release);
    }

    /// The snapshot being served.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load().snapshot.clone()
    }

    /// True when `Global` rate limits have a Redis to count in.
    pub fn has_shared_store(&self) -> bool {
        self.config.shared_store.is_some()
    }

    /// True once a first snapshot has been installed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Writes out the access log's buffered lines and stops it (at shutdown).
    pub fn close_access_log(&self) {
        self.access_log.close();
    }

    /// Serves one request from the snapshot current when it arrived.
    pub async fn handle(&self, req: Request<Incoming>, client: &Client) -> Response<ProxyBody> {
        let live = self.live.load_full();
        let env = Env {
            upstreams: &self.upstreams,
            retry_buffer: self.config.retry_buffer,
            access_log: &self.access_log,
            unmatched: &self.unmatched,
        };
        pipeline::handle(&env, &live, req, client).await
    }
}
