//! The upstream phase of one request: the target it is sent with, the attempts (an endpoint
//! picked by the rule's balancer for each, under the rule's timeouts and circuit limits, with
//! the rule's retry policy deciding whether a failure is tried again elsewhere), and the relay
//! of the response (or of a WebSocket switch).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::error::ProxyError;
use crate::headers::{is_websocket_upgrade, strip_hop_by_hop};
use crate::pipeline::RequestCtx;
use crate::retry::{self, Replay, RequestBody, RetryPolicy};
use crate::router::Candidate;
use crate::snapshot::{PathRewrite, Rule};
use crate::upstream::{Failed, UpstreamBody, Upstreams};

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
    upstream: Request<Incoming>,
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
        match retry::body::buffer_small(body, retry_buffer).await {
            Ok(Ok(replay)) => (replay.body(), Some(replay)),
            Ok(Err(streamed)) => (RequestBody::Streamed(streamed), None),
            Err(_) => return Err(ProxyError::BadRequest("the request body could not be read")),
        }
    } else {
        (RequestBody::Streamed(body), None)
    };
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
    let mut next = Some(Request::from_parts(parts, body));
    // Allocated only when a retry happens.
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut client_upgrade = client_upgrade;
    loop {
        ctx.attempts += 1;
        let Some(mut request) = next.take() else {
            return Err(ProxyError::BadRequest("the request cannot be sent again"));
        };
        let (backend, endpoint) = rule.pick(hash, &tried).ok_or(ProxyError::NoReadyEndpoint)?;
        ctx.endpoint = Some(endpoint.addr);
        let permit = match backend.circuit() {
            Some(circuit) => Some(circuit.admit().map_err(|_| ProxyError::CircuitOpen)?),
            None => None,
        };
        let state = endpoint.state();
        let in_flight = state.start(permit);
        if !request.headers().contains_key(HOST) {
            // HTTP/1.0 without a Host: name the endpoint, as an HTTP/1.1 request must name one.
            if let Ok(v) = HeaderValue::try_from(endpoint.addr.to_string()) {
                request.headers_mut().insert(HOST, v);
            }
        }
        let outcome = attempt(
            upstreams,
            rule,
            policy,
            ctx.started,
            endpoint.addr,
            backend.circuit(),
            request,
        )
        .await;
        let retries_left = ctx.attempts <= max_retries;
        let may_resend = |p: &RetryPolicy| p.may_resend(&method) && replay.is_some();
        let passive = traffic.passive.as_ref();
        match outcome {
            Attempt::Response(mut response) => {
                let status = response.status().as_u16();
                state.record(status >= 500, passive, &backend.endpoints);
                if let Some(p) = policy
                    && retries_left
                    && p.retries_status(status)
                    && may_resend(p)
                    && backoff(rule, p, ctx).await
                {
                    tried.push(endpoint.addr);
                    next = head
                        .as_ref()
                        .zip(replay.as_ref())
                        .map(|(h, r)| h.request(r));
                    continue;
                }
                response.body_mut().hold(in_flight);
                return relay(response, client_upgrade.take());
            }
            Attempt::Failed(Failed { error, unsent }) => {
                if error.is_pending_overflow() {
                    return Err(ProxyError::CircuitOpen);
                }
                state.record(true, passive, &backend.endpoints);
                let again = match unsent {
                    // Nothing reached the backend: safe whatever the method.
                    Some(unsent) => Some(unsent),
                    None => head
                        .as_ref()
                        .zip(replay.as_ref())
                        .filter(|_| policy.is_some_and(may_resend))
                        .map(|(h, r)| h.request(r)),
                };
                let allowed = match policy {
                    Some(p) => again.is_some() && retries_left && backoff(rule, p, ctx).await,
                    None => again.is_some() && retries_left,
                };
                if !allowed {
                    return Err(ProxyError::Backend(error));
                }
                tracing::debug!(endpoint = %endpoint.addr, error = %error, "retrying on another endpoint");
                tried.push(endpoint.addr);
                next = again;
            }
            Attempt::TimedOut => {
                state.record(true, passive, &backend.endpoints);
                match policy {
                    Some(p) if retries_left && may_resend(p) && backoff(rule, p, ctx).await => {
                        tried.push(endpoint.addr);
                        next = head
                            .as_ref()
                            .zip(replay.as_ref())
                            .map(|(h, r)| h.request(r));
                    }
                    _ => return Err(ProxyError::BackendTimeout),
                }
            }
            Attempt::Deadline => {
                state.record(true, passive, &backend.endpoints);
                return Err(ProxyError::BackendTimeout);
            }
        }
    }
}

/// Waits before a retry and takes it from the budget; false when the budget is spent or the
/// request's deadline would pass first.
async fn backoff(rule: &Rule, policy: &RetryPolicy, ctx: &RequestCtx<'_>) -> bool {
    let delay = policy.delay(ctx.attempts);
    if remaining(rule, ctx.started).is_some_and(|left| left <= delay) {
        return false;
    }
    if !policy.budget().try_retry() {
        return false;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    true
}

/// One exchange with one endpoint, under the tighter of the request's deadline and the
/// attempt's timeout.
async fn attempt(
    upstreams: &Upstreams,
    rule: &Rule,
    policy: Option<&RetryPolicy>,
    started: Instant,
    endpoint: SocketAddr,
    circuit: Option<&std::sync::Arc<crate::circuit::BackendState>>,
    request: Request<RequestBody>,
) -> Attempt {
    let exchange = upstreams.send(endpoint, request, circuit);
    let per_try = policy
        .and_then(|p| p.per_try_timeout)
        .or(rule.policy.timeouts.backend_request);
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

/// The backend's response as the client gets it.
fn relay(
    mut response: Response<UpstreamBody>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response<UpstreamBody>, ProxyError> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Relay a switch only when it is the one the client asked for; anything else would
        // leave the client and backend speaking different protocols on one connection.
        match client_upgrade {
            Some(client) if is_websocket_upgrade(response.headers()) => {
                tunnel(client, hyper::upgrade::on(&mut response));
            }
            _ => {
                return Err(ProxyError::BackendProtocol(
                    "backend switched protocols unasked",
                ));
            }
        }
    } else {
        strip_hop_by_hop(response.headers_mut(), false, &[]);
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
    let new_path: Cow<'_, str> = match &rule.policy.rewrite {
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

/// Splices the client and backend connections once both sides have switched protocols.
fn tunnel(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
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
