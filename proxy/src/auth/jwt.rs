//! JWT verification with [`jsonwebtoken`]'s signature primitives and our own rules around them:
//! the algorithm is pinned by configuration (the token's `alg` must be one of the provider's,
//! and the key must be of that algorithm's family, so a public key can never serve as an HMAC
//! secret), `none` is never accepted, `jku`/`x5u`/`jwk` headers are ignored, and `exp`, `nbf`,
//! `iss` and `aud` are checked against an injected clock with the provider's skew.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderName, HeaderValue};
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use serde::{Serialize, Serializer};

use super::CredentialFrom;
use super::claims::{self, Claims};
use super::token_cache::TokenCache;
use crate::state::Jwks;

/// Longest token looked at; anything longer is refused before decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Keys of a JWKS document tried for a token without `kid`, at most: a token cannot make the
/// gateway run a signature check per key of a large set.
const MAX_KEYS_TRIED: usize = 4;

/// The kind of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Family {
    /// HS256/384/512: a shared secret.
    Hmac,
    /// RS*/PS*: an RSA public key.
    Rsa,
    /// ES256 (P-256) or ES384 (P-384).
    Ec(Curve),
    /// EdDSA: an Ed25519 public key.
    Ed,
}

/// Elliptic curves `ring` verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Curve {
    /// P-256, for ES256.
    P256,
    /// P-384, for ES384.
    P384,
}

/// The key family `alg` needs.
pub fn family(alg: Algorithm) -> Family {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Family::Rsa,
        Algorithm::ES256 => Family::Ec(Curve::P256),
        Algorithm::ES384 => Family::Ec(Curve::P384),
        Algorithm::EdDSA => Family::Ed,
    }
}

/// One verification key.
#[derive(Clone)]
pub struct Key {
    kid: Option<Box<str>>,
    family: Family,
    /// The JWK's own `alg`, when it names one: then only that algorithm may use it.
    alg: Option<Algorithm>,
    decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The keys a provider verifies with: from a Secret (a JWKS document, a PEM public key or an
/// HMAC secret) or fetched from a `jwksUri`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Box<[Key]>,
}

impl Serialize for KeySet {
    /// Key ids and families only: never key material.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            self.keys
                .iter()
                .map(|k| (k.kid.as_deref(), format!("{:?}", k.family))),
        )
    }
}

impl KeySet {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there is no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Reads a Secret's value for `algorithms`: a JWKS document (JSON with `keys`), a PEM public
    /// key, or else an HMAC secret. A value that cannot serve the algorithms is refused with the
    /// reason (a PEM key with HS256 is exactly the key-confusion attack).
    pub fn from_secret_value(value: &[u8], algorithms: &[Algorithm]) -> Result<KeySet, String> {
        let text = std::str::from_utf8(value).unwrap_or("").trim();
        if text.starts_with('{') {
            return KeySet::from_jwks(text.as_bytes(), algorithms);
        }
        if text.starts_with("-----BEGIN") {
            return KeySet::from_pem(text.as_bytes(), algorithms);
        }
        if let Some(alg) = algorithms.iter().find(|a| family(**a) != Family::Hmac) {
            return Err(format!(
                "the key is neither a JWKS document nor a PEM public key, so it would be an HMAC \
                 secret, which cannot verify {alg:?}"
            ));
        }
        if value.len() < 32 {
            // The length is not given: a route's status is read by people who may not read the
            // Secret.
            return Err("an HMAC secret must be at least 32 bytes".to_owned());
        }
        Ok(KeySet {
            keys: Box::new([Key {
                kid: None,
                family: Family::Hmac,
                alg: None,
                decoding: DecodingKey::from_secret(value),
            }]),
        })
    }

    fn from_pem(pem: &[u8], algorithms: &[Algorithm]) -> Result<KeySet, String> {
        let mut families: Vec<Family> = algorithms.iter().map(|a| family(*a)).collect();
        families.dedup();
        let fam = match families.as_slice() {
            [Family::Hmac, ..] | [_, Family::Hmac, ..] => {
                return Err(
                    "a PEM public key cannot verify HS256/384/512: HMAC algorithms need a shared \
                     secret, and a public key used as one would let anyone sign tokens"
                        .to_owned(),
                );
            }
            [one] => *one,
            _ => {
                return Err(
                    "one PEM key serves one key type: list algorithms of one family (RS*/PS*, \
                     ES256, ES384 or EdDSA)"
                        .to_owned(),
                );
            }
        };
        let decoding = match fam {
            Family::Rsa => DecodingKey::from_rsa_pem(pem),
            Family::Ec(_) => DecodingKey::from_ec_pem(pem),
            Family::Ed => DecodingKey::from_ed_pem(pem),
            Family::Hmac => unreachable!("refused above"),
        }
        .map_err(|e| format!("not a usable PEM public key for {fam:?}: {e}"))?;
        Ok(KeySet {
            keys: Box::new([Key {
                kid: None,
                family: fam,
                alg: None,
                decoding,
            }]),
        })
    }

