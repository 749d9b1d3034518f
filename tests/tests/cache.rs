//! The response cache against a real backend that counts what reaches it: hits and `Age`,
//! `Vary` and identities kept apart, what must never be stored, expiry, a stampede coalesced
//! into one upstream request, a failed leader, `304`s, the memory bound, a route change, and
//! entries shared through a real `redis-server`.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_proxy::ProxyConfig;
use sluice_proxy::limit::SharedStoreConfig;
use sluice_tests::backend::TestBackend;
use sluice_tests::client::{self, HttpClient, Reply, call};
use sluice_tests::eventually;
use sluice_tests::harness::TestGateway;
use sluice_tests::manifests::{route, service};
use sluice_tests::redis::RedisServer;

/// Route `r` for any host, one rule `main` on Service `svc` with `cache` settings `cache`
/// (YAML flow) and extra rule lines `extra`.
fn cached_route(cache: &str, extra: &str) -> String {
    route(
        "r",
        &format!(
            "  rules:\n  - name: main\n    backendRefs: [{{name: svc, port: 80}}]\n    cache: {cache}\n{extra}"
        ),
    )
}

async fn gateway_with(
    backend: &TestBackend,
    cache: &str,
    extra: &str,
    config: ProxyConfig,
) -> TestGateway {
    TestGateway::start_with(
        &[
            ("svc.yaml", service("svc", 80, &[(backend.addr, true)])),
            ("route.yaml", cached_route(cache, extra)),
        ],
        config,
    )
    .await
}

async fn gateway(backend: &TestBackend, cache: &str) -> TestGateway {
    gateway_with(backend, cache, "", ProxyConfig::default()).await
}

async fn get(c: &HttpClient, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    call(c, addr, "GET", path, headers).await
}

fn x_cache(r: &Reply) -> &str {
    r.header("x-cache").unwrap_or("-")
}

#[tokio::test]
async fn a_second_get_is_a_hit_with_age_and_the_backend_sees_one_request() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, "{ttl: 30s}").await;
    let c = client::http1();
    let first = get(&c, gw.addr, "/items?page=1", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(x_cache(&first), "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = get(&c, gw.addr, "/items?page=1", &[]).await;
    assert_eq!(x_cache(&second), "HIT");
    assert_eq!(second.body, first.body, "the stored body is served");
    let age: u64 = second
        .header("age")
        .and_then(|a| a.parse().ok())
        .expect("Age on a hit");
    assert!(age >= 1, "Age {age} after a second");
    assert!(second.header("x-request-id").is_some());
    assert_ne!(
        second.header("x-request-id"),
        first.header("x-request-id"),
        "request ids are per request"
    );
    // Another query is another key; HEAD is answered from the GET's entry, without a body.
    assert_eq!(
        x_cache(&get(&c, gw.addr, "/items?page=2", &[]).await),
        "MISS"
    );
    let head = call(&c, gw.addr, "HEAD", "/items?page=1", &[]).await;
    assert_eq!(x_cache(&head), "HIT");
    assert!(head.body.is_empty());
    assert_eq!(b.hits(), 2, "page 1 once, page 2 once");
    // Other methods are never cached.
    let post = call(&c, gw.addr, "POST", "/items?page=1", &[]).await;
    assert_eq!(post.status, 200);
    assert!(post.header("x-cache").is_none());
    assert_eq!(b.hits(), 3);
}

#[tokio::test]
async fn vary_headers_and_response_vary_keep_entries_apart() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, "{vary: [Accept-Language]}").await;
    let c = client::http1();
    let path = "/v?set=vary:X-Variant";
    for (lang, variant) in [("fr", "1"), ("de", "1"), ("fr", "2")] {
        let r = get(
            &c,
            gw.addr,
            path,
            &[("accept-language", lang), ("x-variant", variant)],
        )
        .await;
        assert_eq!(x_cache(&r), "MISS", "{lang}/{variant}");
        assert_eq!(r.json()["headers"]["accept-language"], lang);
    }
    for (lang, variant) in [("fr", "1"), ("de", "1"), ("fr", "2")] {
        let r = get(
            &c,
            gw.addr,
            path,
            &[("accept-language", lang), ("x-variant", variant)],
        )
        .await;
        assert_eq!(x_cache(&r), "HIT", "{lang}/{variant}");
        assert_eq!(
            r.json()["headers"]["accept-language"],
            lang,
            "each variant its own body"
        );
        assert_eq!(r.json()["headers"]["x-variant"], variant);
    }
    assert_eq!(b.hits(), 3);
}

