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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::clock::now_ms;
use crate::health::InFlight;
use crate::retry::RequestBody;

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

/// A failed exchange, with the request when none of it was written (so that it can go to
/// another endpoint whatever its method).
#[derive(Debug)]
pub struct Failed {
    /// What went wrong.
    pub error: UpstreamError,
    /// The request, when nothing of it reached the backend.
    pub unsent: Option<Request<RequestBody>>,
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

/// A connection to a backend: its sender, and its idle clock, shared with the task that drives
/// the connection so that the task closes it after the idle timeout even if no request ever
/// comes to sweep the pool.
struct Conn {
    sender: SendRequest<RequestBody>,
    idle_since: IdleSince,
    /// Ends the task driving the connection.
    task: tokio::task::AbortHandle,
}

/// Closes a connection whose exchange was given up before the response came (a timeout
/// dropped it): its task would otherwise go on pushing the request body at a backend that
/// does not read it, and hold the client's body with it.
struct CloseUnlessAnswered(Option<tokio::task::AbortHandle>);

impl Drop for CloseUnlessAnswered {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Since when a connection sits idle in a pool, in ms on [`now_ms`]'s clock (never 0); 0 while
/// in use.
#[derive(Clone, Default)]
struct IdleSince(Arc<AtomicU64>);

impl IdleSince {
    fn mark_idle(&self, now: u64) {
        self.0.store(now, Ordering::Relaxed);
    }

    fn mark_in_use(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// How long the connection has been idle, or `None` while it is in use.
    fn idle_for(&self, now: u64) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(now.saturating_sub(since))),
        }
    }
}

#[derive(Default)]
struct Pool {
    idle: HashMap<SocketAddr, Vec<Conn>, foldhash::fast::RandomState>,
    last_sweep: u64,
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
        mut req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, Failed> {
        loop {
            let (mut conn, reused) = match self.take_idle(addr) {
                Some(conn) => (conn, true),
                None => match self.connect(addr).await {
                    Ok(conn) => (conn, false),
                    Err(error) => {
                        return Err(Failed {
                            error,
                            unsent: Some(req),
                        });
                    }
                },
            };
            let mut unanswered = CloseUnlessAnswered(Some(conn.task.clone()));
            let sent = conn.sender.try_send_request(req).await;
            unanswered.0 = None;
            match sent {
                Ok(response) => {
                    // After a protocol switch the connection belongs to the tunnel.
                    let reuse =
                        (response.status() != StatusCode::SWITCHING_PROTOCOLS).then_some(Reuse {
                            conn,
                            addr,
                            upstreams: *self,
                        });
                    return Ok(response.map(|inner| UpstreamBody {
                        inner,
                        done: false,
                        reuse,
                        _in_flight: None,
                        fill: None,
                    }));
                }
                Err(mut refused) => match refused.take_message() {
                    Some(unsent) if reused => req = unsent,
                    unsent => {
                        return Err(Failed {
                            error: UpstreamError::Http(refused.into_error()),
                            unsent,
                        });
                    }
                },
            }
        }
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<Conn> {
        POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            let list = pool.idle.get_mut(&addr)?;
            // Newest first: the most recently used connection is the least likely to have
            // been closed by the backend's own idle timeout. Expiry is the connection task's
            // business (it closes the connection, which makes it not ready here), so no clock
            // is read on this path.
            while let Some(conn) = list.pop() {
                if conn.sender.is_ready() {
                    conn.idle_since.mark_in_use();
                    return Some(conn);
                }
            }
            None
        })
        .ok()
        .flatten()
    }

    fn put_idle(&self, addr: SocketAddr, conn: Conn) {
        let now = now_ms();
        conn.idle_since.mark_idle(now);
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            let list = pool.idle.entry(addr).or_default();
            if list.len() < self.max_idle_per_endpoint {
                list.push(conn);
            }
            // Entries whose connection closed (by the backend, or by its own idle timer) are
            // dropped now and then, with the addresses no longer routed to.
            let sweep_every = (self.idle_timeout / 4).max(Duration::from_millis(100));
            if Duration::from_millis(now.saturating_sub(pool.last_sweep)) >= sweep_every {
                pool.last_sweep = now;
                let idle_timeout = self.idle_timeout;
                pool.idle.retain(|_, list| {
                    list.retain(|c| {
                        !c.sender.is_closed()
                            && c.idle_since.idle_for(now).is_none_or(|d| d < idle_timeout)
                    });
                    !list.is_empty()
                });
            }
        });
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, UpstreamError> {
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
        let idle_since = IdleSince::default();
        let watched = idle_since.clone();
        let idle_timeout = self.idle_timeout;
        let task = tokio::spawn(async move {
            let conn = conn.with_upgrades();
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    ended = &mut conn => {
                        if let Err(e) = ended {
                            tracing::debug!(error = %e, backend = %addr, "upstream connection ended with an error");
                        }
                        return;
                    }
                    () = tokio::time::sleep(idle_timeout) => {
                        if watched.idle_for(now_ms()).is_some_and(|d| d >= idle_timeout) {
                            // Dropping the connection closes the socket; its pooled sender then
                            // reports closed and is skipped.
                            tracing::debug!(backend = %addr, "closing idle upstream connection");
                            return;
                        }
                    }
                }
            }
        });
        Ok(Conn {
            sender,
            idle_since,
            task: task.abort_handle(),
        })
    }
}

/// The connection a response came on, to be pooled again once its body has been read.
struct Reuse {
    conn: Conn,
    addr: SocketAddr,
    upstreams: Upstreams,
}

impl Reuse {
    fn check_in(self) {
        let Reuse {
            mut conn,
            addr,
            upstreams,
        } = self;
        if conn.sender.is_ready() {
            upstreams.put_idle(addr, conn);
        } else if !conn.sender.is_closed() {
            // The connection task has not yet seen the end of the exchange (or the request
            // body is still going up): wait for it off the request path, but not for ever.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            runtime.spawn(async move {
                if let Ok(Ok(())) =
                    tokio::time::timeout(upstreams.idle_timeout, conn.sender.ready()).await
                {
                    upstreams.put_idle(addr, conn);
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
    /// Counts the request as in flight on its endpoint until the body ends.
    _in_flight: Option<InFlight>,
    /// The response cache's copy of the body, when it is being stored.
    fill: Option<Box<crate::cache::Filling>>,
}

impl UpstreamBody {
    /// Keeps `guard` (the request's in-flight count) until the body has been relayed.
    pub(crate) fn hold(&mut self, guard: InFlight) {
        self._in_flight = Some(guard);
    }

    /// Copies the body into `fill` as it is relayed; stored when it ends cleanly.
    pub(crate) fn tee(&mut self, fill: Box<crate::cache::Filling>) {
        self.fill = Some(fill);
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                self.done = true;
                if let Some(fill) = self.fill.as_mut() {
                    fill.finish();
                }
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(fill), Some(data)) = (self.fill.as_mut(), frame.data_ref()) {
                    fill.data(data);
                }
            }
            Poll::Ready(Some(Err(_))) => self.fill = None,
            Poll::Pending => {}
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
        // The server stops polling once `is_end_stream` says so, which may be before the
        // final `None`: a complete body is stored here then.
        if let Some(fill) = self
            .fill
            .as_mut()
            .filter(|_| self.done || self.inner.is_end_stream())
        {
            fill.finish();
        }
        if let Some(reuse) = self.reuse.take() {
            // A body dropped half-read leaves bytes on the connection: it cannot carry another
            // request, and dropping its sender closes it.
            if self.is_end_stream() {
                reuse.check_in();
            }
        }
    }
}
