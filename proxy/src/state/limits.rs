//! Rate-limit state by bucket identity ([`crate::limit::Limit`]'s id): local buckets, or the
//! shared store, and the counters of each limit. An entry lives while some installed rule holds
//! it; a sweeper thread forgets idle keys of the local ones.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};

use crate::limit::local::LocalBuckets;
use crate::limit::{Buckets, Limit, LimitState, Scope, SharedStore};
use crate::pipeline::Step;
use crate::snapshot::Rule;

/// How often idle keys of local limits are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

struct Entry {
    state: Weak<LimitState>,
    policy: Arc<str>,
    name: Arc<str>,
}

type Entries = crate::FastMap<Arc<str>, Entry>;

/// Every limit's state, by bucket identity.
pub(crate) struct Limits {
    entries: Arc<Mutex<Entries>>,
    shared: Option<Arc<SharedStore>>,
    max_keys: usize,
    decisions: IntCounterVec,
}

impl Limits {
    pub(crate) fn new(
        shared: Option<Arc<SharedStore>>,
        max_keys: usize,
        registry: &Registry,
    ) -> Self {
        let decisions = IntCounterVec::new(
            Opts::new(
                "sluice_ratelimit_requests_total",
                "Rate-limit decisions by policy, limit and decision (allowed, limited, error)",
            ),
            &["policy", "limit", "decision"],
        )
        .expect("valid metric definition");
        if let Err(e) = registry.register(Box::new(decisions.clone())) {
            tracing::warn!(error = %e, "rate-limit metric not registered");
        }
        let entries: Arc<Mutex<Entries>> = Arc::default();
        let weak = Arc::downgrade(&entries);
        // A thread, not a task: the state may be made before (or without) a runtime, and a
        // sweep is a short walk under locks the request path takes only briefly.
        let spawned = std::thread::Builder::new()
            .name("sluice-limit-sweep".into())
            .spawn(move || sweep_while_alive(&weak));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "rate-limit sweeper not started; idle keys stay until evicted");
        }
        Limits {
            entries,
            shared,
            max_keys,
            decisions,
        }
    }

    /// Binds every limit of the `fresh` rules to the state of its identity, made now if no
    /// installed rule has it; forgets the state no installed rule holds.
    pub(crate) fn bind(&self, fresh: &[&Arc<Rule>]) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        self.forget_unused(&mut entries);
        for step in fresh.iter().flat_map(|r| r.policy.steps.iter()) {
            if let Step::RateLimit(limits) = step {
                for limit in limits.limits.iter() {
                    self.bind_limit(&mut entries, limit);
                }
            }
        }
    }

    fn bind_limit(&self, entries: &mut Entries, limit: &Limit) {
        limit.bind(|| {
            if let Some(live) = entries.get(&limit.id).and_then(|e| e.state.upgrade()) {
                return live;
            }
            let buckets = match limit.scope {
                Scope::Local => Buckets::Local(LocalBuckets::new(&limit.rate, self.max_keys)),
                Scope::Global { fail_open } => {
                    if self.shared.is_none() {
                        tracing::warn!(
                            policy = %limit.policy,
                            limit = %limit.name,
                            "Global rate limit without --redis: {}",
                            if fail_open {
                                "failureMode Open admits every request"
                            } else {
                                "failureMode Closed refuses every request (503)"
                            }
                        );
                    }
                    Buckets::Shared(self.shared.clone())
                }
            };
            let labels = |decision| {
                self.decisions
                    .with_label_values(&[&*limit.policy, &*limit.name, decision])
            };
            let state = Arc::new(LimitState {
                buckets,
                allowed: labels("allowed"),
                limited: labels("limited"),
                failed: labels("error"),
            });
            entries.insert(
                Arc::clone(&limit.id),
                Entry {
                    state: Arc::downgrade(&state),
                    policy: Arc::clone(&limit.policy),
                    name: Arc::clone(&limit.name),
                },
            );
            state
        });
    }

    /// Forgets the entries no installed rule holds, and their metric series unless a live limit
    /// has the same labels (an edited limit keeps counting in its series).
    fn forget_unused(&self, entries: &mut Entries) {
        let dead: Vec<(Arc<str>, Arc<str>)> = entries
            .values()
            .filter(|e| e.state.strong_count() == 0)
            .map(|e| (Arc::clone(&e.policy), Arc::clone(&e.name)))
            .collect();
        entries.retain(|_, e| e.state.strong_count() > 0);
        for (policy, name) in dead {
            if !entries
                .values()
                .any(|e| e.policy == policy && e.name == name)
            {
                for decision in ["allowed", "limited", "error"] {
                    let _ = self
                        .decisions
                        .remove_label_values(&[&policy, &name, decision]);
                }
            }
        }
    }
}

fn sweep_while_alive(entries: &Weak<Mutex<Entries>>) {
    loop {
        std::thread::sleep(SWEEP_EVERY);
        let Some(entries) = entries.upgrade() else {
            return;
        };
        let live: Vec<Arc<LimitState>> = entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(|e| e.state.upgrade())
            .collect();
        drop(entries);
        for state in live {
            if let Buckets::Local(buckets) = &state.buckets {
                buckets.sweep();
            }
        }
    }
}
