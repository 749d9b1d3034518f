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

/// The status line's code and the JSON body of a raw answer.
fn status_and_json(answer: &str) -> (u16, serde_json::Value) {
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    let body = &answer[answer.find("\r\n\r\n").expect("head ends") + 4..];
    (status, serde_json::from_str(body).expect("a JSON body"))
}

/// The first value of header `name` (lower-case) in a raw answer.
fn raw_header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = &answer[..answer.find("\r\n\r\n")?];
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_refused_with_501_and_the_connection_closed() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, ProxyConfig::default()).await;
    for codings in [
        "Transfer-Encoding: identity, chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
    ] {
        // Keep-alive, with a second request behind the body: a closed connection never
        // answers it.
        let answer = exchange(
            gw.addr,
            &format!(
                "POST /echo-body HTTP/1.1\r\nHost: public.example\r\n{codings}\r\n5\r\nhello\r\n0\r\n\r\n\
                 GET / HTTP/1.1\r\nHost: public.example\r\n\r\n"
            ),
        )
        .await;
        let (status, json) = status_and_json(&answer);
        assert_eq!(status, 501, "{codings}: {answer}");
        assert_eq!(json["status"], 501);
        assert_eq!(raw_header(&answer, "connection"), Some("close"), "{answer}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    }
    assert_eq!(b.hits(), 0, "nothing ambiguous reached the backend");
}

#[tokio::test]
async fn heads_the_http_parser_refuses_get_the_json_error_with_a_request_id() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, ProxyConfig::default()).await;
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let huge = format!("x-big: {}\r\n", "a".repeat(70 * 1024));
    for (head, expected) in [
        (
            "GET / HTTP/1.1\r\nHost: public.example\r\nno colon here\r\n\r\n".to_owned(),
            400,
        ),
        (
            "GET / HTTP/9.9\r\nHost: public.example\r\n\r\n".to_owned(),
            400,
        ),
        (
            "G@T / HTTP/1.1\r\nHost: public.example\r\n\r\n".to_owned(),
            400,
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: public.example\r\n{many}\r\n"),
            431,
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: public.example\r\n{huge}\r\n"),
            431,
        ),
    ] {
        let answer = exchange(gw.addr, &head).await;
        let (status, json) = status_and_json(&answer);
        assert_eq!(status, expected, "{answer}");
        assert_eq!(json["status"], expected);
        let id = json["requestId"].as_str().expect("a request id");
        assert_eq!(raw_header(&answer, "x-request-id"), Some(id), "{answer}");
        assert_eq!(
            raw_header(&answer, "content-type"),
            Some("application/json")
        );
    }
    assert_eq!(b.hits(), 0);
    assert_eq!(
        requests(&gw, "", "4xx"),
        5.0,
        "each refused head is counted with unmatched requests"
    );
}

/// The `sluice_http_requests_total` count of `route` for status class `class`.
fn requests(gw: &TestGateway, route: &str, class: &str) -> f64 {
    gw.counter(
        "sluice_http_requests_total",
        &[("route", route), ("code", class)],
    )
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_400_not_a_backend_502() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, ProxyConfig::default()).await;
    let answer = exchange(
        gw.addr,
        "POST /upload HTTP/1.1\r\nHost: public.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let (status, json) = status_and_json(&answer);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(json["error"], "the request body is malformed");
    assert_eq!(requests(&gw, "default/public", "4xx"), 1.0);
    assert_eq!(
        requests(&gw, "default/public", "5xx"),
        0.0,
        "not the backend's failure"
    );
}

#[tokio::test]
async fn a_client_hanging_up_mid_upload_is_logged_as_499_not_as_a_backend_error() {
    let b = TestBackend::start("b").await;
    let (gw, log) = TestGateway::start_with_access_log(
        &[
            ("svc.yaml", service("b", 80, &[(b.addr, true)])),
            (
                "route.yaml",
                route("public", "  rules:\n  - backendRefs: [{name: b, port: 80}]"),
            ),
        ],
        ProxyConfig::default(),
    )
    .await;
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\nonly ten b")
        .await
        .expect("write");
    // Give the head time to be forwarded, then hang up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
    let logged = sluice_tests::eventually(Duration::from_secs(5), || async {
        log.text().contains("\"status\":499")
    })
    .await;
    let text = log.text();
    assert!(logged, "{text}");
    assert!(text.contains("\"error\":\"client_closed\""), "{text}");
    assert!(!text.contains("backend_error"), "{text}");
    assert_eq!(requests(&gw, "default/public", "5xx"), 0.0);
    assert_eq!(requests(&gw, "default/public", "4xx"), 1.0);
}

#[tokio::test]
async fn a_client_uploading_to_a_backend_that_never_reads_gets_the_504_not_a_reset() {
    // Accepts connections and never reads from them.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let gw = TestGateway::start(&[
        ("svc.yaml", service("b", 80, &[(addr, true)])),
        (
            "route.yaml",
            route(
                "public",
                "  rules:\n  - timeouts: {backendRequest: 300ms}\n    backendRefs: [{name: b, port: 80}]",
            ),
        ),
    ])
    .await;
    // More than every socket buffer between the client and the stalled backend can hold.
    const BODY: usize = 32 << 20;
    let stream = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let upload = tokio::spawn(async move {
        write
            .write_all(
                format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {BODY}\r\n\r\n").as_bytes(),
            )
            .await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..BODY / chunk.len() {
            write.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    // The answer is read as a client does: its head, then as many bytes as it announces.
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&answer).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = raw_header(&text, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if answer.len() >= end + 4 + length {
                    return Ok(text);
                }
            }
            match read.read(&mut buf).await {
                Ok(0) => return Err(format!("closed early after {text:?}")),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("{e} after {text:?}")),
            }
        }
    })
    .await
    .expect("the gateway answers within its linger time");
    let answer = answer.expect("the whole answer arrives, no reset");
    let (status, json) = status_and_json(&answer);
    assert_eq!(status, 504, "{answer}");
    assert_eq!(json["status"], 504);
    let sent = tokio::time::timeout(Duration::from_secs(10), upload)
        .await
        .expect("the upload ends: drained, not left hanging")
        .expect("upload task");
    assert!(
        sent.is_ok(),
        "the upload was read to its end, not reset: {sent:?}"
    );
}
