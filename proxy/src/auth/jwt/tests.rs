use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

use super::*;

const RSA_PRIVATE: &str = include_str!("testdata/rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("testdata/rsa-public.pem");
const RSA2_PRIVATE: &str = include_str!("testdata/rsa2-private.pem");
const EC_PRIVATE: &str = include_str!("testdata/ec-private.pem");
const EC_PUBLIC: &str = include_str!("testdata/ec-public.pem");
const ED_PRIVATE: &str = include_str!("testdata/ed-private.pem");
const ED_PUBLIC: &str = include_str!("testdata/ed-public.pem");
const HMAC_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";

/// The claims of RFC 7515's examples expired at this time (2011).
const RFC_EXP: u64 = 1_300_819_380;
const NOW: u64 = 1_800_000_000;

fn provider(algorithms: &[Algorithm], keys: KeySet) -> JwtProvider {
    JwtProvider::new(
        "corp".into(),
        Some("https://auth.example.com".into()),
        Box::new(["orders-api".into()]),
        algorithms.into(),
        Keys::Static(Arc::new(keys)),
        Duration::from_secs(30),
        CredentialFrom::bearer(),
        JwtProvider::default_claim_headers(),
    )
}

fn keys(value: &str, algorithms: &[Algorithm]) -> KeySet {
    KeySet::from_secret_value(value.as_bytes(), algorithms).expect("usable key")
}

fn claims() -> serde_json::Value {
    json!({
        "iss": "https://auth.example.com",
        "aud": "orders-api",
        "sub": "user-1",
        "roles": ["admin", "ops"],
        "exp": NOW + 600,
        "nbf": NOW - 10,
    })
}

fn sign(
    alg: Algorithm,
    key: &EncodingKey,
    claims: &serde_json::Value,
    kid: Option<&str>,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).expect("signed")
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa key")
}

fn check(p: &JwtProvider, token: &str, keys: &KeySet, now: u64) -> Result<Verified, Check> {
    p.check(token, keys, now)
}

fn static_keys(p: &JwtProvider) -> Arc<KeySet> {
    match &p.keys {
        Keys::Static(k) => Arc::clone(k),
        _ => unreachable!("tests use static keys"),
    }
}

fn rfc_provider(alg: Algorithm, keys: KeySet) -> JwtProvider {
    JwtProvider::new(
        "rfc".into(),
        Some("joe".into()),
        Box::default(),
        Box::new([alg]),
        Keys::Static(Arc::new(keys)),
        Duration::ZERO,
        CredentialFrom::bearer(),
        Box::default(),
    )
}

/// The RFC 7515 example tokens verify before their `exp` and are expired after it; a reversed
/// signature fails.
fn assert_rfc_7515_example(alg: Algorithm, jwks: &str, token: &str) {
    let set = KeySet::from_jwks(jwks.as_bytes(), &[alg]).expect("RFC key");
    let p = rfc_provider(alg, set.clone());
    let v = check(&p, token, &set, RFC_EXP - 60).expect("RFC example verifies");
    assert_eq!(v.claims["iss"], "joe");
    assert_eq!(v.claims["http://example.com/is_root"], true);
    assert_eq!(
        check(&p, token, &set, NOW).err(),
        Some(Check::Invalid(reason::EXPIRED))
    );
    let (head, sig) = token.rsplit_once('.').expect("three parts");
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).expect("signature");
    bytes.reverse();
    let tampered = format!("{head}.{}", URL_SAFE_NO_PAD.encode(bytes));
    assert_eq!(
        check(&p, &tampered, &set, RFC_EXP - 60).err(),
        Some(Check::Invalid(reason::SIGNATURE))
    );
}

#[test]
fn rfc_7515_a1_hs256_example() {
    assert_rfc_7515_example(
        Algorithm::HS256,
        r#"{"keys":[{"kty":"oct","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}]}"#,
        "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
    );
}

#[test]
fn rfc_7515_a2_rs256_example() {
    assert_rfc_7515_example(
        Algorithm::RS256,
        concat!(
            r#"{"keys":[{"kty":"RSA","e":"AQAB","n":""#,
            "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPM",
            "EzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-",
            "bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3",
            "qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9g",
            "b54h4FRWyuXpoQ",
            r#""}]}"#
        ),
        concat!(
            "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtc",
            "GxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOi",
            "Zj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_",
            "nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwu",
            "sC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywl",
            "VmtVrBp0igcN_IoypGlUPQGe77Rw"
        ),
    );
}

