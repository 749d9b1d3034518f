//! Hostile clients over real sockets, each beside a well-behaved client measured at the same
//! time: the attack gets the answer it should, and the bystander is served throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice_proxy::ProxyConfig;
use sluice_tests::backend::TestBackend;
use sluice_tests::client;
use sluice_tests::harness::TestGateway;
use sluice_tests::manifests::{route, service};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// `public.example` on one backend, and `slow.example` with a 500 ms request timeout.
async fn gateway(backend: &TestBackend, config: ProxyConfig) -> TestGateway {
    TestGateway::start_with(
        &[
            ("svc.yaml", service("b", 80, &[(backend.addr, true)])),
            (
                "public.yaml",
                route(
                    "public",
                    "  hostnames: [public.example]\n  rules:\n  - backendRefs: [{name: b, port: 80}]",
                ),
            ),
            (
                "slow.yaml",
                route(
                    "slow",
                    "  hostnames: [slow.example]\n  rules:\n  - timeouts: {request: 500ms}\n    backendRefs: [{name: b, port: 80}]",
                ),
            ),
        ],
        config,
    )
    .await
}

/// A well-behaved client: one keep-alive connection, a request every 10 ms, until stopped.
struct Bystander {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<Result<Duration, String>>>,
}

/// What the bystander saw.
#[derive(Debug)]
struct Served {
    requests: usize,
    failures: Vec<String>,
    p99: Duration,
    max: Duration,
}

impl Bystander {
    fn start(gw: &TestGateway) -> Self {
        let (addr, stop) = (gw.addr, Arc::new(AtomicBool::new(false)));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let http = client::http1();
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                let reply = client::send(&http, client::get(addr, "public.example", "/")).await;
                seen.push(match reply {
                    Ok(r) if r.status == 200 => Ok(started.elapsed()),
                    Ok(r) => Err(format!("status {}", r.status)),
                    Err(e) => Err(e),
                });
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        });
        Bystander { stop, task }
    }

    async fn finish(self) -> Served {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.task.await.expect("bystander");
        let mut times: Vec<Duration> = seen.iter().filter_map(|r| r.clone().ok()).collect();
        times.sort();
        let at = |q: f64| {
            times
                .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Served {
            requests: seen.len(),
            failures: seen.into_iter().filter_map(Result::err).collect(),
            p99: at(0.99),
            max: times.last().copied().unwrap_or_default(),
        }
    }

    /// Stops and asserts the bystander was served all along; prints its figures.
    async fn assert_served(self, attack: &str) {
        let served = self.finish().await;
        println!(
            "{attack}: bystander {} requests, p99 {:?}, max {:?}",
            served.requests, served.p99, served.max
        );
        assert!(served.failures.is_empty(), "{attack}: {served:?}");
        // Some attacks are over in a tenth of a second: one request then is all there is.
        assert!(
            served.requests >= 1,
            "{attack}: the bystander never got through: {served:?}"
        );
        assert!(served.max < Duration::from_secs(2), "{attack}: {served:?}");
    }
}

/// Reads until the peer closes or `within` passes; `true` when it closed.
async fn read_until_closed(
    stream: &mut (impl AsyncRead + Unpin),
    within: Duration,
) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buf = [0u8; 16384];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (out, closed)
}

#[tokio::test]
async fn slowloris_heads_are_cut_off_at_the_header_timeout() {
    let b = TestBackend::start("b").await;
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(500),
        ..ProxyConfig::default()
    };
    let gw = gateway(&b, config).await;
    let bystander = Bystander::start(&gw);
    let started = Instant::now();
    let mut tricklers = Vec::new();
    for _ in 0..50 {
        let addr = gw.addr;
        tricklers.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /slowloris HTTP/1.1\r\nHost: public.example\r\nX-Slow: ")
                .await
                .expect("write");
            // One byte every 100 ms: each read resets no timer, the head as a whole is due.
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if s.write_all(b"a").await.is_err() {
                    break;
                }
            }
            read_until_closed(&mut s, Duration::from_secs(5)).await
        }));
    }
    for t in tricklers {
        let (answer, closed) = t.await.expect("trickler");
        assert!(closed, "a trickled head was held open");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    bystander.assert_served("slowloris heads").await;
    assert!(
        !b.paths().iter().any(|p| p == "/slowloris"),
        "a trickled head reached the backend"
    );
}

