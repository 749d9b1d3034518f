//! Route lookup cost at 10, 1,000 and 10,000 routes, and its growth with path length.
//!
//! `cargo bench -p sluice-proxy --bench router`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use sluice_proxy::router::{
    Candidate, Conditions, HostPattern, PathMatch, RequestView, Router, RouterBuilder,
};

/// `n` routes shaped like a real fleet: a tenth on their own hostname, the rest on shared
/// hosts, each with a prefix and an exact health path, plus a few regexes.
fn router(n: usize) -> Router {
    let mut b = RouterBuilder::default();
    for i in 0..n {
        let host = if i % 10 == 0 {
            HostPattern::Exact(format!("svc{i}.example.com").into())
        } else {
            HostPattern::Any
        };
        let candidate = |rule: usize, path: PathMatch| Candidate {
            rule: rule as u32,
            path,
            conditions: Conditions::default(),
            tiebreak: rule as u64,
        };
        b.add(
            host.clone(),
            candidate(i, PathMatch::Prefix(format!("/api/svc{i}").into())),
        );
        b.add(
            host,
            candidate(i, PathMatch::Exact(format!("/api/svc{i}/health").into())),
        );
        if i % 100 == 0 {
            let re = regex::Regex::new(&format!("^(?:/re{i}/[0-9]+)$")).expect("regex");
            b.add(
                HostPattern::Any,
                candidate(i, PathMatch::Regex(Box::new(re))),
            );
        }
    }
    b.build()
}

fn lookup<'r>(
    router: &'r Router,
    host: &str,
    path: &str,
    headers: &HeaderMap,
) -> Option<&'r Candidate> {
    router.find(&RequestView {
        host,
        path,
        query: None,
        method: &Method::GET,
        headers,
    })
}

fn by_route_count(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("find/routes");
    for n in [10usize, 1_000, 10_000] {
        let r = router(n);
        let target = format!("/api/svc{}/users/42/orders", n - 1);
        assert!(lookup(&r, "shop.example.com", &target, &headers).is_some());
        group.bench_with_input(BenchmarkId::new("prefix-hit", n), &target, |b, path| {
            b.iter(|| lookup(&r, black_box("shop.example.com"), black_box(path), &headers))
        });
        group.bench_with_input(
            BenchmarkId::new("miss", n),
            &"/nowhere/at/all",
            |b, path| {
                b.iter(|| lookup(&r, black_box("shop.example.com"), black_box(path), &headers))
            },
        );
    }
    group.finish();
}

fn by_path_length(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let r = router(10_000);
    let mut group = c.benchmark_group("find/segments@10k");
    for segments in [2usize, 8, 32] {
        let mut path = String::from("/api/svc5");
        for s in 2..segments {
            path.push_str(&format!("/seg{s}"));
        }
        group.bench_with_input(BenchmarkId::from_parameter(segments), &path, |b, path| {
            b.iter(|| lookup(&r, black_box("h"), black_box(path), &headers))
        });
    }
    group.finish();
}

criterion_group!(benches, by_route_count, by_path_length);
criterion_main!(benches);
