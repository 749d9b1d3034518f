//! What a rate-limit check costs: a local bucket (hash the key, take a token under a shard
//! lock), for one hot key and for keys spread over 100,000 clients; and, when `redis-server` is
//! installed, the round trip of a global check against a real Redis on loopback (p50/p99 of
//! sequential checks, printed after criterion's results).
//!
//!   cargo bench -p sluice-proxy --bench ratelimit

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_proxy::limit::local::LocalBuckets;
use sluice_proxy::limit::{Rate, SharedStore, SharedStoreConfig};

fn local(c: &mut Criterion) {
    // Never refuses at bench speed: what an allowed request pays.
    let rate = Rate::new(1_000_000, Duration::from_secs(1), 0).expect("rate");
    let buckets = LocalBuckets::new(&rate, 100_000);
    let ip = [0u8; 16];
    c.bench_function("local check, one key", |b| {
        b.iter(|| {
            let key = buckets.key([&b"ip"[..], &ip[..]]);
            std::hint::black_box(buckets.check(key))
        })
    });
    let mut i = 0u64;
    c.bench_function("local check, 100k keys", |b| {
        b.iter(|| {
            i = (i + 1) % 100_000;
            let key = buckets.key([&b"ip"[..], &i.to_le_bytes()[..]]);
            std::hint::black_box(buckets.check(key))
        })
    });
}

fn redis_round_trip() {
    let port = 18399;
    let Ok(mut server) = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(Stdio::null())
        .spawn()
    else {
        eprintln!("redis-server not installed: global check round trip not measured");
        return;
    };
    std::thread::sleep(Duration::from_millis(300));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = SharedStore::new(
            &SharedStoreConfig {
                url: format!("redis://127.0.0.1:{port}/0"),
                password: None,
                timeout: Duration::from_millis(100),
            },
            &prometheus::Registry::new(),
        )
        .expect("store");
        let rate = Rate::new(1_000_000, Duration::from_secs(1), 0).expect("rate");
        let key = b"sluice:rl:bench/p/l:1000000per1000ms+0:route:all:";
        for _ in 0..1000 {
            let _ = store.check(key, &rate).await;
        }
        let mut times = Vec::with_capacity(20_000);
        for _ in 0..20_000 {
            let started = Instant::now();
            store.check(key, &rate).await.expect("redis answers");
            times.push(started.elapsed());
        }
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!(
            "global check round trip (redis on loopback, sequential, {} checks): p50 {:?}, p99 {:?}, p99.9 {:?}",
            times.len(),
            at(0.50),
            at(0.99),
            at(0.999)
        );
    });
    let _ = server.kill();
    let _ = server.wait();
}

fn all(c: &mut Criterion) {
    local(c);
    redis_round_trip();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = all
}
criterion_main!(benches);
