//! A fake Kubernetes API server for controller tests: real HTTP, real `kube::Client`.
//!
//! What it emulates, for any resource path (`/api/v1/...`, `/apis/GROUP/VERSION/...`), cluster
//! wide or in a namespace:
//! - list with `resourceVersion`, `limit` and `continue` (pages of the current state);
//! - watch (`watch=true`) from a `resourceVersion`, streaming `ADDED`/`MODIFIED`/`DELETED` as
//!   newline-delimited JSON, `BOOKMARK`s when asked for, ending after `timeoutSeconds`, and an
//!   `ERROR` event with a `410 Expired` Status for a version older than the last compaction;
//! - get, create (`POST`, 409 when it exists), replace (`PUT`, 409 on a stale
//!   `metadata.resourceVersion`), merge patch and delete of one object;
//! - the `status` subresource: writes there change only `.status`, writes to the object ignore
//!   `.status`, and `metadata.generation` grows only when `.spec` changes;
//! - several listeners over one store, so each replica under test can have its own address and
//!   writes can be told apart; taking the server away and bringing it back on the same port.
//!
//! What it does not emulate: label and field selectors (refused with 400), authentication and
//! RBAC, admission and schema validation, JSON patch, server-side apply field ownership (an
//! apply patch is merged like a merge patch), `resourceVersionMatch`, streaming lists,
//! garbage collection, and consistent multi-page lists (each page reads the current state).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::{AbortHandle, JoinHandle};

type Body = BoxBody<Bytes, Infallible>;

/// Which collection an object belongs to: `group/version/plural` (`/v1/services` for core).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource(pub String);

/// Store key: resource, namespace (empty for cluster-scoped), name.
type Key = (Resource, String, String);

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: &'static str,
    key: Key,
    object: Value,
}

/// A status write, with the listener that received it.
#[derive(Debug, Clone)]
pub struct StatusWrite {
    /// Index of the listener (see [`FakeApi::add_listener`]).
    pub listener: usize,
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
    /// The request body.
    pub body: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    /// Watches from a version older than this get 410.
    compacted: u64,
    status_writes: Vec<StatusWrite>,
    uid: u64,
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    bookmark_interval: Duration,
}

