//! What a pick costs, for each balancer, at 10 and at 1,000 endpoints: the whole of
//! `Rule::pick` (the weighted slot across two backends, then the endpoint within one, with the
//! eligibility checks of health and of tried endpoints), as every request pays it once. The
//! same-run "RoundRobin" line is today's balancer, the reference.
//!
//!   cargo bench -p sluice-proxy --bench balance

use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sluice_proxy::balance::{Balancing, HashOn};
use sluice_proxy::snapshot::{Backend, Endpoint, Rule, RulePolicy, Timeouts, Traffic};

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
    let policy = RulePolicy {
        route: "ns/r".into(),
        name: "0".into(),
        rewrite: None,
        timeouts: Timeouts::default(),
        steps: Box::new([]),
        traffic: Traffic {
            balancing,
            ..Traffic::default()
        },
    };
    let big = endpoints - endpoints / 10;
    Rule::new(
        Arc::new(policy),
        vec![backend(0, 9, big), backend(1, 1, endpoints - big)],
    )
}

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    let kinds: [(&str, fn() -> Balancing); 4] = [
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

criterion_group!(benches, picks);
criterion_main!(benches);
