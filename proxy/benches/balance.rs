//! What a pick costs, for each balancer, at 10 and at 1,000 endpoints: the whole of
//! `Rule::pick` (the weighted slot across two backends, then the endpoint within one, with the
//! eligibility checks of health and of tried endpoints), as every request pays it once. The
//! same-run "RoundRobin" line is today's balancer, the reference. After criterion's results it
//! prints how many consistent-hash keys move when one endpoint joins N (ideal: 1/(N+1)).
//!
//!   cargo bench -p sluice-proxy --bench balance

use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group};
use sluice_proxy::balance::{Balancing, HashOn};
use sluice_proxy::snapshot::{Backend, Endpoint, Rule, RulePolicy, Traffic};

fn rule(balancing: Balancing, endpoints: usize) -> Rule {
    // Two weighted backends (9:1, a canary split) sharing the endpoint count.
    let backend = |index: u8, weight: u32, n: usize| {
        let eps: Arc<[Endpoint]> = (0..n)
            .map(|i| {
                Endpoint::new(SocketAddr::from((
                    [10, index, (i / 250) as u8, (i % 250) as u8],
                    8080,
                )))
            })
            .collect();
        Backend::new(
            format!("ns/svc{index}").into(),
            80,
            weight,
            eps,
            Arc::from([]),
        )
    };
    let big = endpoints - endpoints / 10;
    balanced(
        balancing,
        vec![backend(0, 9, big), backend(1, 1, endpoints - big)],
    )
}

/// A rule doing nothing but balance `backends` with `balancing`.
fn balanced(balancing: Balancing, backends: Vec<Backend>) -> Rule {
    let policy = RulePolicy {
        route: "ns/r".into(),
        name: "0".into(),
        traffic: Traffic {
            balancing,
            ..Traffic::default()
        }
        .shared(),
        ..RulePolicy::default()
    };
    Rule::new(Arc::new(policy), backends)
}

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    type Make = fn() -> Balancing;
    let kinds: [(&str, Make); 4] = [
        ("RoundRobin", || Balancing::RoundRobin),
        ("LeastRequest", || Balancing::LeastRequest),
        ("Random", || Balancing::Random),
        ("ConsistentHash", || {
            Balancing::ConsistentHash(HashOn::SourceIp)
        }),
    ];
    for endpoints in [10usize, 1000] {
        for (name, make) in kinds {
            let r = rule(make(), endpoints);
            let mut key = 0u64;
            group.bench_with_input(BenchmarkId::new(name, endpoints), &r, |b, r| {
                b.iter(|| {
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let picked = r.pick(Some(key), &[]).expect("an endpoint");
                    std::hint::black_box(picked.1.addr)
                })
            });
        }
    }
    group.finish();
}

/// Keys (of 100,000) whose endpoint changes when one endpoint joins `n`.
fn moved_when_one_joins(n: usize) -> f64 {
    let on = || Balancing::ConsistentHash(HashOn::SourceIp);
    let single = |count: usize| {
        let eps: Arc<[Endpoint]> = (0..count)
            .map(|i| {
                Endpoint::new(SocketAddr::from((
                    [10, 1, (i / 250) as u8, (i % 250) as u8],
                    8080,
                )))
            })
            .collect();
        balanced(
            on(),
            vec![Backend::new("ns/s".into(), 80, 1, eps, Arc::from([]))],
        )
    };
    let (before, after) = (single(n), single(n + 1));
    let keys = 100_000u64;
    let moved = (0..keys)
        .map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .filter(|&k| {
            before.pick(Some(k), &[]).map(|p| p.1.addr)
                != after.pick(Some(k), &[]).map(|p| p.1.addr)
        })
        .count();
    moved as f64 / keys as f64
}

fn remapping() {
    for n in [3usize, 10, 100] {
        println!(
            "consistent hash: one endpoint joins {n}: {:.1}% of keys move (ideal {:.1}%)",
            100.0 * moved_when_one_joins(n),
            100.0 / (n + 1) as f64
        );
    }
}

criterion_group!(benches, picks);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    remapping();
}
