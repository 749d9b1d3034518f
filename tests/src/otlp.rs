//! A small OTLP/HTTP receiver: accepts `POST /v1/traces` in the JSON encoding, as a collector
//! does, and keeps every span it was sent.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A running receiver.
pub struct OtlpReceiver {
    /// Where it listens (`http://{addr}` is the endpoint).
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Export requests received.
    batches: Arc<Mutex<usize>>,
}

impl OtlpReceiver {
    /// Starts one on an ephemeral port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let batches = Arc::new(Mutex::new(0));
        let (kept, counted) = (spans.clone(), batches.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (kept, counted) = (kept.clone(), counted.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (kept, counted) = (kept.clone(), counted.clone());
                        async move { Ok::<_, Infallible>(receive(req, &kept, &counted).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        OtlpReceiver {
            addr,
            spans,
            batches,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<serde_json::Value> {
        self.spans.lock().expect("spans").clone()
    }

    /// Export requests received so far.
    pub fn batches(&self) -> usize {
        *self.batches.lock().expect("batches")
    }
}

async fn receive(
    req: Request<Incoming>,
    spans: &Mutex<Vec<serde_json::Value>>,
    batches: &Mutex<usize>,
) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode| {
        let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
        *r.status_mut() = code;
        r
    };
    let json = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if req.method() != http::Method::POST || req.uri().path() != "/v1/traces" || !json {
        return reply(StatusCode::NOT_FOUND);
    }
    let Ok(body) = req.into_body().collect().await else {
        return reply(StatusCode::BAD_REQUEST);
    };
    let Ok(export) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes()) else {
        return reply(StatusCode::BAD_REQUEST);
    };
    *batches.lock().expect("batches") += 1;
    let mut kept = spans.lock().expect("spans");
    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            kept.extend(scope["spans"].as_array().into_iter().flatten().cloned());
        }
    }
    reply(StatusCode::OK)
}
