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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use sluice_proxy::Gateway;
use tokio::sync::{mpsc, watch as channel};
use tokio::time::Instant;

use self::leader::{LeaderConfig, until_stopped};
use self::secrets::SecretWatches;
use self::status::{LiveSnapshot, StatusWriter};
use self::watch::{Changed, KindStores, key_of};
use crate::compile::{Inputs, RoutesDelta, StatusReport, route_secret_names};
use crate::reconcile::{Debounce, Installed, Reconciler, settle};
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
            // Set by the reconcile that compiles them.
            shared_store: false,
            // The status writer reads them.
            skip_statuses: false,
            routes_delta: None,
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

    let reconciler = Reconciler::new(gateway.clone());
    let compiler = Compiler {
        propagation: reconciler.propagation().clone(),
        reconciler: Some(reconciler),
        gateway,
        failed: false,
        secrets,
        kept: None,
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
    // The first compile is a full one whatever arrived while syncing.
    while changes.try_recv().is_ok() {}
    let mut pending: Vec<Changed> = Vec::new();
    loop {
        if let Some(installed) = compiler.reconcile(stores, &pending).await
            && let Some(reports) = installed.statuses
        {
            let _ = publish.send(Some(Published {
                reports,
                live: LiveSnapshot {
                    generation: installed.generation,
                    at: Timestamp::now(),
                    propagation_ms: installed.propagation_ms,
                },
            }));
        }
        // Wait for a batch of changes that matters to some rule.
        pending.clear();
        while pending.is_empty() {
            tokio::select! {
                batch = settle(&mut changes, options.debounce) => match batch {
                    Some(batch) => pending = batch,
                    None => return,
                },
                () = until_stopped(&mut stop) => return,
            }
            pending.retain(|c| compiler.matters(c));
        }
    }
}

/// The reconciler, lent to the blocking pool for each compile, and what feeds it.
struct Compiler {
    /// `None` only while a compile runs (or after one died: a fresh one is made).
    reconciler: Option<Reconciler>,
    gateway: Arc<Gateway>,
    /// The registered propagation metric, for a reconciler made anew.
    propagation: prometheus::Histogram,
    /// The last compile failed (its task died); the current snapshot keeps serving, and the
    /// next batch, whatever it is, is compiled in full.
    failed: bool,
    /// The Secrets the routes reference.
    secrets: SecretWatches,
    /// The inputs of the last compile and their routes by key, patched by the next batch when
    /// it holds only route changes: with 10,000 routes, a change then neither lists nor looks
    /// up the 9,999 others. (`None` while a compile runs, and after one died.)
    kept: Option<(Inputs, RoutesByKey)>,
}

impl Compiler {
    fn matters(&self, change: &Changed) -> bool {
        self.failed
            || self
                .reconciler
                .as_ref()
                .is_none_or(|r| r.matters(change.endpoints_of.as_deref()))
    }

