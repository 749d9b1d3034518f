//! CORS, security headers and tracing as browsers, backends and a collector see them.

use std::time::Duration;

use sluice_proxy::ProxyConfig;
use sluice_tests::backend::TestBackend;
use sluice_tests::client::{self, call};
use sluice_tests::eventually;
use sluice_tests::harness::TestGateway;
use sluice_tests::manifests::{route, service};
use sluice_tests::otlp::OtlpReceiver;

/// One rule `main` for `/api` on Service `svc`, with `filters` (YAML flow), and one rule `get`
/// for `GET /get` only with the same filters.
fn filtered_route(filters: &str) -> String {
    route(
        "r",
        &format!(
            "  rules:\n  - name: main\n    matches: [{{path: {{type: PathPrefix, value: /api}}}}]\n    backendRefs: [{{name: svc, port: 80}}]\n    filters: {filters}\n  - name: get\n    matches: [{{path: {{type: PathPrefix, value: /get}}, method: GET}}]\n    backendRefs: [{{name: svc, port: 80}}]\n    filters: {filters}"
        ),
    )
}

async fn gateway(backend: &TestBackend, filters: &str) -> TestGateway {
    TestGateway::start(&[
        ("svc.yaml", service("svc", 80, &[(backend.addr, true)])),
        ("route.yaml", filtered_route(filters)),
    ])
    .await
}

const CORS: &str = "{cors: {allowOrigins: [\"https://app.example.com\", \"https://*.example.org\"], allowMethods: [GET, POST], allowHeaders: [Authorization, Content-Type], exposeHeaders: [X-Request-Id], allowCredentials: true, maxAge: 10m}}";

#[tokio::test]
async fn an_allowed_preflight_is_answered_by_the_gateway_alone() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, CORS).await;
    let c = client::http1();
    for origin in ["https://app.example.com", "https://eu.shop.example.org"] {
        let r = call(
            &c,
            gw.addr,
            "OPTIONS",
            "/api/users",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
        )
        .await;
        assert_eq!(r.status, 204, "{origin}");
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("authorization, content-type")
        );
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert!(r.header("vary").is_some_and(|v| v.contains("Origin")));
        assert!(r.header("x-request-id").is_some());
    }
    // A rule matching only GET answers the preflight of its GETs: a preflight is routed as
    // the request it asks about.
    let r = call(
        &c,
        gw.addr,
        "OPTIONS",
        "/get/x",
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(b.hits(), 0, "the backend never sees a preflight");
}

#[tokio::test]
async fn preflights_outside_the_policy_are_refused_without_reaching_the_backend() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, CORS).await;
    let c = client::http1();
    for (origin, method, headers, why) in [
        ("https://evil.example.net", "GET", "", "origin not allowed"),
        ("https://example.org", "GET", "", "origin not allowed"),
        (
            "https://app.example.com",
            "DELETE",
            "",
            "method not allowed",
        ),
        (
            "https://app.example.com",
            "GET",
            "x-secret",
            "request header not allowed",
        ),
    ] {
        let mut h = vec![
            ("origin", origin),
            ("access-control-request-method", method),
        ];
        if !headers.is_empty() {
            h.push(("access-control-request-headers", headers));
        }
        let r = call(&c, gw.addr, "OPTIONS", "/api/users", &h).await;
        assert_eq!(r.status, 403, "{origin} {method} {headers}");
        assert!(r.header("access-control-allow-origin").is_none());
        assert!(
            r.json()["error"].as_str().is_some_and(|e| e.contains(why)),
            "{:?}",
            r.body
        );
    }
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn actual_requests_get_the_allow_headers_for_allowed_origins_only() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, CORS).await;
    let c = client::http1();
    let r = call(
        &c,
        gw.addr,
        "GET",
        "/api/x",
        &[("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("X-Request-Id")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = call(
        &c,
        gw.addr,
        "GET",
        "/api/x",
        &[("origin", "https://evil.example.net")],
    )
    .await;
    assert_eq!(
        r.status, 200,
        "CORS is the browser's check; the gateway serves the request"
    );
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(r.header("vary"), Some("Origin"));
}

#[tokio::test]
async fn security_headers_have_defaults_keep_the_backends_and_leave_hsts_to_https() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, "{securityHeaders: {}}").await;
    let c = client::http1();
    let r = call(&c, gw.addr, "GET", "/api/x", &[]).await;
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(r.header("cross-origin-opener-policy"), Some("same-origin"));
    assert!(
        r.header("strict-transport-security").is_none(),
        "no HSTS over plain HTTP"
    );
    // The backend's own value is kept.
    let r = call(
        &c,
        gw.addr,
        "GET",
        "/api/x?set=x-frame-options:SAMEORIGIN",
        &[],
    )
    .await;
    assert_eq!(r.header("x-frame-options"), Some("SAMEORIGIN"));

    let gw = gateway(
        &b,
        "{securityHeaders: {frameOptions: SAMEORIGIN, remove: [Referrer-Policy], override: true, contentSecurityPolicy: \"default-src 'none'\"}}",
    )
    .await;
    let r = call(
        &c,
        gw.addr,
        "GET",
        "/api/x?set=x-frame-options:ALLOW-FROM%20x",
        &[],
    )
    .await;
    assert_eq!(
        r.header("x-frame-options"),
        Some("SAMEORIGIN"),
        "override replaces the backend's"
    );
    assert!(r.header("referrer-policy").is_none());
    assert_eq!(
        r.header("content-security-policy"),
        Some("default-src 'none'")
    );
}

