//! The request pipeline: every request, whatever it meets, goes through the same phases.
//!
//! 1. **Route**: validate the target and host, match a rule (errors here have no rule).
//! 2. **Request phase** of each of the rule's [`Step`]s, in order; any may answer instead of the
//!    backend (401, 403, and later 429, a CORS preflight, a cache hit).
//! 3. **Upstream**: pick an endpoint and exchange the request with it ([`crate::forward`]).
//! 4. **Response phase** of each step, in reverse order, on whatever response there is: the
//!    backend's, or the gateway's own error. Every response passes here exactly once.
//! 5. **Log**: metrics and the access log line.
//!
//! Steps are an enum, not trait objects: the compiled list is plain data in the snapshot and a
//! request dispatches with one `match` per step.

mod context;
mod step;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, TRANSFER_ENCODING};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

pub use context::{Client, RequestCtx};
pub use step::Step;
use step::{Flow, RequestHead};

use crate::access_log::{AccessLog, Entry, RequestLine};
use crate::balance::{self, Balancing};
use crate::body::ProxyBody;
use crate::client_body::ClientBody;
use crate::cors;
use crate::error::ProxyError;
use crate::headers;
use crate::host;
use crate::metrics::RuleStats;
use crate::path;
use crate::router::RequestView;
use crate::snapshot::Snapshot;
use crate::trace::otlp::{Exporter, Span};
use crate::upstream::Upstreams;
use crate::{forward, headers::is_websocket_upgrade};

/// What the pipeline uses besides the snapshot: parts of the gateway that outlive snapshots.
pub(crate) struct Env<'g> {
    pub upstreams: &'g Upstreams,
    /// Largest request body buffered so that a retry can send it again.
    pub retry_buffer: u64,
    pub access_log: &'g AccessLog,
    pub unmatched: &'g RuleStats,
    /// The cap on requests in flight.
    pub requests: &'g crate::overload::Cap,
    pub metrics: &'g crate::metrics::Metrics,
    /// Where spans go, when `--otlp-endpoint` is set.
    pub exporter: Option<&'g Exporter>,
    /// The port `httpsRedirect` sends clients to (443: none in the URL).
    pub https_port: u16,
}

/// Serves one request on `snapshot`, start to finish.
pub(crate) async fn handle(
    env: &Env<'_>,
    snapshot: &Snapshot,
    req: Request<Incoming>,
    client: &Client,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let mut ctx = RequestCtx::traced(
        headers::request_id(req.headers()),
        started,
        client,
        req.headers(),
    );
    // The request line is kept for the log and the span only when there is one to write.
    let request_line = (env.access_log.enabled() || env.exporter.is_some()).then(|| RequestLine {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
    });

    let result = request_phases(env, snapshot, &mut ctx, req).await;
    let mut response = match result {
        Ok(response) => response,
        Err(e) => {
            if let ProxyError::Backend(source) = &e {
                tracing::debug!(error = ?source, "backend request failed");
            }
            ctx.upstream_response = false;
            ctx.error = Some(e.kind());
            ctx.detail = e.detail();
            e.to_response(&ctx.request_id)
        }
    };
    let rule = ctx.rule.map(|id| snapshot.rule(id));
    if let Some(rule) = rule {
        for step in rule.policy.steps.iter().rev() {
            step.on_response(&mut ctx, &mut response);
        }
    }
    let out = response.headers_mut();
    out.insert(headers::request_id_header().clone(), ctx.request_id.clone());
    // Said whenever the rule retries (and after any retry), but only of requests that were
    // sent: a 401 or 429 the gateway answered took no attempt.
    if ctx.attempts > 1
        || (ctx.attempts == 1 && rule.is_some_and(|r| r.policy.traffic.retry.is_some()))
    {
        out.insert(
            headers::attempts_header().clone(),
            HeaderValue::from(ctx.attempts),
        );
    }
    if let Some(cookie) = ctx.affinity_cookie.take() {
        out.append(http::header::SET_COOKIE, cookie);
    }

    // Log phase.
    let status = response.status().as_u16();
    let elapsed = ctx.started.elapsed();
    match rule {
        Some(rule) => env
            .metrics
            .stats_of(rule)
            .observe(status, elapsed.as_secs_f64()),
        None => env.unmatched.observe(status, elapsed.as_secs_f64()),
    }
    if let Some(request) = &request_line {
        if env.access_log.sampled(status) {
            env.access_log.record(&Entry {
                ctx: &ctx,
                rule,
                request,
                status,
                elapsed,
            });
        }
        if let Some(exporter) = env.exporter {
            exporter.record(Span {
                trace: ctx.trace,
                method: request.method.clone(),
                path: crate::access_log::capped(request.uri.path(), 1024).into(),
                route: rule.map(|r| (Arc::clone(r.route()), Arc::clone(r.name()))),
                status,
                upstream: ctx.endpoint,
                error: ctx.error,
                request_id: ctx.request_id.clone(),
                start: std::time::SystemTime::now() - elapsed,
                duration: elapsed,
            });
        }
    }
    response
}

