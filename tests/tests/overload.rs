//! Past its caps the gateway answers a fast 503 with `Retry-After` instead of piling up work,
//! and the clients it already serves are unaffected.

use std::time::Duration;

use sluice_proxy::ProxyConfig;
use sluice_tests::backend::TestBackend;
use sluice_tests::client::{self, fetch};
use sluice_tests::harness::TestGateway;
use sluice_tests::manifests::{prefix_route, service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn gateway(b: &TestBackend, config: ProxyConfig) -> TestGateway {
    TestGateway::start_with(
        &[
            ("svc.yaml", service("b", 80, &[(b.addr, true)])),
            ("route.yaml", prefix_route("b", "/", "b")),
        ],
        config,
    )
    .await
}

fn refused(gw: &TestGateway, limit: &str) -> f64 {
    gw.counter("sluice_overload_refused_total", &[("limit", limit)])
}

#[tokio::test]
async fn requests_past_the_in_flight_cap_get_a_fast_503_and_the_admitted_ones_finish() {
    let b = TestBackend::start("b").await;
    let config = ProxyConfig {
        max_requests_in_flight: 2,
        ..ProxyConfig::default()
    };
    let gw = gateway(&b, config).await;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let addr = gw.addr;
            tokio::spawn(async move { fetch(&client::http1(), addr, "h", "/slow?ms=800").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let r = fetch(&client::http1(), gw.addr, "h", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"], "the gateway is at its request limit");
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "refused at once"
    );
    for s in slow {
        assert_eq!(
            s.await.expect("task").status,
            200,
            "admitted requests finish"
        );
    }
    assert_eq!(fetch(&client::http1(), gw.addr, "h", "/").await.status, 200);
    assert_eq!(refused(&gw, "requests"), 1.0);
}

#[tokio::test]
async fn connections_past_the_listener_cap_get_a_503_and_are_closed() {
    let b = TestBackend::start("b").await;
    let config = ProxyConfig {
        max_connections: 2,
        ..ProxyConfig::default()
    };
    let gw = gateway(&b, config).await;
    let c = client::http1();
    // One keep-alive client and one idle connection take both places.
    assert_eq!(fetch(&c, gw.addr, "h", "/").await.status, 200);
    let idle = TcpStream::connect(gw.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut third = TcpStream::connect(gw.addr).await.expect("connect");
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), third.read_to_end(&mut answer))
        .await
        .expect("answered and closed at once")
        .expect("a clean close");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer}");
    let body = answer.split_once("\r\n\r\n").expect("head").1;
    let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(json["status"], 503);
    assert!(json["requestId"].as_str().is_some_and(|id| !id.is_empty()));

    assert_eq!(
        fetch(&c, gw.addr, "h", "/").await.status,
        200,
        "the admitted keep-alive client is still served"
    );
    assert_eq!(b.hits(), 2, "the refused request reached no backend");
    drop(idle);
    let back = sluice_tests::eventually(Duration::from_secs(3), || async {
        client::send(&client::http1(), client::get(gw.addr, "h", "/"))
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(back, "a freed place admits a new connection");
    assert!(refused(&gw, "connections") >= 1.0);
}