struct Listener {
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

/// A running fake API server.
pub struct FakeApi {
    shared: Arc<Shared>,
    listeners: Mutex<Vec<Listener>>,
}

/// An error answered as a Kubernetes `Status`.
struct ApiError(StatusCode, &'static str, String);

impl FakeApi {
    /// Starts a server with one listener on an ephemeral loopback port.
    pub async fn start() -> Arc<Self> {
        let (changes, _) = broadcast::channel(4096);
        let api = Arc::new(FakeApi {
            shared: Arc::new(Shared {
                store: Mutex::new(Store::default()),
                changes,
                bookmark_interval: Duration::from_millis(500),
            }),
            listeners: Mutex::new(Vec::new()),
        });
        api.add_listener().await;
        api
    }

    /// Adds another listener over the same store and returns its index.
    pub async fn add_listener(&self) -> usize {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake api");
        let addr = listener.local_addr().expect("fake api addr");
        let mut listeners = self.listeners.lock().expect("listeners");
        let index = listeners.len();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accept = spawn_accept(self.shared.clone(), listener, index, connections.clone());
        listeners.push(Listener {
            addr,
            accept: Some(accept),
            connections,
        });
        index
    }

    /// The address of listener `index`.
    pub fn addr(&self, index: usize) -> SocketAddr {
        self.listeners.lock().expect("listeners")[index].addr
    }

    /// A `kube::Client` talking to listener `index`, without TLS or credentials.
    pub fn client(&self, index: usize) -> kube::Client {
        let url = format!("http://{}", self.addr(index))
            .parse()
            .expect("fake api url");
        let mut config = kube::Config::new(url);
        config.default_namespace = "default".to_owned();
        config.connect_timeout = Some(Duration::from_secs(1));
        kube::Client::try_from(config).expect("kube client")
    }

    /// Closes every listener and open connection (watches end mid-stream, new connections are
    /// refused), as when the API server goes away.
    pub fn go_away(&self) {
        for l in self.listeners.lock().expect("listeners").iter_mut() {
            if let Some(accept) = l.accept.take() {
                accept.abort();
            }
            for c in l.connections.lock().expect("connections").drain(..) {
                c.abort();
            }
        }
    }

    /// Listens again on the same ports after [`FakeApi::go_away`].
    pub async fn come_back(&self) {
        let addrs: Vec<(usize, SocketAddr)> = self
            .listeners
            .lock()
            .expect("listeners")
            .iter()
            .enumerate()
            .filter(|(_, l)| l.accept.is_none())
            .map(|(i, l)| (i, l.addr))
            .collect();
        for (index, addr) in addrs {
            let mut listener = None;
            // The old socket may linger for a moment after the abort.
            for _ in 0..50 {
                match TcpListener::bind(addr).await {
                    Ok(l) => {
                        listener = Some(l);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            let listener = listener.expect("rebind the fake api port");
            let mut listeners = self.listeners.lock().expect("listeners");
            let connections = listeners[index].connections.clone();
            listeners[index].accept = Some(spawn_accept(
                self.shared.clone(),
                listener,
                index,
                connections,
            ));
        }
    }

    /// Ends every open watch (as an API server restart or a load balancer timeout would), and
    /// forgets history so that resuming from an old version gets `410 Gone`.
    pub fn compact_and_drop_watches(&self) {
        {
            let mut store = self.shared.store.lock().expect("store");
            store.compacted = store.rv;
            store.log.clear();
        }
        for l in self.listeners.lock().expect("listeners").iter() {
            for c in l.connections.lock().expect("connections").drain(..) {
                c.abort();
            }
        }
    }

    /// Creates or replaces an object, as `kubectl apply` would end up doing. `resource` is
    /// `group/version/plural` (`/v1/services`, `discovery.k8s.io/v1/endpointslices`).
    pub fn apply(&self, resource: &str, object: Value) -> Value {
        let resource = Resource(resource.to_owned());
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("object has a name")
            .to_owned();
        let key = (resource, namespace, name);
        let exists = self.get_key(&key).is_some();
        let result = if exists {
            update(&self.shared, &key, object, false)
        } else {
            create(&self.shared, key, object)
        };
        match result {
            Ok(v) => v,
            Err(ApiError(_, _, message)) => panic!("fake api apply failed: {message}"),
        }
    }

    /// Deletes an object; true when it existed.
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) -> bool {
        let key = (
            Resource(resource.to_owned()),
            namespace.to_owned(),
            name.to_owned(),
        );
        delete(&self.shared, &key).is_ok()
    }

    /// The stored object, if any.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.get_key(&(
            Resource(resource.to_owned()),
            namespace.to_owned(),
            name.to_owned(),
        ))
    }

    fn get_key(&self, key: &Key) -> Option<Value> {
        self.shared
            .store
            .lock()
            .expect("store")
            .objects
            .get(key)
            .cloned()
    }

    /// Every object of `resource`.
    pub fn list(&self, resource: &str) -> Vec<Value> {
        let store = self.shared.store.lock().expect("store");
        store
            .objects
            .iter()
            .filter(|((r, _, _), _)| r.0 == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every status write received so far.
    pub fn status_writes(&self) -> Vec<StatusWrite> {
        self.shared
            .store
            .lock()
            .expect("store")
            .status_writes
            .clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.go_away();
    }
}

fn spawn_accept(
    shared: Arc<Shared>,
    listener: TcpListener,
    index: usize,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, index, req).await) }
            });
            let task = tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
            let mut open = connections.lock().expect("connections");
            open.retain(|c| !c.is_finished());
            open.push(task.abort_handle());
        }
    })
}

/// A parsed request path.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
    /// `fieldSelector=metadata.name=X` of a list or watch.
    selected_name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => (format!("/{version}"), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        rest => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
        _ => return None,
    };
    Some(Target {
        resource: Resource(format!("{group_version}/{plural}")),
        namespace,
        name,
        status,
        selected_name: None,
    })
}

/// The form-decoded value of `key` (kube builds queries as `path?&k=v&...`).
fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| form_decode(v))
}

