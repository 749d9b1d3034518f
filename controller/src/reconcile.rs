//! The one path from changed inputs to an installed snapshot, shared by both sources: debounce,
//! a full compile or an endpoint-only refresh, the install (one swap per logical update), the
//! diagnostics log (what is new, and what was fixed), and the propagation metric.
//!
//! A source only says what changed and hands over its inputs; a new input kind is added to
//! [`Inputs`] and its source, not threaded through each source's own loop.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts};
use sluice_proxy::Gateway;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::compile::{self, Compiled, Diagnostic, Inputs, ObjectRef, RouteCache, StatusReport};

/// How long inputs must be quiet before a recompile, and the longest a recompile may wait while
/// changes keep coming.
#[derive(Debug, Clone, Copy)]
pub struct Debounce {
    /// Quiet time after the last change.
    pub holdoff: Duration,
    /// Longest wait after the first change.
    pub max_delay: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            holdoff: Duration::from_millis(3),
            max_delay: Duration::from_millis(100),
        }
    }
}

/// Waits for the first change on `rx`, then for the burst it starts to settle; `None` once the
/// channel is closed with nothing pending.
pub async fn settle<T>(rx: &mut mpsc::UnboundedReceiver<T>, debounce: Debounce) -> Option<Vec<T>> {
    let mut batch = vec![rx.recv().await?];
    let deadline = Instant::now() + debounce.max_delay;
    loop {
        tokio::select! {
            next = rx.recv() => match next {
                Some(c) => batch.push(c),
                None => break,
            },
            () = tokio::time::sleep(debounce.holdoff) => break,
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    Some(batch)
}

/// What one reconcile installed.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The snapshot generation.
    pub generation: u64,
    /// Conditions of every route and policy (full compiles whose inputs did not skip them).
    pub statuses: Option<Arc<Vec<Arc<StatusReport>>>>,
    /// From the oldest change to the install, in ms.
    pub propagation_ms: u64,
}

/// Compiles and installs snapshots for one gateway, remembering what the next reconcile needs.
pub struct Reconciler {
    gateway: Arc<Gateway>,
    generation: u64,
    /// Route outputs of the last compile, so that one route's change recompiles one route.
    cache: RouteCache,
    /// Diagnostics of the last full compile, so that a recompile logs only what is new and
    /// what was fixed.
    reported: HashSet<String>,
    /// Services the last full compile could not resolve a backend against.
    unresolved: HashSet<String>,
    propagation: Histogram,
}

impl Reconciler {
    /// Whether the gateway has a Redis for `Global` rate limits (an input of compile).
    pub fn shared_store(&self) -> bool {
        self.gateway.has_shared_store()
    }

    /// A reconciler installing into `gateway`; registers `sluice_config_propagation_seconds`.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        let propagation = propagation_histogram();
        if let Err(e) = gateway
            .metrics()
            .registry()
            .register(Box::new(propagation.clone()))
        {
            tracing::warn!(error = %e, "propagation metric not registered");
        }
        Self::with_metric(gateway, propagation)
    }

    /// A fresh reconciler (nothing cached) recording into an already registered `propagation`
    /// histogram: what replaces one lost with a compile task that died.
    pub fn restart(gateway: Arc<Gateway>, propagation: Histogram) -> Self {
        Self::with_metric(gateway, propagation)
    }

    /// The propagation histogram this reconciler records into.
    pub fn propagation(&self) -> &Histogram {
        &self.propagation
    }

    fn with_metric(gateway: Arc<Gateway>, propagation: Histogram) -> Self {
        // Generations go on from what the gateway serves, also for a reconciler made anew.
        let generation = gateway.snapshot().generation;
        Reconciler {
            gateway,
            generation,
            cache: RouteCache::default(),
            reported: HashSet::new(),
            unresolved: HashSet::new(),
            propagation,
        }
    }
}

fn propagation_histogram() -> Histogram {
    Histogram::with_opts(
        HistogramOpts::new(
            "sluice_config_propagation_seconds",
            "Time from a configuration change to the snapshot that serves it",
        )
        .buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
    )
    .expect("valid metric definition")
}

impl Reconciler {
    /// The generation installed last (0 before the first install).
    ///
    /// A standalone source reloads only on change once this is above 0.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// False for a change to the endpoints of a Service no rule uses (or failed to use): the
    /// cluster's other EndpointSlices churn all day and must not cost a snapshot each.
    pub fn matters(&self, endpoints_of: Option<&str>) -> bool {
        endpoints_of.is_none_or(|s| self.cache.sends_to(s) || self.unresolved.contains(s))
    }

