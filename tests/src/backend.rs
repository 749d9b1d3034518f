//! A real HTTP backend: hyper on 127.0.0.1, answering what it received as JSON, plus slow,
//! streaming, body-echo and WebSocket-echo endpoints, and one that switches protocols unasked.
//! It can be made to fail (a status for every request, or for the next few), to answer slowly,
//! to hang, to fail its `/health` path, and to die with its connections (as a killed process's
//! sockets close).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

type Error = Box<dyn std::error::Error + Send + Sync>;
/// Any response body the backend sends.
pub type AnyBody = BoxBody<Bytes, Error>;

/// A running backend.
pub struct TestBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its name, returned in every JSON answer and in `x-backend`.
    pub name: String,
    hits: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    modes: Arc<Modes>,
    killed: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// How the backend misbehaves; every field 0/false means it behaves.
#[derive(Default)]
struct Modes {
    /// Not a mode: bytes `/stream` bodies have handed to the connection so far.
    streamed: Arc<AtomicU64>,
    /// Not a mode: the path and query of every request received, in order.
    paths: std::sync::Mutex<Vec<String>>,
    /// Status every request (but `/health`) gets.
    fail: AtomicU16,
    /// Requests still to fail with `fail_next_code`.
    fail_next: AtomicU32,
    fail_next_code: AtomicU16,
    /// Delay before every answer, in ms.
    delay_ms: AtomicU64,
    /// Never answer anything (`/health` included).
    hang: AtomicBool,
    /// Status of `/health` (0: 200).
    health: AtomicU16,
}