fn form_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match v
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(())
                {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(shared: &Arc<Shared>, listener: usize, req: Request<Incoming>) -> Response<Body> {
    match route(shared, listener, req).await {
        Ok(response) => response,
        Err(ApiError(code, reason, message)) => json_response(
            code,
            &json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": message, "reason": reason,
                "code": code.as_u16(),
            }),
        ),
    }
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn route(
    shared: &Arc<Shared>,
    listener: usize,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let Some(mut target) = parse_path(req.uri().path()) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the fake api does not serve {}", req.uri().path()),
        ));
    };
    let query = req.uri().query().unwrap_or("").to_owned();
    if query_param(&query, "labelSelector").is_some() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the fake api does not emulate label selectors".to_owned(),
        ));
    }
    if let Some(selector) = query_param(&query, "fieldSelector") {
        // Only the one field selector RBAC honours with resourceNames.
        match selector.strip_prefix("metadata.name=") {
            Some(name) if !name.is_empty() && !name.contains(',') => {
                target.selected_name = Some(name.to_owned());
            }
            _ => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("the fake api does not emulate the field selector {selector:?}"),
                ));
            }
        }
    }
    if target.resource.0 == SECRETS && target.name.is_none() && target.selected_name.is_none() {
        // As RBAC with resourceNames answers: Secrets may be read one by one, never all of a
        // namespace at once.
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "secrets may only be listed or watched by name (fieldSelector=metadata.name=...)"
                .to_owned(),
        ));
    }
    let method = req.method().clone();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let parsed = || -> Result<Value, ApiError> {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("body is not JSON: {e}"),
            )
        })
    };

    match (&method, &target.name) {
        (&Method::GET, None) => {
            let watch = matches!(query_param(&query, "watch").as_deref(), Some("true" | "1"));
            if watch {
                Ok(watch_response(shared, &target, &query))
            } else {
                Ok(json_response(
                    StatusCode::OK,
                    &list(shared, &target, &query),
                ))
            }
        }
        (&Method::POST, None) => {
            let mut object = parsed()?;
            let namespace = target.namespace.clone().unwrap_or_default();
            object["metadata"]["namespace"] = Value::String(namespace.clone());
            let name = object["metadata"]["name"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| {
                    object["metadata"]["generateName"]
                        .as_str()
                        .map(|p| format!("{p}{}", fastish_suffix(shared)))
                })
                .ok_or_else(|| {
                    ApiError(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        "metadata.name: Required value".to_owned(),
                    )
                })?;
            object["metadata"]["name"] = Value::String(name.clone());
            let key = (target.resource.clone(), namespace, name);
            create(shared, key, object).map(|v| json_response(StatusCode::CREATED, &v))
        }
        (_, Some(name)) => {
            let key = (
                target.resource.clone(),
                target.namespace.clone().unwrap_or_default(),
                name.clone(),
            );
            match method {
                Method::GET => {
                    let store = shared.store.lock().expect("store");
                    store
                        .objects
                        .get(&key)
                        .map(|v| json_response(StatusCode::OK, v))
                        .ok_or_else(|| not_found(&key))
                }
                Method::PUT => {
                    let object = parsed()?;
                    if target.status {
                        write_status(shared, listener, &key, object, false)
                    } else {
                        update(shared, &key, object, false)
                    }
                    .map(|v| json_response(StatusCode::OK, &v))
                }
                Method::PATCH => {
                    if content_type.starts_with("application/json-patch+json") {
                        return Err(ApiError(
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            "UnsupportedMediaType",
                            "the fake api does not emulate JSON patch".to_owned(),
                        ));
                    }
                    let patch = parsed()?;
                    if target.status {
                        write_status(shared, listener, &key, patch, true)
                    } else {
                        update(shared, &key, patch, true)
                    }
                    .map(|v| json_response(StatusCode::OK, &v))
                }
                Method::DELETE => delete(shared, &key).map(|v| json_response(StatusCode::OK, &v)),
                _ => Err(method_not_allowed()),
            }
        }
        _ => Err(method_not_allowed()),
    }
}

fn method_not_allowed() -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "method not allowed".to_owned(),
    )
}

fn not_found(key: &Key) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{} \"{}\" not found", key.0.0, key.2),
    )
}

fn fastish_suffix(shared: &Shared) -> String {
    let mut store = shared.store.lock().expect("store");
    store.uid += 1;
    format!("{:05x}", store.uid)
}

fn kind_of(resource: &Resource) -> (&'static str, String) {
    let (group_version, plural) = resource.0.rsplit_once('/').unwrap_or(("", ""));
    let kind = match plural {
        "services" => "Service",
        "endpointslices" => "EndpointSlice",
        "gatewayroutes" => "GatewayRoute",
        "ratelimitpolicies" => "RateLimitPolicy",
        "leases" => "Lease",
        "events" => "Event",
        "secrets" => "Secret",
        _ => "Object",
    };
    let api_version = group_version.trim_start_matches('/').to_owned();
    (kind, api_version)
}

fn in_scope(target: &Target, key: &Key) -> bool {
    key.0 == target.resource
        && target.namespace.as_ref().is_none_or(|ns| *ns == key.1)
        && target.selected_name.as_ref().is_none_or(|n| *n == key.2)
}

/// `group/version/plural` of Secrets.
const SECRETS: &str = "/v1/secrets";

