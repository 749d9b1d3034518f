//! Keep-alive HTTP/1.1 connections to backends, pooled per worker thread.
//!
//! hyper-util's general-purpose client locks a shared pool, builds a pool key from the URI and
//! spawns a task per request to put the connection back; a proxy knows the backend's address
//! and sees the end of every response body, so it can do without all three. Each worker thread
//! keeps its own idle connections (like an nginx worker), so checking one out or in takes no
//! lock; a connection returns to the pool when the response body it carried has been read to
//! the end, and is dropped (closing it) when the body was abandoned half-way.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request could not be exchanged with a backend.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connection to the backend could not be opened.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The backend endpoint.
        addr: SocketAddr,
        /// What the socket reported.
        #[source]
        source: io::Error,
    },
    /// The backend did not accept the connection within the connect timeout.
    #[error("connecting to {addr} timed out")]
    ConnectTimeout {
        /// The backend endpoint.
        addr: SocketAddr,
    },
    /// The connection failed while the request or response head was on the wire.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl UpstreamError {
    /// True when no connection to the backend could be made at all.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. }
        )
    }
}

/// How upstream connections are opened and how long idle ones are kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Upstreams {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Idle connections kept per backend endpoint and worker thread; more are closed.
    pub max_idle_per_endpoint: usize,
}

struct Idle {
    sender: SendRequest<Incoming>,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    idle: HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>,
    last_sweep: Option<Instant>,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::default();
}

impl Upstreams {
    /// Sends `req` (origin-form URI, `Host` set) to `addr` on an idle connection or a new one.
    /// A request that a reused connection refused before writing it (the backend closed the
    /// connection while it sat idle) goes out again on another: nothing of it reached the
    /// backend, so this is safe for any method.
    pub async fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        loop {
            let (mut sender, reused) = match self.take_idle(addr) {
                Some(sender) => (sender, true),
                None => (self.connect(addr).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(response) => {
                    // After a protocol switch the connection belongs to the tunnel.
                    let reuse =
                        (response.status() != StatusCode::SWITCHING_PROTOCOLS).then_some(Reuse {
                            sender,
                            addr,
                            upstreams: *self,
                        });
                    return Ok(response.map(|inner| UpstreamBody {
                        inner,
                        done: false,
                        reuse,
                    }));
                }
                Err(mut refused) => match refused.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(UpstreamError::Http(refused.into_error())),
                },
            }
        }
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<SendRequest<Incoming>> {
        let now = Instant::now();
        POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            let list = pool.idle.get_mut(&addr)?;
            // Newest first: the most recently used connection is the least likely to have
            // been closed by the backend's own idle timeout.
            while let Some(idle) = list.pop() {
                if idle.sender.is_ready() && now.duration_since(idle.since) < self.idle_timeout {
                    return Some(idle.sender);
                }
            }
            None
        })
        .ok()
        .flatten()
    }

    fn put_idle(&self, addr: SocketAddr, sender: SendRequest<Incoming>) {
        let now = Instant::now();
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            let list = pool.idle.entry(addr).or_default();
            if list.len() < self.max_idle_per_endpoint {
                list.push(Idle { sender, since: now });
            }
            // Connections to endpoints no longer routed to are never checked out again; a
            // sweep now and then closes them instead of holding their sockets forever.
            let sweep_every = (self.idle_timeout / 4).max(Duration::from_millis(100));
            match pool.last_sweep {
                Some(at) if now.duration_since(at) < sweep_every => {}
                _ => {
                    pool.last_sweep = Some(now);
                    let idle_timeout = self.idle_timeout;
                    pool.idle.retain(|_, list| {
                        list.retain(|idle| {
                            !idle.sender.is_closed()
                                && now.duration_since(idle.since) < idle_timeout
                        });
                        !list.is_empty()
                    });
                }
            }
        });
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<Incoming>, UpstreamError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
                Err(_) => return Err(UpstreamError::ConnectTimeout { addr }),
            };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, backend = %addr, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// The connection a response came on, to be pooled again once its body has been read.
struct Reuse {
    sender: SendRequest<Incoming>,
    addr: SocketAddr,
    upstreams: Upstreams,
}

impl Reuse {
    fn check_in(self) {
        let Reuse {
            mut sender,
            addr,
            upstreams,
        } = self;
        if sender.is_ready() {
            upstreams.put_idle(addr, sender);
        } else if !sender.is_closed() {
            // The connection task has not yet seen the end of the exchange (or the request
            // body is still going up): wait for it off the request path, but not for ever.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            runtime.spawn(async move {
                if let Ok(Ok(())) =
                    tokio::time::timeout(upstreams.idle_timeout, sender.ready()).await
                {
                    upstreams.put_idle(addr, sender);
                }
            });
        }
    }
}

/// A backend's response body, streamed through; its connection goes back to the pool when the
/// body has been read to the end.
pub struct UpstreamBody {
    inner: Incoming,
    done: bool,
    reuse: Option<Reuse>,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(reuse) = self.reuse.take() {
            // A body dropped half-read leaves bytes on the connection: it cannot carry another
            // request, and dropping its sender closes it.
            if self.done || self.inner.is_end_stream() {
                reuse.check_in();
            }
        }
    }
}
