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
use crate::cache::CacheStore;
use crate::limit::SharedStore;
use crate::metrics::{Metrics, RuleStats};
use crate::pipeline::Step;
use crate::pipeline::{self, Client, Env};
use crate::server::ProxyConfig;
use crate::snapshot::Snapshot;
use crate::state::{Limits, State};
use crate::tls::Certificates;
use crate::trace::otlp::Exporter;
use crate::upstream::Upstreams;

/// The running data plane.
pub struct Gateway {
    live: ArcSwap<Snapshot>,
    upstreams: Upstreams,
    metrics: Metrics,
    unmatched: RuleStats,
    /// Requests waiting for their response head (`--max-requests-in-flight`).
    requests: crate::overload::Cap,
    state: State,
    access_log: AccessLog,
    cache: Arc<CacheStore>,
    /// The cache ids of the installed rules, to purge the entries of rules that went.
    cache_ids: std::sync::Mutex<Vec<u64>>,
    exporter: Result<Option<Exporter>, String>,
    /// The live snapshot's certificates, read by the HTTPS listener at each handshake.
    pub(crate) certificates: Arc<ArcSwap<Certificates>>,
    has_certificates: tokio::sync::watch::Sender<bool>,
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
        let cache = Arc::new(CacheStore::new(
            config.cache_size,
            shared.clone(),
            metrics.registry(),
        ));
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
                AccessLog::to(sink, dropped).sampled_at(config.access_log_sample)
            }
            None => AccessLog::off(),
        };
        let state = State::new(config.jwks, limits, metrics.registry());
        let exporter = match &config.otlp_endpoint {
            None => Ok(None),
            // The exporter's task runs on the gateway's runtime.
            Some(_) if tokio::runtime::Handle::try_current().is_err() => {
                Err("--otlp-endpoint needs the gateway to be made on a tokio runtime".to_owned())
            }
            Some(endpoint) => Exporter::start(endpoint, metrics.registry()).map(Some),
        };
        Arc::new(Gateway {
            live: ArcSwap::from_pointee(Snapshot::default()),
            upstreams,
            metrics,
            unmatched,
            requests: crate::overload::Cap::new(config.max_requests_in_flight),
            state,
            access_log,
            cache,
            cache_ids: std::sync::Mutex::default(),
            exporter,
            certificates: Arc::default(),
            has_certificates: tokio::sync::watch::Sender::new(false),
            ready: AtomicBool::new(false),
            config,
        })
    }

    /// Makes `snapshot` the one new requests use; requests in flight finish on the one they
    /// loaded. Long-lived state (and the metric handles of rules whose predecessors had them)
    /// are bound to its rules first (to those in chunks the replaced snapshot does not share:
    /// the others are bound already). The gateway
    /// counts as ready from the first install on.
    pub fn install(&self, snapshot: Snapshot) {
        // Rules in chunks shared with the snapshot being replaced are bound already.
        let previous = self.live.load();
        let fresh: Vec<&Arc<crate::snapshot::Rule>> =
            snapshot.rules.not_shared_with(&previous.rules).collect();
        self.metrics.bind(
            fresh.iter().copied(),
            snapshot.rules.len(),
            snapshot.generation,
        );
        self.state.bind(&snapshot, &fresh);
        self.bind_cache(&snapshot, &fresh);
        self.certificates.store(Arc::clone(&snapshot.tls));
        self.has_certificates
            .send_if_modified(|had| std::mem::replace(had, !snapshot.tls.is_empty()) != *had);
        self.live.store(Arc::new(snapshot));
        self.ready.store(true, Ordering::Release);
    }

    /// Binds the cache steps to the store; when a rule with a cache went (or its route
    /// changed, which gives it a new id), its entries are purged.
    fn bind_cache(&self, snapshot: &Snapshot, fresh: &[&Arc<crate::snapshot::Rule>]) {
        let caches = |r: &&Arc<crate::snapshot::Rule>| {
            r.policy.steps.iter().any(|s| matches!(s, Step::Cache(_)))
        };
        let mut installed = self.cache_ids.lock().unwrap_or_else(|e| e.into_inner());
        if installed.is_empty() && !fresh.iter().any(caches) {
            return;
        }
        let mut ids = Vec::new();
        for rule in snapshot.rules.iter() {
            for step in rule.policy.steps.iter() {
                if let Step::Cache(cache) = step {
                    cache.bind(&self.cache);
                    ids.push(cache.id);
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        if installed.iter().any(|id| ids.binary_search(id).is_err()) {
            self.cache.purge_except(ids.clone());
        }
        *installed = ids;
    }

    /// The response cache.
    pub fn cache(&self) -> &CacheStore {
        &self.cache
    }

    /// Why `--otlp-endpoint` cannot be used, if it cannot.
    pub fn exporter_error(&self) -> Option<&str> {
        self.exporter.as_ref().err().map(String::as_str)
    }

    /// Returns once an installed snapshot has a certificate.
    pub async fn wait_for_certificates(&self) {
        let mut rx = self.has_certificates.subscribe();
        let _ = rx.wait_for(|has| *has).await;
    }

    /// The snapshot being served.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    /// True when `Global` rate limits have a Redis to count in.
    pub fn has_shared_store(&self) -> bool {
        self.config.shared_store.is_some()
    }

    /// True once a first snapshot has been installed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The counts of requests answered without a rule.
    pub(crate) fn unmatched(&self) -> &RuleStats {
        &self.unmatched
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
            requests: &self.requests,
            metrics: &self.metrics,
            exporter: self.exporter.as_ref().ok().and_then(Option::as_ref),
            https_port: self.config.https_redirect_port,
        };
        pipeline::handle(&env, &live, req, client).await
    }
}
