//! The `Cache` step: a response cache for a rule's `GET` and `HEAD` requests.
//!
//! A key is the rule's cache id (a new one for every change of its route), the scheme, the host, the
//! normalised path, the query, the rule's `vary` request headers and, on a rule that
//! authenticates, the verified identity as the backend sees it; then the request headers the
//! stored response's `Vary` names. A hit is answered in the request phase; a miss goes
//! upstream and the response phase tees a storable body into the store as it streams to the
//! client. Concurrent misses for one key wait (a bounded time) for the first one's fill.
//!
//! The step is the rule's last: it sees the request as the backend would (after
//! authentication, limits and header changes), and in the response phases it is the first,
//! so it stores the backend's response before any rule filter dresses it (a hit is dressed
//! again like any backend response).

mod control;
mod entry;
mod key;
mod store;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{
    AGE, CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH,
};
use http::{Method, Response};
use serde::Serialize;

pub use control::{
    Directives, MAX_AGE_SECS, NotStored, freshness, not_modified, request_wants_fresh, vary_names,
};
pub use entry::Entry;
pub use store::{CacheStore, Key};

use crate::body::ProxyBody;
use crate::pipeline::RequestCtx;
use store::FillGuard;

static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Longest a request waits for another request's fill of the same key.
const COALESCE_WAIT: Duration = Duration::from_secs(5);
/// Most fills a request waits for before it goes upstream itself.
const MAX_WAITS: u32 = 2;

/// A rule's compiled `cache`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachePolicy {
    /// Identifies the rule's configuration: part of every key, so that a route change leaves
    /// the old entries unreachable (and the install purges them).
    pub id: u64,
    /// Freshness when the backend gives none.
    pub ttl: Duration,
    /// Largest body stored.
    pub max_entry_size: u64,
    /// Request headers that separate entries.
    #[serde(serialize_with = "crate::snapshot::ser_names")]
    pub vary: Box<[HeaderName]>,
    /// Entries in Redis.
    pub shared: bool,
    /// The rule authenticates: the verified identity is part of the key.
    pub authenticated: bool,
    #[serde(skip)]
    store: OnceLock<Arc<CacheStore>>,
}

/// What the cache did with a request (the `X-Cache` header and the access log's `cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Answered from the store.
    Hit,
    /// Went to the backend.
    Miss,
}

impl CacheStatus {
    /// `HIT` or `MISS`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
        }
    }
}

/// One request's dealings with the cache, kept in its context.
#[derive(Debug)]
pub struct CacheState {
    /// Hit or miss.
    pub status: CacheStatus,
    /// A miss whose response may be stored.
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    primary: Key,
    /// The request headers a response's `Vary` may name.
    request: HeaderMap,
    /// This request is the one filling the key (others wait for it).
    guard: Option<FillGuard>,
    store: Arc<CacheStore>,
}

/// Where a request's cache lookup left it.
pub(crate) enum Lookup {
    /// Not cacheable, or a miss: go upstream.
    Upstream,
    /// A hit.
    Hit(Box<Response<ProxyBody>>),
}

impl CachePolicy {
    /// The step; `id` must change whenever the rule's route changes.
    pub fn new(
        id: u64,
        ttl: Duration,
        max_entry_size: u64,
        vary: Vec<HeaderName>,
        shared: bool,
        authenticated: bool,
    ) -> Self {
        CachePolicy {
            id,
            ttl,
            max_entry_size,
            vary: vary.into(),
            shared,
            authenticated,
            store: OnceLock::new(),
        }
    }

    /// Binds the gateway's store (at install).
    pub(crate) fn bind(&self, store: &Arc<CacheStore>) {
        let _ = self.store.get_or_init(|| Arc::clone(store));
    }

    fn shared(&self, store: &CacheStore) -> bool {
        self.shared && store.has_shared()
    }

