//! Cache keys: SHA-256 over length-prefixed parts, cut to 128 bits. Deterministic (replicas
//! sharing Redis compute the same key) and collision-resistant (a client cannot craft a request
//! whose key is another's and poison it).

use http::HeaderMap;
use http::header::HeaderName;
use ring::digest::{Context, SHA256};

use super::Key;
use crate::auth::Identity;

fn part(ctx: &mut Context, bytes: &[u8]) {
    ctx.update(&(bytes.len() as u64).to_be_bytes());
    ctx.update(bytes);
}

fn headers_part(ctx: &mut Context, names: &[HeaderName], headers: &HeaderMap) {
    for name in names {
        part(ctx, name.as_str().as_bytes());
        let values = headers.get_all(name);
        ctx.update(&(values.iter().count() as u64).to_be_bytes());
        for v in values {
            part(ctx, v.as_bytes());
        }
    }
}

fn finish(ctx: Context) -> Key {
    let digest = ctx.finish();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest.as_ref()[..16]);
    u128::from_be_bytes(first)
}

/// The key of a request before the response's `Vary` is known. `https` keeps the two schemes
/// apart: a backend that writes absolute links from `X-Forwarded-Proto` answers them
/// differently.
#[allow(clippy::too_many_arguments)]
pub(super) fn primary(
    rule: u64,
    https: bool,
    host: &[u8],
    path: &str,
    query: Option<&str>,
    vary: &[HeaderName],
    headers: &HeaderMap,
    identity: Option<&Identity>,
) -> Key {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&rule.to_be_bytes());
    ctx.update(if https { b"s" } else { b"p" });
    part(&mut ctx, host);
    part(&mut ctx, path.as_bytes());
    match query {
        Some(q) => part(&mut ctx, q.as_bytes()),
        None => ctx.update(b"-"),
    }
    headers_part(&mut ctx, vary, headers);
    // The identity as the backend sees it: the headers the credentials set.
    match identity {
        None => ctx.update(b"anonymous"),
        Some(Identity::ApiKey(consumer)) => {
            ctx.update(b"apikey");
            part(&mut ctx, consumer.as_bytes());
        }
        Some(Identity::Token(verified)) => {
            ctx.update(b"token");
            part(&mut ctx, verified.provider_header.as_bytes());
            // The subject and issuer even when no claim is mapped to a header: the backend may
            // read the forwarded token itself.
            for claim in ["iss", "sub"] {
                let value = verified.claims.get(claim).map(ToString::to_string);
                part(&mut ctx, value.as_deref().unwrap_or("").as_bytes());
            }
            for (name, value) in verified.headers.iter() {
                part(&mut ctx, name.as_str().as_bytes());
                part(&mut ctx, value.as_bytes());
            }
        }
    }
    finish(ctx)
}

/// The key of a stored response: the primary key and the values of the headers its `Vary`
/// names.
pub(super) fn full(primary: Key, names: &[HeaderName], headers: &HeaderMap) -> Key {
    if names.is_empty() {
        return primary;
    }
    let mut ctx = Context::new(&SHA256);
    ctx.update(&primary.to_be_bytes());
    headers_part(&mut ctx, names, headers);
    finish(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn keys_separate_what_they_must() {
        let h = HeaderMap::new();
        let base = primary(1, false, b"a.test", "/x", Some("q=1"), &[], &h, None);
        assert_eq!(
            base,
            primary(1, false, b"a.test", "/x", Some("q=1"), &[], &h, None)
        );
        assert_ne!(
            base,
            primary(2, false, b"a.test", "/x", Some("q=1"), &[], &h, None)
        );
        assert_ne!(
            base,
            primary(1, false, b"b.test", "/x", Some("q=1"), &[], &h, None)
        );
        assert_ne!(
            base,
            primary(1, false, b"a.test", "/x", None, &[], &h, None)
        );
        assert_ne!(
            base,
            primary(1, false, b"a.test", "/x", Some(""), &[], &h, None)
        );
        // Parts are length-prefixed: moving bytes between them changes the key.
        assert_ne!(
            primary(1, false, b"a.test/", "x", None, &[], &h, None),
            primary(1, false, b"a.test", "/x", None, &[], &h, None)
        );
        let consumer = Identity::ApiKey("alice".into());
        assert_ne!(
            base,
            primary(
                1,
                false,
                b"a.test",
                "/x",
                Some("q=1"),
                &[],
                &h,
                Some(&consumer)
            )
        );
        let lang = HeaderName::from_static("accept-language");
        let mut fr = HeaderMap::new();
        fr.insert(&lang, HeaderValue::from_static("fr"));
        let names = [lang];
        assert_ne!(full(base, &names, &fr), full(base, &names, &h));
        assert_eq!(full(base, &[], &fr), base);
        assert_ne!(
            base,
            primary(1, true, b"a.test", "/x", Some("q=1"), &[], &h, None)
        );
    }
}
