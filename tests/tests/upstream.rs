//! Upstream keep-alive: connections to backends are reused, and only when that is safe.

use std::time::Duration;

use http_body_util::BodyExt;
use sluice_proxy::ProxyConfig;
use sluice_tests::backend::TestBackend;
use sluice_tests::client::{self, fetch};
use sluice_tests::harness::TestGateway;
use sluice_tests::manifests::{prefix_route, service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn gateway_to(b: &TestBackend) -> TestGateway {
    TestGateway::start(&[
        ("svc.yaml", service("b", 80, &[(b.addr, true)])),
        ("route.yaml", prefix_route("b", "/", "b")),
    ])
    .await
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let b = TestBackend::start("b").await;
    let gw = gateway_to(&b).await;
    let c = client::http1();
    for _ in 0..20 {
        let r = fetch(&c, gw.addr, "h", "/").await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(b.hits(), 20);
    assert_eq!(
        b.connections(),
        1,
        "every request after the first reused the connection"
    );
}

#[tokio::test]
async fn a_download_abandoned_half_way_does_not_poison_the_pool() {
    let b = TestBackend::start("b").await;
    let gw = gateway_to(&b).await;
    let c = client::http1();
    let big = c
        .request(client::get(gw.addr, "h", "/stream?bytes=67108864"))
        .await
        .expect("response head");
    let mut body = big.into_body();
    let first = body.frame().await.expect("a frame").expect("frame ok");
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    drop(body);
    // The abandoned body's bytes are still on that upstream connection: reusing it would hand
    // them to the next request as its response.
    for _ in 0..5 {
        let r = fetch(&client::http1(), gw.addr, "h", "/after").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["path"], "/after");
    }
    assert!(
        b.connections() >= 2,
        "the half-read connection was not reused"
    );
}

/// A backend that answers one request per connection and then closes it without saying so
/// (no `Connection: close`), as servers whose keep-alive timeout has just expired do.
async fn one_shot_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_backend_closing_idle_connections_loses_no_request() {
    let addr = one_shot_backend().await;
    let gw = TestGateway::start(&[
        ("svc.yaml", service("b", 80, &[(addr, true)])),
        ("route.yaml", prefix_route("b", "/", "b")),
    ])
    .await;
    let c = client::http1();
    for i in 0..40 {
        let r = fetch(&c, gw.addr, "h", "/").await;
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
        assert_eq!(&r.body[..], b"ok");
        if i % 2 == 0 {
            // Give the close time to arrive, so the pooled connection is seen to be dead.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout_without_more_traffic() {
    let b = TestBackend::start("b").await;
    let config = ProxyConfig {
        pool_idle_timeout: Duration::from_millis(200),
        ..ProxyConfig::default()
    };
    let gw = TestGateway::start_with(
        &[
            ("svc.yaml", service("b", 80, &[(b.addr, true)])),
            ("route.yaml", prefix_route("b", "/", "b")),
        ],
        config,
    )
    .await;
    let r = fetch(&client::http1(), gw.addr, "h", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        b.open_connections(),
        1,
        "the upstream connection is kept for reuse"
    );
    // No request comes to sweep the pool: the connection's own timer must close it.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while b.open_connections() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        b.open_connections(),
        0,
        "closed after about two idle timeouts"
    );
}
