//! Authentication and authorization steps: who is calling (a JWT from one of the rule's
//! providers, or an API key) and whether they may.
//!
//! Everything here is compiled configuration; verifying a request reads it and the long-lived
//! key sets in [`crate::state`], never a Kubernetes object. Failures carry a fixed reason for
//! the access log; the client only learns 401, 403 or 503.

pub mod api_key;
pub mod claims;
pub mod jwt;
mod token_cache;

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{AUTHORIZATION, COOKIE, HeaderName, HeaderValue};
use http::{HeaderMap, Uri};
use serde::Serialize;

use crate::error::{MISSING_CREDENTIALS, ProxyError};
use crate::headers::{X_AUTH_PROVIDER, X_CONSUMER, list_items};
use crate::pipeline::RequestCtx;
use api_key::ApiKeys;
use jwt::{JwtProvider, Rejected};

/// Who a request was verified to come from.
#[derive(Debug)]
pub enum Identity {
    /// A JWT one of the rule's providers accepted.
    Token(Arc<jwt::Verified>),
    /// An API key: its consumer's name.
    ApiKey(Arc<str>),
}

impl Identity {
    /// The verified claims (none for an API key).
    pub fn claims(&self) -> Option<&claims::Claims> {
        match self {
            Identity::Token(v) => Some(&v.claims),
            Identity::ApiKey(_) => None,
        }
    }
}

/// Where a credential is read from.
#[derive(Debug, Clone, Serialize)]
pub enum CredentialFrom {
    /// A header, with a scheme prefix such as `Bearer ` (compared case-insensitively).
    Header {
        /// Header name.
        #[serde(serialize_with = "crate::snapshot::ser_name")]
        name: HeaderName,
        /// Text before the credential; empty for none.
        prefix: Box<str>,
    },
    /// A cookie.
    Cookie(Box<str>),
    /// A query parameter.
    QueryParam(Box<str>),
}

impl CredentialFrom {
    /// `Authorization: Bearer <token>`.
    pub fn bearer() -> Self {
        CredentialFrom::Header {
            name: AUTHORIZATION,
            prefix: "Bearer ".into(),
        }
    }

    /// The credential this request carries here, if any (empty values count as none).
    pub fn extract<'r>(&self, headers: &'r HeaderMap, uri: &'r Uri) -> Option<Cow<'r, str>> {
        let found = match self {
            CredentialFrom::Header { name, prefix } => {
                let mut values = headers.get_all(name).iter();
                let value = values.next()?;
                if values.next().is_some() {
                    // Two credentials: which one the backend would trust is anyone's guess.
                    return None;
                }
                // `from_utf8` checks ASCII a word at a time; tokens run to hundreds of bytes.
                let value = std::str::from_utf8(value.as_bytes()).ok()?;
                let head = value.get(..prefix.len())?;
                if !head.eq_ignore_ascii_case(prefix) {
                    return None;
                }
                Cow::Borrowed(value[prefix.len()..].trim())
            }
            CredentialFrom::Cookie(name) => list_items(headers, &COOKIE, ';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == &**name).then(|| Cow::Borrowed(v.trim_matches('"')))
            })?,
            CredentialFrom::QueryParam(name) => crate::router::query_value(uri.query(), name)?,
        };
        (!found.is_empty()).then_some(found)
    }

    /// Removes this credential from the request before it goes upstream. A query parameter is
    /// left to the caller (it rewrites the target), and says so by returning its name.
    fn strip<'a>(&'a self, headers: &mut HeaderMap) -> Option<&'a str> {
        match self {
            CredentialFrom::Header { name, .. } => {
                headers.remove(name);
                None
            }
            CredentialFrom::Cookie(name) => {
                strip_cookie(headers, name);
                None
            }
            CredentialFrom::QueryParam(name) => Some(name),
        }
    }
}

/// Rewrites the `Cookie` headers without cookie `name`; drops them when nothing is left.
fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = list_items(headers, &COOKIE, ';')
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some(name))
        .map(str::to_owned)
        .collect();
    headers.remove(COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(COOKIE, v);
    }
}

/// The `authentication` of a rule: any one method accepting the request authenticates it.
#[derive(Debug, Serialize)]
pub struct Authenticate {
    /// JWT providers, tried in order.
    pub jwt: Box<[JwtProvider]>,
    /// API keys.
    pub api_key: Option<ApiKeys>,
    /// Pass the credential on to the backend (default: strip it).
    pub forward_credentials: bool,
}

