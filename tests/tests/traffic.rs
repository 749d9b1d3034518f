//! Traffic management against real backends that fail, hang, die and come back: balancers,
//! passive and active health, circuit limits, retries and their budget, and the two classic
//! sources of client-visible 502s (a pod killed under load, a rolling update).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use sluice_tests::backend::TestBackend;
use sluice_tests::client::{self, HttpClient, Reply, fetch, get, send};
use sluice_tests::eventually;
use sluice_tests::harness::TestGateway;
use sluice_tests::manifests::{TERMINATING, route, service, service_with};
use sluice_tests::process::ProcessBackend;

/// A gateway with Service `svc` over `backends` and one rule whose extra settings are `rule`
/// (lines indented four spaces, below `backendRefs`).
async fn gateway(backends: &[&TestBackend], rule: &str) -> TestGateway {
    let addrs: Vec<(SocketAddr, bool)> = backends.iter().map(|b| (b.addr, true)).collect();
    TestGateway::start(&[
        ("svc.yaml", service("svc", 80, &addrs)),
        ("route.yaml", traffic_route(rule)),
    ])
    .await
}

fn traffic_route(rule: &str) -> String {
    route(
        "r",
        &format!("  rules:\n  - name: main\n    backendRefs: [{{name: svc, port: 80}}]\n{rule}"),
    )
}

async fn backends(n: usize) -> Vec<TestBackend> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(TestBackend::start(&format!("b{i}")).await);
    }
    out
}

fn backend_of(r: &Reply) -> String {
    r.header("x-backend").unwrap_or_default().to_owned()
}

async fn get_with(c: &HttpClient, gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(format!("http://{}{path}", gw.addr)).header("host", "h");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(c, req.body(Full::default()).expect("request"))
        .await
        .expect("response")
}

#[tokio::test]
async fn least_request_sends_most_requests_to_the_faster_endpoint_where_round_robin_does_not() {
    let mut shares = HashMap::new();
    for balancer in ["LeastRequest", "RoundRobin"] {
        let b = backends(2).await;
        b[0].delay(150);
        let gw = gateway(
            &[&b[0], &b[1]],
            &format!("    loadBalancer: {{type: {balancer}}}"),
        )
        .await;
        let c = client::http1();
        let stop = Instant::now() + Duration::from_millis(1500);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (c, addr) = (c.clone(), gw.addr);
            tasks.push(tokio::spawn(async move {
                while Instant::now() < stop {
                    assert_eq!(fetch(&c, addr, "h", "/").await.status, 200);
                }
            }));
        }
        for t in tasks {
            t.await.expect("load task");
        }
        let share = b[1].hits() as f64 / (b[0].hits() + b[1].hits()) as f64;
        shares.insert(balancer, share);
    }
    assert!(
        shares["LeastRequest"] > 0.85,
        "least request: the idle endpoint got {:.2} of requests",
        shares["LeastRequest"]
    );
    assert!(
        shares["RoundRobin"] < 0.6,
        "round robin alternates whatever the load: {:.2}",
        shares["RoundRobin"]
    );
}

#[tokio::test]
async fn consistent_hash_on_a_header_is_sticky_and_spreads_keys() {
    let b = backends(3).await;
    let gw = gateway(
        &[&b[0], &b[1], &b[2]],
        "    loadBalancer: {type: ConsistentHash, consistentHash: {header: X-Session}}",
    )
    .await;
    let c = client::http1();
    let mut owners = HashMap::new();
    for user in 0..60 {
        let id = format!("user-{user}");
        let first = backend_of(&get_with(&c, &gw, "/", &[("x-session", &id)]).await);
        for _ in 0..3 {
            let again = get_with(&c, &gw, "/", &[("x-session", &id)]).await;
            assert_eq!(backend_of(&again), first, "{id} stays on its endpoint");
        }
        owners.insert(id, first);
    }
    let used: HashSet<&String> = owners.values().collect();
    assert_eq!(used.len(), 3, "60 keys land on every endpoint");
}

