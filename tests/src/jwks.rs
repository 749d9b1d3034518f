//! A real JWKS endpoint on 127.0.0.1: serves a key set that a test can replace, counts the
//! fetches, and can go down (refusing connections) and come back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running JWKS issuer.
pub struct JwksServer {
    /// Where it listens.
    pub addr: SocketAddr,
    document: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl JwksServer {
    /// Serves `{"keys": keys}` at `/jwks.json`.
    pub async fn start(keys: Vec<Value>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind jwks");
        let addr = listener.local_addr().expect("addr");
        let document = Arc::new(Mutex::new(serde_json::json!({ "keys": keys })));
        let fetches = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (doc, count, is_down) = (document.clone(), fetches.clone(), down.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if is_down.load(Ordering::SeqCst) {
                    // Down: the connection is dropped before any answer.
                    drop(stream);
                    continue;
                }
                let (doc, count, is_down) = (doc.clone(), count.clone(), is_down.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        count.fetch_add(1, Ordering::SeqCst);
                        let body = doc.lock().expect("doc").to_string();
                        // Down on a kept-alive connection: an error answer, no keys.
                        let down = is_down.load(Ordering::SeqCst);
                        async move {
                            let mut r = Response::new(Full::new(Bytes::from(body)));
                            if down {
                                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                *r.body_mut() = Full::new(Bytes::new());
                            } else if req.uri().path() != "/jwks.json" {
                                *r.status_mut() = StatusCode::NOT_FOUND;
                            }
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JwksServer {
            addr,
            document,
            fetches,
            down,
            task,
        }
    }

    /// The URL of the key set.
    pub fn uri(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// Serves `{"keys": keys}` from now on.
    pub fn replace(&self, keys: Vec<Value>) {
        *self.document.lock().expect("doc") = serde_json::json!({ "keys": keys });
    }

    /// Requests served so far.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Drops every new connection until [`JwksServer::come_back`].
    pub fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    /// Serves again.
    pub fn come_back(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
