//! `authentication` and `authorization` of a GatewayRoute (at route level as a default, or per
//! rule).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Who may call: a JWT from one of the providers, or an API key. Any one accepting the request
/// authenticates it. A rule's own `authentication` replaces the route's; `{anonymous: true}`
/// opts a rule out.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authentication {
    /// JSON Web Tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuthentication>,
    /// API keys from Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyAuthentication>,
    /// Pass the credential on to the backend. Default false: it is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_credentials: Option<bool>,
    /// True: no authentication (for a rule under a route-level default, such as `/health`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<bool>,
}

/// JWT providers.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtAuthentication {
    /// Any one provider accepting the token authenticates the request.
    #[schemars(length(min = 1, max = 8))]
    pub providers: Vec<JwtProvider>,
}

/// One token issuer.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtProvider {
    /// Name, sent to the backend as `X-Auth-Provider`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9][-A-Za-z0-9._]*$")
    )]
    pub name: String,
    /// `iss` must equal this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: Option<String>,
    /// `aud` must contain one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub audiences: Vec<String>,
    /// The only algorithms accepted; never taken from the token.
    #[schemars(length(min = 1, max = 12))]
    pub algorithms: Vec<JwtAlgorithm>,
    /// A JWKS document the gateway fetches, caches and refreshes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub jwks_uri: Option<String>,
    /// A Secret key holding a JWKS document, a PEM public key, or an HMAC secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_ref: Option<SecretKeyRef>,
    /// Tolerance for `exp` and `nbf` (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub clock_skew: Option<String>,
    /// Where the token is read; default `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<TokenSource>,
    /// Claims copied to upstream headers; default `sub` → `X-User-Id`, `roles` →
    /// `X-User-Roles`. Arrays are joined with `,`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub claim_to_headers: Vec<ClaimToHeader>,
}

/// Signature algorithms (`none` does not exist here).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[allow(missing_docs, clippy::upper_case_acronyms)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// A key of a Secret in the route's namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in its `data`.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Where a token is read: one of `header` (with `prefix`), `cookie`, `queryParam`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSource {
    /// A header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// With `header`: the text before the token (default `Bearer ` for `Authorization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub prefix: Option<String>,
    /// A cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub cookie: Option<String>,
    /// A query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub query_param: Option<String>,
}

/// A claim copied to a header.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Claim name, or a dotted path into nested claims (`realm_access.roles`).
    #[schemars(length(min = 1, max = 256))]
    pub claim: String,
    /// Header set on the upstream request (and stripped from every client request).
    #[schemars(length(min = 1, max = 256))]
    pub header: String,
}

/// API keys: each `data` entry of each Secret maps a consumer name to its key.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyAuthentication {
    /// Where the key is read: `header` (default `x-api-key`) or `queryParam`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ApiKeySource>,
    /// Secrets in the route's namespace.
    #[schemars(length(min = 1, max = 16))]
    pub secret_refs: Vec<SecretRef>,
}

/// Where an API key is read: one of `header`, `queryParam`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeySource {
    /// A header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// A query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub query_param: Option<String>,
}

/// A Secret in the route's namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What the verified identity must have.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    /// Roles, from `rolesClaim`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub required_roles: Vec<String>,
    /// `AnyOf` (default) or `AllOf` the roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require: Option<RoleRequirement>,
    /// The claim holding the roles: an array, a string, or a space-separated string. Default
    /// `roles`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub roles_claim: Option<String>,
    /// Claims that must equal one of their values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub claims: Vec<ClaimRequirement>,
}

/// How `requiredRoles` combine.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum RoleRequirement {
    /// At least one.
    #[default]
    AnyOf,
    /// Every one.
    AllOf,
}

/// A claim that must equal one of `values` (for an array claim: contain one).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimRequirement {
    /// Claim name or dotted path.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Accepted values.
    #[schemars(length(min = 1, max = 32))]
    pub values: Vec<String>,
}
