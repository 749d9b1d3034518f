//! Config propagation in cluster mode: from a change accepted by the API server (the fake one, on
//! a thread and runtime of its own as a real one is another process, over real HTTP watches) to
//! the proxy serving it, with the default debounce.
//!
//! - route changes: a new GatewayRoute is created; timed until a request for its path gets 200
//!   through the proxy (polled every 0.2 ms), and until the snapshot serving it is installed;
//! - endpoint flips: an endpoint's `ready` toggles; timed until the proxy's live snapshot has it.
//!
//! - under load (when `wrk` is installed): request p99 for 10 s of `wrk` load without changes,
//!   then while a route arrives ten times a second, and those changes' times to their first 200.
//!
//! Each with 10 and with 10,000 routes configured (`ROUTES="100 10000 50000"` for others).
//! Prints p50, p99 and max over 100 changes (`SHOW_SAMPLES=1`: every sample, in order).
//!
//! `cargo bench -p sluice-tests --bench propagation`

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_controller::reconcile::Debounce;
use sluice_tests::backend::TestBackend;
use sluice_tests::client;
use sluice_tests::cluster::{ROUTES, Replica, SERVICES, SLICES, prefix_route, service, slice};
use sluice_tests::eventually;
use sluice_tests::fake_api::FakeApi;

const CHANGES: usize = 100;

fn summary(label: &str, mut samples: Vec<Duration>) {
    if std::env::var_os("SHOW_SAMPLES").is_some() {
        println!(
            "{label}: {:?}",
            samples.iter().map(|d| d.as_micros()).collect::<Vec<_>>()
        );
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{label:<40} n={:<4} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        samples.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

/// A fake API server on a thread and runtime of its own, as a real one is another process:
/// its work (the status patches, the watch events they make) does not take the controller's
/// and the proxy's workers.
fn api_apart() -> Arc<FakeApi> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("api runtime");
        runtime.block_on(async {
            let _ = tx.send(FakeApi::start().await);
            std::future::pending::<()>().await;
        });
    });
    rx.recv().expect("the fake API server starts")
}

async fn scenario(routes: usize) {
    let api = api_apart();
    let b = TestBackend::start("b").await;
    let spare = TestBackend::start("spare").await;
    api.apply(SERVICES, service("b"));
    api.apply(SLICES, slice("b", "b-1", b.addr, true));
    api.apply(SLICES, slice("b", "b-2", spare.addr, true));
    for i in 0..routes {
        api.apply(
            ROUTES,
            prefix_route(&format!("base{i}"), &format!("/base/{i}"), "b"),
        );
    }
    let replica = Replica::start_with(&api, 0, "bench", Debounce::default()).await;
    let c = client::http1();
    let last = format!("/base/{}", routes - 1);
    assert!(
        eventually(Duration::from_secs(60), || async {
            client::send(&c, client::get(replica.addr, "h", &last))
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await,
        "the initial {routes} routes are served"
    );
    // Let the first status writes and their watch events pass.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut route_times = Vec::with_capacity(CHANGES);
    let mut install_times = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let path = format!("/new/{i}");
        let before = replica.generation();
        api.apply(ROUTES, prefix_route(&format!("new{i}"), &path, "b"));
        let accepted = Instant::now();
        while replica.generation() == before {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        install_times.push(accepted.elapsed());
        loop {
            let served = client::send(&c, client::get(replica.addr, "h", &path))
                .await
                .is_ok_and(|r| r.status == 200);
            if served {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        route_times.push(accepted.elapsed());
        // Space changes out so each is measured alone, not inside the previous debounce.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    summary(&format!("route change, {routes} routes"), route_times);
    summary("  of which to its install", install_times);

    let mut flip_times = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let ready = i % 2 == 1;
        let before = replica.generation();
        api.apply(SLICES, slice("b", "b-2", spare.addr, ready));
        let accepted = Instant::now();
        while replica.generation() == before {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        flip_times.push(accepted.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    summary(
        &format!("endpoint readiness flip, {routes} routes"),
        flip_times,
    );

    under_load(&api, &replica, &c, routes).await;
}

/// Request latency under `wrk` load, steady and while a route arrives ten times a second (as
/// `bench/scale.sh` measures standalone mode), and those changes' times to their first 200.
async fn under_load(api: &FakeApi, replica: &Replica, c: &client::HttpClient, routes: usize) {
    const SECONDS: u64 = 10;
    if std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_err()
    {
        println!(
            "under load, {routes} routes: skipped, wrk is not installed (apt-get install wrk)"
        );
        return;
    }
    let url = format!("http://{}/base/0", replica.addr);
    let wrk = || {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("wrk")
                .args(["-t1", "-c16", &format!("-d{SECONDS}s"), "--latency"])
                .args(["-H", "Host: h", &url])
                .output()
                .expect("wrk runs")
        })
    };
    let steady = wrk().await.expect("wrk task");
    let loaded = wrk();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut change_times = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for i in 0..(SECONDS as usize - 1) * 10 {
        tick.tick().await;
        let path = format!("/loaded/{i}");
        api.apply(ROUTES, prefix_route(&format!("loaded{i}"), &path, "b"));
        let accepted = Instant::now();
        while !client::send(c, client::get(replica.addr, "h", &path))
            .await
            .is_ok_and(|r| r.status == 200)
        {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        change_times.push(accepted.elapsed());
    }
    let loaded = loaded.await.expect("wrk task");
    let p99 = |out: &std::process::Output| {
        let text = String::from_utf8_lossy(&out.stdout);
        let errors = text
            .lines()
            .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
            .collect::<Vec<_>>();
        assert!(errors.is_empty(), "wrk saw failures: {errors:?}\n{text}");
        text.lines()
            .find_map(|l| l.trim().strip_prefix("99%"))
            .and_then(|v| wrk_ms(v.trim()))
            .unwrap_or_else(|| panic!("no 99% line in wrk's output:\n{text}"))
    };
    let (steady, loaded) = (p99(&steady), p99(&loaded));
    summary(
        &format!("route change under load, {routes} routes"),
        change_times,
    );
    println!(
        "request p99 under load, {routes} routes: steady {steady:.2} ms, during changes {loaded:.2} ms ({:.2}x)",
        loaded / steady
    );
}

/// A wrk latency (`812.00us`, `1.20ms`, `2.01s`) in milliseconds.
fn wrk_ms(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    match unit {
        "us" => Some(number / 1e3),
        "ms" => Some(number),
        "s" => Some(number * 1e3),
        "m" => Some(number * 60e3),
        _ => None,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // `ROUTES="100 10000 50000"` to choose the configured route counts.
    let counts: Vec<usize> = std::env::var("ROUTES")
        .unwrap_or_else(|_| "10 10000".to_owned())
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    runtime.block_on(async {
        for routes in counts {
            scenario(routes).await;
        }
    });
}
