//! Memory at scale: resident set size after loading 10,000 routes and 100,000 endpoints (the
//! objects the reflector stores hold), after compiling them, and after 50 recompiles with
//! swaps (which must not grow it).
//!
//! `cargo run --release -p sluice-controller --example scale_memory`

#[path = "../benches/support/scale.rs"]
mod scale;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use sluice_controller::compile::{compile, refresh_endpoints};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() {
    let start = rss_mib();
    let inputs = scale::inputs(10_000);
    let loaded = rss_mib();
    let t = Instant::now();
    let first = compile(&inputs, 1, None);
    let cold = t.elapsed();
    let live = ArcSwap::from_pointee(first.snapshot);
    drop(first.statuses);
    let compiled = rss_mib();
    let mut recompiles = Vec::new();
    for generation in 2..52 {
        let t = Instant::now();
        let next = compile(&inputs, generation, Some(&live.load()));
        recompiles.push(t.elapsed());
        live.store(Arc::new(next.snapshot));
    }
    let after_swaps = rss_mib();
    let services: HashSet<String> = ["bench/svc7".to_owned()].into();
    let mut refreshes = Vec::new();
    for generation in 52..102 {
        let t = Instant::now();
        let next =
            refresh_endpoints(&inputs, &services, generation, &live.load()).expect("refresh");
        refreshes.push(t.elapsed());
        live.store(Arc::new(next));
    }
    let after_refreshes = rss_mib();
    recompiles.sort();
    refreshes.sort();
    println!(
        "routes: 10000, services: {}, endpoints: {}",
        scale::SERVICES,
        scale::SERVICES * scale::ENDPOINTS_PER_SERVICE
    );
    println!("rss at start:                  {start:7.1} MiB");
    println!(
        "rss with the inputs loaded:    {loaded:7.1} MiB (+{:.1})",
        loaded - start
    );
    println!(
        "rss with the snapshot live:    {compiled:7.1} MiB (+{:.1})",
        compiled - loaded
    );
    println!("rss after 50 recompile+swaps:  {after_swaps:7.1} MiB");
    println!("rss after 50 endpoint refreshes: {after_refreshes:5.1} MiB");
    println!("cold compile: {:.1} ms", cold.as_secs_f64() * 1e3);
    println!(
        "recompile median: {:.1} ms",
        recompiles[recompiles.len() / 2].as_secs_f64() * 1e3
    );
    println!(
        "endpoint refresh median: {:.2} ms",
        refreshes[refreshes.len() / 2].as_secs_f64() * 1e3
    );
}
