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
        gw.gateway.snapshot().rules[0].backends[0].endpoints.len() == 1
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
                match send(&c, client::get(addr, "h", "/")).await {
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