impl Authenticate {
    /// Verifies the request's credentials, sets the identity and the identity headers, or
    /// refuses: 401 for missing or invalid credentials, 503 when the keys to check them are
    /// not available (fail closed).
    pub(crate) async fn on_request<'a>(
        &'a self,
        ctx: &mut RequestCtx<'a>,
        headers: &mut HeaderMap,
        uri: &Uri,
    ) -> Result<(), ProxyError> {
        let mut refusal: Option<ProxyError> = None;
        let mut identity = None;
        if let Some(keys) = &self.api_key
            && let Some(presented) = keys.from.extract(headers, uri)
        {
            match keys.check(presented.as_bytes()) {
                Ok(consumer) => identity = Some(Identity::ApiKey(Arc::clone(consumer))),
                Err(e) => refusal = Some(e),
            }
        }
        if identity.is_none() {
            for provider in self.jwt.iter() {
                let Some(token) = provider.from.extract(headers, uri) else {
                    continue;
                };
                match provider.verify(&token).await {
                    Ok(verified) => {
                        identity = Some(Identity::Token(verified));
                        break;
                    }
                    Err(rejected) => {
                        // The first reason is the one logged; a key outage outranks a bad token.
                        let e = rejected.into_error();
                        if refusal.is_none() || matches!(e, ProxyError::AuthUnavailable(_)) {
                            refusal = Some(e);
                        }
                    }
                }
            }
        }
        let Some(identity) = identity else {
            return Err(refusal.unwrap_or_else(|| self.nothing_presented()));
        };
        if !self.forward_credentials {
            for from in self.sources() {
                if let Some(param) = from.strip(headers) {
                    ctx.hidden_query_params.push(param);
                }
            }
        }
        // Every header this rule maps a claim to is the gateway's alone, set or not: a claim the
        // token lacks must not leave the client's value in place.
        for provider in self.jwt.iter() {
            for claim in provider.claim_to_headers.iter() {
                headers.remove(&claim.header);
            }
        }
        match &identity {
            Identity::Token(verified) => {
                for (name, value) in verified.headers.iter() {
                    headers.insert(name.clone(), value.clone());
                }
                headers.insert(X_AUTH_PROVIDER.clone(), verified.provider_header.clone());
            }
            Identity::ApiKey(consumer) => {
                if let Ok(v) = HeaderValue::from_str(consumer) {
                    headers.insert(X_CONSUMER.clone(), v);
                }
                headers.insert(X_AUTH_PROVIDER.clone(), HeaderValue::from_static("apiKey"));
            }
        }
        ctx.identity = Some(identity);
        Ok(())
    }

    /// No method found a credential: 401, or 503 when no method could have checked one.
    fn nothing_presented(&self) -> ProxyError {
        let api_key_usable = self.api_key.as_ref().is_some_and(ApiKeys::usable);
        let jwt_usable = self.jwt.iter().any(JwtProvider::usable);
        if !api_key_usable && !jwt_usable {
            ProxyError::AuthUnavailable("no keys to verify credentials with")
        } else {
            ProxyError::Unauthorized(MISSING_CREDENTIALS)
        }
    }

    /// Where this step reads credentials from.
    pub fn sources(&self) -> impl Iterator<Item = &CredentialFrom> {
        self.api_key
            .iter()
            .map(|k| &k.from)
            .chain(self.jwt.iter().map(|p| &p.from))
    }
}

impl Rejected {
    fn into_error(self) -> ProxyError {
        match self {
            Rejected::Invalid(why) => ProxyError::Unauthorized(why),
            Rejected::Unavailable(why) => ProxyError::AuthUnavailable(why),
        }
    }
}

/// Role requirement of an `authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Require {
    /// At least one of the roles.
    AnyOf,
    /// Every role.
    AllOf,
}

/// The `authorization` of a rule: roles and claim values the verified identity must have.
#[derive(Debug, Serialize)]
pub struct Authorize {
    /// Roles required, per `require`.
    pub required_roles: Box<[Box<str>]>,
    /// Any or all of `required_roles`.
    pub require: Require,
    /// The claim holding the roles (a string, a space-separated string, or an array).
    pub roles_claim: Box<str>,
    /// Claims that must equal one of their values.
    pub claims: Box<[ClaimRule]>,
}

/// A claim and the values it may have.
pub type ClaimRule = (Box<str>, Box<[Box<str>]>);

impl Authorize {
    /// 403 unless the identity has the roles and claims required.
    pub(crate) fn on_request(&self, ctx: &RequestCtx<'_>) -> Result<(), ProxyError> {
        let Some(identity) = &ctx.identity else {
            return Err(ProxyError::Forbidden("no verified identity"));
        };
        let claims = identity.claims();
        if !self.required_roles.is_empty() {
            let roles = claims
                .map(|c| claims::roles(c, &self.roles_claim))
                .unwrap_or_default();
            let has = |r: &str| roles.iter().any(|have| **have == *r);
            let mut required = self.required_roles.iter().map(|r| &**r);
            let ok = match self.require {
                Require::AnyOf => required.any(has),
                Require::AllOf => required.all(has),
            };
            if !ok {
                return Err(ProxyError::Forbidden("missing a required role"));
            }
        }
        for (name, allowed) in self.claims.iter() {
            let values = claims.map(|c| claims::values(c, name)).unwrap_or_default();
            if !values.iter().any(|v| allowed.iter().any(|a| **a == **v)) {
                return Err(ProxyError::Forbidden("a required claim does not match"));
            }
        }
        Ok(())
    }
}