#[tokio::test]
async fn one_consumers_response_is_never_served_to_another() {
    let b = TestBackend::start("b").await;
    let keys = "apiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: default}\nstringData: {alice: alice-key-000000000001, bob: bob-key-0000000000000002}\n";
    let gw = TestGateway::start(&[
        ("svc.yaml", service("svc", 80, &[(b.addr, true)])),
        ("keys.yaml", keys.to_owned()),
        (
            "route.yaml",
            cached_route(
                "{}",
                "    authentication: {apiKey: {from: {header: x-api-key}, secretRefs: [{name: keys}]}}",
            ),
        ),
    ])
    .await;
    let c = client::http1();
    let alice = get(
        &c,
        gw.addr,
        "/me",
        &[("x-api-key", "alice-key-000000000001")],
    )
    .await;
    assert_eq!(alice.status, 200);
    assert_eq!(alice.json()["headers"]["x-consumer"], "alice");
    let bob = get(
        &c,
        gw.addr,
        "/me",
        &[("x-api-key", "bob-key-0000000000000002")],
    )
    .await;
    assert_eq!(x_cache(&bob), "MISS", "bob must not get alice's entry");
    assert_eq!(bob.json()["headers"]["x-consumer"], "bob");
    let alice_again = get(
        &c,
        gw.addr,
        "/me",
        &[("x-api-key", "alice-key-000000000001")],
    )
    .await;
    assert_eq!(x_cache(&alice_again), "HIT");
    assert_eq!(alice_again.json()["headers"]["x-consumer"], "alice");
    // A hit still needs credentials: authentication runs before the cache.
    let anonymous = get(&c, gw.addr, "/me", &[]).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(b.hits(), 2);
}

#[tokio::test]
async fn no_store_private_no_cache_set_cookie_and_authorised_responses_are_not_stored() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, "{}").await;
    let c = client::http1();
    for (i, (path, headers)) in [
        ("/a?set=cache-control:no-store", &[][..]),
        ("/b?set=cache-control:private,%20max-age=60", &[][..]),
        ("/c?set=cache-control:no-cache", &[][..]),
        ("/d?set=set-cookie:session=1", &[][..]),
        ("/e?set=vary:*", &[][..]),
        // The rule does not authenticate: a request carrying Authorization is personal unless
        // the backend says a shared cache may keep it.
        ("/f", &[("authorization", "Bearer t")][..]),
        // A cookie is a credential the backend may check itself: the same holds.
        ("/h", &[("cookie", "sid=alice")][..]),
        // The client said not to store it.
        ("/i", &[("cache-control", "no-store")][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let before = b.hits();
        for _ in 0..2 {
            let r = get(&c, gw.addr, path, headers).await;
            assert_eq!(r.status, 200);
            assert_eq!(x_cache(&r), "MISS", "{path}");
        }
        assert_eq!(
            b.hits() - before,
            2,
            "case {i}: {path} reached the backend twice"
        );
    }
    // With `public`, an authorised response may be shared.
    for expected in ["MISS", "HIT"] {
        let r = get(
            &c,
            gw.addr,
            "/g?set=cache-control:public",
            &[("authorization", "Bearer t")],
        )
        .await;
        assert_eq!(x_cache(&r), expected);
    }
}

#[tokio::test]
async fn max_age_expires_an_entry_and_a_client_no_cache_goes_to_the_backend() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, "{ttl: 1h}").await;
    let c = client::http1();
    let path = "/short?set=cache-control:max-age=1";
    assert_eq!(x_cache(&get(&c, gw.addr, path, &[]).await), "MISS");
    assert_eq!(x_cache(&get(&c, gw.addr, path, &[]).await), "HIT");
    // The entry's clock is the wall clock (shared entries are read by other replicas), so
    // this waits the second out for real.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        x_cache(&get(&c, gw.addr, path, &[]).await),
        "MISS",
        "stale after max-age"
    );
    assert_eq!(b.hits(), 2);
    // `Cache-Control: no-cache` from the client: fetched afresh, and the fresh copy stored.
    assert_eq!(x_cache(&get(&c, gw.addr, "/n", &[]).await), "MISS");
    assert_eq!(
        x_cache(&get(&c, gw.addr, "/n", &[("cache-control", "no-cache")]).await),
        "MISS"
    );
    assert_eq!(x_cache(&get(&c, gw.addr, "/n", &[]).await), "HIT");
    assert_eq!(b.hits(), 4);
}

#[tokio::test]
async fn a_stampede_of_concurrent_misses_sends_one_request_upstream() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, "{ttl: 30s}").await;
    let c = client::http1();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (c, addr) = (c.clone(), gw.addr);
        tasks.push(tokio::spawn(async move {
            get(&c, addr, "/slow?ms=300", &[]).await
        }));
    }
    let mut hits = 0;
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!(r.status, 200);
        hits += usize::from(x_cache(&r) == "HIT");
        bodies.insert(r.body.clone());
    }
    assert_eq!(b.hits(), 1, "exactly one request reached the backend");
    assert_eq!(hits, 99);
    assert_eq!(bodies.len(), 1);
}

