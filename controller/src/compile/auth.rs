//! `authentication` and `authorization` compile: the route's default or the rule's own, its
//! Secrets read into key sets and API key digests. A missing Secret does not drop the rule: it
//! stays, refusing requests (fail closed), with `ResolvedRefs=False` naming the Secret.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use sluice_proxy::auth::api_key::ApiKeys;
use sluice_proxy::auth::jwt::Algorithm;
use sluice_proxy::auth::jwt::{ClaimHeader, JwtProvider as Provider, KeySet, Keys, RemoteKeys};
use sluice_proxy::auth::{Authenticate, Authorize, CredentialFrom, Require};

use super::FastMap;
use super::routes::{FRAMING_HEADERS, FieldError, err};
use crate::resources::{
    ApiKeyAuthentication, ApiKeySource, Authentication, Authorization, ClaimRequirement,
    ClaimToHeader, JwtAlgorithm, JwtAuthentication, JwtProvider, RoleRequirement, Secret,
    SecretKeyRef, SecretRef, TokenSource, parse_duration,
};

/// Default tolerance for `exp` and `nbf`.
const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(30);
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(600);

/// Headers a claim may not be copied to, beyond the framing ones: they route the message, carry
/// credentials, or name an API key's identity.
const FORBIDDEN_CLAIM_HEADERS: &[&str] = &[
    "content-type",
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    // An API key's identity: a token must not pose as a consumer.
    "x-consumer",
    "x-auth-provider",
];

/// Secrets by `(namespace, name)`, indexed on first use.
pub(crate) struct SecretIndex<'a> {
    secrets: &'a [Arc<Secret>],
    built: Option<FastMap<(&'a str, &'a str), &'a Secret>>,
}

impl<'a> SecretIndex<'a> {
    pub(crate) fn new(secrets: &'a [Arc<Secret>]) -> Self {
        SecretIndex {
            secrets,
            built: None,
        }
    }

    fn get(&mut self, namespace: &str, name: &str) -> Option<&'a Secret> {
        let secrets = self.secrets;
        let index = self.built.get_or_insert_with(|| {
            secrets
                .iter()
                .filter_map(|s| {
                    let ns = s.metadata.namespace.as_deref().unwrap_or("default");
                    Some(((ns, s.metadata.name.as_deref()?), &**s))
                })
                .collect()
        });
        index.get(&(namespace, name)).copied()
    }

    /// The Secret's `type`, when it exists (`None` inside: no type given).
    pub(super) fn secret_type(&mut self, namespace: &str, name: &str) -> Option<Option<&'a str>> {
        self.get(namespace, name).map(|s| s.type_.as_deref())
    }

    /// One key's bytes (`stringData` over `data`, as the API server merges them).
    pub(super) fn value(&mut self, namespace: &str, name: &str, key: &str) -> Option<Vec<u8>> {
        let secret = self.get(namespace, name)?;
        if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
            return Some(v.as_bytes().to_vec());
        }
        secret.data.as_ref()?.get(key).map(|v| v.0.clone())
    }

    /// Every key of the Secret with its bytes: `data` (already base64-decoded), overlaid by
    /// `stringData` as the API server does.
    fn entries(&mut self, namespace: &str, name: &str) -> Option<Vec<(String, Vec<u8>)>> {
        let secret = self.get(namespace, name)?;
        let mut out: std::collections::BTreeMap<String, Vec<u8>> = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        for (k, v) in secret.string_data.iter().flatten() {
            out.insert(k.clone(), v.as_bytes().to_vec());
        }
        Some(out.into_iter().collect())
    }
}

/// What a rule's authentication and authorization compile to.
pub(super) struct Compiled {
    pub authenticate: Option<Authenticate>,
    pub authorize: Option<Authorize>,
    /// References that did not resolve (the rule is kept, failing closed).
    pub unresolved: Vec<FieldError>,
}