#[test]
fn rfc_7515_a3_es256_example() {
    assert_rfc_7515_example(
        Algorithm::ES256,
        r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#,
        concat!(
            "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtc",
            "GxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djx",
            "La8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
        ),
    );
}

#[test]
fn rfc_8037_ed25519_example_signature_verifies() {
    let jwks = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    let token = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
    let set = KeySet::from_jwks(jwks.as_bytes(), &[Algorithm::EdDSA]).expect("RFC key");
    let p = rfc_provider(Algorithm::EdDSA, set.clone());
    // The signature verifies; the payload is text ("Example of Ed25519 signing"), not claims.
    assert_eq!(
        p.verified_claims(token, &set).err(),
        Some(Check::Invalid(reason::MALFORMED))
    );
    let zeroed = format!(
        "{}.{}",
        token.rsplit_once('.').expect("parts").0,
        URL_SAFE_NO_PAD.encode([0u8; 64])
    );
    assert_eq!(
        p.verified_claims(&zeroed, &set).err(),
        Some(Check::Invalid(reason::SIGNATURE))
    );
}

#[test]
fn every_supported_algorithm_verifies_its_own_tokens() {
    let rsa = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ];
    for alg in rsa {
        let p = provider(&rsa, keys(RSA_PUBLIC, &rsa));
        let token = sign(alg, &rsa_key(), &claims(), None);
        assert!(check(&p, &token, &static_keys(&p), NOW).is_ok(), "{alg:?}");
    }
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec key");
    let p = provider(&[Algorithm::ES256], keys(EC_PUBLIC, &[Algorithm::ES256]));
    let token = sign(Algorithm::ES256, &ec, &claims(), None);
    assert!(check(&p, &token, &static_keys(&p), NOW).is_ok(), "ES256");
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).expect("ed key");
    let p = provider(&[Algorithm::EdDSA], keys(ED_PUBLIC, &[Algorithm::EdDSA]));
    let token = sign(Algorithm::EdDSA, &ed, &claims(), None);
    assert!(check(&p, &token, &static_keys(&p), NOW).is_ok(), "EdDSA");
    let hmac = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
    for alg in hmac {
        let set = KeySet::from_secret_value(HMAC_SECRET, &hmac).expect("secret");
        let p = provider(&hmac, set);
        let token = sign(alg, &EncodingKey::from_secret(HMAC_SECRET), &claims(), None);
        assert!(check(&p, &token, &static_keys(&p), NOW).is_ok(), "{alg:?}");
    }
}

#[test]
fn verified_claims_become_identity_headers() {
    let p = provider(&[Algorithm::RS256], keys(RSA_PUBLIC, &[Algorithm::RS256]));
    let token = sign(Algorithm::RS256, &rsa_key(), &claims(), None);
    let v = check(&p, &token, &static_keys(&p), NOW).expect("valid");
    let headers: Vec<(&str, &[u8])> = v
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    assert_eq!(
        headers,
        [
            ("x-user-id", &b"user-1"[..]),
            ("x-user-roles", &b"admin,ops"[..])
        ]
    );
    assert_eq!(v.valid_until, NOW + 600 + 30);
}

#[test]
fn alg_none_is_refused() {
    let p = provider(&[Algorithm::RS256], keys(RSA_PUBLIC, &[Algorithm::RS256]));
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
        format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"None"}"#)),
    ] {
        assert_eq!(
            check(&p, &token, &static_keys(&p), NOW).err(),
            Some(Check::Invalid(reason::MALFORMED)),
            "{token}"
        );
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    // The classic key-confusion attack: the public key, known to everyone, used as an HMAC
    // secret.
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        &claims(),
        None,
    );
    let p = provider(&[Algorithm::RS256], keys(RSA_PUBLIC, &[Algorithm::RS256]));
    assert_eq!(
        check(&p, &forged, &static_keys(&p), NOW).err(),
        Some(Check::Invalid(reason::ALGORITHM))
    );
    // Even a provider allowing both never uses a public key as an HMAC secret: configuring a PEM
    // key with HS256 is refused, and a JWKS gives HS256 no key.
    let err =
        KeySet::from_secret_value(RSA_PUBLIC.as_bytes(), &[Algorithm::RS256, Algorithm::HS256])
            .expect_err("PEM with HS256");
    assert!(err.contains("cannot verify HS256"), "{err}");
    let jwks = jwks_of_rsa_public(Some("k1"));
    let both = [Algorithm::RS256, Algorithm::HS256];
    let set = KeySet::from_jwks(jwks.as_bytes(), &both).expect("jwks");
    let p = provider(&both, set.clone());
    assert_eq!(
        check(&p, &forged, &set, NOW).err(),
        Some(Check::Invalid(reason::NO_KEY))
    );
}