#[tokio::test]
async fn adding_an_endpoint_moves_about_one_nth_of_consistent_hash_keys() {
    let b = backends(4).await;
    let rule = "    loadBalancer: {type: ConsistentHash, consistentHash: {header: X-Session}}";
    let three: Vec<(SocketAddr, bool)> = b[..3].iter().map(|b| (b.addr, true)).collect();
    let gw = TestGateway::start(&[
        ("svc.yaml", service("svc", 80, &three)),
        ("route.yaml", traffic_route(rule)),
    ])
    .await;
    let c = client::http1();
    let keys: Vec<String> = (0..400).map(|i| format!("k{i}")).collect();
    let mut before = Vec::new();
    for k in &keys {
        before.push(backend_of(
            &get_with(&c, &gw, "/", &[("x-session", k)]).await,
        ));
    }
    let generation = gw.generation();
    let four: Vec<(SocketAddr, bool)> = b.iter().map(|b| (b.addr, true)).collect();
    gw.write("svc.yaml", &service("svc", 80, &four));
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.generation() > generation
        })
        .await
    );
    let (mut moved, mut to_new) = (0, 0);
    for (k, old) in keys.iter().zip(&before) {
        let now = backend_of(&get_with(&c, &gw, "/", &[("x-session", k)]).await);
        if &now != old {
            moved += 1;
            to_new += usize::from(now == "b3");
        }
    }
    // Ideal: a quarter of the keys (100), all to the new endpoint; Maglev shuffles a few more.
    assert!((60..=140).contains(&moved), "{moved} of 400 keys moved");
    assert!(
        to_new * 10 >= moved * 8,
        "{to_new} of {moved} moved keys went to the new endpoint"
    );
}

