//! Errors the gateway answers itself, rendered as DESIGN.md's JSON body.

use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::body::{self, ProxyBody};

/// The reason of a 401 for a request that carried no credentials at all.
pub const MISSING_CREDENTIALS: &str = "no credentials";

/// nginx's "client closed request": not an HTTP status a client ever receives, only what logs
/// and metrics record for a request whose client went away.
pub const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// A request the gateway answered without (or instead of) the backend's response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request itself is malformed (for example an invalid path encoding or host).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request uses a protocol feature the gateway does not forward (a transfer coding
    /// other than `chunked`); the connection is closed after the answer.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// No rule matches the request.
    #[error("no route matches the request")]
    NoRoute,
    /// Credentials are missing or invalid; the reason goes to the access log only.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// Credentials are valid but lack a required role or claim.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The rule's credentials cannot be checked (a missing Secret, no JWKS keys yet): the rule
    /// fails closed.
    #[error("authentication unavailable: {0}")]
    AuthUnavailable(&'static str),
    /// A CORS preflight asked for an origin, method or header the rule does not allow.
    #[error("CORS preflight refused: {0}")]
    CorsRefused(&'static str),
    /// A rate limit refused the request; retry after this many seconds.
    #[error("rate limited")]
    RateLimited(u64),
    /// A `Global` limit with `failureMode: Closed` could not reach its store.
    #[error("rate limit store unavailable")]
    LimitUnavailable,
    /// The rule matched but none of its backends has a ready endpoint.
    #[error("no ready endpoint for the route")]
    NoReadyEndpoint,
    /// The gateway holds `--max-requests-in-flight` requests already.
    #[error("gateway overloaded")]
    Overloaded,
    /// The backend is at its `circuitBreaker` limits.
    #[error("backend circuit limits reached")]
    CircuitOpen,
    /// The client hung up before its request was answered (it sees no answer; logs and metrics
    /// say 499, as nginx's do, so that its hang-up is not counted as the backend's failure).
    #[error("client closed the connection")]
    ClientClosed,
    /// The client did not send a body that had to be buffered (for a retry) in time.
    #[error("request body not received in time")]
    RequestTimeout,
    /// The backend did not send response headers within the rule's timeout.
    #[error("backend did not respond in time")]
    BackendTimeout,
    /// Connecting to the backend or exchanging the request with it failed.
    #[error("backend failed")]
    Backend(#[source] crate::upstream::UpstreamError),
    /// The backend answered in a way a proxy must not relay (for example a protocol switch the
    /// client did not ask for).
    #[error("backend protocol error: {0}")]
    BackendProtocol(&'static str),
}

impl ProxyError {
    /// The HTTP status answered to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientClosed => CLIENT_CLOSED,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden(_) | ProxyError::CorsRefused(_) => StatusCode::FORBIDDEN,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::AuthUnavailable(_)
            | ProxyError::LimitUnavailable
            | ProxyError::NoReadyEndpoint
            | ProxyError::Overloaded
            | ProxyError::CircuitOpen => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Backend(_) | ProxyError::BackendProtocol(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// A short, stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::RequestTimeout => "request_timeout",
            ProxyError::ClientClosed => "client_closed",
            ProxyError::NotImplemented(_) => "not_implemented",
            ProxyError::NoRoute => "no_route",
            ProxyError::Unauthorized(_) => "unauthorized",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::CorsRefused(_) => "cors_refused",
            ProxyError::AuthUnavailable(_) => "auth_unavailable",
            ProxyError::RateLimited(_) => "rate_limited",
            ProxyError::LimitUnavailable => "limit_unavailable",
            ProxyError::NoReadyEndpoint => "no_ready_endpoint",
            ProxyError::CircuitOpen => "circuit_open",
            ProxyError::Overloaded => "overloaded",
            ProxyError::BackendTimeout => "backend_timeout",
            ProxyError::Backend(e) if e.is_connect() => "backend_connect",
            ProxyError::Backend(_) | ProxyError::BackendProtocol(_) => "backend_error",
        }
    }

    /// The detail for the access log: why credentials were refused, never the credential.
    pub fn detail(&self) -> Option<&'static str> {
        match self {
            ProxyError::Unauthorized(why)
            | ProxyError::Forbidden(why)
            | ProxyError::AuthUnavailable(why)
            | ProxyError::CorsRefused(why) => Some(why),
            _ => None,
        }
    }

    /// The client-facing message: fixed text, never echoing request data. Authentication
    /// failures say no more than "invalid credentials": the precise reason would help an
    /// attacker probe the configuration, and it is in the access log.
    fn public_message(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(why) | ProxyError::NotImplemented(why) => why,
            ProxyError::RequestTimeout => "the request body was not received in time",
            ProxyError::ClientClosed => "the client closed the connection",
            ProxyError::NoRoute => "no route matches the request",
            ProxyError::Unauthorized(_) => "missing or invalid credentials",
            ProxyError::Forbidden(_) => "credentials do not grant access to this resource",
            ProxyError::CorsRefused(why) => match *why {
                "origin not allowed" => "CORS preflight refused: origin not allowed",
                "method not allowed" => "CORS preflight refused: method not allowed",
                _ => "CORS preflight refused: request header not allowed",
            },
            ProxyError::AuthUnavailable(_) => "credentials cannot be checked right now",
            ProxyError::RateLimited(_) => "rate limit exceeded",
            ProxyError::LimitUnavailable => "rate limits cannot be checked right now",
            ProxyError::NoReadyEndpoint => "no ready endpoint for the route",
            ProxyError::CircuitOpen => "the backend is at its connection or request limits",
            ProxyError::Overloaded => "the gateway is at its request limit",
            ProxyError::BackendTimeout => "backend did not respond in time",
            ProxyError::Backend(e) if e.is_connect() => "could not connect to the backend",
            ProxyError::Backend(_) | ProxyError::BackendProtocol(_) => "backend failed",
        }
    }

    /// `{"error": "...", "status": N, "requestId": "..."}` with the right status code (and, for
    /// 401, the RFC 6750 challenge).
    pub fn to_response(&self, request_id: &HeaderValue) -> Response<ProxyBody> {
        let status = self.status();
        let body = serde_json::json!({
            "error": self.public_message(),
            "status": status.as_u16(),
            "requestId": request_id.to_str().unwrap_or_default(),
        });
        let mut response = Response::new(body::local(body.to_string()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let ProxyError::Unauthorized(why) = self {
            // RFC 6750 section 3.1: no error code when the request carried no credentials.
            let challenge = if *why == MISSING_CREDENTIALS {
                r#"Bearer realm="sluice""#
            } else {
                r#"Bearer realm="sluice", error="invalid_token""#
            };
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        match self {
            ProxyError::RateLimited(secs) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*secs));
            }
            // The store is usually back within a second, and a saturated backend drains in
            // about that; a client should not hammer either sooner.
            ProxyError::LimitUnavailable | ProxyError::CircuitOpen | ProxyError::Overloaded => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // The body that follows may be framed differently than the client meant, and a
            // client that sent a malformed request may be confused about the rest of the
            // connection: nothing more is read from it (nginx closes after a 400 too).
            ProxyError::NotImplemented(_) | ProxyError::BadRequest(_) => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}
