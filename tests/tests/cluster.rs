//! Cluster mode end to end: a real `kube::Client` watching the fake API server, real backends,
//! requests through the proxy, status read back from the API server.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use serde_json::json;
use sluice_tests::backend::TestBackend;
use sluice_tests::client::{self, fetch};
use sluice_tests::cluster::{
    EVENTS, LEASES, ROUTES, Replica, SERVICES, SLICES, condition, prefix_route, service, slice,
};
use sluice_tests::eventually;
use sluice_tests::fake_api::FakeApi;

const PATIENCE: Duration = Duration::from_secs(10);

/// A fake API server holding Service `b` whose one ready endpoint is a real backend named `b`.
async fn api_with_backend() -> (Arc<FakeApi>, TestBackend) {
    let api = FakeApi::start().await;
    let b = TestBackend::start("b").await;
    api.apply(SERVICES, service("b"));
    api.apply(SLICES, slice("b", "b-1", b.addr, true));
    (api, b)
}

async fn serves(replica: &Replica, path: &str, backend: &str) -> bool {
    let c = client::http1();
    let reply = fetch(&c, replica.addr, "h", path).await;
    reply.status == 200 && reply.header("x-backend") == Some(backend)
}

async fn status_of(c: &client::HttpClient, replica: &Replica, path: &str) -> u16 {
    client::send(c, client::get(replica.addr, "h", path))
        .await
        .map_or(0, |r| r.status.as_u16())
}

