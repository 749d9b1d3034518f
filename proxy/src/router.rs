//! Request matching: host table, then path tables, then method/header/query conditions.
//!
//! Precedence follows the Gateway API's HTTPRoute rules. Hosts first: an exact hostname, then
//! wildcards from the longest suffix to the shortest, then routes with no hostname; a request
//! falls through to a less specific host group only when nothing in a more specific one matches.
//! Within a host group: an exact path, then prefixes from the longest to the shortest, then
//! regular expressions; among candidates for the same path, the one with a method, then more
//! header matches, then more query matches wins; remaining ties go to the oldest route, then
//! `namespace/name`, then rule and match order (the `tiebreak` the controller computes).
//!
//! Lookup cost grows with the number of path segments, not with the number of routes: exact
//! paths and every segment-boundary prefix are hash lookups. Only regular expressions are
//! scanned, and only after no exact or prefix candidate matched.
//!
//! Tables and buckets are shared (`Arc`), so that a change to a few routes
//! ([`Router::patched`]) copies only the host tables it touches, shallowly, and rebuilds only
//! the buckets it touches; everything else is shared with the router it was patched from.

mod matching;
mod sharded;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

use crate::snapshot::RuleId;

/// The router's tables are built from configuration, never from request data, so a fast
/// non-cryptographic hash is safe here and saves a SipHash of the path on every request.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub use matching::{
    Candidate, ConditionSet, Conditions, HeaderMatch, PathMatch, QueryMatch, RequestView,
    ValueMatch,
};
pub(crate) use matching::{percent_decode, query_value};
use sharded::Sharded;

/// Routes grouped by hostname.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Router {
    exact_hosts: Sharded<Arc<MatchTable>>,
    /// Keyed by the suffix after `*.` (`*.example.com` → `example.com`).
    wildcard_hosts: Sharded<Arc<MatchTable>>,
    any_host: Arc<MatchTable>,
}

/// A bucket of candidates, in precedence order.
type Bucket = Arc<[Candidate]>;

/// The candidates of one host group, indexed by path.
#[derive(Debug, Default, Clone, Serialize)]
struct MatchTable {
    exact: Sharded<Bucket>,
    /// Keyed by the prefix without its trailing `/` (the root prefix is `/`).
    prefix: Sharded<Bucket>,
    regex: Bucket,
    /// For each regex candidate, a literal every matching path starts with: a cheap test that
    /// spares running expressions that cannot match.
    #[serde(skip)]
    regex_literals: Arc<[Box<str>]>,
}