/// A JWKS holding `rsa-public.pem`'s key, by its modulus and exponent.
fn jwks_of_rsa_public(kid: Option<&str>) -> String {
    // The SubjectPublicKeyInfo DER of a 2048-bit RSA key ends with the modulus (256 bytes,
    // after a zero byte) and the exponent 65537.
    let b64: String = RSA_PUBLIC
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("der");
    let modulus = &der[der.len() - 5 - 256..der.len() - 5];
    let kid = kid.map_or(String::new(), |k| format!(r#","kid":"{k}""#));
    format!(
        r#"{{"keys":[{{"kty":"RSA","use":"sig","e":"AQAB","n":"{}"{kid}}}]}}"#,
        URL_SAFE_NO_PAD.encode(modulus)
    )
}

#[test]
fn a_jwks_key_is_found_by_kid_and_unknown_kids_are_reported() {
    let set = KeySet::from_jwks(
        jwks_of_rsa_public(Some("k1")).as_bytes(),
        &[Algorithm::RS256],
    )
    .expect("jwks");
    let p = provider(&[Algorithm::RS256], set.clone());
    let good = sign(Algorithm::RS256, &rsa_key(), &claims(), Some("k1"));
    assert!(check(&p, &good, &set, NOW).is_ok());
    let no_kid = sign(Algorithm::RS256, &rsa_key(), &claims(), None);
    assert!(
        check(&p, &no_kid, &set, NOW).is_ok(),
        "no kid: keys are tried"
    );
    for kid in [
        "k2",
        "../../../etc/passwd",
        "' OR '1'='1' --",
        "k1\u{0}",
        "",
    ] {
        let token = sign(Algorithm::RS256, &rsa_key(), &claims(), Some(kid));
        assert_eq!(
            check(&p, &token, &set, NOW).err(),
            Some(Check::UnknownKid),
            "{kid:?}"
        );
    }
}

#[test]
fn critical_header_extensions_are_refused() {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","crit":["exp-ext"],"exp-ext":1}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
    let message = format!("{header}.{payload}");
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &rsa_key(), Algorithm::RS256)
        .expect("signed");
    let token = format!("{message}.{signature}");
    let p = provider(&[Algorithm::RS256], keys(RSA_PUBLIC, &[Algorithm::RS256]));
    assert_eq!(
        check(&p, &token, &static_keys(&p), NOW).err(),
        Some(Check::Invalid(reason::CRITICAL))
    );
}

/// Found by the `jwt` fuzz target: `decode_header` skips fields it does not know without
/// checking them, so invalid UTF-8 in one passed, and hid a `crit` beside it.
#[test]
fn a_header_that_is_not_utf8_json_is_malformed_and_cannot_hide_crit() {
    let p = provider(&[Algorithm::RS256], keys(RSA_PUBLIC, &[Algorithm::RS256]));
    let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
    for header in [
        &b"{\"alg\":\"RS256\",\"x\":\"\x97\"}"[..],
        &b"{\"alg\":\"RS256\",\"crit\":[\"exp-ext\"],\"exp-ext\":1,\"x\":\"\x97\"}"[..],
    ] {
        let message = format!("{}.{payload}", URL_SAFE_NO_PAD.encode(header));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &rsa_key(), Algorithm::RS256)
                .expect("signed");
        let token = format!("{message}.{signature}");
        assert_eq!(
            check(&p, &token, &static_keys(&p), NOW).err(),
            Some(Check::Invalid(reason::MALFORMED)),
            "{}",
            String::from_utf8_lossy(header)
        );
    }
}

#[test]
fn jku_x5u_and_embedded_jwk_headers_are_ignored() {
    // Signed by a key the provider does not trust, pointing at where that key "can be found".
    let attacker = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).expect("key");
    let mut header = Header::new(Algorithm::RS256);
    header.jku = Some("https://attacker.example/jwks.json".to_owned());
    header.x5u = Some("https://attacker.example/cert.pem".to_owned());
    let token = encode(&header, &claims(), &attacker).expect("signed");
    let p = provider(&[Algorithm::RS256], keys(RSA_PUBLIC, &[Algorithm::RS256]));
    assert_eq!(
        check(&p, &token, &static_keys(&p), NOW).err(),
        Some(Check::Invalid(reason::SIGNATURE))
    );
}

