//! Standalone mode: a directory of manifests, watched, recompiled and hot-swapped on change.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use sluice_proxy::Gateway;
use tokio::sync::mpsc;

use super::manifests::ManifestSet;
use crate::compile::{RouteCache, compile_cached};

/// How long the directory must be quiet before a reload, and the longest a reload may wait
/// while changes keep coming.
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

/// A watched manifest directory feeding a gateway.
pub struct DirSource {
    roots: Vec<PathBuf>,
    namespaces: Vec<String>,
    set: ManifestSet,
    generation: u64,
    /// Route outputs of the last compile: unchanged files keep their objects, so their routes
    /// are not compiled again.
    cache: RouteCache,
}

impl DirSource {
    /// A source over `root`, keeping only objects in `namespaces` (all when empty).
    pub fn new(root: PathBuf, namespaces: Vec<String>) -> Self {
        DirSource {
            roots: vec![root],
            namespaces,
            set: ManifestSet::default(),
            generation: 0,
            cache: RouteCache::default(),
        }
    }

    /// Re-reads what changed and, if any object changed (or nothing was installed yet), compiles
    /// and installs a new snapshot. Returns true when a snapshot was installed.
    pub fn reload(&mut self, gateway: &Gateway) -> bool {
        let refresh = self.set.refresh(&self.roots);
        for e in &refresh.errors {
            tracing::error!(file = %e.path.display(), line = e.line, "{e}; keeping what this file held before");
        }
        if !refresh.changed && self.generation > 0 {
            return false;
        }
        let (inputs, duplicates) = self.set.inputs(&self.namespaces);
        for e in &duplicates {
            tracing::warn!("{e}");
        }
        self.generation += 1;
        let previous = gateway.snapshot();
        let compiled = compile_cached(&inputs, self.generation, Some(&previous), &mut self.cache);
        for d in &compiled.diagnostics {
            let file = self.set.origin(&d.object).map(|p| p.display().to_string());
            tracing::warn!(file, "{d}");
        }
        let rules = compiled.snapshot.rules.len();
        gateway.install(compiled.snapshot);
        tracing::info!(
            generation = self.generation,
            routes = inputs.routes.len(),
            rules,
            problems = compiled.diagnostics.len() + refresh.errors.len(),
            "snapshot installed"
        );
        true
    }

    /// Starts watching the directory. Call this before the first [`DirSource::reload`] so that
    /// a change made while the first load runs is not missed.
    pub fn start_watching(&self) -> notify::Result<DirWatch> {
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    // Our own reads show up as access events; reacting to them would loop.
                    Ok(e) => !matches!(
                        e.kind,
                        EventKind::Access(notify::event::AccessKind::Open(_))
                            | EventKind::Access(notify::event::AccessKind::Read)
                            | EventKind::Access(notify::event::AccessKind::Close(
                                notify::event::AccessMode::Read
                            ))
                    ),
                    Err(_) => true,
                };
                if relevant {
                    let _ = tx.send(());
                }
            })?;
        for root in &self.roots {
            watcher.watch(root, RecursiveMode::Recursive)?;
        }
        Ok(DirWatch {
            _watcher: watcher,
            events,
        })
    }

    /// Reloads on every (debounced) change reported by `watch` until `shutdown` resolves.
    pub async fn run(
        mut self,
        mut watch: DirWatch,
        gateway: Arc<Gateway>,
        debounce: Debounce,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let rx = &mut watch.events;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                event = rx.recv() => if event.is_none() { return },
                () = &mut shutdown => return,
            }
            let deadline = tokio::time::Instant::now() + debounce.max_delay;
            loop {
                tokio::select! {
                    event = rx.recv() => if event.is_none() { break },
                    () = tokio::time::sleep(debounce.holdoff) => break,
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
            // File reads and compile are blocking work; keep them off the request workers.
            let gw = gateway.clone();
            self = match tokio::task::spawn_blocking(move || {
                self.reload(&gw);
                self
            })
            .await
            {
                Ok(source) => source,
                Err(e) => {
                    tracing::error!(error = %e, "reload task failed; stopping the directory watch");
                    return;
                }
            };
        }
    }
}

/// A registered directory watch and the changes it reports.
pub struct DirWatch {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
}
