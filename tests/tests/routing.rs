//! Routing, rewrites and header handling through a real gateway to real backends.

use std::collections::HashSet;

use http::Request;
use http_body_util::Full;
use sluice_tests::backend::TestBackend;
use sluice_tests::client::{self, fetch, send};
use sluice_tests::harness::TestGateway;
use sluice_tests::manifests::{prefix_route, route, service};

#[tokio::test]
async fn requests_are_routed_by_host_and_path_and_balanced_across_endpoints() {
    let a1 = TestBackend::start("a1").await;
    let a2 = TestBackend::start("a2").await;
    let b = TestBackend::start("b").await;
    let gw = TestGateway::start(&[
        ("svc-a.yaml", service("svc-a", 80, &[(a1.addr, true), (a2.addr, true)])),
        ("svc-b.yaml", service("svc-b", 80, &[(b.addr, true)])),
        ("a.yaml", prefix_route("route-a", "/a", "svc-a")),
        (
            "b.yaml",
            route(
                "route-b",
                "  hostnames: [b.example.com]\n  rules:\n  - backendRefs: [{name: svc-b, port: 80}]",
            ),
        ),
    ])
    .await;
    let c = client::http1();
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let r = fetch(&c, gw.addr, "anything", "/a/x").await;
        assert_eq!(r.status, 200);
        seen.insert(r.json()["backend"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(seen, HashSet::from(["a1".to_owned(), "a2".to_owned()]));
    // LeastRequest (the default) gives ties to the next endpoint in turn: sequential requests,
    // never two in flight, alternate.
    assert_eq!(a1.hits(), 100, "a1 got {} of 200", a1.hits());

    let r = fetch(&c, gw.addr, "B.Example.com:8080", "/whatever").await;
    assert_eq!(r.json()["backend"], "b", "host match ignores case and port");
    let r = fetch(&c, gw.addr, "other", "/whatever").await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn prefix_rewrite_and_header_filters_apply() {
    let users = TestBackend::start("users").await;
    let gw = TestGateway::start(&[
        ("svc.yaml", service("users", 80, &[(users.addr, true)])),
        (
            "route.yaml",
            route(
                "users",
                "  rules:\n  - matches: [{path: {type: PathPrefix, value: /api/users}}]\n    filters:\n      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2/people}}\n      requestHeaders: {set: [{name: x-gateway, value: sluice}], add: [{name: x-extra, value: one}], remove: [x-remove-me]}\n      responseHeaders: {set: [{name: x-served-by, value: sluice}], remove: [x-backend]}\n    backendRefs: [{name: users, port: 80}]\n  - name: full\n    matches: [{path: {type: Exact, value: /old}}]\n    filters: {urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /new}}}\n    backendRefs: [{name: users, port: 80}]",
            ),
        ),
    ])
    .await;
    let c = client::http1();
    let request = Request::get(format!("http://{}/api/users/42?active=1", gw.addr))
        .header("host", "shop.example")
        .header("x-remove-me", "1")
        .header("x-gateway", "client-value")
        .header("x-user-id", "admin")
        .header("x-request-id", "trace-abc-123")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .body(Full::default())
        .expect("request");
    let r = send(&c, request).await.expect("reply");
    assert_eq!(r.status, 200);
    let seen = r.json();
    assert_eq!(seen["path"], "/v2/people/42?active=1");
    let h = &seen["headers"];
    assert_eq!(h["x-gateway"], "sluice", "set replaces the client's value");
    assert_eq!(h["x-extra"], "one");
    assert!(h.get("x-remove-me").is_none());
    assert!(
        h.get("x-user-id").is_none(),
        "identity headers from clients are stripped"
    );
    assert!(
        h.get("x-hop").is_none(),
        "headers named by Connection are hop-by-hop"
    );
    assert_eq!(h["x-request-id"], "trace-abc-123");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example");
    assert_eq!(
        h["host"], "shop.example",
        "the original host is passed through"
    );
    assert_eq!(r.header("x-served-by"), Some("sluice"));
    assert_eq!(r.header("x-backend"), None);
    assert_eq!(r.header("x-request-id"), Some("trace-abc-123"));

    let r = fetch(&c, gw.addr, "h", "/old").await;
    assert_eq!(r.json()["path"], "/new");
}

#[tokio::test]
async fn paths_are_normalised_before_matching_and_forwarding() {
    let public = TestBackend::start("public").await;
    let gw = TestGateway::start(&[
        ("svc.yaml", service("public", 80, &[(public.addr, true)])),
        ("route.yaml", prefix_route("public", "/public", "public")),
    ])
    .await;
    let c = client::http1();
    let r = fetch(&c, gw.addr, "h", "/public/../admin").await;
    assert_eq!(
        r.status, 404,
        "a dot segment must not escape the public prefix"
    );
    let r = fetch(&c, gw.addr, "h", "/public/%2e%2e/admin").await;
    assert_eq!(r.status, 404, "nor an encoded one");
    let r = fetch(&c, gw.addr, "h", "//public//a/./b").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["path"],
        "/public/a/b",
        "the backend sees the path that was matched"
    );
    let r = fetch(&c, gw.addr, "h", "/public/%zz").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["status"], 400);
}

#[tokio::test]
async fn request_ids_are_generated_when_missing_or_insane() {
    let b = TestBackend::start("b").await;
    let gw = TestGateway::start(&[
        ("svc.yaml", service("b", 80, &[(b.addr, true)])),
        ("route.yaml", prefix_route("b", "/", "b")),
    ])
    .await;
    let c = client::http1();
    let r = fetch(&c, gw.addr, "h", "/").await;
    let id = r.header("x-request-id").expect("generated id").to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(
        r.json()["headers"]["x-request-id"],
        id.as_str(),
        "the backend sees the same id"
    );
    let request = Request::get(format!("http://{}/", gw.addr))
        .header("x-request-id", "<script>")
        .body(Full::default())
        .expect("request");
    let r = send(&c, request).await.expect("reply");
    assert_ne!(r.header("x-request-id"), Some("<script>"));
}

#[tokio::test]
async fn http2_clients_are_served_over_h2c() {
    let b = TestBackend::start("b").await;
    let gw = TestGateway::start(&[
        ("svc.yaml", service("b", 80, &[(b.addr, true)])),
        ("route.yaml", prefix_route("b", "/", "b")),
    ])
    .await;
    let c = client::h2c();
    let request = Request::get(format!("http://h2.example/{}", "x"))
        .body(Full::default())
        .expect("request");
    // The client connects to the URI's authority, so aim it at the gateway explicitly.
    let mut request = request;
    *request.uri_mut() = format!("http://{}/x", gw.addr).parse().expect("uri");
    let r = send(&c, request).await.expect("h2 reply");
    assert_eq!(r.status, 200);
    let seen = r.json();
    assert_eq!(
        seen["version"], "HTTP/1.1",
        "backends are spoken to over HTTP/1.1"
    );
    assert_eq!(
        seen["headers"]["host"],
        gw.addr.to_string(),
        ":authority becomes Host"
    );
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let b = TestBackend::start("b").await;
    let gw = TestGateway::start(&[
        ("svc.yaml", service("b", 80, &[(b.addr, true)])),
        ("route.yaml", prefix_route("b", "/", "b")),
    ])
    .await;
    let c = client::http1();
    let mut request = Request::get(format!("http://{}/", gw.addr));
    for i in 0..150 {
        request = request.header(format!("x-h{i}"), "v");
    }
    let outcome = send(&c, request.body(Full::default()).expect("request")).await;
    match outcome {
        Ok(r) => assert_eq!(r.status, 431),
        Err(e) => assert!(
            e.contains("closed") || e.contains("Incomplete") || e.contains("reset"),
            "{e}"
        ),
    }
    assert_eq!(b.hits(), 0, "nothing reached the backend");
}