#[tokio::test]
async fn a_valid_traceparent_is_continued_and_a_missing_one_started() {
    let b = TestBackend::start("b").await;
    let (gw, log) = TestGateway::start_with_access_log(
        &[
            ("svc.yaml", service("svc", 80, &[(b.addr, true)])),
            ("route.yaml", filtered_route("{}")),
        ],
        ProxyConfig::default(),
    )
    .await;
    let c = client::http1();
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = call(
        &c,
        gw.addr,
        "GET",
        "/api/t",
        &[("traceparent", incoming), ("tracestate", "vendor=a")],
    )
    .await;
    let sent = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert_eq!(sent.len(), 55, "{sent}");
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    assert!(sent.ends_with("-01"));
    assert_ne!(
        &sent[36..52],
        "00f067aa0ba902b7",
        "the gateway's span is the backend's parent"
    );
    assert_eq!(r.json()["headers"]["tracestate"], "vendor=a");

    // None sent, or a malformed one: a new trace, well-formed, tracestate dropped with it.
    for sent_header in [None, Some("00-not-a-trace")] {
        let mut h = vec![("tracestate", "vendor=b")];
        if let Some(tp) = sent_header {
            h.push(("traceparent", tp));
        }
        let r = call(&c, gw.addr, "GET", "/api/t", &h).await;
        let tp = r.json()["headers"]["traceparent"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(parts[0], "00");
        assert!(parts[1].len() == 32 && parts[1].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(parts[1], "0".repeat(32));
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3], "01");
        assert!(r.json()["headers"]["tracestate"].is_null());
    }
    assert!(
        eventually(Duration::from_secs(2), || async {
            log.text()
                .contains("\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"")
        })
        .await,
        "the access log names the trace: {}",
        log.text()
    );
}

#[tokio::test]
async fn spans_are_exported_to_an_otlp_collector() {
    let b = TestBackend::start("b").await;
    let collector = OtlpReceiver::start().await;
    let gw = TestGateway::start_with(
        &[
            ("svc.yaml", service("svc", 80, &[(b.addr, true)])),
            ("route.yaml", filtered_route("{}")),
        ],
        ProxyConfig {
            otlp_endpoint: Some(format!("http://{}", collector.addr)),
            ..ProxyConfig::default()
        },
    )
    .await;
    let c = client::http1();
    let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    for _ in 0..5 {
        let r = call(&c, gw.addr, "GET", "/api/s", &[("traceparent", incoming)]).await;
        assert_eq!(r.status, 200);
    }
    let r = call(&c, gw.addr, "GET", "/nowhere", &[]).await;
    assert_eq!(r.status, 404);
    assert!(
        eventually(Duration::from_secs(5), || async {
            collector.spans().len() >= 6
        })
        .await,
        "spans received: {}",
        collector.spans().len()
    );
    assert!(
        collector.batches() <= 2,
        "spans are batched ({} exports)",
        collector.batches()
    );
    let spans = collector.spans();
    let continued: Vec<_> = spans
        .iter()
        .filter(|s| s["traceId"] == "0af7651916cd43dd8448eb211c80319c")
        .collect();
    assert_eq!(continued.len(), 5);
    for s in &continued {
        assert_eq!(s["parentSpanId"], "b7ad6b7169203331");
        assert_eq!(s["name"], "GET default/r/main");
        assert_eq!(s["kind"], 2);
        assert!(s["spanId"].as_str().is_some_and(|id| id.len() == 16));
        let start: u128 = s["startTimeUnixNano"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .expect("start");
        let end: u128 = s["endTimeUnixNano"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .expect("end");
        assert!(end >= start);
    }
    let ids: std::collections::HashSet<_> = continued.iter().map(|s| s["spanId"].clone()).collect();
    assert_eq!(ids.len(), 5, "one span per request");
    assert!(
        spans
            .iter()
            .any(|s| s["name"] == "GET" && s.get("parentSpanId").is_none())
    );
}
