//! Long-lived state outside the snapshot: what must outlive a swap because it is expensive to
//! rebuild or must not be reset (fetched JWKS key sets, rate-limit buckets, per-endpoint health
//! and in-flight counts, circuits, retry budgets; cache entries as that feature arrives). Keyed by stable identities (a `jwksUri`, a
//! limit's policy, name and parameters), bound to a snapshot's rules when the snapshot is
//! installed, so an unchanged policy keeps its state across swaps and a rule compiled anew finds
//! the state of its predecessor.

mod jwks;
mod limits;
mod traffic;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

pub use jwks::Jwks;
pub(crate) use limits::Limits;
use traffic::TrafficState;

use crate::pipeline::Step;
use crate::snapshot::{Rule, Snapshot};

/// How remote key sets are fetched.
#[derive(Debug, Clone, Copy)]
pub struct JwksTiming {
    /// Scheduled refresh of every fetched key set.
    pub refresh: Duration,
    /// Least time between two fetches of one set on demand (unknown `kid`, no keys yet), so a
    /// flood of made-up key ids cannot hammer the issuer.
    pub refetch_floor: Duration,
    /// One fetch, connect to last byte.
    pub timeout: Duration,
}

impl Default for JwksTiming {
    fn default() -> Self {
        JwksTiming {
            refresh: Duration::from_secs(300),
            refetch_floor: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The gateway's long-lived state.
pub struct State {
    /// Held weakly: a key set lives while some installed rule uses it.
    jwks: Mutex<crate::FastMap<Arc<str>, Weak<Jwks>>>,
    fetcher: Arc<jwks::Fetcher>,
    timing: JwksTiming,
    limits: Limits,
    traffic: TrafficState,
}

impl State {
    /// Empty state; rate limits keep their buckets in `limits`; traffic metrics go to
    /// `registry`.
    pub(crate) fn new(timing: JwksTiming, limits: Limits, registry: &prometheus::Registry) -> Self {
        State {
            jwks: Mutex::default(),
            fetcher: Arc::new(jwks::Fetcher::new(timing.timeout)),
            timing,
            limits,
            traffic: TrafficState::new(registry),
        }
    }

    /// Binds the state the rules in `fresh` need (those of `snapshot` not shared with the
    /// snapshot it replaces; the shared ones are bound already).
    pub fn bind(&self, snapshot: &Snapshot, fresh: &[&Arc<Rule>]) {
        self.limits.bind(fresh);
        self.traffic.bind(snapshot, fresh);
        let mut jwks = self.jwks.lock().unwrap_or_else(|e| e.into_inner());
        jwks.retain(|_, w| w.strong_count() > 0);
        for rule in fresh {
            for step in rule.policy.steps.iter() {
                let Step::Authenticate(auth) = step else {
                    continue;
                };
                for provider in auth.jwt.iter() {
                    if let crate::auth::jwt::Keys::Remote(remote) = &provider.keys {
                        remote.bind(|| {
                            if let Some(live) = jwks.get(&remote.uri).and_then(Weak::upgrade) {
                                return live;
                            }
                            let set = Jwks::start(
                                Arc::clone(&remote.uri),
                                Arc::clone(&self.fetcher),
                                self.timing,
                            );
                            jwks.insert(Arc::clone(&remote.uri), Arc::downgrade(&set));
                            set
                        });
                    }
                }
            }
        }
    }
}