#[tokio::test]
async fn an_applied_route_serves_and_reports_programmed_with_its_generation() {
    let (api, _backend) = api_with_backend().await;
    let replica = Replica::start(&api, 0, "pod-a").await;
    api.apply(ROUTES, prefix_route("r", "/b", "b"));

    assert!(eventually(PATIENCE, || serves(&replica, "/b/x", "b")).await);
    let programmed = |generation: i64| {
        let api = &api;
        move || async move {
            let Some(route) = api.get(ROUTES, "default", "r") else {
                return false;
            };
            route["status"]["observedGeneration"] == generation
                && condition(&route, "Accepted").is_some_and(|c| c["status"] == "True")
                && condition(&route, "ResolvedRefs").is_some_and(|c| c["status"] == "True")
                && condition(&route, "Programmed")
                    .is_some_and(|c| c["status"] == "True" && c["observedGeneration"] == generation)
        }
    };
    assert!(
        eventually(PATIENCE, programmed(1)).await,
        "{:#}",
        api.get(ROUTES, "default", "r").unwrap_or_default()
    );
    let route = api.get(ROUTES, "default", "r").expect("route");
    let message = condition(&route, "Programmed").expect("Programmed")["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("generation 1 serving since snapshot"),
        "{message}"
    );

    // A spec change is a new generation; the status follows it.
    api.apply(ROUTES, prefix_route("r", "/c", "b"));
    assert!(eventually(PATIENCE, || serves(&replica, "/c/x", "b")).await);
    assert!(eventually(PATIENCE, programmed(2)).await);
    let c = client::http1();
    let metrics = fetch(&c, replica.admin, "admin", "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    let observed = text
        .lines()
        .find_map(|l| l.strip_prefix("sluice_config_propagation_seconds_count "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(
        observed.is_some_and(|n| n >= 1),
        "propagation is measured: {observed:?}"
    );
    assert_eq!(status_of(&c, &replica, "/b/x").await, 404);
}

#[tokio::test]
async fn readiness_flips_take_endpoints_out_and_back() {
    let api = FakeApi::start().await;
    let one = TestBackend::start("one").await;
    let two = TestBackend::start("two").await;
    api.apply(SERVICES, service("s"));
    api.apply(SLICES, slice("s", "s-1", one.addr, true));
    api.apply(SLICES, slice("s", "s-2", two.addr, true));
    api.apply(ROUTES, prefix_route("r", "/", "s"));
    let replica = Replica::start(&api, 0, "pod-a").await;
    assert!(eventually(PATIENCE, || serves(&replica, "/", "two")).await);

    api.apply(SLICES, slice("s", "s-2", two.addr, false));
    let generation = replica.generation();
    assert!(eventually(PATIENCE, || async { replica.generation() > generation }).await);
    let before = two.hits();
    let c = client::http1();
    for _ in 0..20 {
        let r = fetch(&c, replica.addr, "h", "/").await;
        assert_eq!(
            r.header("x-backend"),
            Some("one"),
            "a not-ready endpoint gets nothing new"
        );
    }
    assert_eq!(two.hits(), before);

    api.apply(SLICES, slice("s", "s-2", two.addr, true));
    assert!(
        eventually(PATIENCE, || serves(&replica, "/", "two")).await,
        "ready again: back in rotation"
    );
}

#[tokio::test]
async fn an_invalid_route_is_rejected_with_its_field_while_others_serve() {
    let (api, _backend) = api_with_backend().await;
    api.apply(ROUTES, prefix_route("good", "/good", "b"));
    let mut bad = prefix_route("bad", "/bad", "b");
    bad["spec"]["rules"][0]["matches"][0]["path"] =
        json!({"type": "RegularExpression", "value": "/bad(["});
    api.apply(ROUTES, bad);
    let replica = Replica::start(&api, 0, "pod-a").await;

    assert!(eventually(PATIENCE, || serves(&replica, "/good", "b")).await);
    let rejected = || async {
        api.get(ROUTES, "default", "bad")
            .and_then(|r| condition(&r, "Accepted").cloned())
            .is_some_and(|c| {
                c["status"] == "False"
                    && c["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("spec.rules[0].matches[0].path.value"))
            })
    };
    assert!(
        eventually(PATIENCE, rejected).await,
        "{:#}",
        api.get(ROUTES, "default", "bad").unwrap_or_default()
    );
    let bad = api.get(ROUTES, "default", "bad").expect("bad route");
    assert_eq!(
        condition(&bad, "Programmed").expect("Programmed")["status"],
        "False"
    );
    let events = || async {
        api.list(EVENTS).iter().any(|e| {
            e["regarding"]["name"] == "bad" && e["type"] == "Warning" && e["reason"] == "Rejected"
        })
    };
    assert!(
        eventually(PATIENCE, events).await,
        "a Warning event names the rejected route"
    );
    let c = client::http1();
    assert_eq!(status_of(&c, &replica, "/bad").await, 404);
}

#[tokio::test]
async fn traffic_continues_while_the_api_server_is_away_and_changes_resume_after() {
    let (api, _backend) = api_with_backend().await;
    api.apply(ROUTES, prefix_route("r", "/b", "b"));
    let replica = Replica::start(&api, 0, "pod-a").await;
    assert!(eventually(PATIENCE, || serves(&replica, "/b", "b")).await);

    api.go_away();
    let c = client::http1();
    for _ in 0..10 {
        assert_eq!(status_of(&c, &replica, "/b").await, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = client::send(&c, client::get(replica.admin, "admin", "/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status, 200, "still ready on the last snapshot");

    // A change made while the controller could not see it is picked up once it can.
    api.apply(ROUTES, prefix_route("later", "/later", "b"));
    api.come_back().await;
    assert!(eventually(Duration::from_secs(30), || serves(&replica, "/later", "b")).await);
}

#[tokio::test]
async fn a_410_gone_relists_without_a_pointless_recompile_and_keeps_up() {
    let (api, _backend) = api_with_backend().await;
    api.apply(ROUTES, prefix_route("r", "/b", "b"));
    let replica = Replica::start(&api, 0, "pod-a").await;
    assert!(eventually(PATIENCE, || serves(&replica, "/b", "b")).await);
    // Let the status write's own watch event arrive and settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = replica.generation();

    api.compact_and_drop_watches();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        replica.generation(),
        settled,
        "a re-list of unchanged objects recompiles nothing"
    );

    api.apply(ROUTES, prefix_route("r2", "/c", "b"));
    assert!(eventually(PATIENCE, || serves(&replica, "/c", "b")).await);
}

#[tokio::test]
async fn our_own_status_writes_cause_no_recompile_or_write_loop() {
    let (api, _backend) = api_with_backend().await;
    for i in 0..5 {
        api.apply(
            ROUTES,
            prefix_route(&format!("r{i}"), &format!("/r{i}"), "b"),
        );
    }
    let replica = Replica::start(&api, 0, "pod-a").await;
    let all_programmed = || async {
        api.list(ROUTES)
            .iter()
            .all(|r| condition(r, "Programmed").is_some_and(|c| c["status"] == "True"))
    };
    assert!(eventually(PATIENCE, all_programmed).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = api.status_writes().len();
    let generation = replica.generation();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        api.status_writes().len(),
        writes,
        "no status write without a change"
    );
    assert_eq!(
        replica.generation(),
        generation,
        "status updates are not spec changes"
    );
    assert_eq!(writes, 5, "one write per route");
}

#[tokio::test]
async fn only_the_leader_writes_status_and_another_takes_over_when_it_dies() {
    let (api, _backend) = api_with_backend().await;
    let second = api.add_listener().await;
    api.apply(ROUTES, prefix_route("r", "/b", "b"));
    let first = Replica::start(&api, 0, "pod-a").await;
    assert!(
        eventually(PATIENCE, || async {
            api.get(LEASES, "sluice-system", "sluice-leader")
                .is_some_and(|l| l["spec"]["holderIdentity"] == "pod-a")
        })
        .await
    );
    let other = Replica::start(&api, second, "pod-b").await;
    // Both replicas serve.
    assert!(eventually(PATIENCE, || serves(&first, "/b", "b")).await);
    assert!(eventually(PATIENCE, || serves(&other, "/b", "b")).await);

    api.apply(ROUTES, prefix_route("r", "/b2", "b"));
    let generation_two = || async {
        api.get(ROUTES, "default", "r")
            .is_some_and(|r| r["status"]["observedGeneration"] == 2)
    };
    assert!(eventually(PATIENCE, generation_two).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writers: Vec<usize> = api.status_writes().iter().map(|w| w.listener).collect();
    assert!(!writers.is_empty());
    assert!(
        writers.iter().all(|&l| l == 0),
        "only the leader (listener 0) wrote: {writers:?}"
    );

    first.kill().await;
    let killed = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(15), || async {
            api.get(LEASES, "sluice-system", "sluice-leader")
                .is_some_and(|l| l["spec"]["holderIdentity"] == "pod-b")
        })
        .await,
        "the survivor takes the Lease once it expires"
    );
    // The Lease (2 s in these tests) runs out on the survivor's clock, not before.
    assert!(
        killed.elapsed() >= Duration::from_millis(1500),
        "taken over after {:?}, before the Lease could expire",
        killed.elapsed()
    );
    api.apply(ROUTES, prefix_route("r", "/b3", "b"));
    let generation_three = || async {
        api.get(ROUTES, "default", "r")
            .is_some_and(|r| r["status"]["observedGeneration"] == 3)
    };
    assert!(eventually(PATIENCE, generation_three).await);
    let last = api.status_writes().last().map(|w| w.listener);
    assert_eq!(last, Some(second), "the new leader writes status");
    other.stop().await;
    let lease = api
        .get(LEASES, "sluice-system", "sluice-leader")
        .expect("lease");
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "a graceful stop releases the Lease: {lease:#}"
    );
}

#[tokio::test]
async fn endpoint_churn_of_services_no_route_uses_costs_no_snapshot() {
    let (api, b) = api_with_backend().await;
    api.apply(SERVICES, service("unused"));
    api.apply(ROUTES, prefix_route("r", "/b", "b"));
    let replica = Replica::start(&api, 0, "pod-a").await;
    assert!(eventually(PATIENCE, || serves(&replica, "/b", "b")).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = replica.generation();
    for i in 0..10 {
        api.apply(SLICES, slice("unused", "unused-1", b.addr, i % 2 == 0));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(replica.generation(), settled, "no rule sends to `unused`");
    // While a flip of a Service in use is served at once.
    api.apply(SLICES, slice("b", "b-1", b.addr, false));
    assert!(eventually(PATIENCE, || async { replica.generation() > settled }).await);
    let c = client::http1();
    assert_eq!(status_of(&c, &replica, "/b").await, 503);
}

#[tokio::test]
async fn a_route_deleted_and_created_again_gets_its_status_again() {
    let (api, _backend) = api_with_backend().await;
    api.apply(ROUTES, prefix_route("r", "/b", "b"));
    let replica = Replica::start(&api, 0, "pod-a").await;
    let programmed = || async {
        api.get(ROUTES, "default", "r")
            .and_then(|r| condition(&r, "Programmed").cloned())
            .is_some_and(|c| c["status"] == "True")
    };
    assert!(eventually(PATIENCE, programmed).await);
    assert!(api.delete(ROUTES, "default", "r"));
    let c = client::http1();
    assert!(
        eventually(PATIENCE, || async {
            status_of(&c, &replica, "/b").await == 404
        })
        .await
    );
    api.apply(ROUTES, prefix_route("r", "/b", "b"));
    assert!(
        eventually(PATIENCE, programmed).await,
        "the new object is another object: {:#}",
        api.get(ROUTES, "default", "r").unwrap_or_default()
    );
}

/// Route edits in one replica's life (each batch patches the last compile's route list) serve
/// what a replica started afresh on the same objects serves, and every route's status is
/// programmed for its current generation.
#[tokio::test]
async fn route_edits_patched_in_serve_and_report_what_a_fresh_start_does() {
    let (api, _b) = api_with_backend().await;
    let a = TestBackend::start("a").await;
    api.apply(SERVICES, service("a"));
    api.apply(SLICES, slice("a", "a-1", a.addr, true));
    api.apply(
        sluice_tests::cluster::SECRETS,
        sluice_tests::cluster::secret("keys", &[("acme", "k-one")]),
    );
    let mut model: std::collections::BTreeMap<String, (String, &str)> = Default::default();
    let mut retired: Vec<String> = Vec::new();
    let mut next_prefix = 0;
    let mut prefix = || {
        next_prefix += 1;
        format!("/p{next_prefix}")
    };
    for i in 0..10 {
        let p = prefix();
        api.apply(ROUTES, prefix_route(&format!("r{i}"), &p, "b"));
        model.insert(format!("r{i}"), (p, "b"));
    }
    let replica = Replica::start(&api, 0, "pod-a").await;
    assert!(eventually(PATIENCE, || serves(&replica, "/p10", "b")).await);

    // A fixed pseudo-random sequence: creations, moves to another path or Service, deletions,
    // re-creations under an old name; half of them land in the same batch as the one before.
    let mut seed: u64 = 0x5eed;
    let mut roll = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for _ in 0..40 {
        let name = format!("r{}", roll(14));
        let service = if roll(2) == 0 { "a" } else { "b" };
        match (model.get(&name).cloned(), roll(4)) {
            (Some((old, _)), 0) => {
                assert!(api.delete(ROUTES, "default", &name));
                model.remove(&name);
                retired.push(old);
            }
            (Some((old, _)), 1) => {
                api.apply(ROUTES, prefix_route(&name, &old, service));
                model.insert(name, (old, service));
            }
            (old, _) => {
                let p = prefix();
                api.apply(ROUTES, prefix_route(&name, &p, service));
                retired.extend(old.map(|(p, _)| p));
                model.insert(name, (p, service));
            }
        }
        if roll(2) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // One more route, referencing a Secret: a patched batch must start watching it.
    api.apply(
        ROUTES,
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "GatewayRoute",
            "metadata": {"name": "keyed", "namespace": "default"},
            "spec": {"rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/keyed"}}],
                "authentication": {"apiKey": {"secretRefs": [{"name": "keys"}]}},
                "backendRefs": [{"name": "a", "port": 80}],
            }]},
        }),
    );

    let fresh = Replica::start(&api, 0, "pod-b").await;
    let c = client::http1();
    let keyed = |replica: &Replica, key: &'static str| {
        let req = Request::get(format!("http://{}/keyed", replica.addr))
            .header("host", "h")
            .header("x-api-key", key)
            .body(http_body_util::Full::default())
            .expect("request");
        let c = c.clone();
        async move { client::send(&c, req).await.map_or(0, |r| r.status.as_u16()) }
    };
    for replica in [&replica, &fresh] {
        for (name, (p, service)) in &model {
            assert!(
                eventually(PATIENCE, || serves(replica, p, service)).await,
                "{name}: {p} goes to {service}"
            );
        }
        for p in &retired {
            if !model.values().any(|(q, _)| q == p) {
                assert_eq!(status_of(&c, replica, p).await, 404, "{p} is gone");
            }
        }
        assert!(eventually(PATIENCE, || async { keyed(replica, "k-one").await == 200 }).await);
        assert_eq!(keyed(replica, "wrong").await, 401);
    }
    for name in model.keys() {
        assert!(
            eventually(PATIENCE, || async {
                api.get(ROUTES, "default", name).is_some_and(|r| {
                    condition(&r, "Programmed").is_some_and(|c| {
                        c["status"] == "True"
                            && c["observedGeneration"] == r["metadata"]["generation"]
                    })
                })
            })
            .await,
            "{name}: {:#}",
            api.get(ROUTES, "default", name).unwrap_or_default()
        );
    }
    assert!(
        !retired.is_empty() && model.len() > 3,
        "the sequence edits something"
    );
}
