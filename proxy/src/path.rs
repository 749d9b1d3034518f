//! Request path normalisation.
//!
//! Every route decision (and, later, every auth decision) is taken on the normalised path, and the
//! normalised path is what the backend receives. If the two could differ, `/public/../admin`
//! would match a public route at the gateway and reach an admin handler at the backend.

use std::borrow::Cow;

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `%` not followed by two hexadecimal digits.
    #[error("invalid percent-encoding in path")]
    BadPercentEncoding,
    /// The path is not in origin form (does not start with `/`).
    #[error("path must start with '/'")]
    NotAbsolute,
    /// The path holds something backends read in different ways: a `;` (servlet containers
    /// drop `;params` from a segment), a `\` (some servers take it for `/`), or an encoded `/`,
    /// `\` or control character (a backend that decodes them sees other segments, or a
    /// shorter path, than the gateway matched).
    #[error("ambiguous path")]
    Ambiguous,
}

/// Normalises a request path as RFC 3986 section 6 describes, plus slash merging:
///
/// - percent-encoded unreserved characters are decoded (`%7E` → `~`, `%2e` → `.`), other escapes
///   are kept with upper-case hex digits;
/// - `.` and `..` segments are resolved (`..` never climbs above the root);
/// - runs of `/` are merged into one; a trailing `/` is kept.
///
/// Paths a backend could read differently from the gateway are refused ([`PathError::Ambiguous`]):
/// a `;` or `\`, and `%2F`, `%5C`, `%00`-`%1F` and `%7F`. Routing and authentication decide on
/// the normal form, and the normal form is what the backend receives, so no spelling of a path
/// reaches a protected backend without its rule's checks.
///
/// Returns the input unchanged (borrowed) when it is already normal, which is the common case.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path.is_empty() {
        return Ok(Cow::Borrowed("/"));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path.as_bytes())? {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// True when nothing in the path could change under normalisation; an error for a `;` or `\\`
/// (one pass over the bytes: it runs on every request).
fn is_normal(bytes: &[u8]) -> Result<bool, PathError> {
    let mut prev_slash = false;
    let mut normal = true;
    for &b in bytes {
        match b {
            b';' | b'\\' => return Err(PathError::Ambiguous),
            b'%' => normal = false,
            b'/' | b'.' if prev_slash => normal = false,
            _ => {}
        }
        prev_slash = b == b'/';
    }
    Ok(normal)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    // Work on bytes: a path may carry UTF-8 (RFC 3987 IRIs sent raw), and pushing its bytes
    // one by one as chars would re-encode each as a separate code point.
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) else {
            return Err(PathError::BadPercentEncoding);
        };
        let decoded = hi << 4 | lo;
        if matches!(decoded, b'/' | b'\\' | 0..=0x1f | 0x7f) {
            return Err(PathError::Ambiguous);
        }
        if is_unreserved(decoded) {
            out.push(decoded);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.extend_from_slice(&[b'%', HEX[usize::from(hi)], HEX[usize::from(lo)]]);
        }
        i += 3;
    }
    // Only ASCII was replaced by ASCII, so the input's UTF-8 is intact.
    String::from_utf8(out).map_err(|_| PathError::BadPercentEncoding)
}

fn remove_dot_segments(path: &str) -> String {
    let trailing_slash = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (trailing_slash && !segments.is_empty()) {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> String {
        normalize(p).expect("valid path").into_owned()
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in ["/", "/api/users", "/a/b/", "/file.txt", "/a.b/c"] {
            assert!(
                matches!(normalize(p), Ok(Cow::Borrowed(x)) if x == p),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_are_resolved_and_never_climb_above_root() {
        assert_eq!(norm("/public/../admin"), "/admin");
        assert_eq!(norm("/a/./b"), "/a/b");
        assert_eq!(norm("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/a/."), "/a/");
        assert_eq!(norm("/.."), "/");
    }

    #[test]
    fn encoded_dots_are_decoded_before_resolving() {
        assert_eq!(norm("/public/%2e%2e/admin"), "/admin");
        assert_eq!(norm("/public/%2E./admin"), "/admin");
        assert_eq!(norm("/%7Euser"), "/~user");
    }

    #[test]
    fn raw_utf8_survives_normalisation() {
        assert_eq!(norm("/café/./menü"), "/café/menü");
        assert_eq!(norm("/日本/%41"), "/日本/A");
    }

    #[test]
    fn other_escapes_stay_encoded_with_upper_case_digits() {
        assert_eq!(norm("/a%3fb"), "/a%3Fb");
        assert_eq!(norm("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(norm("/%C0%AF"), "/%C0%AF", "an overlong '/' is no '/'");
    }

    #[test]
    fn what_backends_read_differently_is_refused() {
        for p in [
            "/a%2fb",
            "/a%2F..%2Fb",
            "/api/admin%2f..",
            "/a%5cb",
            "/a\\b",
            "/api/admin;x",
            "/api;/admin",
            "/a%00.json",
            "/a%0d%0aX: y",
            "/a%7f",
        ] {
            assert_eq!(normalize(p), Err(PathError::Ambiguous), "{p}");
        }
    }

    #[test]
    fn normalisation_is_idempotent() {
        for p in [
            "/api/admin/../admin",
            "//api/./admin/",
            "/%61pi/%7Euser/..",
            "/a/b/c/../../..",
            "/caf%c3%a9/./x",
        ] {
            let once = norm(p);
            assert_eq!(norm(&once), once, "{p}");
        }
    }

    #[test]
    fn duplicate_slashes_are_merged() {
        assert_eq!(norm("//admin"), "/admin");
        assert_eq!(norm("/a//b///c"), "/a/b/c");
        assert_eq!(norm("/a//"), "/a/");
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(normalize("/a%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize("/a%2"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
        assert_eq!(norm(""), "/");
    }
}
