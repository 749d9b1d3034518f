//! The steps a rule can have, each with a request and a response phase.

use http::{HeaderMap, Method, Response, Uri};
use serde::Serialize;

use super::RequestCtx;
use crate::auth::{Authenticate, Authorize};
use crate::body::ProxyBody;
use crate::cache::{CachePolicy, Lookup};
use crate::cors::{Cors, Preflight};
use crate::error::ProxyError;
use crate::limit::RateLimit;
use crate::security_headers::SecurityHeaders;
use crate::snapshot::HeaderFilter;

/// One compiled step of a rule, in the order the compiler placed them: CORS (a preflight
/// carries no credentials), authentication, authorization, rate limits (keyed by the verified
/// identity), request header changes (so filters see the request as the backend will, identity
/// included), response header changes, security headers, then the cache (it looks up the
/// request as the backend would see it and, first on the way back, stores the backend's
/// response before any filter dresses it).
#[derive(Debug, Serialize)]
pub enum Step {
    /// Answer preflights; allow headers on every response.
    Cors(Box<Cors>),
    /// Verify credentials; 401 / 503 on failure.
    Authenticate(Box<Authenticate>),
    /// Check the verified identity's roles and claims; 403 on failure.
    Authorize(Box<Authorize>),
    /// Take one request from every limit's bucket; 429 (or 503) on refusal.
    RateLimit(Box<RateLimit>),
    /// Header changes on the request the backend receives.
    RequestHeaders(HeaderFilter),
    /// Header changes on the backend's response.
    ResponseHeaders(HeaderFilter),
    /// Browser security headers on every response.
    SecurityHeaders(Box<SecurityHeaders>),
    /// Answer from, and store into, the response cache.
    Cache(Box<CachePolicy>),
    /// Refuse every request (503): the rule asked for authentication but its configuration is
    /// invalid, and dropping it would let its requests fall through to another rule.
    Refuse,
}

/// The request as the steps see it: routed, with the headers the backend will get.
pub(crate) struct RequestHead<'r> {
    pub method: &'r Method,
    pub uri: &'r Uri,
    /// The host the route was chosen on (lower case, no port).
    pub host: &'r str,
    /// The normalised path.
    pub path: &'r str,
    pub headers: &'r mut HeaderMap,
}

/// What a request phase decided.
pub(crate) enum Flow {
    /// On to the next step (and, after the last, upstream).
    Next,
    /// This response answers the request instead of the backend.
    Answer(Box<Response<ProxyBody>>),
}

impl Step {
    /// The request phase: `Err` answers the request with the gateway's error, `Answer` with a
    /// response of the step's own.
    pub(crate) async fn on_request<'a>(
        &'a self,
        ctx: &mut RequestCtx<'a>,
        req: &mut RequestHead<'_>,
    ) -> Result<Flow, ProxyError> {
        match self {
            Step::Cors(cors) => {
                ctx.origin = req.headers.get(http::header::ORIGIN).cloned();
                match cors.on_request(req.method, req.headers) {
                    Ok(Preflight::No) => Ok(Flow::Next),
                    Ok(Preflight::Allowed(response)) => {
                        ctx.preflight = true;
                        Ok(Flow::Answer(response))
                    }
                    // A refused preflight gets no allow headers in the response phase.
                    Err(e) => {
                        ctx.preflight = true;
                        Err(e)
                    }
                }
            }
            Step::Authenticate(auth) => auth
                .on_request(ctx, req.headers, req.uri)
                .await
                .map(|()| Flow::Next),
            Step::Authorize(authz) => authz.on_request(ctx).map(|()| Flow::Next),
            Step::RateLimit(limits) => limits
                .on_request(ctx, req.headers)
                .await
                .map(|()| Flow::Next),
            Step::RequestHeaders(filter) => {
                filter.apply(req.headers);
                Ok(Flow::Next)
            }
            Step::Cache(cache) => {
                let lookup = cache
                    .on_request(
                        ctx,
                        req.method,
                        req.host,
                        req.path,
                        req.uri.query(),
                        req.headers,
                    )
                    .await;
                Ok(match lookup {
                    Lookup::Upstream => Flow::Next,
                    Lookup::Hit(response) => {
                        // A stored backend response: the rule's response filters dress it.
                        ctx.upstream_response = true;
                        Flow::Answer(response)
                    }
                })
            }
            Step::ResponseHeaders(_) | Step::SecurityHeaders(_) => Ok(Flow::Next),
            Step::Refuse => Err(ProxyError::AuthUnavailable(
                "the rule's configuration is invalid",
            )),
        }
    }

    /// The response phase, on every response of the rule (the backend's or the gateway's own).
    pub(crate) fn on_response(&self, ctx: &mut RequestCtx<'_>, response: &mut Response<ProxyBody>) {
        match self {
            // As before the pipeline: a rule's response headers dress the backend's responses,
            // not the gateway's errors.
            Step::ResponseHeaders(filter) if ctx.upstream_response => {
                filter.apply(response.headers_mut())
            }
            Step::RateLimit(_) => RateLimit::on_response(ctx, response),
            Step::Cors(cors) if !ctx.preflight => cors.on_response(ctx.origin.as_ref(), response),
            Step::SecurityHeaders(headers) => {
                headers.on_response(ctx.client.tls.is_some(), response)
            }
            Step::Cache(cache) => cache.on_response(ctx, response),
            Step::Authenticate(_)
            | Step::Authorize(_)
            | Step::RequestHeaders(_)
            | Step::ResponseHeaders(_)
            | Step::Cors(_)
            | Step::Refuse => {}
        }
    }
}