impl Router {
    /// The best candidate for a request, if any. `view.host` must be lower-case without port and
    /// `view.path` normalised (see [`crate::path::normalize`]).
    pub fn find(&self, view: &RequestView<'_>) -> Option<&Candidate> {
        if let Some(found) = self
            .exact_hosts
            .get(view.host)
            .and_then(|table| table.find(view))
        {
            return Some(found);
        }
        if !self.wildcard_hosts.is_empty() {
            // `a.b.example.com` tries `b.example.com`, `example.com`, `com`: longest suffix first.
            let mut rest = view.host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(found) = self.wildcard_hosts.get(rest).and_then(|t| t.find(view)) {
                    return Some(found);
                }
            }
        }
        self.any_host.find(view)
    }

    /// Every compiled regular expression (paths, headers, query values), so that the next
    /// compile can reuse them instead of compiling the same patterns again.
    pub fn regexes(&self) -> Vec<&regex::Regex> {
        let tables = self
            .exact_hosts
            .values()
            .chain(self.wildcard_hosts.values())
            .chain(std::iter::once(&self.any_host));
        let mut out = Vec::new();
        for table in tables {
            let candidates = table
                .exact
                .values()
                .chain(table.prefix.values())
                .flat_map(|b| b.iter())
                .chain(table.regex.iter());
            for c in candidates {
                if let PathMatch::Regex(r) = &c.path {
                    out.push(&**r);
                }
                let values = c
                    .headers()
                    .iter()
                    .map(|h| &h.value)
                    .chain(c.query().iter().map(|q| &q.value));
                out.extend(values.filter_map(|v| match v {
                    ValueMatch::Regex(r) => Some(r),
                    ValueMatch::Exact(_) => None,
                }));
            }
        }
        out
    }

    /// Number of host groups (exact, wildcard, and the catch-all), for diagnostics.
    pub fn host_groups(&self) -> usize {
        self.exact_hosts.len() + self.wildcard_hosts.len() + 1
    }

    /// Every non-empty bucket, named by host group and path (`*.example.com prefix /api`), with
    /// its candidates in precedence order: what tests compare routers by.
    pub fn buckets(&self) -> Vec<(String, &[Candidate])> {
        let tables = self
            .exact_hosts
            .iter()
            .map(|(h, t)| (h.to_string(), t))
            .chain(
                self.wildcard_hosts
                    .iter()
                    .map(|(h, t)| (format!("*.{h}"), t)),
            )
            .chain(std::iter::once(("*".to_owned(), &self.any_host)));
        let mut out = Vec::new();
        for (host, table) in tables {
            for (kind, map) in [("exact", &table.exact), ("prefix", &table.prefix)] {
                out.extend(
                    map.iter()
                        .map(|(path, b)| (format!("{host} {kind} {path}"), &**b)),
                );
            }
            if !table.regex.is_empty() {
                out.push((format!("{host} regex"), &*table.regex));
            }
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// This router with the candidates of the rules in `removed` taken out and `added` put in,
    /// each bucket in precedence order: the router [`RouterBuilder`] would build from the
    /// candidates that remain and the added ones. `removed` lists every candidate of the rules
    /// that leave (their rule ids must not be reused by `added`). Host tables and buckets
    /// nothing touches are shared with `self`.
    pub fn patched(
        &self,
        removed: &[(HostPattern, Candidate)],
        added: Vec<(HostPattern, Candidate)>,
    ) -> Router {
        let gone: HashSet<RuleId, foldhash::fast::RandomState> =
            removed.iter().map(|(_, c)| c.rule).collect();
        // Per touched host: the buckets touched and the candidates joining them.
        let mut touched: HashMap<HostPattern, (Vec<BucketKey>, Vec<Candidate>)> = HashMap::new();
        for (host, c) in removed {
            touched
                .entry(host.clone())
                .or_default()
                .0
                .push(BucketKey::of(&c.path));
        }
        for (host, c) in added {
            let entry = touched.entry(host).or_default();
            entry.0.push(BucketKey::of(&c.path));
            entry.1.push(c);
        }
        let mut router = self.clone();
        for (host, (keys, joining)) in touched {
            let old = match &host {
                HostPattern::Any => Some(&self.any_host),
                HostPattern::Exact(h) => self.exact_hosts.get(h),
                HostPattern::Wildcard(h) => self.wildcard_hosts.get(h),
            };
            let empty = MatchTable::default();
            let table = old.map_or(&empty, |t| &**t).patched(&gone, keys, joining);
            let empty = table.is_empty();
            let table = Arc::new(table);
            match host {
                HostPattern::Any => router.any_host = table,
                HostPattern::Exact(h) if empty => {
                    router.exact_hosts.remove(&h);
                }
                HostPattern::Exact(h) => {
                    router.exact_hosts.insert(h.into(), table);
                }
                HostPattern::Wildcard(h) if empty => {
                    router.wildcard_hosts.remove(&h);
                }
                HostPattern::Wildcard(h) => {
                    router.wildcard_hosts.insert(h.into(), table);
                }
            }
        }
        router
    }
}

/// Which bucket of a host table a candidate goes to.
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum BucketKey {
    Exact(Arc<str>),
    Prefix(Arc<str>),
    Regex,
}

impl BucketKey {
    fn of(path: &PathMatch) -> Self {
        match path {
            PathMatch::Exact(p) => BucketKey::Exact(p.clone()),
            PathMatch::Prefix(p) => BucketKey::Prefix(p.clone()),
            PathMatch::Regex(_) => BucketKey::Regex,
        }
    }
}

impl MatchTable {
    fn find(&self, view: &RequestView<'_>) -> Option<&Candidate> {
        let path = view.path;
        if let Some(found) = first_match(self.exact.get(path).map(|b| &**b), view) {
            return Some(found);
        }
        if !self.prefix.is_empty() {
            let mut end = path.trim_end_matches('/').len();
            loop {
                let key = if end == 0 { "/" } else { &path[..end] };
                if let Some(found) = first_match(self.prefix.get(key).map(|b| &**b), view) {
                    return Some(found);
                }
                if end == 0 {
                    break;
                }
                end = path[..end].rfind('/').unwrap_or(0);
            }
        }
        self.regex
            .iter()
            .zip(self.regex_literals.iter())
            .find(|(c, literal)| {
                path.starts_with(&***literal) && c.path_matches(path) && c.conditions_match(view)
            })
            .map(|(c, _)| c)
    }
}

fn first_match<'a>(
    candidates: Option<&'a [Candidate]>,
    view: &RequestView<'_>,
) -> Option<&'a Candidate> {
    candidates?.iter().find(|c| c.conditions_match(view))
}

/// A hostname a route attaches to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Any host (the route has no hostnames).
    Any,
    /// Exactly this lower-case name.
    Exact(Box<str>),
    /// `*.suffix`: any name with one or more labels before `suffix`.
    Wildcard(Box<str>),
}

/// Collects candidates and builds a [`Router`] with every bucket in precedence order.
#[derive(Debug, Default)]
pub struct RouterBuilder {
    tables: HashMap<HostPattern, Vec<Candidate>>,
}

impl RouterBuilder {
    /// Attaches `candidate` to `host`.
    pub fn add(&mut self, host: HostPattern, candidate: Candidate) {
        self.tables.entry(host).or_default().push(candidate);
    }