/// Compiles the rule's effective authentication: its own (`rule_field("authentication")`) or
/// the route's default (`spec.authentication`), and its authorization.
pub(super) fn compile(
    route_default: Option<&Authentication>,
    own: Option<&Authentication>,
    authorization: Option<&Authorization>,
    rule_field: &dyn Fn(&str) -> String,
    namespace: &str,
    secrets: &mut SecretIndex<'_>,
) -> Result<Compiled, FieldError> {
    let (auth, prefix) = match own {
        Some(a) => (Some(a), rule_field("authentication")),
        None => (route_default, "spec.authentication".to_owned()),
    };
    let mut unresolved = Vec::new();
    let authenticate = match auth {
        None => None,
        Some(a) => compile_authentication(a, &prefix, namespace, secrets, &mut unresolved)?,
    };
    let authorize = match authorization {
        None => None,
        Some(_) if authenticate.is_none() => {
            return Err(err(
                rule_field("authorization"),
                "needs authentication: set it on the rule or the route (not anonymous)",
            ));
        }
        Some(a) => Some(compile_authorization(a, &rule_field("authorization"))?),
    };
    Ok(Compiled {
        authenticate,
        authorize,
        unresolved,
    })
}

fn compile_authentication(
    auth: &Authentication,
    field: &str,
    namespace: &str,
    secrets: &mut SecretIndex<'_>,
    unresolved: &mut Vec<FieldError>,
) -> Result<Option<Authenticate>, FieldError> {
    let Authentication {
        jwt,
        api_key,
        forward_credentials,
        anonymous,
    } = auth;
    if anonymous == &Some(true) {
        if jwt.is_some() || api_key.is_some() {
            return Err(err(
                format!("{field}.anonymous"),
                "anonymous: true cannot be combined with jwt or apiKey",
            ));
        }
        return Ok(None);
    }
    if jwt.is_none() && api_key.is_none() {
        return Err(err(field.to_owned(), "set jwt, apiKey, or anonymous: true"));
    }
    let jwt = match jwt {
        None => Box::default(),
        Some(JwtAuthentication { providers }) => {
            let f = format!("{field}.jwt.providers");
            if providers.is_empty() || providers.len() > 8 {
                return Err(err(f, "must have 1 to 8 providers"));
            }
            let mut names = std::collections::HashSet::new();
            let mut out = Vec::with_capacity(providers.len());
            for (i, p) in providers.iter().enumerate() {
                let pf = format!("{f}[{i}]");
                if !names.insert(p.name.as_str()) {
                    return Err(err(
                        format!("{pf}.name"),
                        format!("duplicate provider name {:?}", p.name),
                    ));
                }
                out.push(compile_provider(p, &pf, namespace, secrets, unresolved)?);
            }
            out.into_boxed_slice()
        }
    };
    let api_key = api_key
        .as_ref()
        .map(|a| {
            compile_api_key(
                a,
                &format!("{field}.apiKey"),
                namespace,
                secrets,
                unresolved,
            )
        })
        .transpose()?;
    Ok(Some(Authenticate {
        jwt,
        api_key,
        forward_credentials: forward_credentials.unwrap_or(false),
    }))
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

fn compile_provider(
    p: &JwtProvider,
    field: &str,
    namespace: &str,
    secrets: &mut SecretIndex<'_>,
    unresolved: &mut Vec<FieldError>,
) -> Result<Provider, FieldError> {
    let JwtProvider {
        name,
        issuer,
        audiences,
        algorithms,
        jwks_uri,
        key_secret_ref,
        clock_skew,
        from,
        claim_to_headers,
    } = p;
    let f = |rest: &str| format!("{field}.{rest}");
    let name_ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !name_ok {
        return Err(err(
            f("name"),
            format!("{name:?} must be 1-63 letters, digits, '-', '.' or '_'"),
        ));
    }
    if algorithms.is_empty() {
        return Err(err(
            f("algorithms"),
            "required: the algorithms this provider signs with (never taken from the token)",
        ));
    }
    let mut algs: Vec<Algorithm> = Vec::with_capacity(algorithms.len());
    for a in algorithms {
        let a = algorithm(*a);
        if !algs.contains(&a) {
            algs.push(a);
        }
    }
    if issuer.as_deref() == Some("") {
        return Err(err(f("issuer"), "must not be empty"));
    }
    if audiences.len() > 16 || audiences.iter().any(String::is_empty) {
        return Err(err(f("audiences"), "at most 16 non-empty audiences"));
    }
    let keys = match (jwks_uri, key_secret_ref) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(err(
                field.to_owned(),
                "set exactly one of jwksUri and keySecretRef",
            ));
        }
        (Some(uri), None) => {
            let parsed: Result<http::Uri, _> = uri.parse();
            let ok = parsed.as_ref().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
            });
            if !ok {
                return Err(err(
                    f("jwksUri"),
                    format!("{uri:?} is not an http:// or https:// URL"),
                ));
            }
            if parsed
                .as_ref()
                .is_ok_and(|u| u.authority().is_some_and(|a| a.as_str().contains('@')))
            {
                return Err(err(
                    f("jwksUri"),
                    "must not carry credentials (user:password@); it is shown in logs and status",
                ));
            }
            if let Some(a) = algs.iter().find(|a| is_hmac(**a)) {
                return Err(err(
                    f("algorithms"),
                    format!(
                        "{a:?} needs a shared secret, which a published JWKS must not hold: \
                         use keySecretRef for HMAC keys"
                    ),
                ));
            }
            Keys::Remote(RemoteKeys::new(uri.as_str().into()))
        }
        (None, Some(SecretKeyRef { name: secret, key })) => {
            let kf = f("keySecretRef");
            let value = secrets
                .entries(namespace, secret)
                .ok_or_else(|| format!("Secret {namespace}/{secret} not found"))
                .and_then(|entries| {
                    entries
                        .into_iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| v)
                        .ok_or_else(|| format!("Secret {namespace}/{secret} has no key {key:?}"))
                });
            match value.and_then(|v| {
                KeySet::from_secret_value(&v, &algs)
                    .map_err(|e| format!("Secret {namespace}/{secret} key {key:?}: {e}"))
            }) {
                Ok(set) => Keys::Static(Arc::new(set)),
                Err(reason) => {
                    unresolved.push(err(kf, reason.clone()));
                    Keys::Unavailable(reason.into())
                }
            }
        }
    };
    let clock_skew = match clock_skew {
        None => DEFAULT_CLOCK_SKEW,
        Some(s) => match parse_duration(s) {
            Some(d) if d <= MAX_CLOCK_SKEW => d,
            Some(_) => return Err(err(f("clockSkew"), "at most 10m")),
            None => {
                return Err(err(
                    f("clockSkew"),
                    format!("{s:?} is not a duration like 30s or 1m"),
                ));
            }
        },
    };
    let from = match from {
        None => CredentialFrom::bearer(),
        Some(source) => token_source(source, &f("from"))?,
    };
    let claim_to_headers = if claim_to_headers.is_empty() {
        Provider::default_claim_headers()
    } else {
        let mut seen = std::collections::HashSet::new();
        claim_to_headers
            .iter()
            .enumerate()
            .map(|(k, ClaimToHeader { claim, header })| {
                let hf = format!("{field}.claimToHeaders[{k}].header");
                let name = HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| err(&hf, format!("{header:?} is not a valid header name")))?;
                if FRAMING_HEADERS.contains(&name.as_str())
                    || FORBIDDEN_CLAIM_HEADERS.contains(&name.as_str())
                {
                    return Err(err(&hf, format!("{name} cannot carry a claim")));
                }
                // Claim headers are stripped from every client request on every route: limiting
                // them to `x-` names keeps a route from taking ordinary headers (`accept`,
                // `range`) away from every other route's backends.
                if !name.as_str().starts_with("x-") {
                    return Err(err(
                        &hf,
                        format!("{name}: a claim goes to an x- header (such as X-User-Email)"),
                    ));
                }
                if !seen.insert(name.clone()) {
                    return Err(err(&hf, format!("{name} appears more than once")));
                }
                if claim.is_empty() {
                    return Err(err(
                        format!("{field}.claimToHeaders[{k}].claim"),
                        "must not be empty",
                    ));
                }
                Ok(ClaimHeader {
                    claim: claim.as_str().into(),
                    header: name,
                })
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_boxed_slice()
    };
    Ok(Provider::new(
        name.as_str().into(),
        issuer.as_deref().map(Into::into),
        audiences.iter().map(|a| a.as_str().into()).collect(),
        algs.into_boxed_slice(),
        keys,
        clock_skew,
        from,
        claim_to_headers,
    ))
}

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn header_name(raw: &str, field: &str) -> Result<HeaderName, FieldError> {
    HeaderName::from_bytes(raw.as_bytes())
        .map_err(|_| err(field, format!("{raw:?} is not a valid header name")))
}

