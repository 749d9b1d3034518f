//! Local rate limits through a running gateway to a real backend: accuracy per key, the keys
//! (client address, header, route, verified claim, API key consumer), `X-Forwarded-For` only
//! from trusted peers, the headers clients see, and buckets across snapshot swaps.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_proxy::ProxyConfig;
use sluice_proxy::limit::TrustedProxies;
use sluice_tests::backend::TestBackend;
use sluice_tests::client::{RawReply, raw_get};
use sluice_tests::harness::TestGateway;
use sluice_tests::manifests::{route, service};
use sluice_tests::tokens::{self, AUDIENCE, ISSUER, RSA_PUBLIC};

const ROUTE: &str = "  rules:\n  - name: api\n    backendRefs: [{name: b, port: 80}]";

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  targetRef: {{kind: GatewayRoute, name: r}}\n{spec}\n"
    )
}

/// A policy with one limit `l` on route `r`.
fn one_limit(requests: u32, period: &str, burst: u32, key: &str) -> String {
    policy(
        "p",
        &format!(
            "  limits: [{{name: l, requests: {requests}, period: {period}, burst: {burst}, key: {key}}}]"
        ),
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

async fn gateway(
    route_spec: &str,
    extra: &[(&str, String)],
    config: ProxyConfig,
) -> (TestBackend, TestGateway) {
    let b = TestBackend::start("limited").await;
    let mut files = vec![
        ("svc.yaml", service("b", 80, &[(b.addr, true)])),
        ("route.yaml", route("r", route_spec)),
    ];
    files.extend(extra.iter().map(|(n, c)| (*n, c.clone())));
    let gw = TestGateway::start_with(&files, config).await;
    (b, gw)
}

async fn statuses(gw: &TestGateway, from: &str, n: usize, headers: &[(&str, &str)]) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(raw_get(gw.addr, ip(from), "/", headers).await.status);
    }
    out
}

fn allowed(statuses: &[u16]) -> usize {
    statuses.iter().filter(|s| **s == 200).count()
}

