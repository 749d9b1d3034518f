use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::snapshot::{Backend, Endpoint, Rule, RulePolicy, Traffic};

fn addr(backend: usize, i: usize) -> SocketAddr {
    SocketAddr::from(([10, backend as u8, (i / 250) as u8, (i % 250) as u8], 8080))
}

fn backend(index: usize, weight: u32, endpoints: usize) -> Backend {
    let eps: Arc<[Endpoint]> = (0..endpoints)
        .map(|i| Endpoint::new(addr(index, i)))
        .collect();
    Backend::new(
        format!("ns/svc{index}").into(),
        80,
        weight,
        eps,
        Arc::from([]),
    )
}

fn rule(balancing: Balancing, backends: Vec<Backend>) -> Rule {
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

fn counts(
    rule: &Rule,
    picks: usize,
    hash: impl Fn(usize) -> Option<u64>,
) -> HashMap<SocketAddr, usize> {
    let mut c = HashMap::new();
    for i in 0..picks {
        let (_, e) = rule.pick(hash(i), &[]).expect("an endpoint");
        *c.entry(e.addr).or_default() += 1;
    }
    c
}

fn per_backend(c: &HashMap<SocketAddr, usize>) -> HashMap<u8, usize> {
    let mut out = HashMap::new();
    for (a, n) in c {
        let std::net::IpAddr::V4(ip) = a.ip() else {
            unreachable!()
        };
        *out.entry(ip.octets()[1]).or_default() += n;
    }
    out
}

const ALL: [fn() -> Balancing; 4] = [
    || Balancing::LeastRequest,
    || Balancing::RoundRobin,
    || Balancing::Random,
    || Balancing::ConsistentHash(HashOn::SourceIp),
];

#[test]
fn weights_split_traffic_across_backends_for_every_balancer() {
    fastrand::seed(42);
    for make in ALL {
        let r = rule(make(), vec![backend(0, 3, 4), backend(1, 1, 2)]);
        let c = per_backend(&counts(&r, 40_000, |i| Some(mix(i as u64))));
        let share = c[&0] as f64 / 40_000.0;
        assert!(
            (share - 0.75).abs() < 0.02,
            "{:?}: backend 0 got {share:.3} of requests, weight says 0.75",
            make()
        );
    }
}

#[test]
fn endpoints_of_a_backend_share_its_weight_equally() {
    fastrand::seed(7);
    for make in ALL {
        let r = rule(make(), vec![backend(0, 1, 5)]);
        let c = counts(&r, 50_000, |i| Some(mix(i as u64)));
        for n in c.values() {
            let share = *n as f64 / 50_000.0;
            assert!((share - 0.2).abs() < 0.02, "{:?}: {share:.3}", make());
        }
        assert_eq!(c.len(), 5);
    }
}

#[test]
fn round_robin_interleaves_by_weight() {
    let r = rule(
        Balancing::RoundRobin,
        vec![backend(0, 2, 1), backend(1, 1, 1)],
    );
    let order: Vec<u8> = (0..6)
        .map(|_| match r.pick(None, &[]).expect("pick").1.addr.ip() {
            std::net::IpAddr::V4(ip) => ip.octets()[1],
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(order, [0, 1, 0, 0, 1, 0]);
}

#[test]
fn least_request_prefers_the_idle_endpoint() {
    fastrand::seed(1);
    let r = rule(Balancing::LeastRequest, vec![backend(0, 1, 2)]);
    let busy = &r.backends[0].endpoints[0];
    let _held: Vec<_> = (0..5).map(|_| busy.state().start(None)).collect();
    for _ in 0..200 {
        assert_eq!(r.pick(None, &[]).expect("pick").1.addr, addr(0, 1));
    }
    // With three endpoints the busy one loses every comparison it takes part in.
    let r = rule(Balancing::LeastRequest, vec![backend(0, 1, 3)]);
    let _held: Vec<_> = (0..5)
        .map(|_| r.backends[0].endpoints[0].state().start(None))
        .collect();
    let c = counts(&r, 3000, |_| None);
    assert!(!c.contains_key(&addr(0, 0)), "{c:?}");
}

#[test]
fn ejected_endpoints_get_nothing_until_every_one_is_ejected() {
    let passive = crate::health::PassiveHealth {
        consecutive_failures: 1,
        ejection_time: std::time::Duration::from_secs(60),
        max_ejection_percent: 100,
    };
    for make in ALL {
        let r = rule(make(), vec![backend(0, 1, 3)]);
        let eps = &r.backends[0].endpoints;
        eps[0].state().record(true, Some(&passive), eps);
        let c = counts(&r, 3000, |i| Some(mix(i as u64)));
        assert!(!c.contains_key(&addr(0, 0)), "{:?}: {c:?}", make());
        eps[1].state().record(true, Some(&passive), eps);
        eps[2].state().record(true, Some(&passive), eps);
        assert!(eps.iter().all(|e| !e.state().eligible()));
        let c = counts(&r, 3000, |i| Some(mix(i as u64)));
        assert_eq!(
            c.len(),
            3,
            "{:?}: all ejected, so all balanced: {c:?}",
            make()
        );
    }
}

#[test]
fn a_backend_with_nothing_eligible_hands_its_share_to_the_others() {
    let passive = crate::health::PassiveHealth {
        consecutive_failures: 1,
        ejection_time: std::time::Duration::from_secs(60),
        max_ejection_percent: 100,
    };
    let r = rule(Balancing::Random, vec![backend(0, 9, 1), backend(1, 1, 1)]);
    let eps = &r.backends[0].endpoints;
    eps[0].state().record(true, Some(&passive), eps);
    let c = counts(&r, 1000, |_| None);
    assert_eq!(c.get(&addr(1, 0)), Some(&1000));
}

#[test]
fn consistent_hash_is_sticky_and_moves_about_one_nth_when_an_endpoint_is_added() {
    let on = || Balancing::ConsistentHash(HashOn::SourceIp);
    let before = rule(on(), vec![backend(0, 1, 9)]);
    let after = rule(on(), vec![backend(0, 1, 10)]);
    let keys = 20_000u64;
    let mut moved = 0;
    for k in (0..keys).map(mix) {
        let a = before.pick(Some(k), &[]).expect("pick").1.addr;
        assert_eq!(before.pick(Some(k), &[]).expect("pick").1.addr, a, "sticky");
        if after.pick(Some(k), &[]).expect("pick").1.addr != a {
            moved += 1;
        }
    }
    let ideal = keys as f64 / 10.0;
    assert!(
        (moved as f64) < ideal * 1.5,
        "{moved} keys moved, ideal {ideal}"
    );
}

#[test]
fn a_retry_avoids_tried_endpoints_while_another_exists() {
    for make in ALL {
        let r = rule(make(), vec![backend(0, 1, 3)]);
        let tried = [addr(0, 0), addr(0, 1)];
        for k in 0..100 {
            assert_eq!(
                r.pick(Some(mix(k)), &tried).expect("pick").1.addr,
                addr(0, 2)
            );
        }
        let all = [addr(0, 0), addr(0, 1), addr(0, 2)];
        assert!(
            r.pick(Some(1), &all).is_some(),
            "only tried ones left: one of them"
        );
    }
}

#[test]
fn cookies_are_found_among_several() {
    let mut h = http::HeaderMap::new();
    h.append(
        http::header::COOKIE,
        "a=1; sticky=abc ; b=2".parse().expect("value"),
    );
    h.append(http::header::COOKIE, "c=3".parse().expect("value"));
    assert_eq!(cookie(&h, "sticky"), Some(&b"abc"[..]));
    assert_eq!(cookie(&h, "c"), Some(&b"3"[..]));
    assert_eq!(cookie(&h, "stick"), None);
}

proptest! {
    #[test]
    fn a_pick_is_always_a_ready_endpoint_of_a_weighted_backend(
        shape in proptest::collection::vec((0u32..5, 0usize..4), 1..5),
        kind in 0usize..4,
        key in any::<u64>(),
    ) {
        let backends: Vec<Backend> = shape
            .iter()
            .enumerate()
            .map(|(i, &(w, n))| backend(i, w, n))
            .collect();
        let live = shape.iter().any(|&(w, n)| w > 0 && n > 0);
        let r = rule(ALL[kind](), backends);
        match r.pick(Some(key), &[]) {
            None => prop_assert!(!live),
            Some((b, e)) => {
                prop_assert!(live);
                prop_assert!(b.weight > 0);
                prop_assert!(b.endpoints.iter().any(|x| x.addr == e.addr));
            }
        }
    }

    #[test]
    fn the_untried_endpoint_is_found_whatever_was_tried(
        n in 2usize..20,
        left in 0usize..20,
        kind in 0usize..4,
        key in any::<u64>(),
    ) {
        let left = left % n;
        let r = rule(ALL[kind](), vec![backend(0, 1, n)]);
        let tried: Vec<SocketAddr> = (0..n).filter(|&i| i != left).map(|i| addr(0, i)).collect();
        prop_assert_eq!(r.pick(Some(key), &tried).map(|(_, e)| e.addr), Some(addr(0, left)));
    }
}
