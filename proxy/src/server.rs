//! The proxy listener: accepts connections (HTTP/1.1 and h2c), hands each request to the
//! [`Gateway`], and drains in-flight requests on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http::header::HeaderValue;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::gateway::Gateway;
use crate::limit::{SharedStoreConfig, TrustedProxies};
use crate::overload::Cap;
use crate::pipeline::Client;
use crate::state::JwksTiming;

mod parse_errors;
use parse_errors::Answering;

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
    /// Write the JSON access log (to stdout).
    pub access_log: bool,
    /// How remote JWKS key sets are fetched and refreshed.
    pub jwks: JwksTiming,
    /// Peers whose `X-Forwarded-For` names the client (`--trusted-proxies`).
    pub trusted_proxies: Arc<TrustedProxies>,
    /// The Redis of `Global` rate limits (`--redis`); without it they follow their
    /// `failureMode`.
    pub shared_store: Option<SharedStoreConfig>,
    /// Most client keys one local rate limit tracks (`--limit-keys`).
    pub limit_keys: usize,
    /// Largest request body buffered so that a retry can send it again (`--retry-buffer`);
    /// a larger one is streamed, and not retried once it reached a backend.
    pub retry_buffer: u64,
    /// Bytes the response cache may hold, across all rules (`--cache-size`).
    pub cache_size: u64,
    /// The OTLP/HTTP collector spans are sent to (`--otlp-endpoint`); none: no export.
    pub otlp_endpoint: Option<String>,
    /// Share of requests below 500 the access log records (`--access-log-sample`).
    pub access_log_sample: f64,
    /// The HTTPS port `httpsRedirect` sends clients to (`--https-redirect-port`).
    pub https_redirect_port: u16,
    /// Most connections one listener holds open (`--max-connections`; 0: no cap); past it a
    /// new connection gets a 503 and is closed.
    pub max_connections: usize,
    /// Most requests waiting for their response head at once, over all listeners
    /// (`--max-requests-in-flight`; 0: no cap); past it a request gets a 503 at once.
    pub max_requests_in_flight: usize,
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
            access_log: true,
            jwks: JwksTiming::default(),
            trusted_proxies: Arc::default(),
            shared_store: None,
            limit_keys: 100_000,
            retry_buffer: 64 * 1024,
            cache_size: 64 * 1024 * 1024,
            otlp_endpoint: None,
            access_log_sample: 1.0,
            https_redirect_port: 443,
            max_connections: 20_000,
            max_requests_in_flight: 10_000,
        }
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
/// up to the drain timeout for in-flight requests and connections to finish; the access log
/// is written out last.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    accept_loop(&gateway, listener, shutdown, None).await;
    gateway.close_access_log();
}

/// Like [`serve`] for HTTPS: each connection's certificate is chosen by SNI among the live
/// snapshot's, TLS 1.2 or 1.3, ALPN `h2` or `http/1.1`. The access log stays open (the plain
/// listener closes it).
pub async fn serve_tls(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(crate::tls::server_config(Arc::clone(&gateway.certificates)));
    accept_loop(&gateway, listener, shutdown, Some(acceptor)).await;
}

async fn accept_loop(
    gateway: &Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    tls: Option<TlsAcceptor>,
) {
    let builder = Arc::new(server_builder(&gateway.config));
    let graceful = GracefulShutdown::new();
    let connections = Cap::new(gateway.config.max_connections);
    // Refusals are short, but a flood must not turn them into a pile of tasks either.
    let refusing = Cap::new(MAX_REFUSING);
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
        let Some(open) = connections.admit() else {
            gateway.metrics().refused("connections");
            match refusing.admit() {
                Some(slot) if tls.is_none() => {
                    tokio::spawn(refuse(stream, slot));
                }
                // Over TLS there is no answering before a handshake: the client is closed.
                _ => drop(stream),
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _open = open;
            let first_byte_timeout = gateway.config.header_read_timeout;
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
            let mut client = Client::behind(remote, &gateway.config.trusted_proxies);
            match tls {
                None => connection(gateway, builder, watcher, client, stream).await,
                Some(acceptor) => {
                    // The handshake shares the first-byte bound: a client that stalls in it
                    // holds a socket as long as one that never sends.
                    let stream = match tokio::time::timeout(
                        first_byte_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(client = %remote, "TLS handshake timed out");
                            return;
                        }
                    };
                    client.tls = Some(match stream.get_ref().1.protocol_version() {
                        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                        _ => "TLSv1.2",
                    });
                    connection(gateway, builder, watcher, client, stream).await;
                }
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

/// Refusals of connections past the cap being written at once; more are closed unanswered.
const MAX_REFUSING: usize = 512;

/// Answers a connection past the listener's cap with a 503 and closes it. What the client sent
/// is read (for at most a second) before the close, so that the close does not reset the
/// connection under the answer.
async fn refuse(mut stream: tokio::net::TcpStream, _slot: crate::overload::Slot) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = parse_errors::raw_answer(
        503,
        "Service Unavailable",
        "the gateway is at its connection limit",
        "retry-after: 1\r\n",
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Serves the requests of one connection (plain or TLS).
async fn connection<IO>(
    gateway: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    client: Client,
    io: IO,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let remote = client.addr;
    let io = TokioIo::new(Answering::new(io, Arc::clone(&gateway)));
    let service = service_fn(move |req: Request<Incoming>| {
        let gw = gateway.clone();
        let client = client.clone();
        async move { Ok::<_, Infallible>(gw.handle(req, &client).await) }
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, client = %remote, "connection ended with an error");
    }
}

/// A `HeaderValue` for tests and tools that need a fixed request id.
pub fn fixed_request_id(id: &'static str) -> HeaderValue {
    HeaderValue::from_static(id)
}