#[tokio::test]
async fn a_client_gets_requests_plus_burst_in_a_period_and_its_own_bucket() {
    let (b, gw) = gateway(
        ROUTE,
        &[("p.yaml", one_limit(5, "1m", 3, "{type: ClientIP}"))],
        ProxyConfig::default(),
    )
    .await;
    let first = raw_get(gw.addr, ip("127.0.0.1"), "/", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit-limit"), Some("8"), "{first:?}");
    assert_eq!(first.header("ratelimit-remaining"), Some("7"));
    assert_eq!(first.header("ratelimit-policy"), Some("5;w=60;burst=3"));
    assert_eq!(first.header("x-ratelimit-limit"), Some("8"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("7"));
    assert_eq!(
        first.header("ratelimit-reset"),
        Some("12"),
        "one request takes 12 s to come back"
    );
    assert!(first.header("retry-after").is_none());

    let rest = statuses(&gw, "127.0.0.1", 19, &[]).await;
    assert_eq!(allowed(&rest), 7, "8 in all: requests + burst, {rest:?}");
    let refused = raw_get(gw.addr, ip("127.0.0.1"), "/", &[]).await;
    assert_eq!(refused.status, 429);
    let retry: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=12).contains(&retry), "{retry}");
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    assert_eq!(refused.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&refused.body).expect("JSON body");
    assert_eq!(body["status"], 429);
    assert_eq!(body["error"], "rate limit exceeded");
    assert_eq!(refused.header("x-request-id").map(str::len), Some(32));
    assert_eq!(b.hits(), 8, "refused requests never reach the backend");

    // Another client is not charged for the first one.
    assert_eq!(
        raw_get(gw.addr, ip("127.0.0.2"), "/", &[]).await.status,
        200
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_bucket_refills_over_real_time() {
    // One request back every 500 ms: the waits leave 400 ms of slack either side.
    let (_b, gw) = gateway(
        ROUTE,
        &[("p.yaml", one_limit(4, "2s", 0, "{type: ClientIP}"))],
        ProxyConfig::default(),
    )
    .await;
    assert_eq!(allowed(&statuses(&gw, "127.0.0.1", 6, &[]).await), 4);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = statuses(&gw, "127.0.0.1", 3, &[]).await;
    assert_eq!(
        allowed(&after),
        1,
        "one interval refills one request: {after:?}"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        allowed(&statuses(&gw, "127.0.0.1", 6, &[]).await),
        4,
        "a whole period refills the bucket, no more"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_route_key_is_one_bucket_for_every_client() {
    let (_b, gw) = gateway(
        ROUTE,
        &[("p.yaml", one_limit(3, "1m", 0, "{type: Route}"))],
        ProxyConfig::default(),
    )
    .await;
    let mut all = statuses(&gw, "127.0.0.1", 2, &[]).await;
    all.extend(statuses(&gw, "127.0.0.2", 2, &[]).await);
    all.extend(statuses(&gw, "127.0.0.3", 2, &[]).await);
    assert_eq!(allowed(&all), 3, "{all:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_header_key_counts_per_value_and_requests_without_it_share_a_bucket() {
    let (_b, gw) = gateway(
        ROUTE,
        &[(
            "p.yaml",
            one_limit(2, "1m", 0, "{type: Header, name: x-tenant}"),
        )],
        ProxyConfig::default(),
    )
    .await;
    assert_eq!(
        allowed(&statuses(&gw, "127.0.0.1", 4, &[("x-tenant", "acme")]).await),
        2
    );
    assert_eq!(
        allowed(&statuses(&gw, "127.0.0.1", 4, &[("x-tenant", "globex")]).await),
        2
    );
    let mut absent = statuses(&gw, "127.0.0.1", 2, &[]).await;
    absent.extend(statuses(&gw, "127.0.0.2", 2, &[]).await);
    assert_eq!(
        allowed(&absent),
        2,
        "no header: one shared bucket, {absent:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn claim_and_api_key_limits_count_per_verified_identity() {
    let jwt = format!(
        "  authentication:\n    jwt:\n      providers:\n      - name: corp\n        issuer: {ISSUER}\n        audiences: [{AUDIENCE}]\n        algorithms: [RS256]\n        keySecretRef: {{name: corp-keys, key: public.pem}}\n  rules:\n  - name: api\n    backendRefs: [{{name: b, port: 80}}]"
    );
    let (_b, gw) = gateway(
        &jwt,
        &[
            (
                "keys.yaml",
                tokens::secret("corp-keys", &[("public.pem", RSA_PUBLIC)]),
            ),
            ("p.yaml", one_limit(2, "1m", 0, "{type: Claim, name: sub}")),
        ],
        ProxyConfig::default(),
    )
    .await;
    let alice = format!("Bearer {}", tokens::token("alice", &[]));
    let bob = format!("Bearer {}", tokens::token("bob", &[]));
    assert_eq!(
        allowed(&statuses(&gw, "127.0.0.1", 4, &[("authorization", &alice)]).await),
        2
    );
    assert_eq!(
        allowed(&statuses(&gw, "127.0.0.1", 4, &[("authorization", &bob)]).await),
        2,
        "same address, another subject: another bucket"
    );
    // Unauthenticated requests are refused (401) before they are counted.
    assert_eq!(
        raw_get(gw.addr, ip("127.0.0.1"), "/", &[]).await.status,
        401
    );
    gw.shutdown().await;

    let keyed = "  authentication:\n    apiKey: {secretRefs: [{name: partner-keys}]}\n  rules:\n  - name: api\n    backendRefs: [{name: b, port: 80}]";
    let (_b, gw) = gateway(
        keyed,
        &[
            (
                "keys.yaml",
                tokens::secret(
                    "partner-keys",
                    &[
                        ("acme", "acme-key-0123456789"),
                        ("globex", "globex-key-0123456789"),
                    ],
                ),
            ),
            ("p.yaml", one_limit(3, "1m", 0, "{type: ApiKey}")),
        ],
        ProxyConfig::default(),
    )
    .await;
    let acme = statuses(&gw, "127.0.0.1", 5, &[("x-api-key", "acme-key-0123456789")]).await;
    assert_eq!(allowed(&acme), 3, "{acme:?}");
    let globex = statuses(
        &gw,
        "127.0.0.1",
        5,
        &[("x-api-key", "globex-key-0123456789")],
    )
    .await;
    assert_eq!(
        allowed(&globex),
        3,
        "same address, another consumer: {globex:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn requests_without_the_claim_are_counted_by_client_address() {
    // No authentication on the rule: no claim, so each client address has its own bucket.
    let (_b, gw) = gateway(
        ROUTE,
        &[("p.yaml", one_limit(2, "1m", 0, "{type: Claim, name: sub}"))],
        ProxyConfig::default(),
    )
    .await;
    assert_eq!(allowed(&statuses(&gw, "127.0.0.1", 3, &[]).await), 2);
    assert_eq!(
        allowed(&statuses(&gw, "127.0.0.2", 3, &[]).await),
        2,
        "another address, another bucket"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_over_its_own_limit_does_not_drain_the_shared_one() {
    let p = policy(
        "p",
        "  limits:\n  - {name: shared, requests: 5, period: 1m, key: {type: Route}}\n  - {name: mine, requests: 1, period: 1m, key: {type: ClientIP}}",
    );
    let (_b, gw) = gateway(ROUTE, &[("p.yaml", p)], ProxyConfig::default()).await;
    // One admitted, then refused by its own limit: the shared bucket is charged once.
    let mine = statuses(&gw, "127.0.0.1", 10, &[]).await;
    assert_eq!(allowed(&mine), 1, "{mine:?}");
    let mut others = Vec::new();
    for from in [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.6",
    ] {
        others.push(raw_get(gw.addr, ip(from), "/", &[]).await.status);
    }
    assert_eq!(
        others,
        [200, 200, 200, 200, 429],
        "4 of the shared 5 were left for others"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn x_forwarded_for_names_the_client_only_from_a_trusted_peer() {
    let config = ProxyConfig {
        trusted_proxies: Arc::new(TrustedProxies::parse("127.0.0.1/32").expect("cidr")),
        ..ProxyConfig::default()
    };
    let (_b, gw) = gateway(
        ROUTE,
        &[("p.yaml", one_limit(1, "1m", 0, "{type: ClientIP}"))],
        config,
    )
    .await;
    // Behind the trusted load balancer at 127.0.0.1, each forwarded client has its bucket.
    for client in ["203.0.113.1", "203.0.113.2"] {
        let r = raw_get(
            gw.addr,
            ip("127.0.0.1"),
            "/",
            &[("x-forwarded-for", client)],
        )
        .await;
        assert_eq!(r.status, 200, "{client}");
    }
    let again = raw_get(
        gw.addr,
        ip("127.0.0.1"),
        "/",
        &[("x-forwarded-for", "203.0.113.1")],
    )
    .await;
    assert_eq!(again.status, 429);
    // A spoofed left-most entry does not help: the right-most untrusted hop is the client.
    let spoofed = raw_get(
        gw.addr,
        ip("127.0.0.1"),
        "/",
        &[("x-forwarded-for", "198.51.100.7, 203.0.113.1")],
    )
    .await;
    assert_eq!(spoofed.status, 429);
    // From an untrusted peer the header is ignored: a new value each time is still one client.
    let direct = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    let mut seen = Vec::new();
    for client in direct {
        seen.push(
            raw_get(
                gw.addr,
                ip("127.0.0.2"),
                "/",
                &[("x-forwarded-for", client)],
            )
            .await
            .status,
        );
    }
    assert_eq!(seen, [200, 429, 429]);
    gw.shutdown().await;
}

fn two_header_limits(b_period: &str) -> String {
    policy(
        "p",
        &format!(
            "  limits:\n  - {{name: a, requests: 1, period: 1m, key: {{type: Header, name: x-a}}}}\n  - {{name: b, requests: 1, period: {b_period}, key: {{type: Header, name: x-b}}}}"
        ),
    )
}

async fn status_with(gw: &TestGateway, a: &str, b: &str) -> RawReply {
    raw_get(gw.addr, ip("127.0.0.1"), "/", &[("x-a", a), ("x-b", b)]).await
}

#[tokio::test]
async fn buckets_survive_swaps_and_an_edited_limit_alone_starts_afresh() {
    let (_b, gw) = gateway(
        ROUTE,
        &[("p.yaml", two_header_limits("1m"))],
        ProxyConfig::default(),
    )
    .await;
    assert_eq!(status_with(&gw, "k1", "k1").await.status, 200);
    assert_eq!(
        status_with(&gw, "k1", "fresh1").await.status,
        429,
        "a is spent for k1"
    );
    assert_eq!(
        status_with(&gw, "fresh1", "k1").await.status,
        429,
        "b is spent for k1"
    );

    // A route change recompiles the rule; its limits find their buckets.
    let generation = gw.generation();
    gw.write(
        "route.yaml",
        &route(
            "r",
            &format!(
                "{ROUTE}\n    filters:\n      responseHeaders: {{set: [{{name: x-v, value: '2'}}]}}"
            ),
        ),
    );
    assert!(
        sluice_tests::eventually(Duration::from_secs(5), || async {
            gw.generation() > generation
        })
        .await
    );
    let r = status_with(&gw, "k1", "fresh2").await;
    assert_eq!(r.status, 429, "a kept its bucket across the swap");

    // Editing b (its period) resets b only.
    let generation = gw.generation();
    gw.write("p.yaml", &two_header_limits("2m"));
    assert!(
        sluice_tests::eventually(Duration::from_secs(5), || async {
            gw.generation() > generation
        })
        .await
    );
    assert_eq!(
        status_with(&gw, "fresh3", "k1").await.status,
        200,
        "b starts afresh"
    );
    assert_eq!(
        status_with(&gw, "k1", "fresh4").await.status,
        429,
        "a is untouched by b's edit"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_most_restrictive_limit_names_the_headers_and_every_limit_must_pass() {
    let p = policy(
        "p",
        "  limits:\n  - {name: wide, requests: 100, period: 1m, key: {type: Route}}\n  - {name: narrow, requests: 2, period: 1m, key: {type: ClientIP}}",
    );
    let (_b, gw) = gateway(ROUTE, &[("p.yaml", p)], ProxyConfig::default()).await;
    let r = raw_get(gw.addr, ip("127.0.0.1"), "/", &[]).await;
    assert_eq!(r.header("ratelimit-policy"), Some("2;w=60"));
    assert_eq!(r.header("ratelimit-remaining"), Some("1"));
    assert_eq!(statuses(&gw, "127.0.0.1", 3, &[]).await, [200, 429, 429]);
    // Another client has its own narrow bucket, still the most restrictive of the two.
    let other = raw_get(gw.addr, ip("127.0.0.2"), "/", &[]).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("ratelimit-policy"), Some("2;w=60"));
    assert_eq!(other.header("ratelimit-remaining"), Some("1"));
    gw.shutdown().await;
}