#[tokio::test]
async fn when_the_leader_fails_the_waiting_requests_are_not_failed_with_it() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, "{ttl: 30s}").await;
    b.delay(300);
    b.fail_next(1, 503);
    let c = client::http1();
    let leader = {
        let (c, addr) = (c.clone(), gw.addr);
        tokio::spawn(async move { get(&c, addr, "/x", &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut followers = Vec::new();
    for _ in 0..20 {
        let (c, addr) = (c.clone(), gw.addr);
        followers.push(tokio::spawn(async move { get(&c, addr, "/x", &[]).await }));
    }
    assert_eq!(leader.await.expect("leader").status, 503);
    for f in followers {
        let r = f.await.expect("follower");
        assert_eq!(r.status, 200, "a follower got the leader's failure");
    }
    // One follower fetched in the leader's place and the others waited for it.
    assert_eq!(b.hits(), 2);
}

#[tokio::test]
async fn conditional_requests_get_304_from_the_stored_validators() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, "{}").await;
    let c = client::http1();
    let path = "/doc?set=etag:%22v1%22&set=last-modified:Wed,%2002%20Dec%202026%2007:00:00%20GMT";
    let first = get(&c, gw.addr, path, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(first.status, 200, "the miss is fetched whole, to be stored");
    let r = get(&c, gw.addr, path, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(r.status, 304);
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert!(r.body.is_empty());
    let r = get(&c, gw.addr, path, &[("if-none-match", "W/\"v0\"")]).await;
    assert_eq!(r.status, 200, "another tag gets the body");
    let r = get(
        &c,
        gw.addr,
        path,
        &[("if-modified-since", "Wed, 02 Dec 2026 08:00:00 GMT")],
    )
    .await;
    assert_eq!(r.status, 304);
    let r = get(
        &c,
        gw.addr,
        path,
        &[("if-modified-since", "Wed, 02 Dec 2026 06:00:00 GMT")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(b.hits(), 1);
}

#[tokio::test]
async fn memory_stays_within_the_cache_size_under_many_keys_and_large_bodies_pass_unstored() {
    let b = TestBackend::start("b").await;
    let capacity = 256 * 1024;
    let gw = gateway_with(
        &b,
        "{maxEntrySize: 4Ki}",
        "",
        ProxyConfig {
            cache_size: capacity,
            ..ProxyConfig::default()
        },
    )
    .await;
    let c = client::http1();
    for i in 0..2000 {
        let r = get(&c, gw.addr, &format!("/stream?bytes=2000&k={i}"), &[]).await;
        assert_eq!(r.body.len(), 2000);
    }
    let held = gw.gateway.cache().weighted_size();
    assert!(held <= capacity, "{held} bytes held, cache size {capacity}");
    assert!(held > capacity / 4, "the cache is used ({held} bytes)");
    // Larger than maxEntrySize: streamed whole, never stored.
    for _ in 0..2 {
        let r = get(&c, gw.addr, "/stream?bytes=100000", &[]).await;
        assert_eq!(r.body.len(), 100_000);
        assert_eq!(x_cache(&r), "MISS");
    }
}

#[tokio::test]
async fn a_route_change_purges_its_entries() {
    let b = TestBackend::start("b").await;
    let gw = gateway(&b, "{ttl: 1h}").await;
    let c = client::http1();
    assert_eq!(x_cache(&get(&c, gw.addr, "/p", &[]).await), "MISS");
    assert_eq!(x_cache(&get(&c, gw.addr, "/p", &[]).await), "HIT");
    let generation = gw.generation();
    gw.write(
        "route.yaml",
        &cached_route(
            "{ttl: 1h}",
            "    filters: {responseHeaders: {set: [{name: x-changed, value: \"1\"}]}}",
        ),
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.generation() > generation
        })
        .await
    );
    let r = get(&c, gw.addr, "/p", &[]).await;
    assert_eq!(
        x_cache(&r),
        "MISS",
        "the old entry is gone with the old route"
    );
    assert_eq!(r.header("x-changed"), Some("1"));
    let r = get(&c, gw.addr, "/p", &[]).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(
        r.header("x-changed"),
        Some("1"),
        "a hit is dressed by the rule's filters"
    );
    assert_eq!(
        gw.gateway.cache().entry_count(),
        1,
        "only the new route's entry is held"
    );
}

#[tokio::test]
async fn shared_entries_are_served_by_another_gateway_through_redis() {
    let redis = RedisServer::start();
    let b = TestBackend::start("b").await;
    let config = || ProxyConfig {
        shared_store: Some(SharedStoreConfig {
            url: redis.url(),
            password: None,
            timeout: Duration::from_millis(200),
        }),
        ..ProxyConfig::default()
    };
    // Two gateways with their own memory, as two replicas are.
    let one = gateway_with(&b, "{shared: true}", "", config()).await;
    let two = gateway_with(&b, "{shared: true}", "", config()).await;
    let c = client::http1();
    let first = get(&c, one.addr, "/shared", &[]).await;
    assert_eq!(x_cache(&first), "MISS");
    // The entry is written to Redis as the body ends; give the write a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = get(&c, two.addr, "/shared", &[]).await;
    assert_eq!(
        x_cache(&r),
        "HIT",
        "the second gateway finds the first one's entry"
    );
    assert_eq!(r.body, first.body);
    assert_eq!(b.hits(), 1);
    assert_eq!(
        one.gateway.cache().entry_count(),
        0,
        "shared entries are not held in memory"
    );
}
