//! What verifying a token costs: a signature check per algorithm (a cache miss), and a token
//! already verified (a cache hit, what repeated requests with one token pay).
//!
//!   cargo bench -p sluice-proxy --bench jwt

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{EncodingKey, Header, encode};
use sluice_proxy::auth::CredentialFrom;
use sluice_proxy::auth::jwt::{Algorithm, JwtProvider, KeySet, Keys, unix_now};

const RSA_PRIVATE: &str = include_str!("../src/auth/jwt/testdata/rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("../src/auth/jwt/testdata/rsa-public.pem");
const EC_PRIVATE: &str = include_str!("../src/auth/jwt/testdata/ec-private.pem");
const EC_PUBLIC: &str = include_str!("../src/auth/jwt/testdata/ec-public.pem");
const HMAC: &[u8] = b"0123456789abcdef0123456789abcdef-bench-secret";

fn provider(alg: Algorithm, key: &[u8]) -> JwtProvider {
    let keys = KeySet::from_secret_value(key, &[alg]).expect("key");
    JwtProvider::new(
        "bench".into(),
        Some("https://auth.example.com".into()),
        Box::new(["orders-api".into()]),
        Box::new([alg]),
        Keys::Static(Arc::new(keys)),
        Duration::from_secs(30),
        CredentialFrom::bearer(),
        JwtProvider::default_claim_headers(),
    )
}

fn token(alg: Algorithm, key: &EncodingKey) -> String {
    let claims = serde_json::json!({
        "iss": "https://auth.example.com", "aud": "orders-api", "sub": "user-1",
        "roles": ["admin", "ops"], "exp": unix_now() + 3600,
    });
    encode(&Header::new(alg), &claims, key).expect("token")
}

fn verification(c: &mut Criterion) {
    let cases = [
        (
            "HS256",
            Algorithm::HS256,
            HMAC.to_vec(),
            EncodingKey::from_secret(HMAC),
        ),
        (
            "RS256",
            Algorithm::RS256,
            RSA_PUBLIC.as_bytes().to_vec(),
            EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa"),
        ),
        (
            "ES256",
            Algorithm::ES256,
            EC_PUBLIC.as_bytes().to_vec(),
            EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec"),
        ),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for (name, alg, public, private) in cases {
        let p = provider(alg, &public);
        let t = token(alg, &private);
        let now = unix_now();
        assert!(p.verify_uncached(&t, now).is_ok());
        c.bench_function(&format!("verify {name} (signature check)"), |b| {
            b.iter(|| p.verify_uncached(std::hint::black_box(&t), now))
        });
        c.bench_function(&format!("verify {name} (cached token)"), |b| {
            b.iter(|| runtime.block_on(p.verify(std::hint::black_box(&t))))
        });
    }
}

criterion_group!(benches, verification);
criterion_main!(benches);
