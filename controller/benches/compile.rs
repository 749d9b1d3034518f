//! Compile of 1,000 and 10,000 routes over 100,000 endpoints (2,000 Services of 50), from
//! scratch, as a recompile (the previous snapshot given, as every reload does), and one endpoint
//! flipping readiness: as a full recompile and through the endpoint-only refresh that cluster
//! mode uses for EndpointSlice changes. Results are dropped outside the timed part: the old
//! snapshot is freed after the swap, when its last request finishes.
//!
//! `cargo bench -p sluice-controller --bench compile`

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::collections::HashSet;

use sluice_controller::compile::{Inputs, RouteCache, compile, compile_cached, refresh_endpoints};

mod support;

use support::scale::inputs;

fn bench_compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(20);
    for routes in [1_000usize, 10_000] {
        let inputs = inputs(routes);
        let first = compile(&inputs, 1, None);
        assert!(
            first.diagnostics.is_empty(),
            "{:?}",
            first.diagnostics.first()
        );
        assert_eq!(first.snapshot.rules.len(), routes);
        group.bench_with_input(BenchmarkId::new("cold", routes), &inputs, |b, inputs| {
            b.iter_with_large_drop(|| compile(inputs, 2, None))
        });
        group.bench_with_input(
            BenchmarkId::new("recompile", routes),
            &inputs,
            |b, inputs| b.iter_with_large_drop(|| compile(inputs, 2, Some(&first.snapshot))),
        );
        // One route changed per compile, with the route cache the sources keep: alternating
        // between two inputs that differ in one route, so every iteration recompiles one route.
        let changed = change_one_route(&inputs);
        let mut cache = RouteCache::default();
        let primed = compile_cached(&inputs, 2, Some(&first.snapshot), &mut cache);
        assert_eq!(primed.snapshot.rules.len(), routes);
        let mut flip = false;
        group.bench_function(BenchmarkId::new("route_change_cached", routes), |b| {
            b.iter_with_large_drop(|| {
                flip = !flip;
                let next = if flip { &changed } else { &inputs };
                compile_cached(next, 3, Some(&first.snapshot), &mut cache)
            })
        });
        let flipped = flip_one_endpoint(&inputs);
        group.bench_with_input(
            BenchmarkId::new("endpoint_flip_full", routes),
            &flipped,
            |b, inputs| b.iter_with_large_drop(|| compile(inputs, 2, Some(&first.snapshot))),
        );
        let services: HashSet<String> = ["bench/svc7".to_owned()].into();
        let refreshed =
            refresh_endpoints(&flipped, &services, 2, &first.snapshot).expect("the flip refreshes");
        assert_eq!(refreshed.rules.len(), routes);
        group.bench_with_input(
            BenchmarkId::new("endpoint_flip_refresh", routes),
            &flipped,
            |b, inputs| {
                b.iter_with_large_drop(|| refresh_endpoints(inputs, &services, 2, &first.snapshot))
            },
        );
    }
    group.finish();
}

/// The inputs with route 5 pointing at another path (a new object, as an edit makes).
fn change_one_route(inputs: &Inputs) -> Inputs {
    let mut changed = inputs.clone();
    let mut route = (*changed.routes[5]).clone();
    route.metadata.generation = Some(route.metadata.generation.unwrap_or(1) + 1);
    if let Some(m) = route.spec.rules[0]
        .matches
        .first_mut()
        .and_then(|m| m.path.as_mut())
    {
        m.value = "/changed".into();
    }
    changed.routes[5] = Arc::new(route);
    changed
}

/// The inputs with the first endpoint of Service `svc7` flipped to not ready.
fn flip_one_endpoint(inputs: &Inputs) -> Inputs {
    let mut flipped = inputs.clone();
    let slice = &mut flipped.slices[7];
    let mut changed = (**slice).clone();
    if let Some(conditions) = changed
        .endpoints
        .as_mut()
        .and_then(|e| e.get_mut(1))
        .and_then(|e| e.conditions.as_mut())
    {
        conditions.ready = Some(false);
    }
    *slice = Arc::new(changed);
    flipped
}

criterion_group!(benches, bench_compile);
criterion_main!(benches);
