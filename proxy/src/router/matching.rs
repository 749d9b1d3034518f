//! One match of one rule, and the request facts it is tested against.

use std::cmp::Ordering;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;
use serde::{Serialize, Serializer};

use crate::snapshot::RuleId;

/// What the router needs to know about a request; borrowed, built once per request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Lower-case host without port.
    pub host: &'a str,
    /// Normalised path.
    pub path: &'a str,
    /// Raw query string, if any.
    pub query: Option<&'a str>,
    /// Request method.
    pub method: &'a Method,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// How a candidate matches the path.
#[derive(Debug, Clone, Serialize)]
///
/// The path is shared: the route cache's copy of a candidate, the router's and the key of its
/// bucket are one allocation.
pub enum PathMatch {
    /// The whole normalised path equals this.
    Exact(Arc<str>),
    /// The path starts with this, on a segment boundary; stored without a trailing `/`
    /// (the root prefix is `/`).
    Prefix(Arc<str>),
    /// The whole path matches this (anchored) expression.
    /// (Boxed: a regex is 32 bytes, and few paths are one.)
    Regex(#[serde(serialize_with = "ser_regex")] Box<Regex>),
}

/// A header or query value condition.
#[derive(Debug, Clone, Serialize)]
pub enum ValueMatch {
    /// Equal to this.
    Exact(Box<str>),
    /// Matches this anchored expression.
    Regex(#[serde(serialize_with = "ser_regex")] Regex),
}

impl ValueMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => **v == *value,
            ValueMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// A request header condition: some value of the header satisfies `value`.
#[derive(Debug, Clone, Serialize)]
pub struct HeaderMatch {
    /// Header name.
    #[serde(serialize_with = "ser_header_name")]
    pub name: HeaderName,
    /// Value condition.
    pub value: ValueMatch,
}

/// A query parameter condition on the first occurrence of the parameter.
#[derive(Debug, Clone, Serialize)]
pub struct QueryMatch {
    /// Parameter name, compared after percent-decoding.
    pub name: Box<str>,
    /// Value condition, on the percent-decoded value.
    pub value: ValueMatch,
}

/// One `matches[]` entry of one rule, compiled.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// The rule this candidate selects.
    pub rule: RuleId,
    /// Path condition.
    pub path: PathMatch,
    /// Method, header and query conditions.
    #[serde(flatten)]
    pub conditions: Conditions,
    /// Final tie-break after specificity: route age, then name, then rule and match order.
    pub tiebreak: u64,
}

/// The conditions of a candidate besides its path, boxed apart: most candidates have none, and
/// every candidate is kept twice (the route cache's and the router's), so a candidate is 48
/// bytes instead of 112.
#[derive(Debug, Clone, Default)]
pub struct Conditions(Option<Box<ConditionSet>>);

/// Method, header and query conditions, all of which must hold.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConditionSet {
    /// Method condition.
    #[serde(serialize_with = "ser_method")]
    pub method: Option<Method>,
    /// Header conditions.
    pub headers: Box<[HeaderMatch]>,
    /// Query conditions.
    pub query: Box<[QueryMatch]>,
}

impl Conditions {
    /// These conditions; no allocation when there are none.
    pub fn new(method: Option<Method>, headers: Vec<HeaderMatch>, query: Vec<QueryMatch>) -> Self {
        if method.is_none() && headers.is_empty() && query.is_empty() {
            return Conditions(None);
        }
        Conditions(Some(Box::new(ConditionSet {
            method,
            headers: headers.into(),
            query: query.into(),
        })))
    }

    /// The method condition.
    pub fn method(&self) -> Option<&Method> {
        self.0.as_ref()?.method.as_ref()
    }

    /// The header conditions.
    pub fn headers(&self) -> &[HeaderMatch] {
        self.0.as_ref().map_or(&[], |c| &c.headers)
    }

    /// The query conditions.
    pub fn query(&self) -> &[QueryMatch] {
        self.0.as_ref().map_or(&[], |c| &c.query)
    }
}

impl Serialize for Conditions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(set) => set.serialize(s),
            None => ConditionSet::default().serialize(s),
        }
    }
}

impl Candidate {
    /// Gateway API precedence: `Less` means `self` wins.
    pub fn precedence(&self, other: &Self) -> Ordering {
        let kind = |c: &Self| match c.path {
            PathMatch::Exact(_) => 0,
            PathMatch::Prefix(_) => 1,
            PathMatch::Regex(_) => 2,
        };
        let prefix_len = |c: &Self| match &c.path {
            PathMatch::Prefix(p) => p.len(),
            _ => 0,
        };
        kind(self)
            .cmp(&kind(other))
            .then_with(|| prefix_len(other).cmp(&prefix_len(self)))
            .then_with(|| other.method().is_some().cmp(&self.method().is_some()))
            .then_with(|| other.headers().len().cmp(&self.headers().len()))
            .then_with(|| other.query().len().cmp(&self.query().len()))
            .then_with(|| self.tiebreak.cmp(&other.tiebreak))
    }

    /// Length of the matched prefix to replace for `ReplacePrefixMatch` (0 for the root prefix).
    pub fn prefix_len(&self) -> usize {
        match &self.path {
            PathMatch::Prefix(p) if &**p != "/" => p.len(),
            _ => 0,
        }
    }

    pub(crate) fn path_matches(&self, path: &str) -> bool {
        match &self.path {
            PathMatch::Regex(r) => r.is_match(path),
            // Exact and prefix candidates are only reached through their hash bucket.
            PathMatch::Exact(_) | PathMatch::Prefix(_) => true,
        }
    }

    /// The method condition.
    pub fn method(&self) -> Option<&Method> {
        self.conditions.method()
    }

    /// The header conditions, all of which must hold.
    pub fn headers(&self) -> &[HeaderMatch] {
        self.conditions.headers()
    }

    /// The query conditions, all of which must hold.
    pub fn query(&self) -> &[QueryMatch] {
        self.conditions.query()
    }

    pub(crate) fn conditions_match(&self, view: &RequestView<'_>) -> bool {
        let Some(set) = &self.conditions.0 else {
            return true;
        };
        if set.method.as_ref().is_some_and(|m| m != view.method) {
            return false;
        }
        let headers_ok = set.headers.iter().all(|h| {
            view.headers
                .get_all(&h.name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| h.value.matches(v)))
        });
        headers_ok
            && set
                .query
                .iter()
                .all(|q| query_value(view.query, &q.name).is_some_and(|v| q.value.matches(&v)))
    }
}

/// The percent-decoded value of the first `name` parameter in `query`.
pub(crate) fn query_value<'q>(
    query: Option<&'q str>,
    name: &str,
) -> Option<std::borrow::Cow<'q, str>> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

pub(crate) fn percent_decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('%') {
        return std::borrow::Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn ser_regex<S: Serializer>(r: &impl std::borrow::Borrow<Regex>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.borrow().as_str())
}

fn ser_header_name<S: Serializer>(n: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

fn ser_method<S: Serializer>(m: &Option<Method>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_some(m.as_str()),
        None => s.serialize_none(),
    }
}
