//! Prometheus metrics with bounded labels: route, rule and status class, never the path or the
//! client. A rule's handles are bound on its first response and a series is created the first
//! time it is used, so a request only increments atomics it already holds, and both the handles
//! and the series follow the traffic a rule actually saw, not the size of the configuration
//! (10,000 rules that never answered cost none: bound at install, their handles were 2.2 MiB).
//!
//! A rule keeps its handles in its [`RulePolicy`](crate::snapshot::RulePolicy); an install binds
//! a new rule at once only when a rule of the same route and name had handles, so that its
//! series go on. A rule's series go once no installed snapshot holds the rule any more (checked
//! at each scrape, the only reader of series).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::snapshot::Rule;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Seconds; from sub-millisecond proxying to slow backends.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// `(route, rule)` labels.
type RuleKey = (Arc<str>, Arc<str>);

/// The metric families of one gateway process.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    generation: IntGauge,
    refused: IntCounterVec,
    /// Keyed by configured names, not request data: a fast hash is safe. A handle held only
    /// here belongs to rules no snapshot has any more.
    bound: Mutex<HashMap<RuleKey, Arc<RuleStats>, foldhash::fast::RandomState>>,
}

/// Handles for one rule (or for unmatched requests), kept across snapshots while the rule exists.
pub struct RuleStats {
    route: Arc<str>,
    rule: Arc<str>,
    requests: IntCounterVec,
    durations: HistogramVec,
    by_class: [OnceLock<IntCounter>; 5],
    duration: OnceLock<Histogram>,
}

impl std::fmt::Debug for RuleStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RuleStats({}:{})", self.route, self.rule)
    }
}

impl RuleStats {
    /// Counts one response with `status` that took `seconds` to its headers.
    pub fn observe(&self, status: u16, seconds: f64) {
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        self.by_class[class]
            .get_or_init(|| {
                self.requests
                    .with_label_values(&[&*self.route, &*self.rule, CLASSES[class]])
            })
            .inc();
        self.duration
            .get_or_init(|| {
                self.durations
                    .with_label_values(&[&*self.route, &*self.rule])
            })
            .observe(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers the families.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "sluice_http_requests_total",
                "HTTP requests answered, by route, rule and status class",
            ),
            &["route", "rule", "code"],
        )
        .expect("valid metric definition");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "sluice_http_request_duration_seconds",
                "Time from request arrival to response headers, by route and rule",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "rule"],
        )
        .expect("valid metric definition");
        let generation = IntGauge::new(
            "sluice_snapshot_generation",
            "Generation of the routing snapshot being served",
        )
        .expect("valid metric definition");
        let refused = IntCounterVec::new(
            Opts::new(
                "sluice_overload_refused_total",
                "Connections and requests refused with a 503 past --max-connections or \
                 --max-requests-in-flight, by limit",
            ),
            &["limit"],
        )
        .expect("valid metric definition");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(generation.clone()),
            Box::new(refused.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Metrics {
            registry,
            requests,
            duration,
            generation,
            refused,
            bound: Mutex::new(HashMap::default()),
        }
    }

    /// Counts one connection or request refused past the overload cap `limit`
    /// (`connections` or `requests`).
    pub fn refused(&self, limit: &str) {
        self.refused.with_label_values(&[limit]).inc();
    }

    /// Gives every rule of `rules` without handles those of its predecessor under the same
    /// route and rule name, if it had any (so that its series go on), and sets the generation of
    /// the snapshot, which has `total` rules. Other rules get theirs on their first response
    /// ([`Metrics::stats_of`]).
    pub fn bind<'a>(
        &self,
        rules: impl Iterator<Item = &'a Arc<Rule>>,
        total: usize,
        generation: u64,
    ) {
        let mut bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        if !bound.is_empty() {
            for rule in rules {
                let key = (rule.route().clone(), rule.name().clone());
                if let Some(stats) = bound.get(&key) {
                    let _ = rule.policy.stats.set(Arc::clone(stats));
                }
            }
        }
        // The series of rules that went are dropped at the next scrape, the first to see them,
        // or once the handles of gone rules outnumber the rules (amortised: a scan per as many
        // installs as there are rules).
        if bound.len() > 2 * total + 64 {
            self.forget_unused(&mut bound);
        }
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// The handles of `rule`, bound now if it has none yet (its first response: a lock, once
    /// per rule).
    pub fn stats_of<'r>(&self, rule: &'r Rule) -> &'r Arc<RuleStats> {
        rule.policy.stats.get_or_init(|| {
            let mut bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(
                bound
                    .entry((rule.route().clone(), rule.name().clone()))
                    .or_insert_with(|| Arc::new(self.stats_for(rule.route(), rule.name()))),
            )
        })
    }

    /// Drops the handles and series of rules that no rule policy holds any more.
    fn forget_unused(
        &self,
        bound: &mut HashMap<RuleKey, Arc<RuleStats>, foldhash::fast::RandomState>,
    ) {
        bound.retain(|(route, rule), stats| {
            if Arc::strong_count(stats) > 1 {
                return true;
            }
            for class in CLASSES {
                let _ = self.requests.remove_label_values(&[route, rule, class]);
            }
            let _ = self.duration.remove_label_values(&[route, rule]);
            false
        });
    }

    /// Handles for requests no rule matched (route and rule labels empty).
    pub fn unmatched(&self) -> RuleStats {
        self.stats_for(&Arc::from(""), &Arc::from(""))
    }

    fn stats_for(&self, route: &Arc<str>, rule: &Arc<str>) -> RuleStats {
        RuleStats {
            route: route.clone(),
            rule: rule.clone(),
            requests: self.requests.clone(),
            durations: self.duration.clone(),
            by_class: Default::default(),
            duration: OnceLock::new(),
        }
    }

    /// The registry for other components (the controller) to add their metrics to.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of every registered family.
    pub fn render(&self) -> Vec<u8> {
        self.forget_unused(&mut self.bound.lock().unwrap_or_else(|e| e.into_inner()));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::RulePolicy;

    fn rule(route: &str, name: &str) -> Arc<Rule> {
        Arc::new(Rule::new(
            Arc::new(RulePolicy {
                route: Arc::from(route),
                name: Arc::from(name),
                ..RulePolicy::default()
            }),
            Vec::new(),
        ))
    }

    #[test]
    fn handles_are_bound_on_a_rules_first_response_and_go_on_in_its_successor() {
        let metrics = Metrics::new();
        let (answered, idle) = (rule("ns/r", "main"), rule("ns/s", "main"));
        metrics.bind([&answered, &idle].into_iter(), 2, 1);
        assert!(answered.policy.stats.get().is_none() && idle.policy.stats.get().is_none());
        let first = Arc::clone(metrics.stats_of(&answered));
        first.observe(200, 0.001);
        assert!(Arc::ptr_eq(&first, metrics.stats_of(&answered)));
        // The same rule compiled anew keeps the handles (and its series) at install; the rule
        // that never answered still has none.
        let (answered_again, idle_again) = (rule("ns/r", "main"), rule("ns/s", "main"));
        metrics.bind([&answered_again, &idle_again].into_iter(), 2, 2);
        assert!(Arc::ptr_eq(
            &first,
            answered_again.policy.stats.get().expect("bound at install")
        ));
        assert!(idle_again.policy.stats.get().is_none());
        let text = String::from_utf8(metrics.render()).expect("text");
        assert!(
            text.contains(r#"sluice_http_requests_total{code="2xx",route="ns/r",rule="main"} 1"#),
            "{text}"
        );
        assert!(!text.contains(r#"route="ns/s""#), "{text}");
    }
}
