//! Reading verified claims: by name or dotted path, as header values, as roles.

use std::borrow::Cow;

use http::HeaderValue;
use serde_json::{Map, Value};

/// A token's verified claims.
pub type Claims = Map<String, Value>;

/// The claim `name`: a top-level claim of that name, else the dotted path into nested objects
/// (`realm_access.roles`), as some issuers nest roles.
pub fn lookup<'c>(claims: &'c Claims, name: &str) -> Option<&'c Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// A scalar claim as text: strings as they are, numbers and booleans printed.
fn scalar(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

/// The claim's values: a scalar is one value, an array its scalar elements.
pub fn values<'c>(claims: &'c Claims, name: &str) -> Vec<Cow<'c, str>> {
    match lookup(claims, name) {
        Some(Value::Array(items)) => items.iter().filter_map(scalar).collect(),
        Some(v) => scalar(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// Roles from a claim that is an array of strings or a (space-separated) string.
pub fn roles<'c>(claims: &'c Claims, name: &str) -> Vec<Cow<'c, str>> {
    match lookup(claims, name) {
        Some(Value::String(s)) => s.split_whitespace().map(Cow::Borrowed).collect(),
        Some(Value::Array(_)) => values(claims, name),
        _ => Vec::new(),
    }
}

/// The claim as a header value: arrays joined with `,`, leaving out elements that themselves
/// hold a `,` (a role `"user,admin"` must not reach the backend as two roles). `None` when the
/// claim is absent, is an object, or holds characters a header cannot carry.
pub fn header_value(claims: &Claims, name: &str) -> Option<HeaderValue> {
    let text = match lookup(claims, name)? {
        Value::Array(_) => {
            let items: Vec<Cow<'_, str>> = values(claims, name)
                .into_iter()
                .filter(|v| !v.contains(','))
                .collect();
            Cow::Owned(items.join(","))
        }
        v => scalar(v)?,
    };
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).expect("claims")
    }

    #[test]
    fn claims_are_found_by_name_then_by_dotted_path() {
        let c = claims(r#"{"sub":"u1","realm_access":{"roles":["a","b"]},"a.b":"flat"}"#);
        assert_eq!(lookup(&c, "sub"), Some(&Value::from("u1")));
        assert_eq!(roles(&c, "realm_access.roles"), ["a", "b"]);
        assert_eq!(lookup(&c, "a.b"), Some(&Value::from("flat")));
        assert_eq!(lookup(&c, "realm_access.nope"), None);
    }

    #[test]
    fn roles_come_from_strings_space_separated_strings_and_arrays() {
        let c = claims(r#"{"r1":"admin","r2":"read write","r3":["x","y",3],"r4":{"k":1}}"#);
        assert_eq!(roles(&c, "r1"), ["admin"]);
        assert_eq!(roles(&c, "r2"), ["read", "write"]);
        assert_eq!(roles(&c, "r3"), ["x", "y", "3"]);
        assert!(roles(&c, "r4").is_empty());
        assert!(roles(&c, "absent").is_empty());
    }

    #[test]
    fn header_values_join_arrays_and_refuse_what_a_header_cannot_carry() {
        let c = claims(r#"{"roles":["a","b","user,admin"],"n":42,"bad":"line\nbreak","obj":{}}"#);
        assert_eq!(
            header_value(&c, "roles").as_ref().map(|v| v.as_bytes()),
            Some(&b"a,b"[..]),
            "an element holding the separator is left out"
        );
        assert_eq!(
            header_value(&c, "n").as_ref().map(|v| v.as_bytes()),
            Some(&b"42"[..])
        );
        assert_eq!(header_value(&c, "bad"), None);
        assert_eq!(header_value(&c, "obj"), None);
    }
}
