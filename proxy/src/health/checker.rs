//! Active health checks: one task per probed endpoint address, sending `GET path` on a fresh
//! connection every `interval` (jittered by a tenth either way, and started at a random point of
//! the first interval, so replicas and endpoints do not probe in lock-step).

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::{HeaderValue, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use super::{ActiveHealth, EndpointState};

/// A running checker.
pub(crate) struct Checker {
    active: ActiveHealth,
    state: Weak<EndpointState>,
    task: AbortHandle,
}

impl Checker {
    /// Starts probing `state`'s address on the current runtime (none without one).
    pub(crate) fn start(state: &Arc<EndpointState>, active: ActiveHealth) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let weak = Arc::downgrade(state);
        let task = runtime
            .spawn(run(weak.clone(), state.addr(), active.clone()))
            .abort_handle();
        Some(Checker {
            active,
            state: weak,
            task,
        })
    }

    /// True when it probes with these settings.
    pub(crate) fn probes(&self, active: &ActiveHealth) -> bool {
        self.active == *active
    }

    /// Stops probing; the endpoint is no longer held down by its verdict.
    pub(crate) fn stop(&self) {
        self.task.abort();
        if let Some(state) = self.state.upgrade() {
            state.set_active_down(false);
        }
    }
}

async fn run(state: Weak<EndpointState>, addr: SocketAddr, active: ActiveHealth) {
    tokio::time::sleep(active.interval.mul_f64(fastrand::f64())).await;
    let (mut good, mut bad) = (0u32, 0u32);
    loop {
        let healthy = probe(addr, &active.path, active.timeout).await;
        let Some(state) = state.upgrade() else { return };
        if healthy {
            (good, bad) = (good.saturating_add(1), 0);
            if good >= active.healthy_threshold {
                state.set_active_down(false);
            }
        } else {
            (good, bad) = (0, bad.saturating_add(1));
            if bad >= active.unhealthy_threshold {
                state.set_active_down(true);
            }
        }
        drop(state);
        tokio::time::sleep(active.interval.mul_f64(0.9 + 0.2 * fastrand::f64())).await;
    }
}

/// One probe: true on a 2xx or 3xx answer within `timeout`.
pub(crate) async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        let request = Request::get(path)
            .header(HOST, HeaderValue::try_from(addr.to_string()).ok()?)
            .header(USER_AGENT, "sluice-health-check")
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .ok()?;
        // The connection is driven only until the response head: the status is the verdict.
        // It may end first (the backend closes as asked): the response is then complete, or
        // failed, already.
        let response = sender.send_request(request);
        tokio::pin!(response);
        let response = tokio::select! {
            biased;
            r = &mut response => r,
            _ = conn => response.await,
        };
        let status = response.ok()?.status();
        Some(status.is_success() || status.is_redirection())
    };
    matches!(
        tokio::time::timeout(timeout, exchange).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn server(status: u16) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| async move {
                        let mut r = http::Response::new(http_body_util::Full::new(Bytes::new()));
                        *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
                        Ok::<_, std::convert::Infallible>(r)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_probe_passes_on_2xx_and_3xx_and_fails_otherwise() {
        let t = Duration::from_millis(500);
        for _ in 0..20 {
            // The backend closes as asked, racing the response: the verdict must not depend
            // on which the prober sees first.
            assert!(probe(server(200).await, "/health", t).await);
        }
        assert!(probe(server(302).await, "/health", t).await);
        assert!(!probe(server(503).await, "/health", t).await);
        let nobody = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        assert!(!probe(nobody, "/health", t).await, "refused");
        let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let hung_addr = hung.local_addr().expect("addr");
        let started = std::time::Instant::now();
        assert!(
            !probe(hung_addr, "/health", Duration::from_millis(100)).await,
            "no answer"
        );
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "bounded by the timeout"
        );
        drop(hung);
    }
}
