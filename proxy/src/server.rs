//! The proxy listener: accepts connections (HTTP/1.1 and h2c), serves each request from the
//! snapshot it loaded, and drains in-flight requests on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::forward::{self, ProxyBody};
use crate::metrics::{Metrics, RuleStats};
use crate::snapshot::Snapshot;
use crate::upstream::Upstreams;

/// Limits and timeouts of the proxy listener and its upstream client.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Largest request head (request line plus headers) accepted, in bytes (at least 8192).
    pub max_header_bytes: usize,
    /// Most request headers accepted on HTTP/1.1.
    pub max_headers: usize,
    /// Time a client has to send a complete request head.
    pub header_read_timeout: Duration,
    /// Time to open a connection to a backend.
    pub connect_timeout: Duration,
    /// Idle upstream connections are closed after this.
    pub pool_idle_timeout: Duration,
    /// Idle upstream connections kept per backend endpoint and worker thread.
    pub pool_max_idle_per_endpoint: usize,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_endpoint: 256,
            drain_timeout: Duration::from_secs(25),
        }
    }
}

/// A snapshot with the metric handles bound to its rules.
pub(crate) struct Live {
    pub snapshot: Arc<Snapshot>,
    pub stats: Box<[Arc<RuleStats>]>,
}

/// The running data plane: the current snapshot, the upstream connection pool and the metrics.
/// Pools and metrics outlive snapshots; a swap replaces only the snapshot.
pub struct Gateway {
    live: ArcSwap<Live>,
    pub(crate) upstreams: Upstreams,
    metrics: Metrics,
    unmatched: RuleStats,
    ready: AtomicBool,
    config: ProxyConfig,
}

impl Gateway {
    /// A gateway serving an empty snapshot (every request 404) until [`Gateway::install`].
    pub fn new(config: ProxyConfig) -> Arc<Self> {
        let upstreams = Upstreams {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.pool_idle_timeout,
            max_idle_per_endpoint: config.pool_max_idle_per_endpoint,
        };
        let metrics = Metrics::new();
        let unmatched = metrics.unmatched();
        Arc::new(Gateway {
            live: ArcSwap::from_pointee(Live {
                snapshot: Arc::new(Snapshot::default()),
                stats: Box::default(),
            }),
            upstreams,
            metrics,
            unmatched,
            ready: AtomicBool::new(false),
            config,
        })
    }

    /// Makes `snapshot` the one new requests use; requests in flight finish on the one they
    /// loaded. The gateway counts as ready from the first install on.
    pub fn install(&self, snapshot: Snapshot) {
        let stats = self.metrics.bind(&snapshot);
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

    /// True once a first snapshot has been installed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves one request: loads the snapshot once, forwards, records metrics and the access log.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
        client_ip: &HeaderValue,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let live = self.live.load_full();
        let request_id = forward::request_id(req.headers());
        let method = req.method().clone();
        let uri = req.uri().clone();
        let version = req.version();
        let outcome = forward::forward(self, &live, req, client_ip, &request_id, started).await;
        let (mut response, error_kind) = match outcome.result {
            Ok(r) => (r.map(ProxyBody::Left), None),
            Err(e) => {
                if let crate::error::ProxyError::Backend(source) = &e {
                    tracing::debug!(error = ?source, "backend request failed");
                }
                (e.to_response(&request_id), Some(e.kind()))
            }
        };
        response
            .headers_mut()
            .insert(forward::request_id_header().clone(), request_id.clone());
        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        let (route, rule) = match outcome.rule {
            Some(id) => {
                let rule = live.snapshot.rule(id);
                if let Some(stats) = live.stats.get(id as usize) {
                    stats.observe(status, elapsed.as_secs_f64());
                }
                (&*rule.route, &*rule.name)
            }
            None => {
                self.unmatched.observe(status, elapsed.as_secs_f64());
                ("", "")
            }
        };
        tracing::info!(
            target: "sluice::access",
            request_id = request_id.to_str().unwrap_or_default(),
            client = %remote.ip(),
            method = %method,
            path = uri.path(),
            version = ?version,
            status,
            route,
            rule,
            upstream = outcome.upstream.map(tracing::field::display),
            error = error_kind,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
        );
        response
    }
}

fn server_builder(config: &ProxyConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192))
        .max_headers(config.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        // Pings find peers that vanished without a FIN; otherwise an HTTP/2 connection with no
        // streams would be held open for good.
        .keep_alive_interval(Some(config.header_read_timeout))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

/// Accepts connections on `listener` until `shutdown` completes, then stops accepting and waits
/// up to the drain timeout for in-flight requests and connections to finish.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(server_builder(&gateway.config));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let gw = gateway.clone();
        let client_ip = forward::client_ip_header(&remote);
        let service = service_fn(move |req: Request<Incoming>| {
            let gw = gw.clone();
            let client_ip = client_ip.clone();
            async move { Ok::<_, Infallible>(gw.handle(req, remote, &client_ip).await) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let first_byte_timeout = gateway.config.header_read_timeout;
        tokio::spawn(async move {
            // hyper's header timeout starts once the protocol is known, and finding that out
            // waits for the client's first bytes: bound that wait, or idle sockets pile up.
            let mut probe = [0u8; 1];
            match tokio::time::timeout(first_byte_timeout, stream.peek(&mut probe)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => {
                    tracing::debug!(client = %remote, "closed before a request arrived");
                    return;
                }
            }
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, client = %remote, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("drained"),
        () = tokio::time::sleep(gateway.config.drain_timeout) => {
            tracing::warn!("drain timeout reached; closing remaining connections");
        }
    }
}

/// A `HeaderValue` for tests and tools that need a fixed request id.
pub fn fixed_request_id(id: &'static str) -> HeaderValue {
    HeaderValue::from_static(id)
}