#[test]
fn time_issuer_and_audience_are_checked() {
    let p = provider(&[Algorithm::RS256], keys(RSA_PUBLIC, &[Algorithm::RS256]));
    let keys = static_keys(&p);
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims();
        edit(&mut c);
        sign(Algorithm::RS256, &rsa_key(), &c, None)
    };
    let cases: [(&str, String, Option<&str>); 9] = [
        (
            "expired",
            with(&|c| c["exp"] = json!(NOW - 31)),
            Some(reason::EXPIRED),
        ),
        (
            "expired within skew",
            with(&|c| c["exp"] = json!(NOW - 29)),
            None,
        ),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(NOW + 31)),
            Some(reason::NOT_YET),
        ),
        (
            "nbf within skew",
            with(&|c| c["nbf"] = json!(NOW + 29)),
            None,
        ),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().map(|o| o.remove("exp"));
            }),
            Some(reason::NO_EXP),
        ),
        (
            "exp not a number",
            with(&|c| c["exp"] = json!("tomorrow")),
            Some(reason::NO_EXP),
        ),
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://evil.example.com")),
            Some(reason::ISSUER),
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = json!(["billing-api"])),
            Some(reason::AUDIENCE),
        ),
        (
            "audience among several",
            with(&|c| c["aud"] = json!(["billing-api", "orders-api"])),
            None,
        ),
    ];
    for (name, token, expected) in cases {
        let got = check(&p, &token, &keys, NOW).err();
        assert_eq!(got, expected.map(Check::Invalid), "{name}");
    }
}

#[test]
fn a_tampered_payload_fails_the_signature() {
    let p = provider(&[Algorithm::RS256], keys(RSA_PUBLIC, &[Algorithm::RS256]));
    let token = sign(Algorithm::RS256, &rsa_key(), &claims(), None);
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut c = claims();
    c["roles"] = json!(["superuser"]);
    parts[1] = URL_SAFE_NO_PAD.encode(c.to_string());
    assert_eq!(
        check(&p, &parts.join("."), &static_keys(&p), NOW).err(),
        Some(Check::Invalid(reason::SIGNATURE))
    );
    for garbage in [
        "",
        ".",
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJSUzI1NiJ9.%%%.x",
    ] {
        assert!(
            check(&p, garbage, &static_keys(&p), NOW).is_err(),
            "{garbage:?}"
        );
    }
}

#[test]
fn keys_are_refused_for_algorithms_they_cannot_serve() {
    for (value, algs, needle) in [
        (&b"short"[..], &[Algorithm::HS256][..], "at least 32 bytes"),
        (HMAC_SECRET, &[Algorithm::RS256][..], "cannot verify RS256"),
        (
            RSA_PUBLIC.as_bytes(),
            &[Algorithm::RS256, Algorithm::ES256][..],
            "one key type",
        ),
        (
            EC_PUBLIC.as_bytes(),
            &[Algorithm::RS256][..],
            "not a usable PEM",
        ),
        (
            &b"{\"keys\":[]}"[..],
            &[Algorithm::RS256][..],
            "no signing key",
        ),
        (&b"{\"nope\":1}"[..], &[Algorithm::RS256][..], "no \"keys\""),
    ] {
        let err = KeySet::from_secret_value(value, algs).expect_err("refused");
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn a_jwks_skips_keys_it_cannot_use_and_keeps_the_rest() {
    let rsa = jwks_of_rsa_public(Some("sig"));
    let n = rsa
        .split("\"n\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("n");
    let doc = format!(
        r#"{{"keys":[
            {{"kty":"RSA","use":"enc","kid":"enc","e":"AQAB","n":"{n}"}},
            {{"kty":"RSA","alg":"RSA-OAEP","kid":"oaep","e":"AQAB","n":"{n}"}},
            {{"kty":"EC","crv":"P-521","kid":"p521","x":"AA","y":"AA"}},
            {{"kty":"weird"}},
            {{"kty":"RSA","use":"sig","kid":"sig","e":"AQAB","n":"{n}"}}
        ]}}"#
    );
    let set = KeySet::from_jwks(doc.as_bytes(), &[Algorithm::RS256]).expect("one usable key");
    assert_eq!(set.len(), 1);
    let p = provider(&[Algorithm::RS256], set.clone());
    let token = sign(Algorithm::RS256, &rsa_key(), &claims(), Some("sig"));
    assert!(check(&p, &token, &set, NOW).is_ok());
    let enc = sign(Algorithm::RS256, &rsa_key(), &claims(), Some("enc"));
    assert_eq!(check(&p, &enc, &set, NOW).err(), Some(Check::UnknownKid));
}