/// Route, request phases and upstream; an `Err` is answered by the gateway.
async fn request_phases<'a>(
    env: &Env<'_>,
    snapshot: &'a Snapshot,
    ctx: &mut RequestCtx<'a>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    // Held until the response head is ready: what a flood of slow requests can pile up.
    let Some(_in_flight) = env.requests.admit() else {
        env.metrics.refused("requests");
        return Err(ProxyError::Overloaded);
    };
    if req.method() == http::Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not supported"));
    }
    if let Some(te) = req.headers().get(TRANSFER_ENCODING) {
        // hyper reads any coding list that ends in `chunked` as chunked; a backend might read
        // `identity, chunked` (or a second header) another way, so only plain `chunked` is
        // forwarded (RFC 9112 section 6.1: 501 for a coding the server does not understand).
        let plain = te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked")
            && req
                .headers()
                .get_all(TRANSFER_ENCODING)
                .iter()
                .nth(1)
                .is_none();
        if !plain {
            return Err(ProxyError::NotImplemented(
                "only the chunked transfer coding is supported",
            ));
        }
    }
    let wants_upgrade = req.version() == Version::HTTP_11 && is_websocket_upgrade(req.headers());
    let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // From here on, an answer given before the body was read leaves the rest to be drained.
    let body = ClientBody::new(body, parts.version < Version::HTTP_2);

    // Route.
    let path = path::normalize(parts.uri.path()).map_err(|e| {
        ProxyError::BadRequest(match e {
            path::PathError::Ambiguous => {
                "ambiguous request path (';', '\\', or an encoded '/', '\\' or control character)"
            }
            _ => "invalid request path",
        })
    })?;
    let routed_host = host::routed_host(&parts).map_err(ProxyError::BadRequest)?;
    let host = routed_host
        .as_ref()
        .map(host::RoutedHost::for_matching)
        .unwrap_or(Cow::Borrowed(""));
    // A CORS preflight asks about the request it precedes: it is routed as that request, so
    // that a rule matching only `GET` still answers the preflight of its `GET`s.
    let preflight_of = cors::is_preflight(&parts.method, &parts.headers)
        .then(|| {
            parts
                .headers
                .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
        })
        .flatten()
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok());
    let mut view = RequestView {
        host: &host,
        path: &path,
        query: parts.uri.query(),
        method: preflight_of.as_ref().unwrap_or(&parts.method),
        headers: &parts.headers,
    };
    let mut found = snapshot.router.find(&view);
    // Only a rule that answers preflights takes one routed as its announced method; any other
    // gets the OPTIONS request as sent, through whatever rule matches OPTIONS.
    if found.is_some_and(|c| {
        preflight_of.is_some()
            && !snapshot
                .rule(c.rule)
                .policy
                .steps
                .iter()
                .any(|s| matches!(s, Step::Cors(_)))
    }) {
        found = None;
    }
    if found.is_none() && preflight_of.is_some() {
        // No rule serves the asked method: a rule matching `OPTIONS` itself may still answer.
        view.method = &parts.method;
        found = snapshot.router.find(&view);
    }
    let candidate = found.ok_or(ProxyError::NoRoute)?;
    ctx.rule = Some(candidate.rule);
    let rule = snapshot.rule(candidate.rule);
    ctx.deadline = rule.policy.timeouts.request.map(|t| ctx.started + t);
    if rule.policy.https_redirect && ctx.client.tls.is_none() {
        return https_redirect(&host, env.https_port, &parts.uri);
    }
    headers::prepare_upstream(
        &mut parts.headers,
        wants_upgrade,
        &ctx.client.ip_header,
        routed_host.as_ref().map(|h| h.value.clone()),
        &ctx.request_id,
        &snapshot.identity_headers,
        ctx.client.tls.is_some(),
    );
    ctx.trace.propagate(&mut parts.headers);

    // Request phase.
    let mut head = RequestHead {
        method: &parts.method,
        uri: &parts.uri,
        host: &host,
        path: &path,
        headers: &mut parts.headers,
    };
    for step in rule.policy.steps.iter() {
        if let Flow::Answer(response) = step.on_request(ctx, &mut head).await? {
            return Ok(*response);
        }
    }

    // Upstream.
    let path_and_query =
        forward::upstream_path(&parts.uri, &path, rule, candidate, &ctx.hidden_query_params)
            .ok_or(ProxyError::BadRequest("rewritten path is not a valid URI"))?;
    drop(path);
    if !rule.has_endpoints() {
        return Err(ProxyError::NoReadyEndpoint);
    }
    let hash = match &rule.policy.traffic.balancing {
        Balancing::ConsistentHash(on) => balance::request_key(on, ctx, &parts.headers),
        _ => None,
    };
    parts.uri = Uri::from(path_and_query);
    parts.version = Version::HTTP_11;
    let upstream = Request::from_parts(parts, body);
    let response = forward::upstream(
        env.upstreams,
        rule,
        ctx,
        upstream,
        client_upgrade,
        hash,
        env.retry_buffer,
    )
    .await?;
    ctx.upstream_response = true;
    Ok(response.map(ProxyBody::Left))
}

/// `301` to the same URL over HTTPS (the host routed on, the path and query as sent).
fn https_redirect(host: &str, port: u16, uri: &Uri) -> Result<Response<ProxyBody>, ProxyError> {
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let location = HeaderValue::try_from(location)
        .map_err(|_| ProxyError::BadRequest("the request cannot be redirected to HTTPS"))?;
    let mut response = Response::new(crate::body::local(""));
    *response.status_mut() = http::StatusCode::MOVED_PERMANENTLY;
    response
        .headers_mut()
        .insert(http::header::LOCATION, location);
    Ok(response)
}