#[tokio::test]
async fn a_trickled_body_is_cut_off_at_the_rule_timeout() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, ProxyConfig::default()).await;
    let bystander = Bystander::start(&gw);
    let s = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    w.write_all(b"POST /upload HTTP/1.1\r\nHost: slow.example\r\nContent-Length: 100000\r\n\r\n")
        .await
        .expect("head");
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        // Ten bytes every 50 ms: the backend reading the whole upload waits on it.
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if w.write_all(b"0123456789").await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(3), r.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            other => panic!("no answer to a trickled body: {other:?}"),
        }
    }
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    writer.abort();
    bystander.assert_served("slowloris body").await;
}

/// Each request here is followed on its connection by a second one, to `/smuggled`: if the
/// gateway read the first one's framing differently than it forwarded it, the backend would
/// see the second.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: public.example\r\n\r\n";

#[tokio::test]
async fn smuggling_forms_are_refused_or_read_one_way_and_the_connection_closed() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, ProxyConfig::default()).await;
    let bystander = Bystander::start(&gw);
    let head = "POST /upload HTTP/1.1\r\nHost: public.example\r\n";
    let refused = [
        (
            "two lengths",
            format!("{head}Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"),
        ),
        (
            "a length list",
            format!("{head}Content-Length: 4, 4\r\n\r\nabcd"),
        ),
        (
            "a signed length",
            format!("{head}Content-Length: +4\r\n\r\nabcd"),
        ),
        (
            "a negative length",
            format!("{head}Content-Length: -1\r\n\r\nabcd"),
        ),
        (
            "obs-fold",
            format!("{head}X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "a bare CR",
            format!("{head}X-A: a\rX-B: b\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "space before the colon",
            format!("{head}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "chunked, identity",
            format!("{head}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        ),
        (
            "xchunked",
            format!("{head}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "a chunk size past u64",
            format!(
                "{head}Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF1\r\nabcd\r\n0\r\n\r\n"
            ),
        ),
        (
            "a bare LF in a chunk line",
            format!("{head}Transfer-Encoding: chunked\r\n\r\n4;a\nabcd\r\n0\r\n\r\n"),
        ),
        (
            "a space in the target",
            "GET /a b HTTP/1.1\r\nHost: public.example\r\n\r\n".to_owned(),
        ),
        (
            "version HTTP/1.2",
            "GET / HTTP/1.2\r\nHost: public.example\r\n\r\n".to_owned(),
        ),
        (
            "HTTP/2.0 as text",
            "GET / HTTP/2.0\r\nHost: public.example\r\n\r\n".to_owned(),
        ),
        ("HTTP/0.9", "GET /\r\n\r\n".to_owned()),
        (
            "a NUL in a value",
            "GET / HTTP/1.1\r\nHost: public.example\r\nX-A: a\0b\r\n\r\n".to_owned(),
        ),
        (
            "a space in a name",
            "GET / HTTP/1.1\r\nHost: public.example\r\nX A: b\r\n\r\n".to_owned(),
        ),
        (
            "no Host in HTTP/1.1",
            "GET / HTTP/1.1\r\nX-A: b\r\n\r\n".to_owned(),
        ),
    ];
    for (form, raw) in &refused {
        let mut s = TcpStream::connect(gw.addr).await.expect("connect");
        s.write_all(format!("{raw}{SMUGGLED}").as_bytes())
            .await
            .expect("write");
        let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 501"),
            "{form}: {answer}"
        );
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "{form}: one answer: {answer}"
        );
        assert!(
            answer.contains("\"requestId\""),
            "{form}: the JSON error: {answer}"
        );
        assert!(closed, "{form}: the connection is closed");
    }
    assert_eq!(
        b.paths()
            .iter()
            .filter(|p| p.starts_with("/smuggled") || p.starts_with("/upload"))
            .count(),
        0,
        "nothing of a refused request reached the backend: {:?}",
        b.paths()
    );

    // Length and chunked together: read by the transfer coding alone, forwarded without the
    // length, and the connection closed after the answer (RFC 9112 section 6.3), so whatever
    // the length would have framed is never read as a request.
    for (form, raw) in [
        (
            "length then chunked",
            format!("{head}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "chunked then length",
            format!("{head}Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n"),
        ),
    ] {
        let mut s = TcpStream::connect(gw.addr).await.expect("connect");
        s.write_all(format!("{raw}{SMUGGLED}").as_bytes())
            .await
            .expect("write");
        let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{form}: {answer}");
        assert!(
            answer.ends_with("\r\n\r\n0"),
            "{form}: the backend read an empty body: {answer}"
        );
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "{form}: one answer: {answer}"
        );
        assert!(closed, "{form}: the connection is closed after the answer");
    }
    // A bare LF ends a line (RFC 9112 section 2.2 lets a recipient accept it, as nginx does):
    // the backend gets the head the gateway writes, with CRLF, holding exactly what was sent.
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"GET /lf HTTP/1.1\nHost: public.example\nX-B: 1\nConnection: close\n\n")
        .await
        .expect("write");
    let (answer, _) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body: serde_json::Value =
        serde_json::from_str(&answer[answer.find("\r\n\r\n").expect("head") + 4..]).expect("json");
    assert_eq!(body["headers"]["x-b"], "1");
    assert_eq!(body["headers"]["host"], "public.example");
    assert!(
        !b.paths().iter().any(|p| p.starts_with("/smuggled")),
        "{:?}",
        b.paths()
    );
    bystander.assert_served("smuggling forms").await;
}

// HTTP/2 by hand: what a hostile client writes is frames no well-behaved library sends.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET path` to `public.example`: static-table method and scheme, literal path
/// and authority (never indexed, so every block stands alone).
fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x04, path.len() as u8];
    b.extend_from_slice(path.as_bytes());
    b.extend_from_slice(&[0x01, 14]);
    b.extend_from_slice(b"public.example");
    b
}