impl TestBackend {
    /// Starts a backend on an ephemeral port.
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Self::serve(name, listener)
    }

    /// Starts a backend on `addr` (a port a killed backend used, to bring it back).
    pub async fn start_at(name: &str, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind backend again");
        Self::serve(name, listener)
    }

    fn serve(name: &str, listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("backend addr");
        let modes = Arc::new(Modes::default());
        let serving_modes = modes.clone();
        let (killed, killed_rx) = tokio::sync::watch::channel(false);
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let name_owned = name.to_owned();
        let counter = hits.clone();
        let accepted = connections.clone();
        let open = Arc::new(AtomicUsize::new(0));
        let open_now = open.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                open_now.fetch_add(1, Ordering::Relaxed);
                let open_now = open_now.clone();
                let name = name_owned.clone();
                let counter = counter.clone();
                let modes = serving_modes.clone();
                let mut killed = killed_rx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        let name = name.clone();
                        let modes = modes.clone();
                        if let Ok(mut paths) = modes.paths.lock() {
                            paths.push(
                                req.uri()
                                    .path_and_query()
                                    .map_or_else(String::new, |p| p.to_string()),
                            );
                        }
                        async move { Ok::<_, Infallible>(misbehave(&name, &modes, req).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let serving =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    // A kill drops the connection mid-whatever, as a dead process's socket closes.
                    tokio::select! {
                        _ = serving => {}
                        _ = killed.wait_for(|k| *k) => {}
                    }
                    open_now.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        TestBackend {
            addr,
            name: name.to_owned(),
            hits,
            connections,
            open,
            modes,
            killed,
            task,
        }
    }

    /// Answers every request (but `/health`) with `status`; 0 stops.
    pub fn fail_with(&self, status: u16) {
        self.modes.fail.store(status, Ordering::Relaxed);
    }

    /// Answers the next `n` requests with `status`.
    pub fn fail_next(&self, n: u32, status: u16) {
        self.modes.fail_next_code.store(status, Ordering::Relaxed);
        self.modes.fail_next.store(n, Ordering::Relaxed);
    }

    /// Waits `ms` before every answer.
    pub fn delay(&self, ms: u64) {
        self.modes.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Stops answering anything (`/health` included) while `on`.
    pub fn hang(&self, on: bool) {
        self.modes.hang.store(on, Ordering::Relaxed);
    }

    /// Answers `/health` with `status`.
    pub fn health(&self, status: u16) {
        self.modes.health.store(status, Ordering::Relaxed);
    }

    /// Dies: stops accepting and closes every open connection at once, requests in flight
    /// included.
    pub fn kill(&self) {
        self.task.abort();
        let _ = self.killed.send(true);
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    /// The path and query of every request received so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.modes
            .paths
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// Bytes of `/stream` bodies handed to hyper so far: how far a download got ahead of the
    /// client reading it.
    pub fn streamed(&self) -> u64 {
        self.modes.streamed.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Stops accepting connections (existing ones are dropped with the task's children only
    /// when they finish).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(body: impl Into<Bytes>) -> AnyBody {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

fn query_number(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

fn status(code: u16) -> Response<AnyBody> {
    let mut r = Response::new(full(format!("status {code}")));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

async fn misbehave(name: &str, modes: &Modes, req: Request<Incoming>) -> Response<AnyBody> {
    if modes.hang.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
    let delay = modes.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut response = if req.uri().path() == "/health" {
        match modes.health.load(Ordering::Relaxed) {
            0 => status(200),
            code => status(code),
        }
    } else if modes
        .fail_next
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
    {
        status(modes.fail_next_code.load(Ordering::Relaxed))
    } else {
        match modes.fail.load(Ordering::Relaxed) {
            0 => return handle(name, modes, req).await,
            code => status(code),
        }
    };
    response.headers_mut().insert(
        "x-backend",
        http::HeaderValue::from_str(name).expect("backend name is a header value"),
    );
    response
}

async fn handle(name: &str, modes: &Modes, mut req: Request<Incoming>) -> Response<AnyBody> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/ws" => return websocket(&mut req),
        "/switch" => {
            // A misbehaving backend: switches protocols whatever the client asked for.
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("connection", http::HeaderValue::from_static("upgrade"));
            r.headers_mut()
                .insert("upgrade", http::HeaderValue::from_static("h2c"));
            return r;
        }
        "/echo-body" => {
            // Streams the request body back as it arrives.
            let body = req.into_body().map_err(Error::from).boxed();
            return Response::new(body);
        }
        "/upload" => {
            // Reads the whole request body before answering, as most handlers of uploads do.
            return match req.into_body().collect().await {
                Ok(body) => Response::new(full(format!("{}", body.to_bytes().len()))),
                Err(_) => {
                    let mut r = Response::new(full("body broke"));
                    *r.status_mut() = http::StatusCode::BAD_REQUEST;
                    r
                }
            };
        }
        "/stream" => {
            let bytes = query_number(&req, "bytes").unwrap_or(0);
            let streamed = Arc::clone(&modes.streamed);
            return Response::new(
                Repeat {
                    remaining: bytes,
                    streamed,
                }
                .boxed(),
            );
        }
        "/slow" => {
            let ms = query_number(&req, "ms").unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        _ => {}
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let body = serde_json::json!({
        "backend": name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    let mut response = Response::new(full(body.to_string()));
    response.headers_mut().insert(
        "x-backend",
        http::HeaderValue::from_str(name).expect("backend name is a header value"),
    );
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    // `?set=name:value` (repeatable, %-encoded) adds response headers: a test says what the
    // backend answers with (Cache-Control, ETag, Set-Cookie, ...).
    for (k, v) in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        if k != "set" {
            continue;
        }
        let decoded = percent_decode(v);
        if let Some((n, v)) = decoded.split_once(':')
            && let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(n.as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            )
        {
            response.headers_mut().append(n, v);
        }
    }
    response
}

/// `%XX` decoding of a query value (`+` is a plus: tests write `%20` for spaces).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn websocket(req: &mut Request<Incoming>) -> Response<AnyBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(full("not a websocket request"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", http::HeaderValue::from_static("upgrade"));
    h.insert("upgrade", http::HeaderValue::from_static("websocket"));
    h.insert(
        "sec-websocket-accept",
        http::HeaderValue::from_str(&derive_accept_key(key.as_bytes())).expect("accept key"),
    );
    r
}

/// A body of `remaining` bytes produced 64 KiB at a time, never held whole in memory.
struct Repeat {
    remaining: u64,
    streamed: Arc<AtomicU64>,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK.len() as u64);
        self.remaining -= n;
        self.streamed.fetch_add(n, Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &CHUNK[..n as usize],
        )))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}
