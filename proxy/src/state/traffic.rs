//! Traffic state by stable identity: one [`EndpointState`] per endpoint address, one circuit per
//! backend (Service, port and limits), one retry budget per rule (route and rule name), and one
//! active health checker per probed address. Bound to a snapshot's endpoints, backends and rules
//! at install, so a swap, an endpoint refresh or an unrelated edit keeps in-flight counts,
//! ejections, health and budgets; an entry lives while some installed snapshot holds it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::FastMap;
use crate::circuit::{BackendState, CircuitLimits, CircuitMetrics};
use crate::health::checker::Checker;
use crate::health::{ActiveHealth, EndpointMetrics, EndpointState};
use crate::retry::{Budget, BudgetMetrics};
use crate::snapshot::{Rule, Snapshot};

type CircuitKey = (Arc<str>, u16, CircuitLimits);
type RuleKey = (Arc<str>, Arc<str>);

#[derive(Default)]
struct Entries {
    endpoints: FastMap<SocketAddr, Weak<EndpointState>>,
    circuits: FastMap<CircuitKey, Weak<BackendState>>,
    budgets: FastMap<RuleKey, Weak<Budget>>,
    checkers: FastMap<SocketAddr, Checker>,
}

/// The gateway's traffic state.
pub(crate) struct TrafficState {
    entries: Mutex<Entries>,
    healthy: IntGaugeVec,
    ejections: IntCounterVec,
    overflows: IntCounterVec,
    retries: IntCounterVec,
    exhausted: IntCounterVec,
}

fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: M) -> M {
    if let Err(e) = registry.register(Box::new(m.clone())) {
        tracing::warn!(error = %e, "traffic metric not registered");
    }
    m
}

impl TrafficState {
    pub(crate) fn new(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
            )
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
            )
        };
        TrafficState {
            entries: Mutex::default(),
            healthy: gauge(
                "sluice_endpoint_healthy",
                "1 while an endpoint gets new requests, 0 while ejected or failing active checks",
                &["endpoint"],
            ),
            ejections: counter(
                "sluice_endpoint_ejections_total",
                "Ejections of an endpoint by passive health checks",
                &["endpoint"],
            ),
            overflows: counter(
                "sluice_circuit_overflow_total",
                "Requests refused (503) at a backend's circuitBreaker limits, by limit",
                &["backend", "limit"],
            ),
            retries: counter(
                "sluice_retries_total",
                "Retries sent, by route and rule",
                &["route", "rule"],
            ),
            exhausted: counter(
                "sluice_retry_budget_exhausted_total",
                "Retries not sent because the rule's retry budget was spent",
                &["route", "rule"],
            ),
        }
    }

    /// Binds every endpoint, circuit and budget of `snapshot` and starts or stops active
    /// checkers so that exactly the endpoints of rules with `healthCheck.active` are probed.
    pub(crate) fn bind(&self, snapshot: &Snapshot, fresh: &[&Arc<Rule>]) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Entries {
            endpoints,
            circuits,
            budgets,
            checkers,
        } = &mut *entries;
        for rule in fresh {
            let traffic = &rule.policy.traffic;
            if let Some(retry) = &traffic.retry {
                retry.bind(|| {
                    let key = (Arc::clone(rule.route()), Arc::clone(rule.name()));
                    if let Some(live) = budgets.get(&key).and_then(Weak::upgrade) {
                        return live;
                    }
                    let labels = [&**rule.route(), &**rule.name()];
                    let budget = Arc::new(Budget::new(Some(BudgetMetrics {
                        retries: self.retries.with_label_values(&labels),
                        exhausted: self.exhausted.with_label_values(&labels),
                    })));
                    budgets.insert(key, Arc::downgrade(&budget));
                    budget
                });
            }
            for backend in rule.backends.iter() {
                if let Some(limits) = traffic.circuit {
                    backend.bind_circuit(|| {
                        let key = (Arc::clone(&backend.service), backend.port, limits);
                        if let Some(live) = circuits.get(&key).and_then(Weak::upgrade) {
                            return live;
                        }
                        let name = format!("{}:{}", backend.service, backend.port);
                        let state = Arc::new(BackendState::new(
                            limits,
                            Some(CircuitMetrics {
                                requests: self.overflows.with_label_values(&[&name, "maxRequests"]),
                                pending: self
                                    .overflows
                                    .with_label_values(&[&name, "maxPendingRequests"]),
                            }),
                        ));
                        circuits.insert(key, Arc::downgrade(&state));
                        state
                    });
                }
                for endpoint in backend.endpoints.iter() {
                    endpoint.bind(|| {
                        if let Some(live) = endpoints.get(&endpoint.addr).and_then(Weak::upgrade) {
                            return live;
                        }
                        let label = endpoint.addr.to_string();
                        let state = Arc::new(EndpointState::new(
                            endpoint.addr,
                            Some(EndpointMetrics {
                                healthy: self.healthy.with_label_values(&[&label]),
                                ejections: self.ejections.with_label_values(&[&label]),
                            }),
                        ));
                        endpoints.insert(endpoint.addr, Arc::downgrade(&state));
                        state
                    });
                }
            }
        }
        // Which addresses are probed depends on every rule: worked out again when a probed rule
        // came, or when probes run (a rule that had them may have gone).
        let probes = |r: &&Arc<Rule>| r.policy.traffic.active.is_some();
        if checkers.is_empty() && !fresh.iter().any(probes) {
            self.forget(endpoints, circuits, budgets);
            return;
        }
        let mut probed: FastMap<SocketAddr, &ActiveHealth> = FastMap::default();
        for rule in snapshot.rules.iter() {
            let Some(active) = &rule.policy.traffic.active else {
                continue;
            };
            for endpoint in rule.backends.iter().flat_map(|b| b.endpoints.iter()) {
                // One checker per address: when rules disagree, the first one's settings win
                // (in snapshot order, so the choice is stable).
                probed.entry(endpoint.addr).or_insert(active);
            }
        }
        checkers.retain(|addr, checker| {
            let keep = probed.get(addr).is_some_and(|a| checker.probes(a));
            if !keep {
                checker.stop();
            }
            keep
        });
        for (addr, active) in probed {
            if checkers.contains_key(&addr) {
                continue;
            }
            if let Some(state) = endpoints.get(&addr).and_then(Weak::upgrade)
                && let Some(checker) = Checker::start(&state, active.clone())
            {
                checkers.insert(addr, checker);
            }
        }
        self.forget(endpoints, circuits, budgets);
    }

    /// Forgets what no installed snapshot holds any more, with its metric series.
    fn forget(
        &self,
        endpoints: &mut FastMap<SocketAddr, Weak<EndpointState>>,
        circuits: &mut FastMap<CircuitKey, Weak<BackendState>>,
        budgets: &mut FastMap<RuleKey, Weak<Budget>>,
    ) {
        endpoints.retain(|addr, state| {
            let live = state.strong_count() > 0;
            if !live {
                let label = addr.to_string();
                let _ = self.healthy.remove_label_values(&[&label]);
                let _ = self.ejections.remove_label_values(&[&label]);
            }
            live
        });
        circuits.retain(|_, state| state.strong_count() > 0);
        budgets.retain(|_, state| state.strong_count() > 0);
    }
}
