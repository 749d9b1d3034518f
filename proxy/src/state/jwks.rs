//! Key sets fetched from a `jwksUri`: fetched when first bound, refreshed on a schedule and on
//! demand (a token naming a `kid` the set lacks, or no keys yet) no more often than the floor,
//! and kept when a fetch fails: the last good keys serve while the issuer is down.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Algorithm;
use tokio::time::Instant;

use super::JwksTiming;
use crate::auth::jwt::KeySet;

/// Largest JWKS document read.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// Every public-key algorithm: a fetched set keeps every signing key it can use, and each
/// provider then takes only keys of its own algorithms' families. Never HMAC: a shared secret
/// has no business in a published document (compile refuses HS* with a `jwksUri`), and over
/// plain HTTP anyone on the path could hand the gateway one.
const ALL_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The HTTP(S) client key sets are fetched with, made on first use: a gateway without a
/// `jwksUri` never reads the system's CA certificates.
pub(crate) struct Fetcher {
    client: std::sync::OnceLock<Option<HttpsClient>>,
    timeout: Duration,
}

impl Fetcher {
    pub(crate) fn new(timeout: Duration) -> Self {
        Fetcher {
            client: std::sync::OnceLock::new(),
            timeout,
        }
    }

    fn client(&self) -> Option<&HttpsClient> {
        self.client
            .get_or_init(|| {
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_native_roots()
                    .map(|b| b.https_or_http().enable_http1().build());
                match connector {
                    Ok(c) => Some(Client::builder(TokioExecutor::new()).build(c)),
                    Err(e) => {
                        tracing::warn!(error = %e, "no CA certificates found; jwksUri cannot be fetched");
                        None
                    }
                }
            })
            .as_ref()
    }

    async fn fetch(&self, uri: &str) -> Result<KeySet, String> {
        let client = self
            .client()
            .ok_or("no HTTPS client (no CA certificates)")?;
        let uri: http::Uri = uri.parse().map_err(|e| format!("invalid URI: {e}"))?;
        let work = async {
            let request = http::Request::get(uri)
                .header(http::header::ACCEPT, "application/json")
                .body(Empty::new())
                .map_err(|e| e.to_string())?;
            let response = client.request(request).await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("answered {}", response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_DOCUMENT)
                .collect()
                .await
                .map_err(|e| format!("reading the document: {e}"))?
                .to_bytes();
            KeySet::from_jwks(&body, &ALL_ALGORITHMS)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| "timed out".to_owned())?
    }
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("uri", &self.uri)
            .field("keys", &self.keys.load().as_ref().map_or(0, |k| k.len()))
            .finish_non_exhaustive()
    }
}

/// One remote key set, shared by every provider naming its URI.
pub struct Jwks {
    uri: Arc<str>,
    keys: ArcSwapOption<KeySet>,
    fetcher: Arc<Fetcher>,
    timing: JwksTiming,
    /// When the last fetch started, for the on-demand floor.
    last_attempt: Mutex<Option<Instant>>,
    /// One fetch at a time: concurrent requests wait for it instead of fetching again.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    /// A key set for `uri`; its first fetch and scheduled refreshes run on the current runtime
    /// (without one, the first request fetches).
    pub(crate) fn start(uri: Arc<str>, fetcher: Arc<Fetcher>, timing: JwksTiming) -> Arc<Self> {
        let jwks = Arc::new(Jwks {
            uri,
            keys: ArcSwapOption::empty(),
            fetcher,
            timing,
            last_attempt: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(refresh_loop(Arc::downgrade(&jwks)));
        }
        jwks
    }

    /// The current keys; when there are none yet, one fetch (within the floor) is waited for.
    pub(crate) async fn keys(&self) -> Option<Arc<KeySet>> {
        if let Some(keys) = self.keys.load_full() {
            return Some(keys);
        }
        self.fetch_on_demand().await;
        self.keys.load_full()
    }

    /// A newer set than `seen`, for a token whose `kid` `seen` lacks: fetched now unless a fetch
    /// happened within the floor. `None` when nothing newer is to be had.
    pub(crate) async fn refetch_for_unknown_kid(&self, seen: &Arc<KeySet>) -> Option<Arc<KeySet>> {
        let newer = |current: Option<Arc<KeySet>>| current.filter(|c| !Arc::ptr_eq(c, seen));
        if let Some(set) = newer(self.keys.load_full()) {
            return Some(set);
        }
        self.fetch_on_demand().await;
        newer(self.keys.load_full())
    }

    async fn fetch_on_demand(&self) {
        let _ = self.fetch(true).await;
    }

    /// Fetches once, one fetch at a time; on failure the last good keys stay. With `floor`, no
    /// fetch happens within the refetch floor of the last one (`None`). Returns whether a fetch
    /// succeeded.
    async fn fetch(&self, floor: bool) -> Option<bool> {
        let _one = self.fetching.lock().await;
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
            if floor && last.is_some_and(|t| t.elapsed() < self.timing.refetch_floor) {
                return None;
            }
            *last = Some(Instant::now());
        }
        Some(match self.fetcher.fetch(&self.uri).await {
            Ok(set) => {
                tracing::debug!(uri = %self.uri, keys = set.len(), "JWKS fetched");
                self.keys.store(Some(Arc::new(set)));
                true
            }
            Err(e) => {
                let keeping = self.keys.load().as_ref().map_or(0, |k| k.len());
                tracing::warn!(uri = %self.uri, error = %e, keeping, "JWKS fetch failed; keeping the last good keys");
                false
            }
        })
    }
}

/// Fetches at once, then on the refresh schedule (sooner after a failure), until the key set is
/// no longer used by any installed rule.
async fn refresh_loop(jwks: Weak<Jwks>) {
    loop {
        let Some(set) = jwks.upgrade() else { return };
        let ok = set.fetch(false).await == Some(true);
        let wait = if ok {
            set.timing.refresh
        } else {
            set.timing.refetch_floor.max(Duration::from_secs(1))
        };
        drop(set);
        tokio::time::sleep(jittered(wait)).await;
    }
}

/// `d` give or take 10 %, so replicas do not refresh in lock-step.
fn jittered(d: Duration) -> Duration {
    let ms = d.as_millis().min(u128::from(u64::MAX)) as u64;
    let spread = ms / 10;
    Duration::from_millis(ms - spread + fastrand::u64(0..=spread.saturating_mul(2)))
}
