//! Global rate limits against a real `redis-server`: two gateways sharing it admit the limit
//! once in total, `failureMode` while Redis is down, recovery without a restart, and a Redis
//! that accepts connections but never answers.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use sluice_proxy::ProxyConfig;
use sluice_proxy::limit::SharedStoreConfig;
use sluice_tests::backend::TestBackend;
use sluice_tests::client::raw_get;
use sluice_tests::eventually;
use sluice_tests::harness::TestGateway;
use sluice_tests::manifests::{route, service};
use sluice_tests::redis::RedisServer;

const TIMEOUT: Duration = Duration::from_millis(100);

fn config(redis: &RedisServer) -> ProxyConfig {
    ProxyConfig {
        shared_store: Some(SharedStoreConfig {
            url: redis.url(),
            password: None,
            timeout: TIMEOUT,
        }),
        ..ProxyConfig::default()
    }
}

/// Route `r` with rules `open` (/open) and `closed` (/closed), each limited globally to
/// `requests` a minute for the whole rule, failing open and closed.
fn manifests(backend: &TestBackend, requests: u32) -> Vec<(&'static str, String)> {
    let rules = "  rules:\n  - name: open\n    matches: [{path: {type: PathPrefix, value: /open}}]\n    backendRefs: [{name: b, port: 80}]\n  - name: closed\n    matches: [{path: {type: PathPrefix, value: /closed}}]\n    backendRefs: [{name: b, port: 80}]";
    let policy = |rule: &str, mode: &str| {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {rule}, namespace: default}}\nspec:\n  targetRef: {{kind: GatewayRoute, name: r, rule: {rule}}}\n  scope: Global\n  failureMode: {mode}\n  limits: [{{name: all, requests: {requests}, period: 1m, key: {{type: Route}}}}]\n"
        )
    };
    vec![
        ("svc.yaml", service("b", 80, &[(backend.addr, true)])),
        ("route.yaml", route("r", rules)),
        ("open.yaml", policy("open", "Open")),
        ("closed.yaml", policy("closed", "Closed")),
    ]
}

fn localhost() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// `sluice_redis_errors_total{kind}` of `gw`.
fn redis_errors(gw: &TestGateway, kind: &str) -> u64 {
    let metrics = String::from_utf8(gw.gateway.metrics().render()).expect("utf8");
    let series = format!("sluice_redis_errors_total{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {metrics}"))
}

async fn status(gw: &TestGateway, path: &str) -> u16 {
    raw_get(gw.addr, localhost(), path, &[]).await.status
}

#[tokio::test]
async fn two_gateways_sharing_redis_admit_the_limit_once_in_total() {
    let redis = RedisServer::start();
    let b = TestBackend::start("shared").await;
    let one = TestGateway::start_with(&manifests(&b, 6), config(&redis)).await;
    let two = TestGateway::start_with(&manifests(&b, 6), config(&redis)).await;
    let mut codes = Vec::new();
    for i in 0..20 {
        let gw = if i % 2 == 0 { &one } else { &two };
        codes.push(status(gw, "/open").await);
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 6, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
    // Both replicas see the same bucket in their headers.
    let r = raw_get(two.addr, localhost(), "/open", &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-limit"), Some("6"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert!(r.header("retry-after").is_some());
    // The other rule's policy has buckets of its own.
    assert_eq!(status(&one, "/closed").await, 200);
    let metrics = String::from_utf8(one.gateway.metrics().render()).expect("utf8");
    assert!(
        metrics.contains("sluice_ratelimit_requests_total{decision=\"allowed\",limit=\"all\",policy=\"default/open\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_redis_request_duration_seconds_count"),
        "{metrics}"
    );
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test]
async fn redis_down_open_admits_closed_refuses_and_limits_resume_when_it_returns() {
    let mut redis = RedisServer::start();
    let b = TestBackend::start("faults").await;
    let gw = TestGateway::start_with(&manifests(&b, 2), config(&redis)).await;
    assert_eq!(
        [
            status(&gw, "/closed").await,
            status(&gw, "/closed").await,
            status(&gw, "/closed").await
        ],
        [200, 200, 429]
    );

    redis.kill();
    for _ in 0..3 {
        let open = raw_get(gw.addr, localhost(), "/open", &[]).await;
        assert_eq!(open.status, 200, "Open admits while Redis is down");
        assert!(
            open.header("ratelimit-remaining").is_none(),
            "no bucket, no headers"
        );
        let closed = raw_get(gw.addr, localhost(), "/closed", &[]).await;
        assert_eq!(closed.status, 503, "Closed refuses while Redis is down");
        assert_eq!(closed.header("retry-after"), Some("1"));
        assert!(
            closed.body.contains("rate limits cannot be checked"),
            "{}",
            closed.body
        );
    }
    let failed = redis_errors(&gw, "connection") + redis_errors(&gw, "timeout");
    assert!(failed >= 6, "every failed check is counted: {failed}");

    // Same port, empty Redis (no script either: the next check loads it again): the gateway
    // reconnects on its own and counts again.
    redis.restart();
    assert!(
        eventually(Duration::from_secs(10), || async {
            status(&gw, "/closed").await == 200
        })
        .await,
        "limits resume without a restart"
    );
    let after: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(status(&gw, "/closed").await);
        }
        v
    };
    assert_eq!(after, [200, 429, 429], "the bucket is enforced again");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_redis_that_never_answers_costs_the_timeout_and_no_request_hangs() {
    let redis = RedisServer::start();
    let b = TestBackend::start("frozen").await;
    let gw = TestGateway::start_with(&manifests(&b, 100), config(&redis)).await;
    assert_eq!(status(&gw, "/open").await, 200, "connected");

    redis.pause();
    for (path, expected) in [
        ("/open", 200),
        ("/closed", 503),
        ("/open", 200),
        ("/closed", 503),
    ] {
        let started = Instant::now();
        let code = tokio::time::timeout(Duration::from_secs(5), status(&gw, path))
            .await
            .unwrap_or_else(|_| panic!("{path} hung with Redis stopped"));
        assert_eq!(code, expected, "{path}");
        // Bounded by the timeout (100 ms) plus scheduling; far from a hang.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path} took {:?}",
            started.elapsed()
        );
    }
    assert!(
        redis_errors(&gw, "timeout") >= 4,
        "timeouts are counted as such"
    );

    redis.resume();
    assert!(
        eventually(Duration::from_secs(10), || async {
            status(&gw, "/closed").await == 200
        })
        .await,
        "answers again once Redis does"
    );
    gw.shutdown().await;
}