    /// True when refreshing the endpoint lists of `services` is enough: each resolved last
    /// time, so no rule can come back or go.
    pub fn endpoints_suffice<'a>(
        &self,
        mut services: impl Iterator<Item = Option<&'a str>>,
    ) -> bool {
        let mut any = false;
        let all = services.all(|s| {
            any = true;
            s.is_some_and(|s| !self.unresolved.contains(s))
        });
        any && all
    }

    /// Compiles `inputs` in full and installs the result. `origin` names the file of an object
    /// for the log (standalone mode); `changed_at` are the arrival times of the changes this
    /// compile serves, for the propagation metric.
    pub fn full(
        &mut self,
        inputs: &Inputs,
        changed_at: &[Instant],
        origin: &dyn Fn(&ObjectRef) -> Option<String>,
    ) -> Installed {
        let generation = self.generation + 1;
        let previous = self.gateway.snapshot();
        let compiled = compile::compile_cached_without_route_statuses(
            inputs,
            generation,
            Some(&previous),
            &mut self.cache,
        );
        let Compiled {
            snapshot,
            statuses,
            diagnostics,
            unresolved_services,
            changes,
        } = compiled;
        let rules = snapshot.rules.len();
        self.gateway.install(snapshot);
        self.generation = generation;
        let propagation_ms = self.observe(changed_at);
        self.unresolved = unresolved_services;
        let (new, fixed) = self.log_diagnostics(&diagnostics, origin);
        tracing::info!(
            generation,
            routes = inputs.routes.len(),
            rules,
            added = changes.added.len(),
            removed = changes.removed.len(),
            changed = changes.changed.len(),
            added_rules = %names(&changes.added),
            removed_rules = %names(&changes.removed),
            changed_rules = %names(&changes.changed),
            problems = diagnostics.len(),
            new_problems = new,
            fixed_problems = fixed,
            propagation_ms,
            "snapshot installed"
        );
        // Collected once the snapshot serves: they are for the status writer, which follows.
        let statuses =
            (!inputs.skip_statuses).then(|| Arc::new(self.cache.statuses_with(statuses)));
        Installed {
            generation,
            statuses,
            propagation_ms,
        }
    }

    /// Refreshes the endpoint lists of `services` (`namespace/name`) on the live snapshot;
    /// falls back to [`Reconciler::full`] when a backend of them stopped resolving.
    pub fn endpoints(
        &mut self,
        inputs: &Inputs,
        services: &HashSet<String>,
        changed_at: &[Instant],
    ) -> Installed {
        let generation = self.generation + 1;
        let previous = self.gateway.snapshot();
        match compile::refresh_endpoints(inputs, services, generation, &previous) {
            Some(snapshot) => {
                self.gateway.install(snapshot);
                self.generation = generation;
                let propagation_ms = self.observe(changed_at);
                tracing::debug!(
                    generation,
                    changes = changed_at.len(),
                    propagation_ms,
                    "endpoints refreshed"
                );
                Installed {
                    generation,
                    statuses: None,
                    propagation_ms,
                }
            }
            None => self.full(inputs, changed_at, &|_| None),
        }
    }

    /// Records the propagation of every change; returns the oldest's, in ms.
    fn observe(&self, changed_at: &[Instant]) -> u64 {
        let installed = Instant::now();
        for at in changed_at {
            self.propagation
                .observe(installed.saturating_duration_since(*at).as_secs_f64());
        }
        changed_at.iter().min().map_or(0, |t| {
            u64::try_from(installed.saturating_duration_since(*t).as_millis()).unwrap_or(u64::MAX)
        })
    }

    /// Logs the diagnostics not logged before and says which earlier ones are gone; returns
    /// how many of each.
    fn log_diagnostics(
        &mut self,
        diagnostics: &[Diagnostic],
        origin: &dyn Fn(&ObjectRef) -> Option<String>,
    ) -> (usize, usize) {
        let mut now = HashSet::with_capacity(diagnostics.len());
        let mut new = 0;
        for d in diagnostics {
            let line = d.to_string();
            if !self.reported.contains(&line) {
                new += 1;
                match origin(&d.object) {
                    Some(file) => tracing::warn!(file, "{line}"),
                    None => tracing::warn!("{line}"),
                }
            }
            now.insert(line);
        }
        let fixed: Vec<&String> = self.reported.difference(&now).collect();
        for line in &fixed {
            tracing::info!("problem fixed: {line}");
        }
        let fixed = fixed.len();
        self.reported = now;
        (new, fixed)
    }
}

/// Names logged per kind of change; a reload of thousands of routes says how many more.
const NAMED: usize = 10;

/// `ns/route:rule, …` (and how many more), or `-` for none.
fn names(rules: &[(Arc<str>, Arc<str>)]) -> String {
    if rules.is_empty() {
        return "-".to_owned();
    }
    let mut out = rules
        .iter()
        .take(NAMED)
        .map(|(route, rule)| format!("{route}:{rule}"))
        .collect::<Vec<_>>()
        .join(", ");
    if rules.len() > NAMED {
        out.push_str(&format!(" and {} more", rules.len() - NAMED));
    }
    out
}