/// An HTTP/2 connection with the preface and empty SETTINGS written.
async fn h2(gw: &TestGateway) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.expect("preface");
    s
}

/// The frames in `bytes` as (type, flags, stream, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len =
            (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
        if bytes.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

/// The error code of the GOAWAY among `frames`, if one was sent.
fn goaway(frames: &[(u8, u8, u32, Vec<u8>)]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.0 == GOAWAY && f.3.len() >= 8)
        .map(|f| u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]))
}

const ENHANCE_YOUR_CALM: u32 = 0xb;

#[tokio::test]
async fn http2_rapid_reset_is_cut_off_without_reaching_the_backend_for_each_stream() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, ProxyConfig::default()).await;
    let bystander = Bystander::start(&gw);
    // CVE-2023-44487: open a stream and cancel it at once, as fast as the socket takes it,
    // on one connection after another for a second.
    let block = get_block("/reset");
    let streams = 20_000u32;
    let mut burst = Vec::new();
    for i in 0..streams {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    let started = Instant::now();
    let mut connections = 0;
    while started.elapsed() < Duration::from_secs(1) {
        connections += 1;
        let (seen, closed) = flood(
            h2(&gw).await,
            burst.clone(),
            Duration::ZERO,
            Duration::from_secs(5),
        )
        .await;
        assert!(closed, "the connection is closed");
        assert_eq!(goaway(&seen), Some(ENHANCE_YOUR_CALM), "{seen:?}");
    }
    let reached = b.paths().iter().filter(|p| *p == "/reset").count();
    println!(
        "rapid reset: {connections} connections of {streams} cancelled streams each, GOAWAY \
         ENHANCE_YOUR_CALM on each, {reached} streams reached the backend"
    );
    assert!(
        reached < 100 * connections,
        "{reached} cancelled streams reached the backend"
    );
    bystander.assert_served("rapid reset").await;
}

/// This process's resident memory, in MiB: the gateway under test runs in it.
fn rss_mib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split(' ')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096 / (1024 * 1024)
}

/// Writes `burst` while reading nothing for `pause`, then reads what the gateway sent until
/// it closes or `within` passes.
async fn flood(
    s: TcpStream,
    burst: Vec<u8>,
    pause: Duration,
    within: Duration,
) -> (Vec<(u8, u8, u32, Vec<u8>)>, bool) {
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), w.write_all(&burst)).await;
        w
    });
    tokio::time::sleep(pause).await;
    let (got, closed) = read_until_closed(&mut r, within).await;
    drop(writer.await);
    (frames(&got), closed)
}

