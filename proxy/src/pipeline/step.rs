//! The steps a rule can have, each with a request and a response phase.

use http::{HeaderMap, Response, Uri};
use serde::Serialize;

use super::RequestCtx;
use crate::auth::{Authenticate, Authorize};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::limit::RateLimit;
use crate::snapshot::HeaderFilter;

/// One compiled step of a rule, in the order the compiler placed them: authentication,
/// authorization, rate limits (keyed by the verified identity), then request header changes
/// (so filters see the request as the backend will, identity included); response header changes
/// apply on the way back.
#[derive(Debug, Serialize)]
pub enum Step {
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
    /// Refuse every request (503): the rule asked for authentication but its configuration is
    /// invalid, and dropping it would let its requests fall through to another rule.
    Refuse,
}

impl Step {
    /// The request phase: `Err` answers the request instead of the backend.
    pub(crate) async fn on_request<'a>(
        &'a self,
        ctx: &mut RequestCtx<'a>,
        headers: &mut HeaderMap,
        uri: &Uri,
    ) -> Result<(), ProxyError> {
        match self {
            Step::Authenticate(auth) => auth.on_request(ctx, headers, uri).await,
            Step::Authorize(authz) => authz.on_request(ctx),
            Step::RateLimit(limits) => limits.on_request(ctx, headers).await,
            Step::RequestHeaders(filter) => {
                filter.apply(headers);
                Ok(())
            }
            Step::ResponseHeaders(_) => Ok(()),
            Step::Refuse => Err(ProxyError::AuthUnavailable(
                "the rule's configuration is invalid",
            )),
        }
    }

    /// The response phase, on every response of the rule (the backend's or the gateway's own).
    pub(crate) fn on_response(&self, ctx: &RequestCtx<'_>, response: &mut Response<ProxyBody>) {
        match self {
            // As before the pipeline: a rule's response headers dress the backend's responses,
            // not the gateway's errors.
            Step::ResponseHeaders(filter) if ctx.upstream_response => {
                filter.apply(response.headers_mut())
            }
            Step::RateLimit(_) => RateLimit::on_response(ctx, response),
            Step::Authenticate(_)
            | Step::Authorize(_)
            | Step::RequestHeaders(_)
            | Step::ResponseHeaders(_)
            | Step::Refuse => {}
        }
    }
}