fn list(shared: &Shared, target: &Target, query: &str) -> Value {
    let store = shared.store.lock().expect("store");
    let limit = query_param(query, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0);
    let after = query_param(query, "continue");
    let mut items = Vec::new();
    let mut next = None;
    for (key, object) in store.objects.iter().filter(|(k, _)| in_scope(target, k)) {
        let id = format!("{}/{}", key.1, key.2);
        if after.as_ref().is_some_and(|a| id.as_str() <= a.as_str()) {
            continue;
        }
        if limit.is_some_and(|l| items.len() == l) {
            next = Some(items_last_id(&items));
            break;
        }
        items.push(object.clone());
    }
    let (kind, api_version) = kind_of(&target.resource);
    let mut metadata = json!({"resourceVersion": store.rv.to_string()});
    if let Some(token) = next {
        metadata["continue"] = Value::String(token);
    }
    json!({
        "kind": format!("{kind}List"),
        "apiVersion": api_version,
        "metadata": metadata,
        "items": items,
    })
}

fn items_last_id(items: &[Value]) -> String {
    items.last().map_or_else(String::new, |o| {
        format!(
            "{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap_or("")
        )
    })
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch_response(shared: &Arc<Shared>, target: &Target, query: &str) -> Response<Body> {
    let from: u64 = query_param(query, "resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = query_param(query, "allowWatchBookmarks").as_deref() == Some("true");
    let timeout = query_param(query, "timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let (kind, api_version) = kind_of(&target.resource);
    let scope = Target {
        resource: target.resource.clone(),
        namespace: target.namespace.clone(),
        name: None,
        status: false,
        selected_name: target.selected_name.clone(),
    };
    let shared = shared.clone();
    let interval = shared.bookmark_interval;
    tokio::spawn(async move {
        let (mut live, backlog, mut sent) = {
            let store = shared.store.lock().expect("store");
            if from != 0 && from < store.compacted {
                let status = json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "reason": "Expired", "code": 410,
                    "message": format!("too old resource version: {from} ({})", store.compacted),
                });
                let _ = tx.try_send(event_line("ERROR", &status));
                return;
            }
            // Subscribe under the lock so nothing falls between the backlog and the live feed.
            let live = shared.changes.subscribe();
            let backlog: Vec<Change> = if from == 0 {
                // "Any version": start with the current state, as ADDED events.
                store
                    .objects
                    .iter()
                    .filter(|(k, _)| in_scope(&scope, k))
                    .map(|(k, v)| Change {
                        rv: store.rv,
                        kind: "ADDED",
                        key: k.clone(),
                        object: v.clone(),
                    })
                    .collect()
            } else {
                store
                    .log
                    .iter()
                    .filter(|c| c.rv > from && in_scope(&scope, &c.key))
                    .cloned()
                    .collect()
            };
            (live, backlog, from.max(store.rv.min(from)))
        };
        for change in backlog {
            sent = sent.max(change.rv);
            if tx
                .send(event_line(change.kind, &change.object))
                .await
                .is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    let rv = shared.store.lock().expect("store").rv;
                    let mark = json!({
                        "kind": kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": rv.to_string()},
                    });
                    if tx.send(event_line("BOOKMARK", &mark)).await.is_err() {
                        return;
                    }
                }
                change = live.recv() => match change {
                    Ok(change) if change.rv > sent && in_scope(&scope, &change.key) => {
                        sent = change.rv;
                        if tx.send(event_line(change.kind, &change.object)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Too slow to keep up, or the server is shutting down: end the watch and
                    // let the client resume from its last version.
                    Err(_) => return,
                }
            }
        }
    });
    let stream = tokio_stream_from(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Records a change: a new resourceVersion stamped on the object, the store updated (the
/// caller has already removed a deleted object), the change logged for watches resuming from
/// an older version and sent to the open ones. Returns the object as stored.
fn commit(
    shared: &Shared,
    store: &mut Store,
    kind: &'static str,
    key: Key,
    mut object: Value,
) -> Value {
    store.rv += 1;
    object["metadata"]["resourceVersion"] = Value::String(store.rv.to_string());
    if kind != "DELETED" {
        store.objects.insert(key.clone(), object.clone());
    }
    store.log.push(Change {
        rv: store.rv,
        kind,
        key: key.clone(),
        object: object.clone(),
    });
    let _ = shared.changes.send(Change {
        rv: store.rv,
        kind,
        key,
        object: object.clone(),
    });
    object
}

/// The stored object `incoming` is written over, if `incoming` names its current version (or
/// none).
fn current_for(store: &Store, key: &Key, incoming: &Value) -> Result<Value, ApiError> {
    let current = store
        .objects
        .get(key)
        .cloned()
        .ok_or_else(|| not_found(key))?;
    check_version(&current, incoming)?;
    Ok(current)
}

fn create(shared: &Shared, key: Key, mut object: Value) -> Result<Value, ApiError> {
    let mut store = shared.store.lock().expect("store");
    if store.objects.contains_key(&key) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{}\" already exists", key.0.0, key.2),
        ));
    }
    store.uid += 1;
    let (kind, api_version) = kind_of(&key.0);
    object["kind"] = Value::String(kind.to_owned());
    object["apiVersion"] = Value::String(api_version);
    let meta = &mut object["metadata"];
    meta["name"] = Value::String(key.2.clone());
    if !key.1.is_empty() {
        meta["namespace"] = Value::String(key.1.clone());
    }
    meta["uid"] = Value::String(format!("00000000-0000-0000-0000-{:012x}", store.uid));
    meta["creationTimestamp"] = Value::String(now_rfc3339());
    meta["generation"] = Value::from(1);
    if let Some(m) = meta.as_object_mut() {
        m.remove("managedFields");
    }
    if let Some(o) = object.as_object_mut() {
        // Status is set through the subresource only.
        o.remove("status");
    }
    Ok(commit(shared, &mut store, "ADDED", key, object))
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn check_version(current: &Value, incoming: &Value) -> Result<(), ApiError> {
    match incoming["metadata"]["resourceVersion"].as_str() {
        Some(v) if Some(v) != current["metadata"]["resourceVersion"].as_str() => Err(ApiError(
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version"
                .to_owned(),
        )),
        _ => Ok(()),
    }
}

fn update(shared: &Shared, key: &Key, incoming: Value, patch: bool) -> Result<Value, ApiError> {
    let mut store = shared.store.lock().expect("store");
    let current = current_for(&store, key, &incoming)?;
    let mut next = if patch {
        let mut next = current.clone();
        merge(&mut next, &incoming);
        next
    } else {
        incoming
    };
    // Writes to the object leave its status alone, and identity fields are the server's.
    next["status"] = current["status"].clone();
    if next["status"].is_null()
        && let Some(o) = next.as_object_mut()
    {
        o.remove("status");
    }
    for field in ["uid", "creationTimestamp", "namespace", "name"] {
        next["metadata"][field] = current["metadata"][field].clone();
    }
    next["kind"] = current["kind"].clone();
    next["apiVersion"] = current["apiVersion"].clone();
    let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
    let spec_changed = next["spec"] != current["spec"];
    next["metadata"]["generation"] = Value::from(generation + i64::from(spec_changed));
    if next == current {
        return Ok(current);
    }
    Ok(commit(shared, &mut store, "MODIFIED", key.clone(), next))
}

fn write_status(
    shared: &Shared,
    listener: usize,
    key: &Key,
    incoming: Value,
    patch: bool,
) -> Result<Value, ApiError> {
    let mut store = shared.store.lock().expect("store");
    let current = current_for(&store, key, &incoming)?;
    store.status_writes.push(StatusWrite {
        listener,
        namespace: key.1.clone(),
        name: key.2.clone(),
        body: incoming.clone(),
    });
    let mut next = current.clone();
    if patch {
        let mut status = current["status"].clone();
        if !incoming["status"].is_null() {
            merge(&mut status, &incoming["status"]);
        }
        next["status"] = status;
    } else {
        next["status"] = incoming["status"].clone();
    }
    if next == current {
        return Ok(current);
    }
    Ok(commit(shared, &mut store, "MODIFIED", key.clone(), next))
}

fn delete(shared: &Shared, key: &Key) -> Result<Value, ApiError> {
    let mut store = shared.store.lock().expect("store");
    let object = store.objects.remove(key).ok_or_else(|| not_found(key))?;
    Ok(commit(shared, &mut store, "DELETED", key.clone(), object))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_into_resource_namespace_name_and_subresource() {
        let t = parse_path("/apis/sluice.dev/v1alpha1/namespaces/shop/gatewayroutes/r/status")
            .expect("parses");
        assert_eq!(t.resource.0, "sluice.dev/v1alpha1/gatewayroutes");
        assert_eq!(t.namespace.as_deref(), Some("shop"));
        assert_eq!(t.name.as_deref(), Some("r"));
        assert!(t.status);
        let t = parse_path("/api/v1/services").expect("parses");
        assert_eq!(t.resource.0, "/v1/services");
        assert!(t.namespace.is_none() && t.name.is_none());
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge(&mut v, &json!({"a": null, "b": {"c": 4}, "e": [1]}));
        assert_eq!(v, json!({"b": {"c": 4, "d": 3}, "e": [1]}));
    }
}
