//! Hot reload of the manifest directory, and snapshot swaps under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice_controller::compile::compile;
use sluice_controller::sources::manifests::ManifestSet;
use sluice_tests::backend::TestBackend;
use sluice_tests::client::{self, fetch, send};
use sluice_tests::eventually;
use sluice_tests::harness::TestGateway;
use sluice_tests::manifests::{prefix_route, service};

/// Counts a 200 in `ok`, anything else in `failures`.
fn tally(
    result: Result<client::Reply, String>,
    ok: &AtomicUsize,
    failures: &std::sync::Mutex<Vec<String>>,
) {
    match result {
        Ok(r) if r.status == 200 => {
            ok.fetch_add(1, Ordering::Relaxed);
        }
        Ok(r) => failures
            .lock()
            .expect("lock")
            .push(format!("status {}", r.status)),
        Err(e) => failures.lock().expect("lock").push(e),
    }
}

#[tokio::test]
async fn a_new_route_file_is_served_without_restart() {
    let b = TestBackend::start("b").await;
    let gw = TestGateway::start(&[("svc.yaml", service("b", 80, &[(b.addr, true)]))]).await;
    let c = client::http1();
    assert_eq!(fetch(&c, gw.addr, "h", "/new").await.status, 404);
    gw.write("routes/new.yaml", &prefix_route("new", "/new", "b"));
    let served = eventually(Duration::from_secs(5), || async {
        fetch(&c, gw.addr, "h", "/new").await.status == 200
    })
    .await;
    assert!(served, "the new route went live");
    std::fs::remove_file(gw.dir.join("routes/new.yaml")).expect("remove");
    let removed = eventually(Duration::from_secs(5), || async {
        fetch(&c, gw.addr, "h", "/new").await.status == 404
    })
    .await;
    assert!(removed, "a deleted file's route is gone");
}

#[tokio::test]
async fn a_broken_file_does_not_remove_good_routes() {
    let b = TestBackend::start("b").await;
    let gw = TestGateway::start(&[
        ("svc.yaml", service("b", 80, &[(b.addr, true)])),
        ("good.yaml", prefix_route("good", "/good", "b")),
    ])
    .await;
    let c = client::http1();
    let before = gw.generation();
    gw.write(
        "good.yaml",
        "apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nspec: [broken",
    );
    gw.write("also-bad.yaml", "kind: [\n");
    gw.write("marker.yaml", &prefix_route("marker", "/marker", "b"));
    let marker = eventually(Duration::from_secs(5), || async {
        fetch(&c, gw.addr, "h", "/marker").await.status == 200
    })
    .await;
    assert!(marker, "a later good change still applies");
    assert!(gw.generation() > before);
    assert_eq!(
        fetch(&c, gw.addr, "h", "/good").await.status,
        200,
        "the broken file keeps serving what it held before"
    );
}

