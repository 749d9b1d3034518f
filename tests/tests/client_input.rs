//! What a client sends that the gateway must refuse or neutralise, over real sockets.

use std::time::Duration;

use sluice_proxy::ProxyConfig;
use sluice_tests::backend::TestBackend;
use sluice_tests::client::{self, fetch};
use sluice_tests::harness::TestGateway;
use sluice_tests::manifests::{route, service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Two virtual hosts on one backend: `public.example` serves `/`, `admin.example` only exists
/// so that a request smuggled to it would show.
async fn gateway(backend: &TestBackend, config: ProxyConfig) -> TestGateway {
    TestGateway::start_with(
        &[
            ("svc.yaml", service("b", 80, &[(backend.addr, true)])),
            (
                "route.yaml",
                route(
                    "public",
                    "  hostnames: [public.example]\n  rules:\n  - backendRefs: [{name: b, port: 80}]",
                ),
            ),
        ],
        config,
    )
    .await
}

/// Sends `raw` on a fresh connection and returns everything the gateway answers until it closes
/// or a second passes.
async fn exchange(addr: std::net::SocketAddr, raw: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// What the backend echoed of the request, from a raw 200 answer.
fn backend_saw(answer: &str) -> serde_json::Value {
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").expect("head ends") + 4..];
    serde_json::from_str(body).expect("backend JSON")
}

#[tokio::test]
async fn two_host_headers_are_refused() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, ProxyConfig::default()).await;
    let answer = exchange(
        gw.addr,
        "GET / HTTP/1.1\r\nHost: public.example\r\nHost: admin.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("more than one Host header"), "{answer}");
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn an_absolute_target_is_routed_and_forwarded_with_one_host() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, ProxyConfig::default()).await;
    let answer = exchange(
        gw.addr,
        "GET http://public.example/x HTTP/1.1\r\nHost: admin.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    let seen = backend_saw(&answer);
    assert_eq!(seen["headers"]["host"], "public.example");
}

#[tokio::test]
async fn an_h2c_upgrade_offer_is_proxied_as_plain_http() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, ProxyConfig::default()).await;
    let answer = exchange(
        gw.addr,
        "GET / HTTP/1.1\r\nHost: public.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    let seen = backend_saw(&answer);
    assert!(seen["headers"].get("upgrade").is_none(), "{seen}");
    assert!(seen["headers"].get("http2-settings").is_none(), "{seen}");
}

#[tokio::test]
async fn a_protocol_switch_the_client_did_not_ask_for_is_a_502() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, ProxyConfig::default()).await;
    let reply = fetch(&client::http1(), gw.addr, "public.example", "/switch").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["status"], 502);
}

#[tokio::test]
async fn a_connection_that_never_sends_is_closed_after_the_header_timeout() {
    let b = TestBackend::start("b").await;
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(200),
        ..ProxyConfig::default()
    };
    let gw = gateway(&b, config).await;
    let mut idle = TcpStream::connect(gw.addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut buf))
        .await
        .expect("the gateway closes the idle connection");
    assert_eq!(read.expect("clean close"), 0, "closed without a byte");
}
