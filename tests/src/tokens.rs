//! Signed tokens and key material for authentication tests: the RSA test keys the proxy's unit
//! tests use, tokens minted with them, and Secrets that carry them.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

/// The first RSA test key pair.
pub const RSA_PRIVATE: &str = include_str!("../../proxy/src/auth/jwt/testdata/rsa-private.pem");
/// Its public half.
pub const RSA_PUBLIC: &str = include_str!("../../proxy/src/auth/jwt/testdata/rsa-public.pem");
/// A second RSA key pair (another issuer, or the next key of a rotation).
pub const RSA2_PRIVATE: &str = include_str!("../../proxy/src/auth/jwt/testdata/rsa2-private.pem");
/// Its public half.
pub const RSA2_PUBLIC: &str = include_str!("../../proxy/src/auth/jwt/testdata/rsa2-public.pem");

/// The issuer the test providers expect.
pub const ISSUER: &str = "https://auth.example.com";
/// The audience the test providers expect.
pub const AUDIENCE: &str = "orders-api";

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Valid claims for `sub` with `roles`, expiring in ten minutes.
pub fn claims(sub: &str, roles: &[&str]) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "roles": roles,
        "exp": now() + 600,
        "iat": now(),
    })
}

/// `claims` signed RS256 with `private_pem`, with `kid` in the header when given.
pub fn sign(private_pem: &str, claims: &Value, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    let key = EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("test key");
    encode(&header, claims, &key).expect("token")
}

/// A token for `sub` with `roles`, signed with the first test key.
pub fn token(sub: &str, roles: &[&str]) -> String {
    sign(RSA_PRIVATE, &claims(sub, roles), None)
}

/// The JWK of a 2048-bit RSA public key in PEM (modulus and exponent from its DER).
pub fn jwk(public_pem: &str, kid: &str) -> Value {
    let b64: String = public_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = STANDARD.decode(b64).expect("PEM body");
    // A 2048-bit SubjectPublicKeyInfo ends with the 256-byte modulus and the exponent 65537.
    let modulus = &der[der.len() - 5 - 256..der.len() - 5];
    json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "e": "AQAB", "n": URL_SAFE_NO_PAD.encode(modulus)})
}

/// A `v1` Secret `name` in `default` with `stringData` entries (YAML-quoted, so PEM blocks keep
/// their lines).
pub fn secret(name: &str, entries: &[(&str, &str)]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\nstringData:\n"
    );
    for (k, v) in entries {
        out.push_str(&format!(
            "  {k}: {}\n",
            serde_json::to_string(v).expect("string")
        ));
    }
    out
}
