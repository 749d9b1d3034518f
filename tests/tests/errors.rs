//! The gateway's own error answers: JSON bodies with status and request id.

use std::time::Duration;

use sluice_tests::backend::TestBackend;
use sluice_tests::client::{self, fetch};
use sluice_tests::harness::TestGateway;
use sluice_tests::manifests::{prefix_route, route, service};

fn assert_error_body(r: &sluice_tests::client::Reply, status: u16) {
    assert_eq!(r.status.as_u16(), status);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["status"], status);
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(
        body["requestId"].as_str(),
        r.header("x-request-id"),
        "the body and header carry the same request id"
    );
}

#[tokio::test]
async fn no_route_is_404() {
    let gw = TestGateway::start(&[]).await;
    let r = fetch(&client::http1(), gw.addr, "h", "/nothing").await;
    assert_error_body(&r, 404);
}

#[tokio::test]
async fn no_ready_endpoint_is_503() {
    let b = TestBackend::start("b").await;
    let gw = TestGateway::start(&[
        ("svc.yaml", service("b", 80, &[(b.addr, false)])),
        ("route.yaml", prefix_route("b", "/", "b")),
    ])
    .await;
    let r = fetch(&client::http1(), gw.addr, "h", "/").await;
    assert_error_body(&r, 503);
    assert_eq!(b.hits(), 0, "a not-ready endpoint receives nothing");
}

#[tokio::test]
async fn unreachable_backend_is_502() {
    // Bind then drop a listener to get a port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = dead.local_addr().expect("addr");
    drop(dead);
    let gw = TestGateway::start(&[
        ("svc.yaml", service("dead", 80, &[(addr, true)])),
        ("route.yaml", prefix_route("dead", "/", "dead")),
    ])
    .await;
    let r = fetch(&client::http1(), gw.addr, "h", "/").await;
    assert_error_body(&r, 502);
}

#[tokio::test]
async fn slow_backend_is_504_after_the_backend_timeout() {
    let b = TestBackend::start("slow").await;
    let gw = TestGateway::start(&[
        ("svc.yaml", service("slow", 80, &[(b.addr, true)])),
        (
            "route.yaml",
            route(
                "slow",
                "  rules:\n  - timeouts: {request: 5s, backendRequest: 200ms}\n    backendRefs: [{name: slow, port: 80}]",
            ),
        ),
    ])
    .await;
    let c = client::http1();
    let started = std::time::Instant::now();
    let r = fetch(&c, gw.addr, "h", "/slow?ms=3000").await;
    assert_error_body(&r, 504);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the gateway answered before the backend"
    );
    let r = fetch(&c, gw.addr, "h", "/slow?ms=10").await;
    assert_eq!(r.status, 200, "a fast answer is within the timeout");
}

#[tokio::test]
async fn an_invalid_rule_is_dropped_and_the_others_serve() {
    let b = TestBackend::start("b").await;
    let gw = TestGateway::start(&[
        ("svc.yaml", service("b", 80, &[(b.addr, true)])),
        (
            "route.yaml",
            route(
                "mixed",
                "  rules:\n  - name: good\n    matches: [{path: {value: /good}}]\n    backendRefs: [{name: b, port: 80}]\n  - name: bad\n    matches: [{path: {type: RegularExpression, value: '/bad(['}}]\n    backendRefs: [{name: b, port: 80}]\n  - name: ghost\n    matches: [{path: {value: /ghost}}]\n    backendRefs: [{name: missing, port: 80}]",
            ),
        ),
        ("other.yaml", prefix_route("other", "/other", "b")),
    ])
    .await;
    let c = client::http1();
    assert_eq!(fetch(&c, gw.addr, "h", "/good").await.status, 200);
    assert_eq!(fetch(&c, gw.addr, "h", "/other").await.status, 200);
    assert_eq!(fetch(&c, gw.addr, "h", "/ghost").await.status, 404);
}
