//! Cluster mode: watch the Kubernetes API, recompile on relevant changes, swap the snapshot in,
//! and (on the leader) write status.
//!
//! Every replica watches, compiles and serves on its own; only the Lease holder writes status
//! and events. If the API server goes away, the watchers retry with backoff while the proxy
//! keeps serving the last snapshot; `/readyz` stays ready.

pub mod leader;
pub mod secrets;
pub mod status;
pub mod watch;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use prometheus::{Histogram, HistogramOpts};
use sluice_proxy::Gateway;
use tokio::sync::{mpsc, watch as channel};
use tokio::time::Instant;

use self::leader::{LeaderConfig, until_stopped};
use self::secrets::SecretWatches;
use self::status::{LiveSnapshot, StatusWriter};
use self::watch::{Changed, KindStores};
use super::dir::Debounce;
use crate::compile::{self, Inputs, StatusReport};
use crate::resources::{EndpointSlice, GatewayRoute, RateLimitPolicy, Service};

/// How the cluster source runs.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Namespaces to watch; all when empty.
    pub namespaces: Vec<String>,
    /// Hold-off and maximum delay between a change and its recompile.
    pub debounce: Debounce,
    /// The Lease that decides which replica writes status.
    pub leader: LeaderConfig,
}

/// The watched kinds.
#[derive(Clone)]
struct Stores {
    routes: KindStores<GatewayRoute>,
    policies: KindStores<RateLimitPolicy>,
    services: KindStores<Service>,
    slices: KindStores<EndpointSlice>,
}

impl Stores {
    fn inputs(&self) -> Inputs {
        Inputs {
            routes: self.routes.state(),
            policies: self.policies.state(),
            services: self.services.state(),
            slices: self.slices.state(),
            // Secrets are watched one by one, as routes reference them (see `secrets`).
            secrets: Vec::new(),
        }
    }

    async fn synced(&self) {
        tokio::join!(
            self.routes.synced(),
            self.policies.synced(),
            self.services.synced(),
            self.slices.synced()
        );
    }
}

/// What the status writer works from: the latest compile's reports and its snapshot.
#[derive(Clone)]
struct Published {
    reports: Arc<Vec<Arc<StatusReport>>>,
    live: LiveSnapshot,
}