    /// A JWKS document: keys that are not for signatures, of a type none of `algorithms` uses,
    /// or that do not parse are skipped (issuers publish encryption keys in the same set); a
    /// set with no usable key is refused.
    pub fn from_jwks(json: &[u8], algorithms: &[Algorithm]) -> Result<KeySet, String> {
        let doc: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let Some(entries) = doc.get("keys").and_then(|k| k.as_array()) else {
            return Err("not a JWKS document: no \"keys\" array".to_owned());
        };
        let wanted: Vec<Family> = algorithms.iter().map(|a| family(*a)).collect();
        let mut keys = Vec::new();
        for entry in entries {
            let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
                continue;
            };
            if let Some(k) = key_from_jwk(&jwk)
                && wanted.contains(&k.family)
            {
                keys.push(k);
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "the JWKS has no signing key usable with {algorithms:?} (of {} keys)",
                entries.len()
            ));
        }
        Ok(KeySet {
            keys: keys.into_boxed_slice(),
        })
    }

    /// The keys a token with `alg` and `kid` may be verified with; `None` when it names a `kid`
    /// this set does not have.
    fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Option<Vec<&Key>> {
        let fam = family(alg);
        let fits = |k: &&Key| k.family == fam && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => {
                let named: Vec<&Key> = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if named.is_empty() {
                    return None;
                }
                Some(named.into_iter().filter(fits).collect())
            }
            None => Some(self.keys.iter().filter(fits).take(MAX_KEYS_TRIED).collect()),
        }
    }
}

fn key_from_jwk(jwk: &Jwk) -> Option<Key> {
    if let Some(u) = &jwk.common.public_key_use
        && *u != PublicKeyUse::Signature
    {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Family::Ec(Curve::P256),
            EllipticCurve::P384 => Family::Ec(Curve::P384),
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Family::Ed,
        AlgorithmParameters::OctetKeyPair(_) => return None,
        AlgorithmParameters::OctetKey(_) => Family::Hmac,
    };
    let alg = match jwk.common.key_algorithm {
        Some(ka) => Some(ka.to_string().parse::<Algorithm>().ok()?),
        None => None,
    };
    if alg.is_some_and(|a| self::family(a) != family) {
        return None;
    }
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.as_deref().map(Into::into),
        family,
        alg,
        decoding,
    })
}

/// Where a provider's keys come from.
#[derive(Debug, Serialize)]
pub enum Keys {
    /// Read from a Secret at compile time.
    Static(Arc<KeySet>),
    /// Fetched from `jwksUri` by the gateway; the fetched set lives in [`crate::state`], bound
    /// when the snapshot is installed.
    Remote(RemoteKeys),
    /// The Secret is missing or unusable: every token is refused with 503 (fail closed).
    Unavailable(Box<str>),
}

/// A `jwksUri` and the key set fetched from it.
#[derive(Debug, Serialize)]
pub struct RemoteKeys {
    /// The JWKS address.
    pub uri: Arc<str>,
    #[serde(skip)]
    bound: OnceLock<Arc<Jwks>>,
}

impl RemoteKeys {
    /// Keys to be fetched from `uri`.
    pub fn new(uri: Arc<str>) -> Self {
        RemoteKeys {
            uri,
            bound: OnceLock::new(),
        }
    }

    /// Binds the shared key set (done once, at install).
    pub(crate) fn bind(&self, jwks: impl FnOnce() -> Arc<Jwks>) {
        let _ = self.bound.get_or_init(jwks);
    }

    fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.bound.get()
    }
}

/// A header a claim is copied to.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimHeader {
    /// Claim name or dotted path.
    pub claim: Box<str>,
    /// Header set on the upstream request.
    #[serde(serialize_with = "crate::snapshot::ser_name")]
    pub header: HeaderName,
}

/// One `providers[]` entry.
#[derive(Debug, Serialize)]
pub struct JwtProvider {
    /// The provider's name (`X-Auth-Provider`).
    pub name: Arc<str>,
    /// `iss` must equal this, when set.
    pub issuer: Option<Box<str>>,
    /// `aud` must contain one of these, when any.
    pub audiences: Box<[Box<str>]>,
    /// The only algorithms accepted.
    #[serde(serialize_with = "ser_algorithms")]
    pub algorithms: Box<[Algorithm]>,
    /// The verification keys.
    pub keys: Keys,
    /// Tolerance for `exp` and `nbf`.
    pub clock_skew: Duration,
    /// Where the token is read from.
    pub from: CredentialFrom,
    /// Claims copied to upstream headers.
    pub claim_to_headers: Box<[ClaimHeader]>,
    #[serde(skip)]
    provider_header: HeaderValue,
    #[serde(skip)]
    cache: TokenCache,
}

