//! What a backend does wrong must reach the client as a clean 502/504 or a cut-off response,
//! never as another request's bytes, and the connection it happened on is not used again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use sluice_tests::client::{self, fetch};
use sluice_tests::harness::TestGateway;
use sluice_tests::manifests::{route, service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a scripted backend writes for the `n`th request (counted over all connections), and
/// whether it closes the connection after.
type Script = dyn Fn(usize) -> (Vec<u8>, bool) + Send + Sync;

/// A backend speaking raw bytes: it reads each request head and answers with the script.
/// Returns its address and the number of connections it accepted.
async fn scripted(script: Arc<Script>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::Relaxed);
            let script = script.clone();
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                    buf.drain(..end);
                    let (reply, close) = script(requests.fetch_add(1, Ordering::Relaxed));
                    if stream.write_all(&reply).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

async fn gateway_to(addr: SocketAddr, rule: &str) -> TestGateway {
    TestGateway::start(&[
        ("svc.yaml", service("b", 80, &[(addr, true)])),
        (
            "route.yaml",
            route(
                "r",
                &format!("  rules:\n  - {rule}backendRefs: [{{name: b, port: 80}}]"),
            ),
        ),
    ])
    .await
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test]
async fn a_response_with_both_chunked_and_a_length_is_relayed_whole_without_the_length() {
    let script: Arc<Script> = Arc::new(|_| {
        let reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        (reply.to_vec(), false)
    });
    let (addr, _) = scripted(script).await;
    let gw = gateway_to(addr, "").await;
    let authority = gw.addr.to_string();
    for c in [client::http1(), client::h2c()] {
        let r = fetch(&c, gw.addr, &authority, "/").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(
            &r.body[..],
            b"hello world",
            "the whole body, not 3 bytes of it"
        );
        assert_ne!(r.header("content-length"), Some("3"));
    }
}

#[tokio::test]
async fn a_backend_that_never_answers_is_a_504_within_the_rule_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let gw = gateway_to(addr, "timeouts: {backendRequest: 300ms}\n    ").await;
    let started = std::time::Instant::now();
    let r = fetch(&client::http1(), gw.addr, "h", "/").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["status"], 504);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn invalid_responses_and_huge_heads_are_502s_and_their_connection_is_not_reused() {
    let replies: Vec<Vec<u8>> = vec![
        b"HTTP/1.1 abc\r\n\r\n".to_vec(),
        b"this is not HTTP\r\n\r\n".to_vec(),
        format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
            "a".repeat(1 << 20)
        )
        .into_bytes(),
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok".to_vec(),
    ];
    let n = replies.len();
    let script: Arc<Script> = Arc::new(move |i| match replies.get(i) {
        Some(bad) => (bad.clone(), false),
        None => (OK.to_vec(), false),
    });
    let (addr, connections) = scripted(script).await;
    let gw = gateway_to(addr, "").await;
    let c = client::http1();
    for i in 0..n {
        let r = fetch(&c, gw.addr, "h", "/").await;
        assert_eq!(r.status, 502, "reply {i}");
        assert_eq!(r.json()["status"], 502);
    }
    let r = fetch(&c, gw.addr, "h", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"ok");
    assert_eq!(
        connections.load(Ordering::Relaxed),
        n + 1,
        "every failed exchange's connection was dropped"
    );
}

#[tokio::test]
async fn half_a_response_then_a_close_cuts_the_clients_response_off() {
    let script: Arc<Script> = Arc::new(|i| match i {
        0 => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b".to_vec(),
            true,
        ),
        _ => (OK.to_vec(), false),
    });
    let (addr, _) = scripted(script).await;
    let gw = gateway_to(addr, "").await;
    let c = client::http1();
    let response = c
        .request(client::get(gw.addr, "h", "/"))
        .await
        .expect("the head was relayed");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await;
    assert!(body.is_err(), "the client sees the cut, not a short 200");
    let r = fetch(&client::http1(), gw.addr, "h", "/").await;
    assert_eq!(&r.body[..], b"ok");
}

#[tokio::test]
async fn bytes_past_a_responses_length_never_reach_the_next_request() {
    // After its 2-byte body, the backend sends a whole second response that no request asked
    // for: reusing that connection would hand it to the next client.
    let script: Arc<Script> = Arc::new(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nstolen".to_vec(),
            false,
        )
    });
    let (addr, _) = scripted(script).await;
    let gw = gateway_to(addr, "").await;
    let c = client::http1();
    for i in 0..50 {
        let r = fetch(&c, gw.addr, "h", "/").await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(
            &r.body[..],
            b"ok",
            "request {i} got another response's bytes"
        );
    }
}