#[tokio::test]
async fn cookie_affinity_sets_a_cookie_and_follows_it() {
    let b = backends(3).await;
    let gw = gateway(
        &[&b[0], &b[1], &b[2]],
        "    loadBalancer: {type: ConsistentHash, consistentHash: {cookie: {name: sticky, ttl: 1h}}}",
    )
    .await;
    let c = client::http1();
    let mut owners = HashSet::new();
    for _ in 0..12 {
        let first = get_with(&c, &gw, "/", &[]).await;
        let set = first
            .header("set-cookie")
            .expect("a cookie for a new client")
            .to_owned();
        assert!(set.starts_with("sticky="), "{set}");
        assert!(
            set.contains("Max-Age=3600") && set.contains("HttpOnly"),
            "{set}"
        );
        let cookie = set.split(';').next().expect("name=value").to_owned();
        let owner = backend_of(&first);
        for _ in 0..4 {
            let again = get_with(&c, &gw, "/", &[("cookie", &format!("a=1; {cookie}"))]).await;
            assert_eq!(backend_of(&again), owner, "the cookie pins the endpoint");
            assert!(
                again.header("set-cookie").is_none(),
                "a client with the cookie keeps it"
            );
        }
        owners.insert(owner);
    }
    assert!(owners.len() >= 2, "new clients spread: {owners:?}");
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_then_taken_back_after_the_ejection_time() {
    let b = backends(2).await;
    b[0].fail_with(503);
    let gw = gateway(
        &[&b[0], &b[1]],
        "    loadBalancer: {type: RoundRobin}\n    healthCheck: {passive: {consecutiveFailures: 3, ejectionTime: 1s, maxEjectionPercent: 50}}",
    )
    .await;
    let c = client::http1();
    for _ in 0..40 {
        fetch(&c, gw.addr, "h", "/").await;
    }
    assert_eq!(b[0].hits(), 3, "ejected after its third failure in a row");
    assert_eq!(b[1].hits(), 37);
    let health = endpoint_health(&gw).await;
    assert_eq!(health[&b[0].addr.to_string()], "ejected");
    assert_eq!(health[&b[1].addr.to_string()], "healthy");
    let metrics = admin_text(&gw, "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "sluice_endpoint_healthy{{endpoint=\"{}\"}} 0",
            b[0].addr
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "sluice_endpoint_ejections_total{{endpoint=\"{}\"}} 1",
        b[0].addr
    )));

    b[0].fail_with(0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..10 {
        assert_eq!(fetch(&c, gw.addr, "h", "/").await.status, 200);
    }
    assert!(b[0].hits() > 3, "back after the ejection time");
}

#[tokio::test]
async fn when_every_endpoint_is_ejected_requests_still_reach_them() {
    let b = backends(2).await;
    b[0].fail_with(500);
    b[1].fail_with(500);
    let gw = gateway(
        &[&b[0], &b[1]],
        "    healthCheck: {passive: {consecutiveFailures: 1, ejectionTime: 1m, maxEjectionPercent: 100}}",
    )
    .await;
    let c = client::http1();
    for _ in 0..20 {
        let r = fetch(&c, gw.addr, "h", "/").await;
        assert_eq!(r.status, 500, "the backends' own answer, not a gateway 503");
        assert!(r.header("x-backend").is_some());
    }
    assert_eq!(b[0].hits() + b[1].hits(), 20);
    let health = endpoint_health(&gw).await;
    let ejected = health.values().filter(|h| *h == "ejected").count();
    assert_eq!(ejected, 2, "both ejected, and both still balanced across");
}

#[tokio::test]
async fn active_checks_take_a_hung_backend_out_and_bring_it_back() {
    let b = backends(2).await;
    let gw = gateway(
        &[&b[0], &b[1]],
        "    timeouts: {request: 5s}\n    healthCheck: {active: {path: /health, interval: 200ms, timeout: 100ms, healthyThreshold: 1, unhealthyThreshold: 2}}",
    )
    .await;
    let c = client::http1();
    b[0].hang(true);
    let out = eventually(Duration::from_secs(5), || async {
        endpoint_health(&gw).await[&b[0].addr.to_string()] == "unhealthy"
    })
    .await;
    assert!(out, "the hung endpoint fails its checks");
    let started = Instant::now();
    for _ in 0..20 {
        let r = fetch(&c, gw.addr, "h", "/").await;
        assert_eq!(backend_of(&r), "b1", "{r:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no request waited on the hung one"
    );
    b[0].hang(false);
    let back = eventually(Duration::from_secs(5), || async {
        let r = fetch(&c, gw.addr, "h", "/").await;
        backend_of(&r) == "b0"
    })
    .await;
    assert!(back, "it passes its check again and gets requests");
    let metrics = admin_text(&gw, "/metrics").await;
    assert!(metrics.contains(&format!(
        "sluice_endpoint_healthy{{endpoint=\"{}\"}} 1",
        b[0].addr
    )));
}

#[tokio::test]
async fn circuit_limits_answer_503_with_retry_after_at_once() {
    let b = backends(1).await;
    b[0].delay(800);
    let gw = gateway(&[&b[0]], "    circuitBreaker: {maxRequests: 2}").await;
    let c = client::http1();
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let (c, addr) = (c.clone(), gw.addr);
            tokio::spawn(async move { fetch(&c, addr, "h", "/").await.status })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let r = fetch(&c, gw.addr, "h", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "refused at once, not queued"
    );
    assert_eq!(r.json()["status"], 503);
    for t in slow {
        assert_eq!(t.await.expect("slow request"), 200);
    }
    assert_eq!(
        b[0].hits(),
        2,
        "the refused request never reached the backend"
    );
    let metrics = admin_text(&gw, "/metrics").await;
    assert!(
        metrics.contains(
            "sluice_circuit_overflow_total{backend=\"default/svc:80\",limit=\"maxRequests\"} 1"
        ),
        "{metrics}"
    );
    // Once the slow ones are done, there is room again.
    assert_eq!(fetch(&c, gw.addr, "h", "/").await.status, 200);
}

#[tokio::test]
async fn at_max_connections_requests_wait_up_to_max_pending_then_get_503() {
    let b = backends(1).await;
    b[0].delay(600);
    let gw = gateway(
        &[&b[0]],
        "    circuitBreaker: {maxConnections: 1, maxPendingRequests: 1, maxRequests: 100}",
    )
    .await;
    let c = client::http1();
    let spawn =
        |c: HttpClient, addr| tokio::spawn(async move { fetch(&c, addr, "h", "/").await.status });
    let first = spawn(c.clone(), gw.addr);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let waiting = spawn(c.clone(), gw.addr);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = fetch(&c, gw.addr, "h", "/").await;
    assert_eq!(
        r.status, 503,
        "one open connection and one waiter: the third is refused"
    );
    assert_eq!(first.await.expect("first"), 200);
    assert_eq!(
        waiting.await.expect("waiter"),
        200,
        "the waiter got a connection"
    );
    assert_eq!(
        b[0].hits(),
        2,
        "the refused request never reached the backend"
    );
}

#[tokio::test]
async fn idle_connections_do_not_hold_connection_slots() {
    // Sequential requests over three endpoints with room for one connection in use: each one
    // leaves a connection idle in the pool, and none of those may keep the next from starting.
    let b = backends(3).await;
    let gw = gateway(
        &[&b[0], &b[1], &b[2]],
        "    loadBalancer: {type: RoundRobin}\n    circuitBreaker: {maxConnections: 1, maxPendingRequests: 0}",
    )
    .await;
    let c = client::http1();
    for _ in 0..12 {
        assert_eq!(fetch(&c, gw.addr, "h", "/").await.status, 200);
    }
    assert!(
        b.iter().all(|b| b.hits() == 4),
        "round robin reached every endpoint"
    );
    assert!(
        b.iter().all(|b| b.connections() == 1),
        "and kept one connection alive to each"
    );
}

#[tokio::test]
async fn a_retry_goes_to_another_endpoint_and_says_how_many_attempts_it_took() {
    let b = backends(2).await;
    b[0].fail_with(503);
    let gw = gateway(
        &[&b[0], &b[1]],
        "    loadBalancer: {type: RoundRobin}\n    retry: {attempts: 1, backoff: 1ms, codes: [503]}",
    )
    .await;
    let c = client::http1();
    let mut retried = 0;
    for _ in 0..8 {
        let r = fetch(&c, gw.addr, "h", "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(backend_of(&r), "b1");
        match r.header("x-sluice-attempts") {
            Some("2") => retried += 1,
            Some("1") => {}
            other => panic!("attempts: {other:?}"),
        }
    }
    assert!(retried > 0);
    assert_eq!(
        retried,
        b[0].hits(),
        "every request first sent to b0 took two attempts"
    );
    let metrics = admin_text(&gw, "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "sluice_retries_total{{route=\"default/r\",rule=\"main\"}} {retried}"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn post_is_retried_only_when_asked_and_only_with_a_body_small_enough_to_replay() {
    let b = backends(1).await;
    let c = client::http1();
    let post = |gw: &TestGateway, body: Vec<u8>| {
        Request::post(format!("http://{}/echo-body", gw.addr))
            .header("host", "h")
            .body(Full::new(Bytes::from(body)))
            .expect("request")
    };
    let gw = gateway(
        &[&b[0]],
        "    retry: {attempts: 2, backoff: 1ms, codes: [503]}",
    )
    .await;
    b[0].fail_next(1, 503);
    let r = send(&c, post(&gw, b"hello".to_vec()))
        .await
        .expect("response");
    assert_eq!(
        r.status, 503,
        "POST is not idempotent: not retried by default"
    );
    assert_eq!(r.header("x-sluice-attempts"), Some("1"));
    drop(gw);

    let gw = gateway(
        &[&b[0]],
        "    retry: {attempts: 2, backoff: 1ms, codes: [503], nonIdempotent: true}",
    )
    .await;
    b[0].fail_next(1, 503);
    let r = send(&c, post(&gw, b"hello".to_vec()))
        .await
        .expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(
        &r.body[..],
        b"hello",
        "the buffered body was sent again whole"
    );
    assert_eq!(r.header("x-sluice-attempts"), Some("2"));

    b[0].fail_next(1, 503);
    let big = vec![b'x'; 100 * 1024];
    let r = send(&c, post(&gw, big)).await.expect("response");
    assert_eq!(
        r.status, 503,
        "a body over the 64 KiB buffer streams and is not replayed"
    );
    assert_eq!(r.header("x-sluice-attempts"), Some("1"));
}

#[tokio::test]
async fn a_per_try_timeout_moves_a_get_to_another_endpoint() {
    let b = backends(2).await;
    b[0].hang(true);
    let gw = gateway(
        &[&b[0], &b[1]],
        "    loadBalancer: {type: RoundRobin}\n    retry: {attempts: 1, backoff: 1ms, perTryTimeout: 200ms}",
    )
    .await;
    let c = client::http1();
    for _ in 0..4 {
        let started = Instant::now();
        let r = fetch(&c, gw.addr, "h", "/").await;
        assert_eq!(r.status, 200);
        assert_eq!(backend_of(&r), "b1");
        assert!(started.elapsed() < Duration::from_millis(1000));
    }
}

#[tokio::test]
async fn the_retry_budget_caps_upstream_attempts_during_an_outage() {
    let b = backends(2).await;
    b[0].fail_with(503);
    b[1].fail_with(503);
    let gw = gateway(
        &[&b[0], &b[1]],
        "    retry: {attempts: 2, backoff: 1ms, codes: [503]}",
    )
    .await;
    let c = client::http1();
    for _ in 0..200 {
        assert_eq!(fetch(&c, gw.addr, "h", "/").await.status, 503);
    }
    let upstream = b[0].hits() + b[1].hits();
    // Without a budget: 600 attempts. With it: 200 + a fifth (40) + the floor (10).
    assert!(
        (240..=255).contains(&upstream),
        "{upstream} upstream attempts for 200 requests"
    );
    let metrics = admin_text(&gw, "/metrics").await;
    assert!(
        metrics.contains("sluice_retry_budget_exhausted_total{route=\"default/r\",rule=\"main\"}")
    );
}

#[tokio::test]
async fn a_connection_refused_is_retried_elsewhere_even_without_a_retry_policy() {
    let live = TestBackend::start("live").await;
    let dead = TestBackend::start("dead").await;
    dead.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let gw = gateway(&[&live, &dead], "    loadBalancer: {type: RoundRobin}").await;
    let c = client::http1();
    for _ in 0..20 {
        let r = fetch(&c, gw.addr, "h", "/").await;
        assert_eq!(r.status, 200);
        assert_eq!(backend_of(&r), "live");
    }
    // Nothing reached the dead one, so even a POST (with its streamed body) goes again.
    for _ in 0..6 {
        let post = Request::post(format!("http://{}/echo-body", gw.addr))
            .header("host", "h")
            .body(Full::new(Bytes::from_static(b"payload")))
            .expect("request");
        let r = send(&c, post).await.expect("response");
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"payload");
    }
}

#[tokio::test]
async fn an_ejection_outlives_reloads_and_endpoint_changes() {
    let b = backends(3).await;
    b[0].fail_with(503);
    let rule = "    loadBalancer: {type: RoundRobin}\n    healthCheck: {passive: {consecutiveFailures: 2, ejectionTime: 1m, maxEjectionPercent: 50}}";
    let two: Vec<(SocketAddr, bool)> = b[..2].iter().map(|b| (b.addr, true)).collect();
    let gw = TestGateway::start(&[
        ("svc.yaml", service("svc", 80, &two)),
        ("route.yaml", traffic_route(rule)),
    ])
    .await;
    let c = client::http1();
    for _ in 0..10 {
        fetch(&c, gw.addr, "h", "/").await;
    }
    assert_eq!(b[0].hits(), 2, "ejected after two failures");
    // An endpoint-only change (a third endpoint joins), then an edit of another route.
    let three: Vec<(SocketAddr, bool)> = b.iter().map(|b| (b.addr, true)).collect();
    let other = route(
        "other",
        "  rules:\n  - matches: [{path: {value: /other}}]\n    backendRefs: [{name: svc, port: 80}]",
    );
    for (name, content) in [
        ("svc.yaml", service("svc", 80, &three)),
        ("other.yaml", other),
    ] {
        let generation = gw.generation();
        gw.write(name, &content);
        assert!(
            eventually(Duration::from_secs(5), || async {
                gw.generation() > generation
            })
            .await
        );
    }
    for _ in 0..30 {
        assert_eq!(fetch(&c, gw.addr, "h", "/").await.status, 200);
    }
    assert_eq!(b[0].hits(), 2, "still ejected after both reloads");
    assert!(b[2].hits() > 0, "the new endpoint gets its share");
}

/// Runs `workers` loops of GETs until `stop`; returns (requests, failures with their statuses).
fn load(
    gw: &TestGateway,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    let addr = gw.addr;
    tokio::spawn(async move {
        let total = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (stop, total) = (stop.clone(), total.clone());
            tasks.push(tokio::spawn(async move {
                let c = client::http1();
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    total.fetch_add(1, Ordering::Relaxed);
                    match send(&c, get(addr, "h", "/")).await {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => failures.push(format!("{} {:?}", r.status, r.body)),
                        Err(e) => failures.push(e),
                    }
                }
                failures
            }));
        }
        let mut failures = Vec::new();
        for t in tasks {
            failures.extend(t.await.expect("load worker"));
        }
        (total.load(Ordering::Relaxed), failures)
    })
}

#[tokio::test]
async fn kill_9_of_one_of_three_backends_under_load_fails_no_get() {
    let mut procs = Vec::new();
    for i in 0..3 {
        match ProcessBackend::start(&format!("p{i}")) {
            Some(p) => procs.push(p),
            None => {
                eprintln!("skipped: python3 is needed for a backend process to kill -9");
                return;
            }
        }
    }
    let slices: Vec<(SocketAddr, bool)> = procs.iter().map(|p| (p.addr, true)).collect();
    let gw = TestGateway::start(&[
        ("svc.yaml", service("svc", 80, &slices)),
        (
            "route.yaml",
            traffic_route(
                "    retry: {attempts: 2, backoff: 5ms}\n    healthCheck: {passive: {consecutiveFailures: 3, ejectionTime: 30s}}",
            ),
        ),
    ])
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&gw, 8, stop.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    procs[1].kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let (total, failures) = running.await.expect("load");
    assert!(total > 200, "only {total} requests ran");
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let health = endpoint_health(&gw).await;
    assert_eq!(health[&procs[1].addr.to_string()], "ejected");
}

#[tokio::test]
async fn a_rolling_restart_through_endpointslice_edits_fails_no_request() {
    let b = backends(3).await;
    let addrs: Vec<SocketAddr> = b.iter().map(|b| b.addr).collect();
    let ready = "{ready: true}";
    let gw = TestGateway::start(&[
        (
            "svc.yaml",
            service_with(
                "svc",
                80,
                &addrs.iter().map(|&a| (a, ready)).collect::<Vec<_>>(),
            ),
        ),
        (
            "route.yaml",
            traffic_route("    retry: {attempts: 2, backoff: 5ms}"),
        ),
    ])
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&gw, 6, stop.clone());
    let mut current: Vec<(SocketAddr, &str)> = addrs.iter().map(|&a| (a, ready)).collect();
    let mut replacements = Vec::new();
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The pod is told to stop: Kubernetes marks it terminating, it finishes what it has.
        current[i].1 = TERMINATING;
        let generation = gw.generation();
        gw.write("svc.yaml", &service_with("svc", 80, &current));
        assert!(
            eventually(Duration::from_secs(5), || async {
                gw.generation() > generation
            })
            .await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        // It exits (its connections close), then leaves the slice; its replacement joins.
        b[i].kill();
        let fresh = TestBackend::start(&format!("new{i}")).await;
        current[i] = (fresh.addr, ready);
        replacements.push(fresh);
        let generation = gw.generation();
        gw.write("svc.yaml", &service_with("svc", 80, &current));
        assert!(
            eventually(Duration::from_secs(5), || async {
                gw.generation() > generation
            })
            .await
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (total, failures) = running.await.expect("load");
    assert!(total > 200, "only {total} requests ran");
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        replacements.iter().all(|r| r.hits() > 0),
        "the new pods got traffic"
    );
}

async fn admin_text(gw: &TestGateway, path: &str) -> String {
    let r = fetch(&client::http1(), gw.admin, "admin", path).await;
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The `health` of each endpoint of the first rule's first backend, by address, as
/// `/debug/snapshot` shows it.
async fn endpoint_health(gw: &TestGateway) -> HashMap<String, String> {
    let snapshot = fetch(&client::http1(), gw.admin, "admin", "/debug/snapshot")
        .await
        .json();
    snapshot["rules"][0]["backends"][0]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            (
                e["addr"].as_str().unwrap_or_default().to_owned(),
                e["health"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn consistent_hash_on_a_verified_claim_follows_the_user_whatever_the_client_says() {
    use sluice_tests::tokens::{self, AUDIENCE, ISSUER, RSA_PUBLIC};
    let b = backends(3).await;
    let addrs: Vec<(SocketAddr, bool)> = b.iter().map(|b| (b.addr, true)).collect();
    let spec = format!(
        "  authentication:\n    jwt:\n      providers:\n      - name: corp\n        issuer: {ISSUER}\n        audiences: [{AUDIENCE}]\n        algorithms: [RS256]\n        keySecretRef: {{name: corp-keys, key: public.pem}}\n  rules:\n  - name: main\n    backendRefs: [{{name: svc, port: 80}}]\n    loadBalancer: {{type: ConsistentHash, consistentHash: {{claim: sub}}}}"
    );
    let gw = TestGateway::start(&[
        ("svc.yaml", service("svc", 80, &addrs)),
        (
            "keys.yaml",
            tokens::secret("corp-keys", &[("public.pem", RSA_PUBLIC)]),
        ),
        ("route.yaml", route("r", &spec)),
    ])
    .await;
    let c = client::http1();
    let mut owners = HashSet::new();
    for user in 0..30 {
        let bearer = format!("Bearer {}", tokens::token(&format!("user-{user}"), &[]));
        let first = get_with(&c, &gw, "/", &[("authorization", &bearer)]).await;
        assert_eq!(first.status, 200);
        let owner = backend_of(&first);
        for forged in ["someone-else", "user-0", "admin"] {
            // A client-sent identity header is stripped, and the claim is the key anyway.
            let again = get_with(
                &c,
                &gw,
                "/",
                &[("authorization", &bearer), ("x-user-id", forged)],
            )
            .await;
            assert_eq!(backend_of(&again), owner, "user-{user} stays put");
        }
        owners.insert(owner);
    }
    assert_eq!(owners.len(), 3, "30 users spread over the three endpoints");
}

#[tokio::test]
async fn an_open_websocket_counts_against_max_requests_until_it_closes() {
    use futures_util::{SinkExt, StreamExt};
    let b = backends(1).await;
    let gw = gateway(&[&b[0]], "    circuitBreaker: {maxRequests: 1}").await;
    let stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut ws, response) =
        tokio_tungstenite::client_async(format!("ws://{}/ws", gw.addr), stream)
            .await
            .expect("websocket handshake through the gateway");
    assert_eq!(response.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .expect("send");
    assert!(ws.next().await.is_some(), "echoed");
    let c = client::http1();
    let r = fetch(&c, gw.addr, "h", "/").await;
    assert_eq!(r.status, 503, "the tunnel is the one request in flight");
    ws.close(None).await.expect("close");
    drop(ws);
    let freed = eventually(Duration::from_secs(5), || async {
        fetch(&c, gw.addr, "h", "/").await.status == 200
    })
    .await;
    assert!(freed, "a closed tunnel gives its slot back");
}

#[tokio::test]
async fn a_client_that_never_sends_a_body_to_buffer_gets_408_and_ejects_nobody() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = backends(1).await;
    let gw = gateway(
        &[&b[0]],
        "    timeouts: {request: 500ms}\n    retry: {attempts: 1, nonIdempotent: true}\n    healthCheck: {passive: {consecutiveFailures: 1, ejectionTime: 1m}}",
    )
    .await;
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.write_all(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .expect("write");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("an answer in time")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(b[0].hits(), 0, "nothing was sent upstream");
    assert_eq!(
        fetch(&client::http1(), gw.addr, "h", "/").await.status,
        200,
        "not ejected"
    );
}