    /// Sorts every bucket by precedence and builds the lookup tables.
    pub fn build(self) -> Router {
        let mut any_host = Arc::default();
        let mut exact_hosts = Map::default();
        let mut wildcard_hosts = Map::default();
        for (host, candidates) in self.tables {
            let table = Arc::new(MatchTable::build(candidates));
            match host {
                HostPattern::Any => any_host = table,
                HostPattern::Exact(h) => {
                    exact_hosts.insert(h.into(), table);
                }
                HostPattern::Wildcard(h) => {
                    wildcard_hosts.insert(h.into(), table);
                }
            }
        }
        Router {
            exact_hosts: Sharded::from_map(exact_hosts),
            wildcard_hosts: Sharded::from_map(wildcard_hosts),
            any_host,
        }
    }
}

impl MatchTable {
    fn build(mut candidates: Vec<Candidate>) -> MatchTable {
        candidates.sort_by(Candidate::precedence);
        let mut exact: Map<Arc<str>, Vec<Candidate>> = Map::default();
        let mut prefix: Map<Arc<str>, Vec<Candidate>> = Map::default();
        let mut regex = Vec::new();
        // Most paths have one candidate: start each bucket at capacity 1, not the 4 a first
        // push would reserve (at 10,000 routes that slack was 3 MiB of peak memory).
        let bucket = || Vec::with_capacity(1);
        for c in candidates {
            match &c.path {
                PathMatch::Exact(p) => exact.entry(p.clone()).or_insert_with(bucket).push(c),
                PathMatch::Prefix(p) => prefix.entry(p.clone()).or_insert_with(bucket).push(c),
                PathMatch::Regex(_) => regex.push(c),
            }
        }
        let shared = |map: Map<Arc<str>, Vec<Candidate>>| {
            Sharded::from_map(map.into_iter().map(|(k, v)| (k, v.into())).collect())
        };
        MatchTable {
            exact: shared(exact),
            prefix: shared(prefix),
            regex_literals: regex_literals(&regex),
            regex: regex.into(),
        }
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefix.is_empty() && self.regex.is_empty()
    }

    /// A copy sharing every bucket but those in `keys`, which lose the candidates of `gone`
    /// rules and gain `joining` (each in its own bucket).
    fn patched(
        &self,
        gone: &HashSet<RuleId, foldhash::fast::RandomState>,
        mut keys: Vec<BucketKey>,
        joining: Vec<Candidate>,
    ) -> MatchTable {
        let mut table = self.clone();
        let mut joining: HashMap<BucketKey, Vec<Candidate>> =
            joining.into_iter().fold(HashMap::new(), |mut m, c| {
                m.entry(BucketKey::of(&c.path)).or_default().push(c);
                m
            });
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let mut joins = joining.remove(&key).unwrap_or_default();
            let old = match &key {
                BucketKey::Exact(p) => self.exact.get(p),
                BucketKey::Prefix(p) => self.prefix.get(p),
                BucketKey::Regex => Some(&self.regex),
            };
            let mut bucket: Vec<Candidate> = old
                .into_iter()
                .flat_map(|b| b.iter())
                .filter(|c| !gone.contains(&c.rule))
                .cloned()
                .collect();
            bucket.append(&mut joins);
            bucket.sort_by(Candidate::precedence);
            let (map, path) = match key {
                BucketKey::Regex => {
                    table.regex_literals = regex_literals(&bucket);
                    table.regex = bucket.into();
                    continue;
                }
                BucketKey::Exact(p) => (&mut table.exact, p),
                BucketKey::Prefix(p) => (&mut table.prefix, p),
            };
            if bucket.is_empty() {
                map.remove(&path);
            } else {
                map.insert(path, bucket.into());
            }
        }
        table
    }
}

fn regex_literals(regex: &[Candidate]) -> Arc<[Box<str>]> {
    regex
        .iter()
        .map(|c| match &c.path {
            PathMatch::Regex(r) => literal_prefix(r.as_str()).into(),
            _ => Box::<str>::default(),
        })
        .collect()
}

/// The literal text every match of an anchored pattern (`^(?:...)$`) must start with; empty when
/// that cannot be told simply (alternation, flags, a leading class or group).
fn literal_prefix(anchored: &str) -> &str {
    let Some(inner) = anchored.strip_prefix("^(?:") else {
        return "";
    };
    if inner.contains('|') {
        return "";
    }
    let end = inner
        .find(|c: char| "\\.+*?()[]{}^$|".contains(c))
        .unwrap_or(inner.len());
    // A quantifier right after the literal applies to its last character, which is then optional.
    let quantified = inner[end..].starts_with(['?', '*', '{']);
    let end = if quantified {
        inner[..end].char_indices().last().map_or(0, |(i, _)| i)
    } else {
        end
    };
    &inner[..end]
}
