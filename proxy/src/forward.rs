//! The upstream phase of one request: the target it is sent with, the attempts (an endpoint
//! picked by the rule's balancer for each, under the rule's timeouts and circuit limits, with
//! the rule's retry policy deciding whether a failure is tried again elsewhere), and the relay
//! of the response (or of a WebSocket switch).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body;
use hyper_util::rt::TokioIo;

use crate::client_body::{ClientBody, ClientFault};
use crate::error::ProxyError;
use crate::headers::{is_websocket_upgrade, strip_hop_by_hop};
use crate::health::InFlight;
use crate::pipeline::RequestCtx;
use crate::retry::{self, Replay, RequestBody, RetryPolicy};
use crate::router::Candidate;
use crate::snapshot::{PathRewrite, Rule};
use crate::upstream::{Failed, UpstreamBody, UpstreamError, Upstreams};

/// Without a `retry` policy, a request that reached no backend is sent once more, to another
/// endpoint: it is safe for every method, and it is what turns a pod that just died into a
/// slower answer instead of a 502.
const UNSENT_RETRIES: u32 = 1;

/// What one attempt came back with.
enum Attempt {
    Response(Response<UpstreamBody>),
    Failed(Failed),
    /// The attempt's own timeout (`perTryTimeout` or `backendRequest`) passed.
    TimedOut,
    /// The request's deadline passed.
    Deadline,
}

