//! Authentication and authorization through a running gateway to real backends: JWTs from a
//! Secret and from a real JWKS endpoint, API keys rotated by editing their Secret, identity
//! headers, and the spellings of a path or host that must not get around a rule's checks.

use std::time::Duration;

use http::Request;
use http_body_util::Full;
use serde_json::json;
use sluice_proxy::ProxyConfig;
use sluice_proxy::state::JwksTiming;
use sluice_tests::backend::TestBackend;
use sluice_tests::client::{self, Reply, fetch, send};
use sluice_tests::eventually;
use sluice_tests::harness::TestGateway;
use sluice_tests::jwks::JwksServer;
use sluice_tests::manifests::{route, service};
use sluice_tests::tokens::{self, AUDIENCE, ISSUER, RSA_PUBLIC, RSA2_PRIVATE, RSA2_PUBLIC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A JWT provider block (indented for a route's `spec.authentication`) reading `corp-keys`.
fn jwt_from_secret() -> String {
    format!(
        "    jwt:\n      providers:\n      - name: corp\n        issuer: {ISSUER}\n        audiences: [{AUDIENCE}]\n        algorithms: [RS256]\n        keySecretRef: {{name: corp-keys, key: public.pem}}\n"
    )
}

fn keys_secret() -> String {
    tokens::secret("corp-keys", &[("public.pem", RSA_PUBLIC)])
}

/// `GET path` with `Host: host` and extra headers.
async fn get_with(
    c: &client::HttpClient,
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut b = Request::get(format!("http://{}{path}", gw.addr)).header("host", "api.example");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::default()).expect("request"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// A gateway serving `spec` as route `r` to Service `b` (a backend named `name`), with the
/// `corp-keys` Secret beside it.
async fn behind_corp_keys(name: &str, spec: &str) -> (TestBackend, TestGateway) {
    let b = TestBackend::start(name).await;
    let gw = TestGateway::start(&[
        ("svc.yaml", service("b", 80, &[(b.addr, true)])),
        ("keys.yaml", keys_secret()),
        ("route.yaml", route("r", spec)),
    ])
    .await;
    (b, gw)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn a_jwt_rule_refuses_without_a_valid_token_and_passes_the_identity_on() {
    let b = TestBackend::start("orders").await;
    let spec = format!(
        "  authentication:\n{}  rules:\n  - name: orders\n    backendRefs: [{{name: orders, port: 80}}]",
        jwt_from_secret()
    );
    let (gw, log) = TestGateway::start_with_access_log(
        &[
            ("svc.yaml", service("orders", 80, &[(b.addr, true)])),
            ("keys.yaml", keys_secret()),
            ("route.yaml", route("orders", &spec)),
        ],
        ProxyConfig::default(),
    )
    .await;
    let c = client::http1();

    let r = get_with(&c, &gw, "/orders", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="sluice""#)
    );
    assert_eq!(r.json()["status"], 401);
    assert_eq!(
        r.json()["requestId"],
        r.header("x-request-id").unwrap_or_default()
    );

    let bad = get_with(
        &c,
        &gw,
        "/orders",
        &[("authorization", "Bearer not.a.token")],
    )
    .await;
    assert_eq!(bad.status, 401);
    assert_eq!(
        bad.header("www-authenticate"),
        Some(r#"Bearer realm="sluice", error="invalid_token""#)
    );
    let forged = tokens::sign(RSA2_PRIVATE, &tokens::claims("mallory", &["admin"]), None);
    let r = get_with(&c, &gw, "/orders", &[("authorization", &bearer(&forged))]).await;
    assert_eq!(r.status, 401, "signed by a key the provider does not trust");
    assert_eq!(b.hits(), 0, "nothing unauthenticated reached the backend");

    let token = tokens::token("user-1", &["admin", "ops"]);
    let ok = get_with(&c, &gw, "/orders", &[("authorization", &bearer(&token))]).await;
    assert_eq!(ok.status, 200);
    let seen = &ok.json()["headers"];
    assert_eq!(seen["x-user-id"], "user-1");
    assert_eq!(seen["x-user-roles"], "admin,ops");
    assert_eq!(seen["x-auth-provider"], "corp");
    assert!(
        seen.get("authorization").is_none(),
        "forwardCredentials is false by default: {seen}"
    );

    // The access log says why, never what the credential was.
    assert!(
        eventually(Duration::from_secs(2), || async {
            log.text().contains("\"reason\":\"bad token signature\"")
        })
        .await,
        "{}",
        log.text()
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            log.text().contains("\"user\":\"user-1\"")
        })
        .await
    );
    assert!(!log.text().contains(&token) && !log.text().contains(&forged));
}

#[tokio::test]
async fn roles_and_claims_decide_403_and_anonymous_rules_opt_out() {
    let spec = format!(
        "  authentication:\n{}  rules:\n  - name: admin\n    matches: [{{path: {{value: /admin}}}}]\n    authorization: {{requiredRoles: [admin, ops], require: AllOf}}\n    backendRefs: [{{name: b, port: 80}}]\n  - name: tenant\n    matches: [{{path: {{value: /tenant}}}}]\n    authorization: {{claims: [{{name: tenant, values: [acme]}}]}}\n    backendRefs: [{{name: b, port: 80}}]\n  - name: health\n    matches: [{{path: {{value: /health}}}}]\n    authentication: {{anonymous: true}}\n    backendRefs: [{{name: b, port: 80}}]",
        jwt_from_secret()
    );
    let (_backend, gw) = behind_corp_keys("admin", &spec).await;
    let c = client::http1();
    let ops_only = bearer(&tokens::token("u", &["ops"]));
    let both = bearer(&tokens::token("u", &["admin", "ops"]));
    let r = get_with(&c, &gw, "/admin", &[("authorization", &ops_only)]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["status"], 403);
    assert_eq!(
        get_with(&c, &gw, "/admin", &[("authorization", &both)])
            .await
            .status,
        200
    );

    let mut acme = tokens::claims("u", &[]);
    acme["tenant"] = json!("acme");
    let mut other = tokens::claims("u", &[]);
    other["tenant"] = json!("globex");
    let acme = bearer(&tokens::sign(tokens::RSA_PRIVATE, &acme, None));
    let other = bearer(&tokens::sign(tokens::RSA_PRIVATE, &other, None));
    assert_eq!(
        get_with(&c, &gw, "/tenant", &[("authorization", &acme)])
            .await
            .status,
        200
    );
    assert_eq!(
        get_with(&c, &gw, "/tenant", &[("authorization", &other)])
            .await
            .status,
        403
    );

    let health = get_with(&c, &gw, "/health", &[]).await;
    assert_eq!(health.status, 200, "anonymous: true opts the rule out");
}

#[tokio::test]
async fn identity_headers_sent_by_a_client_never_reach_a_backend() {
    let spec = format!(
        "  rules:
  - name: open
    matches: [{{path: {{value: /open}}}}]
    backendRefs: [{{name: b, port: 80}}]
  - name: closed
    matches: [{{path: {{value: /closed}}}}]
    authentication:
      jwt:
        providers:
        - name: corp
          issuer: {ISSUER}
          algorithms: [RS256]
          keySecretRef: {{name: corp-keys, key: public.pem}}
          claimToHeaders: [{{claim: sub, header: X-User-Id}}, {{claim: tenant, header: X-Tenant}}]
    backendRefs: [{{name: b, port: 80}}]"
    );
    let (_backend, gw) = behind_corp_keys("b", &spec).await;
    assert_eq!(
        gw.gateway.snapshot().rules.len(),
        2,
        "both rules compiled: {spec}"
    );
    let c = client::http1();
    let spoofed = [
        ("x-user-id", "root"),
        ("x-user-roles", "admin"),
        ("x-consumer", "partner"),
        ("x-auth-provider", "corp"),
        ("x-tenant", "acme"),
    ];
    let open = get_with(&c, &gw, "/open", &spoofed).await;
    assert_eq!(open.status, 200);
    for (name, _) in spoofed {
        assert!(
            open.json()["headers"].get(name).is_none(),
            "{name} reached the backend of an open rule"
        );
    }
    let mut claims = tokens::claims("user-1", &[]);
    claims["tenant"] = json!("globex");
    let token = bearer(&tokens::sign(tokens::RSA_PRIVATE, &claims, None));
    let mut with_token = spoofed.to_vec();
    with_token.push(("authorization", &token));
    let closed = get_with(&c, &gw, "/closed", &with_token).await;
    assert_eq!(closed.status, 200);
    let seen = &closed.json()["headers"];
    assert_eq!(seen["x-user-id"], "user-1");
    assert_eq!(
        seen["x-tenant"], "globex",
        "the claim, not the client's value"
    );
    assert!(
        seen.get("x-user-roles").is_none(),
        "not mapped by this provider"
    );
    assert!(seen.get("x-consumer").is_none());
}

#[tokio::test]
async fn a_token_in_the_wrong_place_is_no_token() {
    let spec = format!(
        "  authentication:\n    jwt:\n      providers:\n      - name: corp\n        issuer: {ISSUER}\n        algorithms: [RS256]\n        keySecretRef: {{name: corp-keys, key: public.pem}}\n        from: {{queryParam: access_token}}\n    forwardCredentials: false\n  rules:\n  - backendRefs: [{{name: b, port: 80}}]"
    );
    let (_backend, gw) = behind_corp_keys("b", &spec).await;
    let c = client::http1();
    let token = tokens::token("u", &[]);
    let in_header = get_with(&c, &gw, "/x", &[("authorization", &bearer(&token))]).await;
    assert_eq!(in_header.status, 401);
    assert_eq!(
        in_header.header("www-authenticate"),
        Some(r#"Bearer realm="sluice""#)
    );
    let in_query = get_with(&c, &gw, &format!("/x?a=1&access_token={token}&b=2"), &[]).await;
    assert_eq!(in_query.status, 200);
    assert_eq!(
        in_query.json()["path"],
        "/x?a=1&b=2",
        "the credential is removed from the query"
    );
}

#[tokio::test]
async fn api_keys_name_their_consumer_and_rotate_with_their_secret() {
    let b = TestBackend::start("partners").await;
    let spec = "  rules:\n  - authentication:\n      apiKey: {secretRefs: [{name: partner-keys}]}\n    backendRefs: [{name: b, port: 80}]";
    let (gw, log) = TestGateway::start_with_access_log(
        &[
            ("svc.yaml", service("b", 80, &[(b.addr, true)])),
            (
                "keys.yaml",
                tokens::secret("partner-keys", &[("acme", "key-one-0123456789")]),
            ),
            ("route.yaml", route("partners", spec)),
        ],
        ProxyConfig::default(),
    )
    .await;
    let c = client::http1();
    let r = get_with(&c, &gw, "/p", &[("x-api-key", "key-one-0123456789")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-consumer"], "acme");
    assert_eq!(r.json()["headers"]["x-auth-provider"], "apiKey");
    assert!(
        r.json()["headers"].get("x-api-key").is_none(),
        "key not forwarded"
    );
    assert_eq!(
        get_with(&c, &gw, "/p", &[("x-api-key", "key-two-0123456789")])
            .await
            .status,
        401
    );
    assert_eq!(get_with(&c, &gw, "/p", &[]).await.status, 401);
    let debug = fetch(&c, gw.admin, "admin", "/debug/snapshot").await;
    let debug = String::from_utf8_lossy(&debug.body);
    assert!(debug.contains("\"key_count\": 1"), "{debug}");
    assert!(
        !debug.contains("key-one"),
        "/debug/snapshot never shows a key"
    );

    // Rotation: the Secret file is edited; the old key stops working at the next snapshot.
    gw.write(
        "keys.yaml",
        &tokens::secret("partner-keys", &[("acme", "key-two-0123456789")]),
    );
    let rotated = eventually(Duration::from_secs(5), || async {
        get_with(&c, &gw, "/p", &[("x-api-key", "key-two-0123456789")])
            .await
            .status
            == 200
    })
    .await;
    assert!(rotated, "the new key works");
    assert_eq!(
        get_with(&c, &gw, "/p", &[("x-api-key", "key-one-0123456789")])
            .await
            .status,
        401
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let text = log.text();
    assert!(text.contains("\"user\":\"acme\""), "{text}");
    assert!(
        !text.contains("key-one") && !text.contains("key-two"),
        "keys are never logged"
    );
}

#[tokio::test]
async fn a_missing_secret_fails_closed_until_it_appears() {
    let b = TestBackend::start("b").await;
    let spec = format!(
        "  authentication:\n{}  rules:\n  - backendRefs: [{{name: b, port: 80}}]",
        jwt_from_secret()
    );
    let open = TestBackend::start("open").await;
    let gw = TestGateway::start(&[
        ("svc.yaml", service("b", 80, &[(b.addr, true)])),
        ("open-svc.yaml", service("open", 80, &[(open.addr, true)])),
        (
            "route.yaml",
            route(
                "r",
                &spec.replace("  rules:", "  hostnames: [api.example]\n  rules:"),
            ),
        ),
        (
            "open.yaml",
            route(
                "open",
                "  hostnames: [open.example]\n  rules:\n  - backendRefs: [{name: open, port: 80}]",
            ),
        ),
    ])
    .await;
    let c = client::http1();
    let token = bearer(&tokens::token("u", &[]));
    let r = get_with(&c, &gw, "/x", &[("authorization", &token)]).await;
    assert_eq!(
        r.status, 503,
        "no keys: refused, never served unauthenticated"
    );
    assert_eq!(get_with(&c, &gw, "/x", &[]).await.status, 503);
    assert_eq!(b.hits(), 0);
    assert_eq!(
        fetch(&c, gw.addr, "open.example", "/").await.status,
        200,
        "others serve"
    );

    gw.write("keys.yaml", &keys_secret());
    assert!(
        eventually(Duration::from_secs(5), || async {
            get_with(&c, &gw, "/x", &[("authorization", &token)])
                .await
                .status
                == 200
        })
        .await
    );
}

/// Sends `raw` on a fresh connection; returns the status line and what the gateway answered.
async fn raw(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn no_spelling_of_a_protected_path_or_host_skips_its_checks() {
    let admin = TestBackend::start("admin").await;
    let public = TestBackend::start("public").await;
    let spec_admin = format!(
        "  rules:\n  - name: admin\n    matches: [{{path: {{value: /api/admin}}}}]\n    authentication:\n{}    backendRefs: [{{name: admin, port: 80}}]",
        jwt_from_secret()
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    let gw = TestGateway::start(&[
        ("svc.yaml", service("admin", 80, &[(admin.addr, true)])),
        ("svc-public.yaml", service("public", 80, &[(public.addr, true)])),
        ("keys.yaml", keys_secret()),
        ("admin.yaml", route("admin", &spec_admin)),
        (
            "internal.yaml",
            route(
                "internal",
                &format!(
                    "  hostnames: [admin.internal]\n  authentication:\n{}  rules:\n  - backendRefs: [{{name: admin, port: 80}}]",
                    jwt_from_secret()
                ),
            ),
        ),
        ("public.yaml", route("public", "  rules:\n  - backendRefs: [{name: public, port: 80}]")),
    ])
    .await;
    assert_eq!(gw.gateway.snapshot().rules.len(), 3);
    // Each spelling with what it must get without a token: 401 (it is the protected path),
    // 400 (refused as ambiguous), or 200 from the public rule (another path).
    let paths: &[(&[u8], u16)] = &[
        (b"/api/admin", 401),
        (b"/api/admin/../admin", 401),
        (b"/api/%61dmin", 401),
        (b"/api/%61%64min", 401),
        (b"//api/admin", 401),
        (b"/api//admin", 401),
        (b"/api/admin/.", 401),
        (b"/api/./admin", 401),
        (b"/API/admin", 200),
        (b"/api/admin;x", 400),
        (b"/api;x/admin", 400),
        (b"/api/admin%2f..", 400),
        (b"/api/x%2F..%2Fadmin", 400),
        (b"/api%5cadmin", 400),
        (b"/api\\admin", 400),
        (b"/api/admin%00.json", 400),
        (b"/api/%C0%AFadmin", 200),
        (b"/api/\xc0\xafadmin", 400),
        (b"/api/admin#x", 401),
        (b"/api/admin?x=../../", 401),
    ];
    for (path, expected) in paths {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(path);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n");
        let answer = raw(gw.addr, &req).await;
        let shown = String::from_utf8_lossy(path);
        let status: u16 = answer
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{shown}: no status in {answer:?}"));
        assert_eq!(status, *expected, "{shown}: {answer}");
        if status == 200 {
            // Only the public rule may have answered, and only with a path it matched: never
            // one a backend could read as the admin path.
            assert!(
                answer.contains("\"backend\":\"public\""),
                "{shown}: {answer}"
            );
            let body = &answer[answer.find("\r\n\r\n").expect("head") + 4..];
            let seen: serde_json::Value = serde_json::from_str(body).expect("json");
            let forwarded = seen["path"].as_str().unwrap_or_default();
            // Paths are case-sensitive (as in the Gateway API): `/API/admin` is another path,
            // served by the public rule as it was matched (README: a case-insensitive backend
            // needs its own protection).
            assert!(
                !forwarded.starts_with("/api/admin"),
                "{shown} reached a backend as {forwarded}"
            );
            if *path == b"/API/admin" {
                assert_eq!(forwarded, "/API/admin");
            }
        }
    }
    // Absolute-form targets and hosts a backend could read as the protected one.
    for request in [
        "GET http://admin.internal/ HTTP/1.1\r\nHost: public.example\r\n",
        "GET http://user:pw@admin.internal/ HTTP/1.1\r\nHost: public.example\r\n",
        "GET / HTTP/1.1\r\nHost: user:pw@admin.internal\r\n",
        "GET / HTTP/1.1\r\nHost: admin.internal:abc\r\n",
        "GET / HTTP/1.1\r\nHost: admin.internal/x\r\n",
        "GET / HTTP/1.1\r\nHost: admin .internal\r\n",
        "GET / HTTP/1.1\r\nHost: admin.internal\r\nHost: public.example\r\n",
        "GET / HTTP/1.1\r\n",
    ] {
        let answer = raw(
            gw.addr,
            format!("{request}Connection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 401"),
            "{request:?}: {answer}"
        );
    }
    assert_eq!(
        admin.hits(),
        0,
        "nothing reached the protected backend without a token"
    );

    // With a token, the protected rule serves, and its backend gets the path it matched.
    let token = tokens::token("u", &[]);
    let answer = raw(
        gw.addr,
        format!(
            "GET /api/./x/../admin HTTP/1.1\r\nHost: public.example\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"path\":\"/api/admin\""), "{answer}");
}

fn jwks_route(uri: &str) -> String {
    route(
        "jwks",
        &format!(
            "  authentication:\n    jwt:\n      providers:\n      - name: idp\n        issuer: {ISSUER}\n        algorithms: [RS256]\n        jwksUri: {uri}\n  rules:\n  - backendRefs: [{{name: b, port: 80}}]"
        ),
    )
}

/// A gateway whose one route needs a token verified with `issuer`'s keys.
async fn behind_jwks(issuer: &JwksServer) -> (TestBackend, TestGateway) {
    let b = TestBackend::start("b").await;
    let gw = TestGateway::start_with(
        &[
            ("svc.yaml", service("b", 80, &[(b.addr, true)])),
            ("route.yaml", jwks_route(&issuer.uri())),
        ],
        quick_jwks(),
    )
    .await;
    (b, gw)
}

fn quick_jwks() -> ProxyConfig {
    ProxyConfig {
        jwks: JwksTiming {
            refresh: Duration::from_secs(3600),
            refetch_floor: Duration::from_millis(300),
            timeout: Duration::from_secs(2),
        },
        ..ProxyConfig::default()
    }
}

#[tokio::test]
async fn keys_from_a_jwks_endpoint_rotate_and_outlive_the_issuer() {
    let issuer = JwksServer::start(vec![tokens::jwk(RSA_PUBLIC, "k1")]).await;
    let (_backend, gw) = behind_jwks(&issuer).await;
    let c = client::http1();
    let k1 = bearer(&tokens::sign(
        tokens::RSA_PRIVATE,
        &tokens::claims("u1", &[]),
        Some("k1"),
    ));
    assert!(
        eventually(Duration::from_secs(5), || async {
            get_with(&c, &gw, "/x", &[("authorization", &k1)])
                .await
                .status
                == 200
        })
        .await
    );

    // The issuer rotates to k2: a token naming k2 makes the gateway fetch the new set.
    issuer.replace(vec![tokens::jwk(RSA2_PUBLIC, "k2")]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let k2 = bearer(&tokens::sign(
        RSA2_PRIVATE,
        &tokens::claims("u2", &[]),
        Some("k2"),
    ));
    let r = get_with(&c, &gw, "/x", &[("authorization", &k2)]).await;
    assert_eq!(r.status, 200, "a new kid is fetched on demand");
    assert_eq!(r.json()["headers"]["x-user-id"], "u2");

    // The issuer goes down: the last good keys keep serving, new tokens included.
    issuer.go_down();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let bogus = bearer(&tokens::sign(
        RSA2_PRIVATE,
        &tokens::claims("u3", &[]),
        Some("k9"),
    ));
    assert_eq!(
        get_with(&c, &gw, "/x", &[("authorization", &bogus)])
            .await
            .status,
        401
    );
    let fresh = bearer(&tokens::sign(
        RSA2_PRIVATE,
        &tokens::claims("u4", &[]),
        Some("k2"),
    ));
    assert_eq!(
        get_with(&c, &gw, "/x", &[("authorization", &fresh)])
            .await
            .status,
        200
    );
    issuer.come_back();
}

#[tokio::test]
async fn a_flood_of_unknown_kids_cannot_hammer_the_issuer() {
    let issuer = JwksServer::start(vec![tokens::jwk(RSA_PUBLIC, "k1")]).await;
    let (_backend, gw) = behind_jwks(&issuer).await;
    let c = client::http1();
    assert!(eventually(Duration::from_secs(5), || async { issuer.fetches() >= 1 }).await);
    let started = std::time::Instant::now();
    let before = issuer.fetches();
    for i in 0..200 {
        let kid = format!("made-up-{i}");
        let t = bearer(&tokens::sign(
            tokens::RSA_PRIVATE,
            &tokens::claims("u", &[]),
            Some(&kid),
        ));
        assert_eq!(
            get_with(&c, &gw, "/x", &[("authorization", &t)])
                .await
                .status,
            401
        );
    }
    let elapsed = started.elapsed();
    let fetched = issuer.fetches() - before;
    // One on-demand fetch per floor (300 ms) at most, however many bogus kids arrive.
    let allowed = (elapsed.as_millis() / 300) as usize + 1;
    assert!(
        fetched <= allowed,
        "{fetched} fetches for 200 unknown kids in {elapsed:?} (at most {allowed})"
    );
}

#[tokio::test]
async fn an_issuer_that_never_answered_fails_closed() {
    let issuer = JwksServer::start(vec![]).await;
    issuer.go_down();
    let (b, gw) = behind_jwks(&issuer).await;
    let c = client::http1();
    let t = bearer(&tokens::token("u", &[]));
    assert_eq!(
        get_with(&c, &gw, "/x", &[("authorization", &t)])
            .await
            .status,
        503
    );
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn a_rule_with_broken_authentication_refuses_instead_of_falling_through() {
    let admin = TestBackend::start("admin").await;
    let public = TestBackend::start("public").await;
    // clockSkew above the 10m limit: the rule cannot compile, but it asked for a token. Its
    // requests must not reach the route's open rule, which matches them too.
    let spec = "  authentication:\n    jwt:\n      providers:\n      - name: corp\n        algorithms: [RS256]\n        keySecretRef: {name: corp-keys, key: public.pem}\n        clockSkew: 20m\n  rules:\n  - name: admin\n    matches: [{path: {value: /admin}}]\n    backendRefs: [{name: admin, port: 80}]\n  - name: open\n    authentication: {anonymous: true}\n    backendRefs: [{name: public, port: 80}]";
    let gw = TestGateway::start(&[
        ("svc.yaml", service("admin", 80, &[(admin.addr, true)])),
        (
            "svc-public.yaml",
            service("public", 80, &[(public.addr, true)]),
        ),
        ("keys.yaml", keys_secret()),
        ("route.yaml", route("r", spec)),
    ])
    .await;
    let c = client::http1();
    let token = bearer(&tokens::token("u", &[]));
    for headers in [&[][..], &[("authorization", token.as_str())][..]] {
        let r = get_with(&c, &gw, "/admin/x", headers).await;
        assert_eq!(r.status, 503, "the broken rule refuses");
    }
    assert_eq!(
        get_with(&c, &gw, "/other", &[]).await.status,
        200,
        "the open rule serves"
    );
    assert_eq!(admin.hits(), 0);
}

#[tokio::test]
async fn two_credentials_are_no_credential() {
    let spec = format!(
        "  authentication:\n{}  rules:\n  - backendRefs: [{{name: b, port: 80}}]",
        jwt_from_secret()
    );
    let (_backend, gw) = behind_corp_keys("b", &spec).await;
    let c = client::http1();
    let admin = bearer(&tokens::token("admin", &["admin"]));
    let user = bearer(&tokens::token("user", &[]));
    let both = get_with(
        &c,
        &gw,
        "/x",
        &[("authorization", &admin), ("authorization", &user)],
    )
    .await;
    assert_eq!(
        both.status, 401,
        "which one a backend would trust is anyone's guess"
    );
    assert_eq!(
        get_with(&c, &gw, "/x", &[("authorization", &user)])
            .await
            .status,
        200
    );
}