#[tokio::test]
async fn readiness_changes_move_traffic() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let gw = TestGateway::start(&[
        (
            "svc.yaml",
            service("s", 80, &[(a.addr, true), (b.addr, true)]),
        ),
        ("route.yaml", prefix_route("s", "/", "s")),
    ])
    .await;
    let c = client::http1();
    gw.write(
        "svc.yaml",
        &service("s", 80, &[(a.addr, true), (b.addr, false)]),
    );
    let drained = eventually(Duration::from_secs(5), || async {
        gw.gateway
            .snapshot()
            .rules
            .iter()
            .next()
            .expect("a rule")
            .backends[0]
            .endpoints
            .len()
            == 1
    })
    .await;
    assert!(drained);
    let before = b.hits();
    for _ in 0..10 {
        assert_eq!(fetch(&c, gw.addr, "h", "/").await.json()["backend"], "a");
    }
    assert_eq!(b.hits(), before, "a not-ready endpoint gets no new request");
    gw.write(
        "svc.yaml",
        &service("s", 80, &[(a.addr, true), (b.addr, true)]),
    );
    let back = eventually(Duration::from_secs(5), || async {
        fetch(&c, gw.addr, "h", "/").await.json()["backend"] == "b"
    })
    .await;
    assert!(back, "an endpoint that turns ready joins again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_snapshots_under_load_fails_no_request() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let files = [
        (
            "svc.yaml",
            service("s", 80, &[(a.addr, true), (b.addr, true)]),
        ),
        ("route.yaml", prefix_route("s", "/", "s")),
    ];
    let gw = TestGateway::start(&files).await;

    // Two configurations that both serve `/`, with different endpoint sets.
    let dir_a = sluice_tests::harness::temp_dir("swap-a");
    let dir_b = sluice_tests::harness::temp_dir("swap-b");
    sluice_tests::harness::write(&dir_a, "svc.yaml", &service("s", 80, &[(a.addr, true)]));
    sluice_tests::harness::write(
        &dir_b,
        "svc.yaml",
        &service("s", 80, &[(b.addr, true), (a.addr, true)]),
    );
    for dir in [&dir_a, &dir_b] {
        sluice_tests::harness::write(dir, "route.yaml", &prefix_route("s", "/", "s"));
    }
    let inputs: Vec<_> = [&dir_a, &dir_b]
        .iter()
        .map(|d| {
            let mut set = ManifestSet::default();
            set.refresh(&[(*d).clone()]);
            set.inputs(&[]).0
        })
        .collect();

    const CLIENTS: usize = 64;
    const PER_CLIENT: usize = 60;
    const SWAPS: u64 = 300;
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (ok, failures, addr) = (ok.clone(), failures.clone(), gw.addr);
        tasks.push(tokio::spawn(async move {
            let c = client::http1();
            for _ in 0..PER_CLIENT {
                tally(send(&c, client::get(addr, "h", "/")).await, &ok, &failures);
            }
        }));
    }
    let gateway = gw.gateway.clone();
    let swapper = tokio::spawn(async move {
        for i in 0..SWAPS {
            let previous = gateway.snapshot();
            let compiled = compile(&inputs[(i % 2) as usize], 1000 + i, Some(&previous));
            gateway.install(compiled.snapshot);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    for t in tasks {
        t.await.expect("client task");
    }
    swapper.await.expect("swapper");
    let failures = failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(ok.load(Ordering::Relaxed), CLIENTS * PER_CLIENT);
    assert!(gw.generation() >= 1000, "the swaps happened");
    let _ = std::fs::remove_dir_all(dir_a);
    let _ = std::fs::remove_dir_all(dir_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_storm_leaves_every_request_answered() {
    let b = TestBackend::start("b").await;
    let mut files = vec![("svc.yaml", service("b", 80, &[(b.addr, true)]))];
    let routes: String = (0..500)
        .map(|i| {
            format!(
                "---\n{}",
                prefix_route(&format!("r{i}"), &format!("/r{i}"), "b")
            )
        })
        .collect();
    files.push(("routes.yaml", routes));
    let gw = TestGateway::start(&files).await;
    let before = gw.generation();

    // Clients keep asking for an existing route while 100 changes arrive within a second.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failures, addr) = (stop.clone(), ok.clone(), failures.clone(), gw.addr);
        clients.push(tokio::spawn(async move {
            let c = client::http1();
            while !stop.load(Ordering::Relaxed) {
                tally(
                    send(&c, client::get(addr, "h", "/r250/x")).await,
                    &ok,
                    &failures,
                );
            }
        }));
    }
    for i in 0..100 {
        gw.write(
            &format!("storm/s{i}.yaml"),
            &prefix_route(&format!("s{i}"), &format!("/storm{i}"), "b"),
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = client::http1();
    let all_served = eventually(Duration::from_secs(10), || async {
        fetch(&c, gw.addr, "h", "/storm99").await.status == 200
            && fetch(&c, gw.addr, "h", "/storm0").await.status == 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.await.expect("client task");
    }
    assert!(all_served, "the last and the first change are served");
    for i in 0..100 {
        let path = format!("/storm{i}");
        assert_eq!(fetch(&c, gw.addr, "h", &path).await.status, 200, "{path}");
    }
    let failures = failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "{} failed requests during the storm, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    assert!(ok.load(Ordering::Relaxed) > 0, "requests were made");
    assert!(gw.generation() > before, "the changes were installed");
}

#[tokio::test]
async fn a_file_rewritten_with_the_same_content_installs_nothing() {
    let b = TestBackend::start("b").await;
    let route = prefix_route("same", "/same", "b");
    let gw = TestGateway::start(&[
        ("svc.yaml", service("b", 80, &[(b.addr, true)])),
        ("same.yaml", route.clone()),
    ])
    .await;
    let before = gw.generation();
    gw.write("same.yaml", &route);
    // Long past the debounce: the rewrite has been looked at on its own.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.write("marker.yaml", &prefix_route("marker", "/marker", "b"));
    let c = client::http1();
    let marker = eventually(Duration::from_secs(5), || async {
        fetch(&c, gw.addr, "h", "/marker").await.status == 200
    })
    .await;
    assert!(marker, "the marker route went live");
    assert_eq!(
        gw.generation(),
        before + 1,
        "only the marker's change installed a snapshot"
    );
}

#[tokio::test]
async fn a_rules_metric_series_go_with_the_rule() {
    let b = TestBackend::start("b").await;
    let gw = TestGateway::start(&[
        ("svc.yaml", service("b", 80, &[(b.addr, true)])),
        ("kept.yaml", prefix_route("kept", "/kept", "b")),
        ("gone.yaml", prefix_route("gone", "/gone", "b")),
    ])
    .await;
    let c = client::http1();
    assert_eq!(fetch(&c, gw.addr, "h", "/kept").await.status, 200);
    assert_eq!(fetch(&c, gw.addr, "h", "/gone").await.status, 200);
    let series = |text: &str, route: &str| {
        text.lines()
            .filter(|l| l.starts_with("sluice_http_requests_total{"))
            .filter(|l| l.contains(&format!("route=\"default/{route}\"")))
            .count()
    };
    let metrics = fetch(&c, gw.admin, "a", "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert_eq!(series(&text, "kept"), 1, "{text}");
    assert_eq!(series(&text, "gone"), 1, "{text}");

    std::fs::remove_file(gw.dir.join("gone.yaml")).expect("remove");
    let removed = eventually(Duration::from_secs(5), || async {
        fetch(&c, gw.addr, "h", "/gone").await.status == 404
    })
    .await;
    assert!(removed, "the route is gone");
    let metrics = fetch(&c, gw.admin, "a", "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert_eq!(
        series(&text, "gone"),
        0,
        "the removed rule's series went: {text}"
    );
    assert_eq!(
        series(&text, "kept"),
        1,
        "the kept rule's series stay: {text}"
    );

    // A rule that comes back starts its series again.
    gw.write("gone.yaml", &prefix_route("gone", "/gone", "b"));
    let back = eventually(Duration::from_secs(5), || async {
        fetch(&c, gw.addr, "h", "/gone").await.status == 200
    })
    .await;
    assert!(back);
    let metrics = fetch(&c, gw.admin, "a", "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert_eq!(series(&text, "gone"), 1, "{text}");
}