/// Aborts the tasks it holds when dropped.
struct TaskGuard(Vec<tokio::task::AbortHandle>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Runs cluster mode until `shutdown` turns true.
pub async fn run(
    client: Client,
    gateway: Arc<Gateway>,
    options: ClusterOptions,
    shutdown: channel::Receiver<bool>,
) {
    let propagation = Histogram::with_opts(
        HistogramOpts::new(
            "sluice_config_propagation_seconds",
            "Time from a watch event to the snapshot that serves it",
        )
        .buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
    )
    .expect("valid metric definition");
    if let Err(e) = gateway
        .metrics()
        .registry()
        .register(Box::new(propagation.clone()))
    {
        tracing::warn!(error = %e, "propagation metric not registered");
    }

    // Every task cluster mode starts dies with it: dropping this future (a crash, or a test
    // killing a replica) stops the watches, the status writer and the Lease renewals alike.
    let mut tasks = TaskGuard(Vec::new());
    let (changes_tx, changes) = mpsc::unbounded_channel();
    let ns = &options.namespaces;
    let stores = Stores {
        routes: KindStores::watch(&client, ns, &changes_tx, &mut tasks.0),
        policies: KindStores::watch(&client, ns, &changes_tx, &mut tasks.0),
        services: KindStores::watch(&client, ns, &changes_tx, &mut tasks.0),
        slices: KindStores::watch(&client, ns, &changes_tx, &mut tasks.0),
    };
    let secrets = SecretWatches::new(client.clone(), changes_tx.clone());
    drop(changes_tx);

    let (leading, election) =
        leader::spawn(client.clone(), options.leader.clone(), shutdown.clone());
    tasks.0.push(election.abort_handle());
    let (publish, published) = channel::channel::<Option<Published>>(None);
    let writer = tokio::spawn(write_statuses(
        StatusWriter::new(client, &options.leader.identity),
        stores.clone(),
        published,
        leading,
        shutdown.clone(),
    ));
    tasks.0.push(writer.abort_handle());

    let compiler = Compiler {
        gateway,
        generation: 0,
        reported: HashSet::new(),
        unresolved: HashSet::new(),
        referenced: HashSet::new(),
        failed: false,
        propagation,
        cache: compile::RouteCache::default(),
        secrets,
    };
    serve_changes(&stores, compiler, changes, &options, publish, shutdown).await;
    // Give the election a moment to release the Lease, so another replica takes over at once.
    let _ = tokio::time::timeout(Duration::from_secs(2), election).await;
}

/// Compiles once every kind has synced, then again after every (debounced) relevant change,
/// until `shutdown` turns true.
async fn serve_changes(
    stores: &Stores,
    mut compiler: Compiler,
    mut changes: mpsc::UnboundedReceiver<Changed>,
    options: &ClusterOptions,
    publish: channel::Sender<Option<Published>>,
    shutdown: channel::Receiver<bool>,
) {
    let mut stop = shutdown;
    tokio::select! {
        () = stores.synced() => {}
        () = until_stopped(&mut stop) => return,
    }
    tracing::info!("every watched kind has synced; compiling the first snapshot");

    let mut pending: Vec<Changed> = Vec::new();
    // The first compile is a full one whatever arrived while syncing.
    while changes.try_recv().is_ok() {}
    let mut full = true;
    loop {
        // After a failed compile the next batch, whatever it is, is compiled in full, or the
        // changes the failed one carried would be skipped by an endpoint refresh.
        if full || compiler.failed {
            if let Some(result) = compiler.recompile(stores, &pending).await {
                let _ = publish.send(Some(result));
            }
        } else if let Some(result) = compiler.refresh(stores, &pending).await {
            let _ = publish.send(Some(result));
        }
        pending.clear();

        // Wait for a batch of changes that matters to some rule.
        while pending.is_empty() {
            tokio::select! {
                c = changes.recv() => match c {
                    Some(c) => pending.push(c),
                    None => return,
                },
                () = until_stopped(&mut stop) => return,
            }
            // Let the burst settle.
            let deadline = Instant::now() + options.debounce.max_delay;
            loop {
                tokio::select! {
                    c = changes.recv() => match c {
                        Some(c) => pending.push(c),
                        None => break,
                    },
                    () = tokio::time::sleep(options.debounce.holdoff) => break,
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
            if !compiler.failed {
                pending.retain(|c| compiler.matters(c));
            }
        }
        full = !compiler.endpoints_only(&pending);
    }
}

struct Compiler {
    gateway: Arc<Gateway>,
    generation: u64,
    /// Diagnostics already logged, so a recompile repeats none of them.
    reported: HashSet<String>,
    /// Services the last full compile could not resolve a backend against.
    unresolved: HashSet<String>,
    /// Services some rule of the live snapshot sends to (the snapshot's own names, shared).
    referenced: HashSet<Arc<str>>,
    /// The last full compile failed (its task died); the current snapshot keeps serving.
    failed: bool,
    propagation: Histogram,
    /// Route outputs of the last compile, so that one route's change recompiles one route.
    cache: compile::RouteCache,
    /// The Secrets the routes reference.
    secrets: SecretWatches,
}

impl Compiler {
    /// False for a change to the endpoints of a Service no rule uses (or failed to use): the
    /// cluster's other EndpointSlices churn all day and must not cost a snapshot each.
    fn matters(&self, change: &Changed) -> bool {
        change
            .endpoints_of
            .as_ref()
            .is_none_or(|s| self.referenced.contains(s.as_str()) || self.unresolved.contains(s))
    }

    /// True when every change in `pending` is to the EndpointSlices of Services that resolved
    /// last time: then only their endpoint lists need refreshing.
    fn endpoints_only(&self, pending: &[Changed]) -> bool {
        !pending.is_empty()
            && pending.iter().all(|c| {
                c.endpoints_of
                    .as_ref()
                    .is_some_and(|s| !self.unresolved.contains(s))
            })
    }

    /// Refreshes the endpoints of the Services in `pending` on the current snapshot, or falls
    /// back to a full compile when that cannot be done (whose result is returned: statuses may
    /// have changed).
    async fn refresh(&mut self, stores: &Stores, pending: &[Changed]) -> Option<Published> {
        let services: HashSet<String> = pending
            .iter()
            .filter_map(|c| c.endpoints_of.clone())
            .collect();
        let generation = self.generation + 1;
        let inputs = stores.inputs();
        let previous = self.gateway.snapshot();
        let refreshed = tokio::task::spawn_blocking(move || {
            compile::refresh_endpoints(&inputs, &services, generation, &previous)
        })
        .await
        .ok()
        .flatten();
        match refreshed {
            Some(snapshot) => {
                self.generation = generation;
                self.gateway.install(snapshot);
                let propagation_ms = self.observe(pending);
                tracing::debug!(
                    generation,
                    changes = pending.len(),
                    propagation_ms,
                    "endpoints refreshed"
                );
                None
            }
            // A backend stopped resolving: only a full compile reports that properly.
            None => self.recompile(stores, pending).await,
        }
    }

    /// Records the propagation of every change in `pending`; returns the oldest's, in ms.
    fn observe(&self, pending: &[Changed]) -> u64 {
        let installed = Instant::now();
        for c in pending {
            self.propagation
                .observe(installed.saturating_duration_since(c.at).as_secs_f64());
        }
        pending.iter().map(|c| c.at).min().map_or(0, |t| {
            u64::try_from(installed.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX)
        })
    }

    /// Compiles the stores' current state and installs it; `None` if the compile task died.
    async fn recompile(&mut self, stores: &Stores, pending: &[Changed]) -> Option<Published> {
        self.generation += 1;
        let generation = self.generation;
        let mut inputs = stores.inputs();
        self.secrets.follow(&inputs.routes).await;
        inputs.secrets = self.secrets.state();
        let previous = self.gateway.snapshot();
        // Lost if the task dies: the next compile then starts from scratch, as it should.
        let mut cache = std::mem::take(&mut self.cache);
        let compiled = tokio::task::spawn_blocking(move || {
            let compiled =
                compile::compile_cached(&inputs, generation, Some(&previous), &mut cache);
            (compiled, inputs.routes.len(), cache)
        })
        .await;
        let (compiled, routes) = match compiled {
            Ok((compiled, routes, cache)) => {
                self.cache = cache;
                (compiled, routes)
            }
            Err(e) => {
                tracing::error!(error = %e, "compile task failed; keeping the current snapshot");
                self.failed = true;
                return None;
            }
        };
        self.failed = false;
        let rules = compiled.snapshot.rules.len();
        self.referenced = compiled
            .snapshot
            .rules
            .iter()
            .flat_map(|r| r.backends.iter().map(|b| Arc::clone(&b.service)))
            .collect();
        self.gateway.install(compiled.snapshot);
        let propagation_ms = self.observe(pending);
        self.unresolved = compiled.unresolved_services;

        let mut now_reported = HashSet::with_capacity(compiled.diagnostics.len());
        for d in &compiled.diagnostics {
            let line = d.to_string();
            if !self.reported.contains(&line) {
                tracing::warn!("{line}");
            }
            now_reported.insert(line);
        }
        self.reported = now_reported;
        tracing::info!(
            generation,
            routes,
            rules,
            problems = compiled.diagnostics.len(),
            changes = pending.len(),
            propagation_ms,
            "snapshot installed"
        );
        Some(Published {
            reports: Arc::new(compiled.statuses),
            live: LiveSnapshot {
                generation,
                at: Timestamp::now(),
                propagation_ms,
            },
        })
    }
}

/// Writes status from every new compile while this replica leads, and everything once when it
/// becomes leader.
async fn write_statuses(
    writer: StatusWriter,
    stores: Stores,
    mut published: channel::Receiver<Option<Published>>,
    mut leading: channel::Receiver<bool>,
    mut shutdown: channel::Receiver<bool>,
) {
    // Writes that failed (API server away) are retried by this resync; it writes only what
    // differs, so it costs nothing when all is written.
    let mut resync = tokio::time::interval(Duration::from_secs(30));
    // After a slow batch, wait a full period rather than firing the missed ticks back to back.
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = published.changed() => if r.is_err() { return },
            r = leading.changed() => if r.is_err() { return },
            _ = resync.tick() => {}
            () = until_stopped(&mut shutdown) => return,
        }
        if !*leading.borrow_and_update() {
            // Another replica may write while we do not lead: forget what we wrote.
            writer.forget();
            continue;
        }
        let Some(current) = published.borrow_and_update().clone() else {
            continue;
        };
        let routes = writer
            .write(
                &stores.routes.state(),
                &current.reports,
                &current.live,
                "Invalid",
                &leading,
            )
            .await;
        let policies = writer
            .write(
                &stores.policies.state(),
                &current.reports,
                &current.live,
                "NotEnforced",
                &leading,
            )
            .await;
        if routes + policies > 0 {
            tracing::info!(
                routes,
                policies,
                generation = current.live.generation,
                "status written"
            );
        }
    }
}
