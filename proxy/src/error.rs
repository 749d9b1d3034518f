//! Errors the gateway answers itself, rendered as DESIGN.md's JSON body.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::forward::ProxyBody;

/// A request the gateway could not forward.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request itself is malformed (for example an invalid path encoding).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// No rule matches the request.
    #[error("no route matches the request")]
    NoRoute,
    /// The rule matched but none of its backends has a ready endpoint.
    #[error("no ready endpoint for the route")]
    NoReadyEndpoint,
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
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoReadyEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Backend(_) | ProxyError::BackendProtocol(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// A short, stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::NoRoute => "no_route",
            ProxyError::NoReadyEndpoint => "no_ready_endpoint",
            ProxyError::BackendTimeout => "backend_timeout",
            ProxyError::Backend(e) if e.is_connect() => "backend_connect",
            ProxyError::Backend(_) | ProxyError::BackendProtocol(_) => "backend_error",
        }
    }

    /// The client-facing message: fixed text, never echoing request data.
    fn public_message(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(why) => why,
            ProxyError::NoRoute => "no route matches the request",
            ProxyError::NoReadyEndpoint => "no ready endpoint for the route",
            ProxyError::BackendTimeout => "backend did not respond in time",
            ProxyError::Backend(e) if e.is_connect() => "could not connect to the backend",
            ProxyError::Backend(_) | ProxyError::BackendProtocol(_) => "backend failed",
        }
    }

    /// `{"error": "...", "status": N, "requestId": "..."}` with the right status code.
    pub fn to_response(&self, request_id: &HeaderValue) -> Response<ProxyBody> {
        let status = self.status();
        let body = serde_json::json!({
            "error": self.public_message(),
            "status": status.as_u16(),
            "requestId": request_id.to_str().unwrap_or_default(),
        });
        let mut response =
            Response::new(ProxyBody::Right(Full::new(Bytes::from(body.to_string()))));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}
