//! HTTPS with certificates from `kubernetes.io/tls` Secrets made by a real `openssl`: SNI picks
//! the certificate (exact, then wildcard), h2 over ALPN, rotation without dropping a request in
//! flight, a broken Secret costing only its own hosts, `httpsRedirect`, and `curl` as the
//! client.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_tests::backend::TestBackend;
use sluice_tests::client::{self, fetch};
use sluice_tests::eventually;
use sluice_tests::harness::{TestGateway, temp_dir};
use sluice_tests::manifests::{route, service};
use sluice_tests::tls::{Ca, Certificate, connect, presented};

/// Route `name` for `hosts`, its `tls` from Secret `secret`, with extra spec lines `extra`.
fn tls_route(name: &str, hosts: &[&str], secret: &str, extra: &str) -> String {
    let list = hosts.join(", ");
    route(
        name,
        &format!(
            "  hostnames: [{list}]\n  tls: [{{secretName: {secret}}}]\n{extra}  rules:\n  - name: main\n    backendRefs: [{{name: svc, port: 80}}]\n    filters: {{securityHeaders: {{}}}}"
        ),
    )
}

/// A GET over an established TLS stream (HTTP/1.1 or, when ALPN chose it, h2); returns the
/// status, the backend's JSON and the response's `strict-transport-security`.
async fn get_over(
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    host: &str,
    path: &str,
) -> (u16, serde_json::Value, Option<String>) {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        let req = Request::get(format!("https://{host}{path}"))
            .body(Full::<Bytes>::default())
            .expect("request");
        sender.send_request(req).await.expect("h2 response")
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("http1 handshake");
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", host)
            .body(Full::<Bytes>::default())
            .expect("request");
        sender.send_request(req).await.expect("http1 response")
    };
    let status = response.status().as_u16();
    let hsts = response
        .headers()
        .get("strict-transport-security")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, json, hsts)
}

struct Setup {
    gw: TestGateway,
    https: SocketAddr,
    ca: Ca,
    a: Certificate,
    wild: Certificate,
    _backend: TestBackend,
}

async fn setup(dir: &Path) -> Setup {
    let backend = TestBackend::start("b").await;
    let ca = Ca::new(dir);
    let a = ca.issue(&["a.test"]);
    let wild = ca.issue(&["*.wild.test"]);
    let gw = TestGateway::start(&[
        ("svc.yaml", service("svc", 80, &[(backend.addr, true)])),
        ("a-tls.yaml", a.secret("a-tls")),
        ("wild-tls.yaml", wild.secret("wild-tls")),
        ("a.yaml", tls_route("a", &["a.test"], "a-tls", "")),
        (
            "wild.yaml",
            tls_route("wild", &["\"*.wild.test\""], "wild-tls", ""),
        ),
    ])
    .await;
    let https = gw.serve_tls().await;
    Setup {
        gw,
        https,
        ca,
        a,
        wild,
        _backend: backend,
    }
}

