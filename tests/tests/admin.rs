//! Admin endpoints and graceful shutdown.

use std::time::Duration;

use sluice_tests::backend::TestBackend;
use sluice_tests::client::{self, fetch};
use sluice_tests::harness::TestGateway;
use sluice_tests::manifests::{prefix_route, service};

#[tokio::test]
async fn admin_endpoints_report_health_readiness_metrics_and_the_snapshot() {
    let b = TestBackend::start("b").await;
    let gw = TestGateway::start(&[
        ("svc.yaml", service("b", 80, &[(b.addr, true)])),
        ("route.yaml", prefix_route("metered", "/m", "b")),
    ])
    .await;
    let c = client::http1();
    for path in ["/m/1", "/m/2", "/m/secret-user-42"] {
        assert_eq!(fetch(&c, gw.addr, "h", path).await.status, 200);
    }
    assert_eq!(fetch(&c, gw.addr, "h", "/unrouted/xyz").await.status, 404);

    assert_eq!(fetch(&c, gw.admin, "a", "/healthz").await.status, 200);
    assert_eq!(fetch(&c, gw.admin, "a", "/readyz").await.status, 200);
    let metrics = fetch(&c, gw.admin, "a", "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(
            r#"sluice_http_requests_total{code="2xx",route="default/metered",rule="0"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"sluice_http_requests_total{code="4xx",route="",rule=""} 1"#),
        "{text}"
    );
    assert!(text.contains("sluice_http_request_duration_seconds_bucket"));
    assert!(text.contains(&format!("sluice_snapshot_generation {}", gw.generation())));
    assert!(
        !text.contains("secret-user-42") && !text.contains("unrouted"),
        "no raw paths in labels"
    );

    let snapshot = fetch(&c, gw.admin, "a", "/debug/snapshot").await.json();
    assert_eq!(snapshot["generation"], gw.generation());
    assert_eq!(snapshot["rules"][0]["route"], "default/metered");
    assert_eq!(
        snapshot["rules"][0]["backends"][0]["endpoints"][0]["addr"],
        b.addr.to_string()
    );
}

#[tokio::test]
async fn readyz_is_unavailable_before_the_first_snapshot() {
    let gateway = sluice_proxy::Gateway::new(sluice_proxy::ProxyConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(sluice_proxy::admin::serve_admin(
        gateway.clone(),
        listener,
        std::future::pending(),
    ));
    let c = client::http1();
    assert_eq!(fetch(&c, addr, "a", "/readyz").await.status, 503);
    gateway.install(sluice_proxy::Snapshot::default());
    assert_eq!(fetch(&c, addr, "a", "/readyz").await.status, 200);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_stops_accepting() {
    let b = TestBackend::start("slow").await;
    let mut gw = TestGateway::start(&[
        ("svc.yaml", service("slow", 80, &[(b.addr, true)])),
        ("route.yaml", prefix_route("slow", "/", "slow")),
    ])
    .await;
    let addr = gw.addr;
    let in_flight = tokio::spawn(async move {
        let c = client::http1();
        fetch(&c, addr, "h", "/slow?ms=500").await.status
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    gw.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "no new connections after shutdown begins");
    assert_eq!(
        in_flight.await.expect("task"),
        200,
        "the in-flight request completed"
    );
    tokio::time::timeout(Duration::from_secs(5), gw.wait_stopped())
        .await
        .expect("the server stops once drained");
}
