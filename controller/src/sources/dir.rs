//! Standalone mode: a directory of manifests, watched; every settled change is reconciled.

use std::path::PathBuf;
use std::sync::Arc;

use notify::{EventKind, RecursiveMode, Watcher};
use sluice_proxy::Gateway;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::manifests::ManifestSet;
use crate::reconcile::{Debounce, Reconciler, settle};

/// A watched manifest directory feeding a gateway.
pub struct DirSource {
    roots: Vec<PathBuf>,
    namespaces: Vec<String>,
    set: ManifestSet,
    reconciler: Reconciler,
}

impl DirSource {
    /// A source over `root` installing into `gateway`, keeping only objects in `namespaces`
    /// (all when empty).
    pub fn new(root: PathBuf, namespaces: Vec<String>, gateway: Arc<Gateway>) -> Self {
        DirSource {
            roots: vec![root],
            namespaces,
            set: ManifestSet::default(),
            reconciler: Reconciler::new(gateway),
        }
    }

    /// Re-reads what changed and, if any object changed (or nothing was installed yet), compiles
    /// and installs a new snapshot. `changed_at` is when the change was first seen. Returns
    /// true when a snapshot was installed.
    pub fn reload_changed_at(&mut self, changed_at: Option<Instant>) -> bool {
        let refresh = self.set.refresh(&self.roots);
        for e in &refresh.errors {
            tracing::error!(file = %e.path.display(), line = e.line, "{e}; keeping what this file held before");
        }
        for n in &refresh.notices {
            tracing::warn!(file = %n.path.display(), line = n.line, "{n}");
        }
        if !refresh.changed && self.reconciler.generation() > 0 {
            return false;
        }
        let (mut inputs, duplicates) = self.set.take_inputs(&self.namespaces);
        inputs.shared_store = self.reconciler.shared_store();
        // Standalone mode writes no status; problems go to the log as diagnostics.
        inputs.skip_statuses = true;
        for e in &duplicates {
            tracing::warn!("{e}");
        }
        let set = &self.set;
        let origin = |o: &crate::compile::ObjectRef| set.origin(o).map(|p| p.display().to_string());
        self.reconciler
            .full(&inputs, changed_at.as_slice(), &origin);
        self.set.keep_inputs(&self.namespaces, inputs);
        true
    }

    /// [`DirSource::reload_changed_at`] for a change seen now.
    pub fn reload(&mut self) -> bool {
        self.reload_changed_at(Some(Instant::now()))
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
                    let _ = tx.send(Instant::now());
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
        debounce: Debounce,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let batch = tokio::select! {
                batch = settle(&mut watch.events, debounce) => match batch {
                    Some(batch) => batch,
                    None => return,
                },
                () = &mut shutdown => return,
            };
            let first = batch.iter().min().copied();
            // File reads and compile are blocking work: off the request workers, at a lower
            // priority than theirs.
            self = match crate::compile_thread::run(move || {
                self.reload_changed_at(first);
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

/// A registered directory watch and the changes it reports (when each was seen).
pub struct DirWatch {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<Instant>,
}