#[tokio::test]
async fn sni_picks_the_exact_certificate_then_the_wildcard_and_the_backend_hears_https() {
    let dir = temp_dir("tls-sni");
    let s = setup(&dir).await;
    let roots = [&s.ca.root];
    let stream = connect(s.https, "a.test", &roots, &[b"http/1.1"])
        .await
        .expect("a.test");
    assert_eq!(presented(&stream), s.a.der());
    let version = stream.get_ref().1.protocol_version();
    assert!(
        matches!(
            version,
            Some(rustls::ProtocolVersion::TLSv1_3 | rustls::ProtocolVersion::TLSv1_2)
        ),
        "{version:?}"
    );
    let (status, json, hsts) = get_over(stream, "a.test", "/x").await;
    assert_eq!(status, 200);
    assert_eq!(json["headers"]["x-forwarded-proto"], "https");
    assert!(
        hsts.is_some_and(|v| v.contains("max-age=")),
        "HSTS over HTTPS"
    );

    let stream = connect(s.https, "shop.wild.test", &roots, &[])
        .await
        .expect("wildcard");
    assert_eq!(presented(&stream), s.wild.der());
    // A wildcard covers one label only, and an unknown name has no certificate at all.
    assert!(
        connect(s.https, "a.b.wild.test", &roots, &[])
            .await
            .is_err()
    );
    assert!(connect(s.https, "unknown.test", &roots, &[]).await.is_err());
    // Plain HTTP still serves, without HSTS.
    let r = fetch(&client::http1(), s.gw.addr, "a.test", "/x").await;
    assert_eq!(r.status, 200);
    assert!(r.header("strict-transport-security").is_none());
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn alpn_negotiates_h2() {
    let dir = temp_dir("tls-h2");
    let s = setup(&dir).await;
    let stream = connect(s.https, "a.test", &[&s.ca.root], &[b"h2", b"http/1.1"])
        .await
        .expect("connect");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, json, _) = get_over(stream, "a.test", "/h2").await;
    assert_eq!(status, 200);
    assert_eq!(json["path"], "/h2");
    // A client offering only HTTP/1.1 gets it.
    let stream = connect(s.https, "a.test", &[&s.ca.root], &[b"http/1.1"])
        .await
        .expect("connect");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn a_rotated_secret_serves_new_connections_and_the_request_in_flight_finishes() {
    let dir = temp_dir("tls-rotate");
    let s = setup(&dir).await;
    let stream = connect(s.https, "a.test", &[&s.ca.root], &[b"http/1.1"])
        .await
        .expect("connect");
    let in_flight = tokio::spawn(get_over(stream, "a.test", "/slow?ms=1500"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let renewed = s.ca.issue(&["a.test"]);
    let generation = s.gw.generation();
    s.gw.write("a-tls.yaml", &renewed.secret("a-tls"));
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.gw.generation() > generation
        })
        .await
    );
    let fresh = connect(s.https, "a.test", &[&s.ca.root], &[])
        .await
        .expect("new connection");
    assert_eq!(
        presented(&fresh),
        renewed.der(),
        "new connections get the new certificate"
    );
    let (status, _, _) = in_flight.await.expect("task");
    assert_eq!(status, 200, "the request on the old connection finished");
}

#[tokio::test]
async fn a_broken_secret_costs_only_its_own_hosts() {
    let dir = temp_dir("tls-broken");
    let s = setup(&dir).await;
    let generation = s.gw.generation();
    s.gw.write(
        "broken-tls.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: broken-tls, namespace: default}\ntype: kubernetes.io/tls\nstringData: {tls.crt: not a certificate, tls.key: nor a key}\n",
    );
    s.gw.write(
        "broken.yaml",
        &tls_route("broken", &["broken.test"], "broken-tls", ""),
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.gw.generation() > generation
        })
        .await
    );
    assert!(
        connect(s.https, "broken.test", &[&s.ca.root], &[])
            .await
            .is_err()
    );
    let ok = connect(s.https, "a.test", &[&s.ca.root], &[])
        .await
        .expect("a.test keeps its certificate");
    assert_eq!(presented(&ok), s.a.der());
    // Its routes still serve plain HTTP.
    assert_eq!(
        fetch(&client::http1(), s.gw.addr, "broken.test", "/")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn https_redirect_sends_plain_http_to_https_with_path_and_query() {
    let dir = temp_dir("tls-redirect");
    let backend = TestBackend::start("b").await;
    let ca = Ca::new(&dir);
    let cert = ca.issue(&["secure.test"]);
    let gw = TestGateway::start(&[
        ("svc.yaml", service("svc", 80, &[(backend.addr, true)])),
        ("tls.yaml", cert.secret("secure-tls")),
        (
            "secure.yaml",
            tls_route(
                "secure",
                &["secure.test"],
                "secure-tls",
                "  httpsRedirect: true\n",
            ),
        ),
    ])
    .await;
    let https = gw.serve_tls().await;
    let r = fetch(&client::http1(), gw.addr, "secure.test", "/a/b?c=1&d=2").await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://secure.test/a/b?c=1&d=2")
    );
    assert_eq!(backend.hits(), 0);
    let stream = connect(https, "secure.test", &[&ca.root], &[])
        .await
        .expect("connect");
    let (status, _, _) = get_over(stream, "secure.test", "/a/b?c=1").await;
    assert_eq!(status, 200, "over HTTPS the route serves");
}

#[tokio::test]
async fn curl_gets_the_page_over_https() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("curl not found: install the Debian package curl (scripts/test.sh does)");
    }
    let dir = temp_dir("tls-curl");
    let s = setup(&dir).await;
    let ca = dir.join("a.pem");
    std::fs::write(&ca, &s.ca.root.cert_pem).expect("write CA");
    let port = s.https.port();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-sS",
                "--http2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
            ])
            .arg("--resolve")
            .arg(format!("a.test:{port}:127.0.0.1"))
            .arg("--cacert")
            .arg(&ca)
            .arg(format!("https://a.test:{port}/curl"))
            .output()
    })
    .await
    .expect("task")
    .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "200 2",
        "curl said: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
