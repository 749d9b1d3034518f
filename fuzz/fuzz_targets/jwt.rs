//! The JWT front end. Mode byte 0: any token against an HS256 and an RS256 provider; a token
//! accepted by the HS256 one carries a valid HMAC of its own header and payload and says
//! `HS256` (algorithm pinning: no `none`, no RS/HS confusion), one accepted by the RS256 one
//! says `RS256`. Mode 1: header and payload (split at 0xFF) signed with the right key, to
//! reach the claim checks: an accepted token has an `exp` not past. Mode 2: key material
//! (a JWKS document, a Secret's PEM or HMAC value) never panics.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use ring::hmac;
use sluice_proxy::auth::CredentialFrom;
use sluice_proxy::auth::jwt::{Algorithm, JwtProvider, KeySet, Keys};

const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret!";
const RSA_PUBLIC: &str = include_str!("../../proxy/src/auth/jwt/testdata/rsa-public.pem");
const NOW: u64 = 1_800_000_000;

fn provider(alg: Algorithm, key: &[u8]) -> JwtProvider {
    let keys = KeySet::from_secret_value(key, &[alg]).expect("key");
    JwtProvider::new(
        "fuzz".into(),
        None,
        Box::new([]),
        Box::new([alg]),
        Keys::Static(Arc::new(keys)),
        Duration::from_secs(30),
        CredentialFrom::bearer(),
        JwtProvider::default_claim_headers(),
    )
}

fn providers() -> &'static (JwtProvider, JwtProvider) {
    static P: OnceLock<(JwtProvider, JwtProvider)> = OnceLock::new();
    P.get_or_init(|| {
        (
            provider(Algorithm::HS256, SECRET),
            provider(Algorithm::RS256, RSA_PUBLIC.as_bytes()),
        )
    })
}

fn header_alg(token: &str) -> Option<String> {
    let header = URL_SAFE_NO_PAD.decode(token.split('.').next()?).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&header).ok()?;
    Some(value.get("alg")?.as_str()?.to_owned())
}

fn check(token: &str) {
    let (hs, rs) = providers();
    if let Ok(verified) = hs.verify_uncached(token, NOW) {
        assert_eq!(header_alg(token).as_deref(), Some("HS256"));
        let (signed, signature) = token.rsplit_once('.').expect("three parts");
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .expect("base64url signature");
        let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET);
        assert!(
            hmac::verify(&key, signed.as_bytes(), &signature).is_ok(),
            "bad MAC accepted"
        );
        assert!(verified.valid_until >= NOW, "accepted after its exp");
        for (_, value) in verified.headers.iter() {
            assert!(value.to_str().is_ok() || !value.is_empty());
        }
    }
    if rs.verify_uncached(token, NOW).is_ok() {
        assert_eq!(header_alg(token).as_deref(), Some("RS256"));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                check(token);
            }
        }
        1 => {
            let (header, payload) = sluice_fuzz::split_once(rest, 0xFF);
            let signed = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(payload)
            );
            let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET);
            let tag = hmac::sign(&key, signed.as_bytes());
            let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
            check(&token);
        }
        _ => {
            let all = [
                Algorithm::HS256,
                Algorithm::RS256,
                Algorithm::PS256,
                Algorithm::ES256,
                Algorithm::ES384,
                Algorithm::EdDSA,
            ];
            let _ = KeySet::from_jwks(rest, &all);
            let _ = KeySet::from_secret_value(rest, &all);
            let _ = KeySet::from_secret_value(rest, &[Algorithm::HS256]);
        }
    }
});