fn token_source(source: &TokenSource, field: &str) -> Result<CredentialFrom, FieldError> {
    let TokenSource {
        header,
        prefix,
        cookie,
        query_param,
    } = source;
    let set = [header.is_some(), cookie.is_some(), query_param.is_some()];
    if set.iter().filter(|s| **s).count() != 1 {
        return Err(err(
            field,
            "set exactly one of header, cookie and queryParam",
        ));
    }
    if prefix.is_some() && header.is_none() {
        return Err(err(format!("{field}.prefix"), "only applies with header"));
    }
    Ok(match (header, cookie, query_param) {
        (Some(h), _, _) => {
            let name = header_name(h, &format!("{field}.header"))?;
            let prefix = prefix.clone().unwrap_or_else(|| {
                if name == http::header::AUTHORIZATION {
                    "Bearer ".to_owned()
                } else {
                    String::new()
                }
            });
            CredentialFrom::Header {
                name,
                prefix: prefix.into(),
            }
        }
        (_, Some(c), _) => CredentialFrom::Cookie(c.as_str().into()),
        (_, _, Some(q)) => CredentialFrom::QueryParam(q.as_str().into()),
        (None, None, None) => unreachable!("exactly one is set"),
    })
}

fn compile_api_key(
    a: &ApiKeyAuthentication,
    field: &str,
    namespace: &str,
    secrets: &mut SecretIndex<'_>,
    unresolved: &mut Vec<FieldError>,
) -> Result<ApiKeys, FieldError> {
    let ApiKeyAuthentication { from, secret_refs } = a;
    let from = match from {
        None => CredentialFrom::Header {
            name: HeaderName::from_static("x-api-key"),
            prefix: "".into(),
        },
        Some(ApiKeySource {
            header,
            query_param,
        }) => match (header, query_param) {
            (Some(h), None) => CredentialFrom::Header {
                name: header_name(h, &format!("{field}.from.header"))?,
                prefix: "".into(),
            },
            (None, Some(q)) => CredentialFrom::QueryParam(q.as_str().into()),
            _ => {
                return Err(err(
                    format!("{field}.from"),
                    "set exactly one of header and queryParam",
                ));
            }
        },
    };
    if secret_refs.is_empty() || secret_refs.len() > 16 {
        return Err(err(
            format!("{field}.secretRefs"),
            "must name 1 to 16 Secrets",
        ));
    }
    let mut pairs = Vec::new();
    let mut incomplete = false;
    for (k, SecretRef { name }) in secret_refs.iter().enumerate() {
        match secrets.entries(namespace, name) {
            // Keys are compared as the client sends them, which HTTP trims: a trailing newline
            // (`kubectl create secret --from-file`) would make a key that never matches.
            Some(entries) => pairs.extend(
                entries
                    .into_iter()
                    .map(|(consumer, key)| (consumer, key.trim_ascii().to_vec()))
                    .filter(|(_, key)| !key.is_empty())
                    .map(|(consumer, key)| (Arc::<str>::from(consumer), key)),
            ),
            None => {
                incomplete = true;
                unresolved.push(err(
                    format!("{field}.secretRefs[{k}]"),
                    format!("Secret {namespace}/{name} not found"),
                ));
            }
        }
    }
    Ok(ApiKeys::new(from, pairs, incomplete))
}