/// The request head, kept to send a buffered request again.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Head {
    fn request(&self, replay: &Replay) -> Request<RequestBody> {
        let mut r = Request::new(replay.body());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// Sends `upstream` (origin-form target, headers prepared) to the rule's endpoints until one
/// answers or the retry policy gives up, and relays what comes back: the response with its
/// hop-by-hop headers removed, or a WebSocket switch the client asked for (`client_upgrade`),
/// spliced once both sides switched. `hash` is the request's consistent-hash key;
/// `retry_buffer` the largest body buffered to be sent again.
pub(crate) async fn upstream(
    upstreams: &Upstreams,
    rule: &Rule,
    ctx: &mut RequestCtx<'_>,
    upstream: Request<ClientBody>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    hash: Option<u64>,
    retry_buffer: u64,
) -> Result<Response<UpstreamBody>, ProxyError> {
    let traffic = &rule.policy.traffic;
    let policy = traffic.retry.as_ref();
    let (parts, body) = upstream.into_parts();
    let method = parts.method.clone();
    // A body is buffered only when a retry could send it again after it reached a backend.
    let resendable =
        client_upgrade.is_none() && policy.is_some_and(|p| p.attempts > 0 && p.may_resend(&method));
    let (body, replay) = if resendable {
        let wait = remaining(rule, ctx.started).unwrap_or(BODY_WAIT);
        match retry::body::buffer_small(body, retry_buffer, wait).await {
            Ok(Ok(replay)) => (replay.body(), Some(replay)),
            Ok(Err(streamed)) => (RequestBody::Streamed(streamed), None),
            Err(retry::body::BufferError::Timeout) => return Err(ProxyError::RequestTimeout),
            Err(retry::body::BufferError::Read(fault)) => return Err(client_fault(fault)),
        }
    } else {
        (RequestBody::Streamed(body), None)
    };
    // A timeout says something about the endpoint only if the whole request had reached it;
    // a client that stops sending its body half-way must not get a healthy endpoint ejected.
    let body_complete = replay.is_some() || body.is_end_stream();
    let head = replay.as_ref().map(|_| Head {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
    });
    if let Some(p) = policy {
        p.budget().record_request();
    }
    let max_retries = policy.map_or(UNSENT_RETRIES, |p| p.attempts);
    let resend = || {
        head.as_ref()
            .zip(replay.as_ref())
            .map(|(h, r)| h.request(r))
    };
    let mut next = Some(Request::from_parts(parts, body));
    // Allocated only when a retry happens.
    let mut tried: Vec<SocketAddr> = Vec::new();
    loop {
        let Some(mut request) = next.take() else {
            return Err(ProxyError::BadRequest("the request cannot be sent again"));
        };
        let (backend, endpoint) = rule.pick(hash, &tried).ok_or(ProxyError::NoReadyEndpoint)?;
        ctx.attempts += 1;
        ctx.endpoint = Some(endpoint.addr);
        let (permit, slot) = match backend.circuit() {
            Some(circuit) => (
                Some(circuit.admit().map_err(|_| ProxyError::CircuitOpen)?),
                Some(
                    circuit
                        .connection(upstreams.connect_timeout)
                        .await
                        .map_err(|_| ProxyError::CircuitOpen)?,
                ),
            ),
            None => (None, None),
        };
        let state = endpoint.state();
        let in_flight = state.start(permit).with_connection(slot);
        if !request.headers().contains_key(HOST) {
            // HTTP/1.0 without a Host: name the endpoint, as an HTTP/1.1 request must name one.
            if let Ok(v) = HeaderValue::try_from(endpoint.addr.to_string()) {
                request.headers_mut().insert(HOST, v);
            }
        }
        let outcome = attempt(upstreams, rule, policy, ctx.started, endpoint.addr, request).await;
        let retries_left = ctx.attempts <= max_retries;
        let may_resend = |p: &RetryPolicy| p.may_resend(&method) && replay.is_some();
        let passive = traffic.passive.as_ref();
        match outcome {
            Attempt::Response(response) => {
                let status = response.status().as_u16();
                state.record(status >= 500, passive, &backend.endpoints);
                if let Some(p) = policy
                    && retries_left
                    && p.retries_status(status)
                    && may_resend(p)
                    && let Some(delay) = retry_delay(rule, p, ctx)
                {
                    // Nothing of this attempt is kept through the backoff: its connection, its
                    // slot and its in-flight count go now.
                    drop(response);
                    drop(in_flight);
                    sleep(delay).await;
                    tried.push(endpoint.addr);
                    next = resend();
                    continue;
                }
                return relay(response, in_flight, client_upgrade);
            }
            Attempt::Failed(Failed { error, unsent }) => {
                drop(in_flight);
                if let Some(fault) = client_body_fault(&error) {
                    // The client's body broke on its way through: not the endpoint's failure,
                    // and nothing to send again.
                    return Err(client_fault(fault));
                }
                state.record(true, passive, &backend.endpoints);
                let again = match unsent {
                    // Nothing reached the backend: safe whatever the method.
                    Some(unsent) => Some(unsent),
                    None if policy.is_some_and(may_resend) => resend(),
                    None => None,
                };
                let delay = match policy {
                    _ if again.is_none() || !retries_left => None,
                    Some(p) => retry_delay(rule, p, ctx),
                    None => Some(Duration::ZERO),
                };
                let Some(delay) = delay else {
                    return Err(ProxyError::Backend(error));
                };
                sleep(delay).await;
                tracing::debug!(endpoint = %endpoint.addr, error = %error, "retrying on another endpoint");
                tried.push(endpoint.addr);
                next = again;
            }
            Attempt::TimedOut => {
                drop(in_flight);
                if body_complete {
                    state.record(true, passive, &backend.endpoints);
                }
                let delay = policy
                    .filter(|p| retries_left && may_resend(p))
                    .and_then(|p| retry_delay(rule, p, ctx));
                let Some(delay) = delay else {
                    return Err(ProxyError::BackendTimeout);
                };
                sleep(delay).await;
                tried.push(endpoint.addr);
                next = resend();
            }
            // The request's own time ran out: not the endpoint's failure alone (the client's
            // body, or earlier attempts, may have taken it).
            Attempt::Deadline => return Err(ProxyError::BackendTimeout),
        }
    }
}

/// The answer to a client whose body broke: 400 for broken framing, 499 for a hang-up.
fn client_fault(fault: ClientFault) -> ProxyError {
    match fault {
        ClientFault::Malformed => ProxyError::BadRequest("the request body is malformed"),
        ClientFault::Closed => ProxyError::ClientClosed,
    }
}

/// What broke in the client's body, when that is why an exchange failed: hyper's client
/// reports an error of the body it sends as a "user" error caused by that body's own error.
fn client_body_fault(error: &UpstreamError) -> Option<ClientFault> {
    let UpstreamError::Http(e) = error else {
        return None;
    };
    let cause = std::error::Error::source(e)?;
    (e.is_user() && cause.is::<hyper::Error>()).then(|| ClientFault::of(cause))
}

/// How long buffering a retryable body may take when the rule sets no request timeout.
const BODY_WAIT: Duration = Duration::from_secs(30);

/// The backoff before a retry, taken from the rule's budget; `None` when the budget is spent
/// or the wait would outlast the request's deadline.
fn retry_delay(rule: &Rule, policy: &RetryPolicy, ctx: &RequestCtx<'_>) -> Option<Duration> {
    let delay = policy.delay(ctx.attempts);
    if remaining(rule, ctx.started).is_some_and(|left| left <= delay) {
        return None;
    }
    policy.budget().try_retry().then_some(delay)
}

async fn sleep(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// One exchange with one endpoint, under the tighter of the request's deadline and the
/// attempt's timeout.
async fn attempt(
    upstreams: &Upstreams,
    rule: &Rule,
    policy: Option<&RetryPolicy>,
    started: Instant,
    endpoint: SocketAddr,
    request: Request<RequestBody>,
) -> Attempt {
    let exchange = upstreams.send(endpoint, request);
    // The tighter of `perTryTimeout` and `backendRequest`: both bound one attempt.
    let per_try = match (
        policy.and_then(|p| p.per_try_timeout),
        rule.policy.timeouts.backend_request,
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let left = remaining(rule, started);
    let (limit, deadline_first) = match (left, per_try) {
        (Some(a), Some(b)) if a <= b => (Some(a), true),
        (_, Some(b)) => (Some(b), false),
        (Some(a), None) => (Some(a), true),
        (None, None) => (None, false),
    };
    let result = match limit {
        Some(limit) => match tokio::time::timeout(limit, exchange).await {
            Ok(r) => r,
            Err(_) if deadline_first => return Attempt::Deadline,
            Err(_) => return Attempt::TimedOut,
        },
        None => exchange.await,
    };
    match result {
        Ok(response) => Attempt::Response(response),
        Err(failed) => Attempt::Failed(failed),
    }
}

/// What is left of the rule's request timeout (counted from arrival); `None`: no limit.
fn remaining(rule: &Rule, started: Instant) -> Option<Duration> {
    rule.policy
        .timeouts
        .request
        .map(|t| t.saturating_sub(started.elapsed()))
}

/// The backend's response as the client gets it; `in_flight` lasts as long as its body, or
/// its tunnel.
fn relay(
    mut response: Response<UpstreamBody>,
    in_flight: InFlight,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response<UpstreamBody>, ProxyError> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Relay a switch only when it is the one the client asked for; anything else would
        // leave the client and backend speaking different protocols on one connection.
        match client_upgrade {
            Some(client) if is_websocket_upgrade(response.headers()) => {
                tunnel(client, hyper::upgrade::on(&mut response), in_flight);
            }
            _ => {
                return Err(ProxyError::BackendProtocol(
                    "backend switched protocols unasked",
                ));
            }
        }
    } else {
        let headers = response.headers_mut();
        if headers.contains_key(TRANSFER_ENCODING) {
            // RFC 9112 section 6.3: with both, the transfer coding frames the body (that is how
            // it was read) and the length is wrong. The body is re-framed for the client, and a
            // stale length beside it would cut the response short.
            headers.remove(CONTENT_LENGTH);
        }
        strip_hop_by_hop(headers, false, &[]);
        response.body_mut().hold(in_flight);
    }
    Ok(response)
}

/// The path and query sent upstream: the client's own bytes when nothing changed, so the common
/// case allocates nothing. `hidden` names query parameters to leave out (credentials).
pub(crate) fn upstream_path(
    uri: &Uri,
    normalized: &str,
    rule: &Rule,
    candidate: &Candidate,
    hidden: &[&str],
) -> Option<PathAndQuery> {
    let new_path: Cow<'_, str> = match rule.policy.rewrite.as_deref() {
        None => Cow::Borrowed(normalized),
        Some(PathRewrite::ReplaceFullPath(p)) => Cow::Borrowed(p),
        Some(PathRewrite::ReplacePrefixMatch(r)) => {
            Cow::Owned(replace_prefix(normalized, candidate.prefix_len(), r))
        }
    };
    let query = match uri.query() {
        Some(q) if !hidden.is_empty() => without_params(q, hidden),
        q => q.map(Cow::Borrowed),
    };
    let query_unchanged = matches!(&query, Some(Cow::Borrowed(_)) | None);
    if let Some(pq) = uri
        .path_and_query()
        .filter(|_| new_path == uri.path() && query_unchanged)
    {
        return Some(pq.clone());
    }
    let mut s = String::with_capacity(new_path.len() + query.as_ref().map_or(0, |q| q.len() + 1));
    s.push_str(&new_path);
    if let Some(q) = query.as_deref().filter(|q| !q.is_empty()) {
        s.push('?');
        s.push_str(q);
    }
    PathAndQuery::try_from(s).ok()
}

/// `query` without the parameters whose (percent-decoded) name is one of `names`.
fn without_params<'q>(query: &'q str, names: &[&str]) -> Option<Cow<'q, str>> {
    let named = |pair: &str| {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        let key = crate::router::percent_decode(key);
        names.iter().any(|n| *n == key)
    };
    if !query.split('&').any(named) {
        return Some(Cow::Borrowed(query));
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !named(p)).collect();
    Some(Cow::Owned(kept.join("&")))
}