fn ser_algorithms<S: Serializer>(algs: &[Algorithm], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(algs.iter().map(|a| format!("{a:?}")))
}

/// A token a provider accepted, ready to be copied to the upstream request.
#[derive(Debug)]
pub struct Verified {
    /// Its claims.
    pub claims: Claims,
    /// The `claimToHeaders` headers, computed once per token.
    pub headers: Box<[(HeaderName, HeaderValue)]>,
    /// `X-Auth-Provider`'s value.
    pub provider_header: HeaderValue,
    /// Unix time after which it is no longer accepted (`exp` plus skew).
    pub valid_until: u64,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The token is not acceptable: 401.
    Invalid(&'static str),
    /// It cannot be checked now (no keys): 503.
    Unavailable(&'static str),
}

/// What one check against one key set found.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    Invalid(&'static str),
    /// The token names a `kid` the set does not have (worth a JWKS refetch).
    UnknownKid,
}

/// Fixed reasons, for the access log.
mod reason {
    pub const MALFORMED: &str = "malformed token";
    pub const ALGORITHM: &str = "token algorithm not allowed";
    pub const UNKNOWN_KID: &str = "token signed with an unknown key";
    pub const NO_KEY: &str = "no key for the token's algorithm";
    pub const SIGNATURE: &str = "bad token signature";
    pub const NO_EXP: &str = "token has no exp";
    pub const EXPIRED: &str = "token expired";
    pub const NOT_YET: &str = "token not yet valid";
    pub const ISSUER: &str = "token issuer not accepted";
    pub const AUDIENCE: &str = "token audience not accepted";
    pub const TOO_LONG: &str = "token too long";
    pub const CRITICAL: &str = "token has critical header extensions";
}

/// The JOSE header as a JSON object, checked whole (RFC 7515 section 5.2: valid UTF-8 JSON):
/// `decode_header` skips fields it does not know without looking inside them, so a header with
/// invalid UTF-8 in one would otherwise pass, and a `crit` beside it go unseen (no `crit`
/// extension is understood here, so RFC 7515 section 4.1.11 says such a token is refused).
fn header_fields(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let segment = token.split('.').next()?;
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl JwtProvider {
    /// A provider. `claim_to_headers` empty means the default: `sub` → `X-User-Id`, `roles` →
    /// `X-User-Roles`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: Arc<str>,
        issuer: Option<Box<str>>,
        audiences: Box<[Box<str>]>,
        algorithms: Box<[Algorithm]>,
        keys: Keys,
        clock_skew: Duration,
        from: CredentialFrom,
        claim_to_headers: Box<[ClaimHeader]>,
    ) -> Self {
        let provider_header =
            HeaderValue::from_str(&name).unwrap_or_else(|_| HeaderValue::from_static("jwt"));
        JwtProvider {
            name,
            issuer,
            audiences,
            algorithms,
            keys,
            clock_skew,
            from,
            claim_to_headers,
            provider_header,
            cache: TokenCache::default(),
        }
    }

    /// The default `claimToHeaders`.
    pub fn default_claim_headers() -> Box<[ClaimHeader]> {
        Box::new([
            ClaimHeader {
                claim: "sub".into(),
                header: crate::headers::X_USER_ID.clone(),
            },
            ClaimHeader {
                claim: "roles".into(),
                header: crate::headers::X_USER_ROLES.clone(),
            },
        ])
    }

    /// False when this provider cannot accept any token (its keys are unavailable).
    pub fn usable(&self) -> bool {
        !matches!(self.keys, Keys::Unavailable(_))
    }

    /// Verifies `token` now: from the cache of tokens this provider accepted, else against its
    /// keys, refetching a remote JWKS (within its rate floor) when the token names an unknown
    /// `kid`.
    pub async fn verify(&self, token: &str) -> Result<Arc<Verified>, Rejected> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Rejected::Invalid(reason::TOO_LONG));
        }
        let now = unix_now();
        let (keys, jwks) = match &self.keys {
            Keys::Static(keys) => (Arc::clone(keys), None),
            Keys::Unavailable(_) => return Err(Rejected::Unavailable("JWT keys are unavailable")),
            Keys::Remote(remote) => {
                let Some(jwks) = remote.jwks() else {
                    return Err(Rejected::Unavailable("JWKS not bound"));
                };
                let Some(keys) = jwks.keys().await else {
                    return Err(Rejected::Unavailable("no JWKS keys could be fetched"));
                };
                (keys, Some(jwks))
            }
        };
        if let Some(hit) = self.cache.get(token, &keys, now) {
            return Ok(hit);
        }
        let (verified, used) = match (self.check(token, &keys, now), jwks) {
            (Err(Check::UnknownKid), Some(jwks)) => {
                match jwks.refetch_for_unknown_kid(&keys).await {
                    Some(newer) => (self.check(token, &newer, now), newer),
                    None => (Err(Check::UnknownKid), keys),
                }
            }
            (other, _) => (other, keys),
        };
        match verified {
            Ok(v) => {
                let v = Arc::new(v);
                self.cache.insert(token, Arc::clone(&v), &used, now);
                Ok(v)
            }
            Err(Check::UnknownKid) => Err(Rejected::Invalid(reason::UNKNOWN_KID)),
            Err(Check::Invalid(why)) => Err(Rejected::Invalid(why)),
        }
    }

    /// Verifies `token` at Unix time `now` against keys read from a Secret, bypassing the
    /// cache of verified tokens: what a cache miss costs (for benchmarks and tools).
    pub fn verify_uncached(&self, token: &str, now: u64) -> Result<Verified, Rejected> {
        match &self.keys {
            Keys::Static(keys) => self.check(token, keys, now).map_err(|c| match c {
                Check::UnknownKid => Rejected::Invalid(reason::UNKNOWN_KID),
                Check::Invalid(why) => Rejected::Invalid(why),
            }),
            _ => Err(Rejected::Unavailable("not keys from a Secret")),
        }
    }

    /// Verifies `token` against `keys` at Unix time `now`.
    fn check(&self, token: &str, keys: &KeySet, now: u64) -> Result<Verified, Check> {
        let claims = self.verified_claims(token, keys)?;
        let skew = self.clock_skew.as_secs();
        let exp = match claims.get("exp") {
            Some(v) => v.as_f64().ok_or(Check::Invalid(reason::NO_EXP))?,
            None => return Err(Check::Invalid(reason::NO_EXP)),
        };
        // Compared in whole seconds as RFC 7519 NumericDate allows; fractions round down.
        let exp = exp.max(0.0) as u64;
        if now > exp.saturating_add(skew) {
            return Err(Check::Invalid(reason::EXPIRED));
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_f64().ok_or(Check::Invalid(reason::MALFORMED))?;
            if (now.saturating_add(skew) as f64) < nbf {
                return Err(Check::Invalid(reason::NOT_YET));
            }
        }
        if let Some(issuer) = &self.issuer
            && claims.get("iss").and_then(|v| v.as_str()) != Some(&**issuer)
        {
            return Err(Check::Invalid(reason::ISSUER));
        }
        if !self.audiences.is_empty() {
            let ok = match claims.get("aud") {
                Some(serde_json::Value::String(a)) => self.audiences.iter().any(|w| **w == **a),
                Some(serde_json::Value::Array(list)) => list.iter().any(|a| {
                    a.as_str()
                        .is_some_and(|a| self.audiences.iter().any(|w| **w == *a))
                }),
                _ => false,
            };
            if !ok {
                return Err(Check::Invalid(reason::AUDIENCE));
            }
        }
        let headers = self
            .claim_to_headers
            .iter()
            .filter_map(|ch| Some((ch.header.clone(), claims::header_value(&claims, &ch.claim)?)))
            .collect();
        Ok(Verified {
            claims,
            headers,
            provider_header: self.provider_header.clone(),
            valid_until: exp.saturating_add(skew),
        })
    }

    /// The claims of `token` once its signature verified with one of `keys` under an algorithm
    /// of this provider's.
    fn verified_claims(&self, token: &str, keys: &KeySet) -> Result<Claims, Check> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| Check::Invalid(reason::MALFORMED))?;
        let fields = header_fields(token).ok_or(Check::Invalid(reason::MALFORMED))?;
        if fields.contains_key("crit") {
            return Err(Check::Invalid(reason::CRITICAL));
        }
        if !self.algorithms.contains(&header.alg) {
            return Err(Check::Invalid(reason::ALGORITHM));
        }
        let candidates = keys
            .candidates(header.alg, header.kid.as_deref())
            .ok_or(Check::UnknownKid)?;
        if candidates.is_empty() {
            return Err(Check::Invalid(reason::NO_KEY));
        }
        let (message, signature) = token
            .rsplit_once('.')
            .ok_or(Check::Invalid(reason::MALFORMED))?;
        let verified = candidates.iter().any(|k| {
            jsonwebtoken::crypto::verify(signature, message.as_bytes(), &k.decoding, header.alg)
                .unwrap_or(false)
        });
        if !verified {
            return Err(Check::Invalid(reason::SIGNATURE));
        }
        let payload = message
            .split_once('.')
            .map(|(_, p)| p)
            .ok_or(Check::Invalid(reason::MALFORMED))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| Check::Invalid(reason::MALFORMED))?;
        serde_json::from_slice(&bytes).map_err(|_| Check::Invalid(reason::MALFORMED))
    }
}

#[cfg(test)]
mod tests;