#[tokio::test]
async fn http2_stream_settings_and_ping_floods_are_bounded() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, ProxyConfig::default()).await;
    let bystander = Bystander::start(&gw);
    let rss_before = rss_mib();

    // More streams at once than the gateway allows (each waits a second at the backend).
    let block = get_block("/slow?ms=1000");
    let mut burst = Vec::new();
    for i in 0..2000u32 {
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &block));
    }
    let (seen, _) = flood(
        h2(&gw).await,
        burst,
        Duration::from_secs(1),
        Duration::from_secs(3),
    )
    .await;
    let slow = b.paths().iter().filter(|p| p.starts_with("/slow")).count();
    let refused = seen.iter().filter(|f| f.0 == RST_STREAM).count();
    println!(
        "stream flood: backend saw {slow} of 2000, {refused} resets, goaway {:?}",
        goaway(&seen)
    );
    assert!(slow <= 256, "{slow} streams at once reached the backend");
    assert!(
        refused > 0 || goaway(&seen).is_some(),
        "the streams past the limit were refused"
    );

    // SETTINGS and PING floods from a client that reads none of the answers: each needs an
    // answer the gateway cannot send, so it stops reading once its socket is full instead of
    // queueing answers without end.
    for (name, one) in [
        ("SETTINGS", frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff])),
        ("PING", frame(PING, 0, 0, b"12345678")),
    ] {
        let total = 64usize << 20;
        let chunk: Vec<u8> = one.iter().copied().cycle().take(one.len() * 4096).collect();
        let mut s = h2(&gw).await;
        let mut written = 0usize;
        while written < total {
            match tokio::time::timeout(Duration::from_secs(2), s.write_all(&chunk)).await {
                Ok(Ok(())) => written += chunk.len(),
                _ => break,
            }
        }
        println!(
            "{name} flood, never read: the gateway took {} MiB of 64 before it stopped reading",
            written >> 20
        );
        assert!(
            written < total,
            "{name}: the gateway read 64 MiB of frames it could not answer"
        );
    }

    // An HPACK bomb: one 4 KiB header in the dynamic table, referenced 10,000 times in one
    // block, 40 MB decoded from 14 KB sent.
    let mut block = get_block("/bomb");
    block.extend_from_slice(&[0x40, 6]);
    block.extend_from_slice(b"x-bomb");
    block.extend_from_slice(&[0x7f, 0xa1, 0x1e]); // 4000, as an HPACK integer
    block.extend(std::iter::repeat_n(b'a', 4000));
    block.extend(std::iter::repeat_n(0xbe, 10_000)); // index 62: the entry just added
    let mut s = h2(&gw).await;
    s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await
        .expect("bomb");
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    let seen = frames(&got);
    println!(
        "HPACK bomb: frames {:?}, goaway {:?}",
        seen.iter()
            .map(|f| (f.0, f.2, f.3.len()))
            .collect::<Vec<_>>(),
        goaway(&seen)
    );
    assert!(
        !b.paths().iter().any(|p| p == "/bomb"),
        "the bomb reached the backend"
    );
    assert!(
        seen.iter().any(|f| f.0 == RST_STREAM
            || f.0 == GOAWAY
            || (f.0 == HEADERS && f.3.first() != Some(&0x88))),
        "the bombed stream was refused: {seen:?}"
    );

    let grown = rss_mib().saturating_sub(rss_before);
    println!("HTTP/2 floods: RSS grew {grown} MiB");
    assert!(grown < 128, "the floods grew memory by {grown} MiB");
    bystander.assert_served("HTTP/2 floods").await;
}

#[tokio::test]
async fn websocket_frames_after_a_close_go_nowhere() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, ProxyConfig::default()).await;
    let bystander = Bystander::start(&gw);
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: public.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.expect("101 head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mask = [1u8, 2, 3, 4];
    let masked = |op: u8, payload: &[u8]| {
        let mut f = vec![0x80 | op, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    };
    // The tunnel works: a text frame comes back (unmasked, from the server).
    s.write_all(&masked(0x1, b"before")).await.expect("frame");
    let mut echo = [0u8; 8];
    s.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"\x81\x06before");
    // A close (code 1000), then a text frame and garbage nobody may act on.
    let mut after = masked(0x8, &1000u16.to_be_bytes());
    after.extend(masked(0x1, b"after-close"));
    after.extend_from_slice(&[0xff; 64]);
    s.write_all(&after).await.expect("frames");
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(closed, "the connection is closed after the close");
    assert!(
        got.is_empty() || got[0] == 0x88,
        "only a close frame may follow: {got:?}"
    );
    assert!(
        !got.windows(11).any(|w| w == b"after-close"),
        "a frame after the close was echoed"
    );
    bystander.assert_served("websocket after close").await;
}

#[tokio::test]
async fn a_client_that_never_reads_holds_a_bounded_part_of_the_download() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, ProxyConfig::default()).await;
    let bystander = Bystander::start(&gw);
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"GET /stream?bytes=4294967296 HTTP/1.1\r\nHost: public.example\r\n\r\n")
        .await
        .expect("request");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_one = b.streamed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_two = b.streamed();
    println!("never reads: backend had sent {at_one} B after 1 s, {at_two} B after 2 s");
    assert!(
        at_two < 64 << 20,
        "{at_two} bytes were pulled from the backend for a client that reads none"
    );
    assert!(
        at_two - at_one < 4 << 20,
        "the download kept flowing: {at_one} then {at_two}"
    );
    // Once it goes, so does its upstream connection (it is never pooled half-read).
    let open_with_it = b.open_connections();
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(3);
    while b.open_connections() >= open_with_it && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        b.open_connections() < open_with_it,
        "the abandoned download's connection stayed open"
    );
    bystander.assert_served("a client that never reads").await;
}