/// Gateway API `ReplacePrefixMatch`: `/foo/bar` with prefix `/foo` and replacement `/xyz` gives
/// `/xyz/bar`; a replacement of `/` gives `/bar`; never a doubled or missing slash.
pub fn replace_prefix(path: &str, prefix_len: usize, replacement: &str) -> String {
    let rest = path.get(prefix_len..).unwrap_or("");
    let head = replacement.trim_end_matches('/');
    let mut out = String::with_capacity(head.len() + rest.len() + 1);
    out.push_str(head);
    if !rest.is_empty() && !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Splices the client and backend connections once both sides have switched protocols. The
/// tunnel counts as the request in flight (and holds its circuit slots) until it closes.
fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    in_flight: InFlight,
) {
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut backend = TokioIo::new(backend);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_prefix_follows_gateway_api_examples() {
        assert_eq!(replace_prefix("/foo/bar", 4, "/xyz"), "/xyz/bar");
        assert_eq!(replace_prefix("/foo/bar", 4, "/xyz/"), "/xyz/bar");
        assert_eq!(replace_prefix("/foo", 4, "/xyz"), "/xyz");
        assert_eq!(replace_prefix("/foo/", 4, "/xyz"), "/xyz/");
        assert_eq!(replace_prefix("/foo/bar", 4, "/"), "/bar");
        assert_eq!(replace_prefix("/foo", 4, "/"), "/");
        assert_eq!(replace_prefix("/foo", 0, "/api"), "/api/foo");
    }

    #[test]
    fn a_hidden_credential_parameter_is_left_out_of_the_query() {
        assert_eq!(
            without_params("a=1&api_key=s3cret&b=2", &["api_key"]).as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(
            without_params("api%5Fkey=s3cret", &["api_key"]).as_deref(),
            Some("")
        );
        assert_eq!(
            without_params("token=t&a=1&api_key=k", &["api_key", "token"]).as_deref(),
            Some("a=1"),
            "every credential parameter goes, not only the last one configured"
        );
        assert!(matches!(
            without_params("a=1", &["api_key"]),
            Some(Cow::Borrowed("a=1"))
        ));
    }
}