    /// Reconciles the stores' current state for the changes in `pending` (none: the first
    /// compile): an endpoint refresh when every change is to the endpoints of Services that
    /// resolved, else a full compile. `None` if the compile task died.
    async fn reconcile(&mut self, stores: &Stores, pending: &[Changed]) -> Option<Installed> {
        let mut reconciler = self
            .reconciler
            .take()
            .unwrap_or_else(|| Reconciler::restart(self.gateway.clone(), self.propagation.clone()));
        let endpoints_only = !self.failed
            && reconciler.endpoints_suffice(pending.iter().map(|c| c.endpoints_of.as_deref()));
        let kept = self.kept.take().filter(|_| !self.failed);
        let routes_changed: Option<Vec<&(String, String)>> =
            pending.iter().map(|c| c.route.as_ref()).collect();
        let (mut inputs, mut routes) = match (kept, routes_changed) {
            // Only routes changed: the last inputs, patched by them.
            (Some((mut inputs, mut routes)), Some(changed)) if !changed.is_empty() => {
                let (delta, secrets) = routes.patch(&mut inputs.routes, changed, &stores.routes);
                if secrets {
                    self.secrets.follow(&inputs.routes).await;
                }
                inputs.routes_delta = Some(delta);
                (inputs, routes)
            }
            // Only endpoints changed: the last routes, with the Services and slices of now.
            (Some((mut inputs, routes)), _) if endpoints_only => {
                inputs.services = stores.services.state();
                inputs.slices = stores.slices.state();
                (inputs, routes)
            }
            _ => {
                let inputs = stores.inputs();
                self.secrets.follow(&inputs.routes).await;
                (inputs, RoutesByKey::default())
            }
        };
        inputs.shared_store = reconciler.shared_store();
        // An endpoint refresh can fall back to a full compile, which needs the Secrets too.
        inputs.secrets = self.secrets.state();
        let services: HashSet<String> = pending
            .iter()
            .filter_map(|c| c.endpoints_of.clone())
            .collect();
        let changed_at: Vec<Instant> = pending.iter().map(|c| c.at).collect();
        let done = crate::compile_thread::run(move || {
            let installed = if endpoints_only {
                reconciler.endpoints(&inputs, &services, &changed_at)
            } else {
                reconciler.full(&inputs, &changed_at, &|_| None)
            };
            inputs.routes_delta = None;
            if routes.is_empty() {
                // After the install: the next batch of route changes patches these inputs.
                routes = RoutesByKey::of(&inputs.routes);
            }
            (installed, reconciler, (inputs, routes))
        })
        .await;
        match done {
            Ok((installed, reconciler, kept)) => {
                self.reconciler = Some(reconciler);
                self.kept = Some(kept);
                self.failed = false;
                Some(installed)
            }
            Err(e) => {
                // The reconciler (and its route cache) died with the task: the next compile
                // starts from scratch, as it should.
                tracing::error!(error = %e, "compile task failed; keeping the current snapshot");
                self.failed = true;
                None
            }
        }
    }
}

/// The routes of the kept inputs by namespace and name: what a route's watch event replaces.
#[derive(Default)]
struct RoutesByKey(HashMap<(String, String), Arc<GatewayRoute>, foldhash::fast::RandomState>);

impl RoutesByKey {
    fn of(routes: &[Arc<GatewayRoute>]) -> Self {
        RoutesByKey(
            routes
                .iter()
                .map(|r| (key_of(&**r), Arc::clone(r)))
                .collect(),
        )
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces in `routes` (and here) each route in `changed` by what `store` holds now; says
    /// which route objects came and went, and whether any of them references a Secret. A route
    /// whose event is still on its way stays as it was until its own change arrives.
    fn patch(
        &mut self,
        routes: &mut Vec<Arc<GatewayRoute>>,
        changed: Vec<&(String, String)>,
        store: &KindStores<GatewayRoute>,
    ) -> (RoutesDelta, bool) {
        let mut delta = RoutesDelta::default();
        let mut secrets = false;
        for key in changed {
            let now = store.get(&key.0, &key.1);
            let before = self.0.get(key);
            if before.map(Arc::as_ptr) == now.as_ref().map(Arc::as_ptr) {
                continue;
            }
            if let Some(old) = self.0.remove(key) {
                if let Some(i) = routes.iter().position(|r| Arc::ptr_eq(r, &old)) {
                    routes.swap_remove(i);
                }
                delta.removed.push(Arc::as_ptr(&old) as usize);
                secrets |= route_secret_names(&old).next().is_some();
            }
            if let Some(new) = now {
                secrets |= route_secret_names(&new).next().is_some();
                routes.push(Arc::clone(&new));
                delta.added.push(Arc::clone(&new));
                self.0.insert(key.clone(), new);
            }
        }
        (delta, secrets)
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
                |ns, name| stores.routes.get(ns, name),
                &current.reports,
                &current.live,
                "Invalid",
                &leading,
            )
            .await;
        let policies = writer
            .write(
                |ns, name| stores.policies.get(ns, name),
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