fn compile_authorization(a: &Authorization, field: &str) -> Result<Authorize, FieldError> {
    let Authorization {
        required_roles,
        require,
        roles_claim,
        claims,
    } = a;
    if required_roles.is_empty() && claims.is_empty() {
        return Err(err(field, "set requiredRoles, claims, or both"));
    }
    if required_roles.len() > 32 || required_roles.iter().any(String::is_empty) {
        return Err(err(
            format!("{field}.requiredRoles"),
            "at most 32 non-empty roles",
        ));
    }
    if claims.len() > 16 {
        return Err(err(format!("{field}.claims"), "at most 16 claims"));
    }
    let claims = claims
        .iter()
        .enumerate()
        .map(|(k, ClaimRequirement { name, values })| {
            if name.is_empty() {
                return Err(err(
                    format!("{field}.claims[{k}].name"),
                    "must not be empty",
                ));
            }
            if values.is_empty() || values.len() > 32 {
                return Err(err(
                    format!("{field}.claims[{k}].values"),
                    "must list 1 to 32 values",
                ));
            }
            Ok((
                name.as_str().into(),
                values.iter().map(|v| v.as_str().into()).collect(),
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Authorize {
        required_roles: required_roles.iter().map(|r| r.as_str().into()).collect(),
        require: match require.unwrap_or_default() {
            RoleRequirement::AnyOf => Require::AnyOf,
            RoleRequirement::AllOf => Require::AllOf,
        },
        roles_claim: roles_claim.as_deref().unwrap_or("roles").into(),
        claims: claims.into_boxed_slice(),
    })
}