    /// The request phase.
    pub(crate) async fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        method: &Method,
        host: &str,
        path: &str,
        query: Option<&str>,
        headers: &mut HeaderMap,
    ) -> Lookup {
        let head = method == Method::HEAD;
        // A WebSocket handshake is a GET too, and must reach the backend.
        if !(head || method == Method::GET) || headers.contains_key(http::header::UPGRADE) {
            return Lookup::Upstream;
        }
        let Some(store) = self.store.get() else {
            return Lookup::Upstream;
        };
        let shared = self.shared(store);
        let identity = if self.authenticated {
            ctx.identity.as_ref()
        } else {
            None
        };
        let https = ctx.client.tls.is_some();
        // The host as the backend receives it (port and spelling included), not the routed form.
        let upstream_host = headers
            .get(http::header::HOST)
            .map_or(host.as_bytes(), HeaderValue::as_bytes);
        let primary = key::primary(
            self.id,
            https,
            upstream_host,
            path,
            query,
            &self.vary,
            headers,
            identity,
        );
        let mut guard = None;
        let no_store = control::Directives::of(headers).no_store;
        if control::request_wants_fresh(headers) {
            store.count("bypass");
        } else {
            let mut waits = 0;
            loop {
                let names = store.vary_of(primary);
                let full = key::full(primary, names.as_deref().unwrap_or(&[]), headers);
                if let Some(entry) = store.get(full, self.id, shared).await {
                    store.count("hit");
                    ctx.cache = Some(CacheState {
                        status: CacheStatus::Hit,
                        pending: None,
                    });
                    let now = SystemTime::now();
                    // Conditionals apply to 2xx only (RFC 9110 section 13.2.2).
                    let fresh = entry.status.is_success()
                        && control::not_modified(headers, entry.etag(), entry.last_modified());
                    let mut response = entry.to_response(now, head, fresh);
                    response
                        .headers_mut()
                        .insert(X_CACHE.clone(), HeaderValue::from_static("HIT"));
                    return Lookup::Hit(Box::new(response));
                }
                if head {
                    break;
                }
                match store.fill(full) {
                    Ok(g) => {
                        guard = Some(g);
                        break;
                    }
                    // A leader failed and another took the fill: wait for that one too, but
                    // not for a third (each wait is bounded; so is their number).
                    Err(_) if waits == MAX_WAITS => break,
                    Err(mut done) => {
                        // Another request is fetching this key: wait for it, then look again;
                        // if it stored nothing (it failed, or the response was not storable)
                        // one of the waiters fills in its place.
                        store.count("coalesced");
                        let wait = ctx
                            .remaining()
                            .map_or(COALESCE_WAIT, |left| left.min(COALESCE_WAIT));
                        let _ = tokio::time::timeout(wait, done.wait_for(|d| *d)).await;
                        waits += 1;
                    }
                }
            }
            store.count("miss");
        }
        // A client's `no-store`: fetched afresh and not stored (RFC 9111 section 5.2.1.5).
        let pending = (!head && !no_store).then(|| {
            // The backend is asked for the whole response, to store; a conditional the client
            // sent would make it answer 304 with nothing to keep.
            let request = headers.clone();
            headers.remove(IF_NONE_MATCH);
            headers.remove(IF_MODIFIED_SINCE);
            Pending {
                primary,
                request,
                guard,
                store: Arc::clone(store),
            }
        });
        ctx.cache = Some(CacheState {
            status: CacheStatus::Miss,
            pending,
        });
        Lookup::Upstream
    }

    /// The response phase: `X-Cache`, and a storable backend response teed into the store.
    pub(crate) fn on_response(&self, ctx: &mut RequestCtx<'_>, response: &mut Response<ProxyBody>) {
        let upstream_response = ctx.upstream_response;
        let Some(state) = ctx.cache.as_mut() else {
            return;
        };
        if state.status == CacheStatus::Hit {
            return;
        }
        response
            .headers_mut()
            .insert(X_CACHE.clone(), HeaderValue::from_static("MISS"));
        let Some(pending) = state.pending.take() else {
            return;
        };
        if !upstream_response {
            return;
        }
        if !matches!(response.body(), ProxyBody::Left(_)) {
            return;
        }
        let now = SystemTime::now();
        let fresh_for = match control::freshness(
            response.status(),
            &pending.request,
            response.headers(),
            self.authenticated,
            self.ttl,
            now,
        ) {
            Ok(fresh) => fresh,
            Err(_) => return,
        };
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_entry_size) {
            return;
        }
        let Some(names) = control::vary_names(response.headers()) else {
            return;
        };
        let names: Arc<[HeaderName]> = names.into();
        let store = &pending.store;
        if store.vary_of(pending.primary).as_deref() != Some(&names[..]) {
            store.set_vary(pending.primary, Arc::clone(&names));
        }
        let full = key::full(pending.primary, &names, &pending.request);
        let mut headers = response.headers().clone();
        let initial_age = headers
            .remove(AGE)
            .and_then(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()))
            .map_or(Duration::ZERO, |s| {
                Duration::from_secs(s.min(control::MAX_AGE_SECS))
            });
        let entry = Entry {
            rule: self.id,
            status: response.status(),
            headers,
            body: Bytes::new(),
            stored_at: now,
            fresh_for,
            initial_age,
        };
        let ProxyBody::Left(body) = response.body_mut() else {
            return;
        };
        body.tee(Box::new(Filling {
            buf: BytesMut::new(),
            max: self.max_entry_size,
            entry: Some(entry),
            key: full,
            shared: self.shared(store),
            store: Arc::clone(store),
            guard: pending.guard,
        }));
    }
}

/// A backend body being copied into the store as it streams to the client.
pub(crate) struct Filling {
    buf: BytesMut,
    max: u64,
    entry: Option<Entry>,
    key: Key,
    shared: bool,
    store: Arc<CacheStore>,
    /// Dropped when the fill ends, stored or not: waiting requests then look again.
    guard: Option<FillGuard>,
}

impl Filling {
    /// A data frame went to the client.
    pub(crate) fn data(&mut self, data: &Bytes) {
        if self.entry.is_none() {
            return;
        }
        if (self.buf.len() + data.len()) as u64 > self.max {
            // Too large after all (no Content-Length said so): stream the rest, store nothing.
            self.entry = None;
            self.buf = BytesMut::new();
            self.guard = None;
            return;
        }
        self.buf.extend_from_slice(data);
    }

    /// The body ended cleanly: store it.
    pub(crate) fn finish(&mut self) {
        let Some(mut entry) = self.entry.take() else {
            return;
        };
        entry.body = std::mem::take(&mut self.buf).freeze();
        let declared = entry
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n != entry.body.len()) {
            return;
        }
        let store = Arc::clone(&self.store);
        let guard = self.guard.take();
        let (key, shared) = (self.key, self.shared);
        if shared {
            tokio::spawn(async move {
                store.put_shared(key, entry).await;
                drop(guard);
            });
        } else {
            // Stored before the guard goes: the requests it wakes find the entry.
            store.put_local(key, entry);
            drop(guard);
        }
    }
}

impl std::fmt::Debug for Filling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filling")
            .field("bytes", &self.buf.len())
            .finish_non_exhaustive()
    }
}
