//! The upstream exchange of one request: the target it is sent with, the exchange with the
//! chosen endpoint under the rule's timeouts, and the relay of the response (or of a WebSocket
//! switch).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::error::ProxyError;
use crate::headers::{is_websocket_upgrade, strip_hop_by_hop};
use crate::router::Candidate;
use crate::snapshot::{PathRewrite, Rule};
use crate::upstream::{UpstreamBody, Upstreams};

/// Sends `upstream` (origin-form target, headers prepared) to `endpoint` and relays what comes
/// back: the response with its hop-by-hop headers removed, or a WebSocket switch the client
/// asked for (`client_upgrade`), spliced once both sides switched.
pub(crate) async fn exchange(
    upstreams: &Upstreams,
    rule: &Rule,
    endpoint: SocketAddr,
    started: Instant,
    upstream: Request<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response<UpstreamBody>, ProxyError> {
    let exchange = upstreams.send(endpoint, upstream);
    let mut response = match deadline(rule, started) {
        Some(limit) => match tokio::time::timeout(limit, exchange).await {
            Ok(r) => r.map_err(ProxyError::Backend)?,
            Err(_) => return Err(ProxyError::BackendTimeout),
        },
        None => exchange.await.map_err(ProxyError::Backend)?,
    };
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

/// The tighter of the rule's request timeout (counted from arrival) and its backend timeout.
fn deadline(rule: &Rule, started: Instant) -> Option<Duration> {
    let timeouts = &rule.policy.timeouts;
    let request = timeouts
        .request
        .map(|t| t.saturating_sub(started.elapsed()));
    match (request, timeouts.backend_request) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
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
