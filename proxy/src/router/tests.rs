use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;

use super::*;

fn cand(rule: u32, path: PathMatch) -> Candidate {
    Candidate {
        rule,
        path,
        conditions: Conditions::default(),
        tiebreak: u64::from(rule),
    }
}

fn prefix(p: &str) -> PathMatch {
    PathMatch::Prefix(p.into())
}

fn exact(p: &str) -> PathMatch {
    PathMatch::Exact(p.into())
}

fn regex(p: &str) -> PathMatch {
    PathMatch::Regex(Box::new(
        Regex::new(&format!("^(?:{p})$")).expect("test regex"),
    ))
}

struct Req {
    host: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    method: Method,
    headers: HeaderMap,
}

fn req(host: &'static str, path: &'static str) -> Req {
    Req {
        host,
        path,
        query: None,
        method: Method::GET,
        headers: HeaderMap::new(),
    }
}

impl Req {
    fn method(mut self, m: Method) -> Self {
        self.method = m;
        self
    }
    fn header(mut self, n: &'static str, v: &'static str) -> Self {
        self.headers
            .append(HeaderName::from_static(n), HeaderValue::from_static(v));
        self
    }
    fn query(mut self, q: &'static str) -> Self {
        self.query = Some(q);
        self
    }
    fn find(&self, router: &Router) -> Option<u32> {
        router
            .find(&RequestView {
                host: self.host,
                path: self.path,
                query: self.query,
                method: &self.method,
                headers: &self.headers,
            })
            .map(|c| c.rule)
    }
}

fn router(entries: Vec<(HostPattern, Candidate)>) -> Router {
    let mut b = RouterBuilder::default();
    entries.into_iter().for_each(|(h, c)| b.add(h, c));
    b.build()
}

#[test]
fn prefix_matches_on_segment_boundaries_only() {
    let r = router(vec![(HostPattern::Any, cand(1, prefix("/api")))]);
    assert_eq!(req("h", "/api").find(&r), Some(1));
    assert_eq!(req("h", "/api/").find(&r), Some(1));
    assert_eq!(req("h", "/api/users").find(&r), Some(1));
    assert_eq!(req("h", "/apiary").find(&r), None);
    assert_eq!(req("h", "/").find(&r), None);
}

#[test]
fn root_prefix_matches_everything() {
    let r = router(vec![(HostPattern::Any, cand(1, prefix("/")))]);
    assert_eq!(req("h", "/").find(&r), Some(1));
    assert_eq!(req("h", "/anything/at/all").find(&r), Some(1));
}

#[test]
fn exact_beats_longest_prefix_beats_shorter_prefix_beats_regex() {
    let r = router(vec![
        (HostPattern::Any, cand(4, regex("/api/.*"))),
        (HostPattern::Any, cand(3, prefix("/"))),
        (HostPattern::Any, cand(2, prefix("/api"))),
        (HostPattern::Any, cand(1, prefix("/api/users"))),
        (HostPattern::Any, cand(0, exact("/api/users/me"))),
    ]);
    assert_eq!(req("h", "/api/users/me").find(&r), Some(0));
    assert_eq!(req("h", "/api/users/42").find(&r), Some(1));
    assert_eq!(req("h", "/api/orders").find(&r), Some(2));
    assert_eq!(req("h", "/other").find(&r), Some(3));
}

#[test]
fn regex_is_anchored_and_used_when_nothing_else_matches() {
    let r = router(vec![
        (HostPattern::Any, cand(1, regex("/v[0-9]+/items"))),
        (HostPattern::Any, cand(2, prefix("/static"))),
    ]);
    assert_eq!(req("h", "/v2/items").find(&r), Some(1));
    assert_eq!(req("h", "/v2/items/extra").find(&r), None);
    assert_eq!(req("h", "/x/v2/items").find(&r), None);
}

#[test]
fn method_header_and_query_conditions_must_all_hold() {
    let mut c = cand(1, prefix("/api"));
    c.conditions = Conditions::new(
        Some(Method::POST),
        vec![HeaderMatch {
            name: HeaderName::from_static("x-canary"),
            value: ValueMatch::Exact("1".into()),
        }],
        vec![QueryMatch {
            name: "v".into(),
            value: ValueMatch::Regex(Regex::new("^(?:[0-9]+)$").expect("regex")),
        }],
    );
    let r = router(vec![(HostPattern::Any, c)]);
    let good = || {
        req("h", "/api/x")
            .method(Method::POST)
            .header("x-canary", "1")
            .query("a=b&v=12")
    };
    assert_eq!(good().find(&r), Some(1));
    assert_eq!(good().method(Method::GET).find(&r), None);
    assert_eq!(good().query("v=abc").find(&r), None);
    assert_eq!(
        req("h", "/api/x")
            .method(Method::POST)
            .query("v=1")
            .find(&r),
        None,
        "missing header"
    );
}

#[test]
fn more_specific_conditions_win_for_the_same_path() {
    let mut with_method = cand(5, prefix("/api"));
    with_method.conditions = Conditions::new(Some(Method::GET), vec![], vec![]);
    let mut with_header = cand(6, prefix("/api"));
    with_header.conditions = Conditions::new(
        None,
        vec![HeaderMatch {
            name: HeaderName::from_static("x-canary"),
            value: ValueMatch::Exact("1".into()),
        }],
        vec![],
    );
    let r = router(vec![
        (HostPattern::Any, cand(1, prefix("/api"))),
        (HostPattern::Any, with_header),
        (HostPattern::Any, with_method),
    ]);
    assert_eq!(req("h", "/api").find(&r), Some(5), "method beats headers");
    assert_eq!(
        req("h", "/api")
            .method(Method::PUT)
            .header("x-canary", "1")
            .find(&r),
        Some(6)
    );
    assert_eq!(req("h", "/api").method(Method::PUT).find(&r), Some(1));
}

#[test]
fn ties_go_to_the_lowest_tiebreak() {
    let mut older = cand(7, prefix("/a"));
    older.tiebreak = 1;
    let mut newer = cand(8, prefix("/a"));
    newer.tiebreak = 2;
    let r = router(vec![(HostPattern::Any, newer), (HostPattern::Any, older)]);
    assert_eq!(req("h", "/a").find(&r), Some(7));
}

#[test]
fn exact_host_then_longest_wildcard_then_any() {
    let r = router(vec![
        (
            HostPattern::Exact("api.example.com".into()),
            cand(1, prefix("/")),
        ),
        (
            HostPattern::Wildcard("example.com".into()),
            cand(2, prefix("/")),
        ),
        (
            HostPattern::Wildcard("b.example.com".into()),
            cand(3, prefix("/")),
        ),
        (HostPattern::Any, cand(4, prefix("/"))),
    ]);
    assert_eq!(req("api.example.com", "/").find(&r), Some(1));
    assert_eq!(req("x.example.com", "/").find(&r), Some(2));
    assert_eq!(req("a.b.example.com", "/").find(&r), Some(3));
    assert_eq!(req("deep.a.b.example.com", "/").find(&r), Some(3));
    assert_eq!(
        req("example.com", "/").find(&r),
        Some(4),
        "wildcard needs a label"
    );
    assert_eq!(req("other.org", "/").find(&r), Some(4));
}

#[test]
fn a_less_specific_host_group_serves_when_the_specific_one_has_no_match() {
    let r = router(vec![
        (
            HostPattern::Exact("api.example.com".into()),
            cand(1, prefix("/users")),
        ),
        (HostPattern::Any, cand(2, exact("/healthz"))),
    ]);
    assert_eq!(req("api.example.com", "/users/1").find(&r), Some(1));
    assert_eq!(req("api.example.com", "/healthz").find(&r), Some(2));
    assert_eq!(req("other", "/users/1").find(&r), None);
}

#[test]
fn header_conditions_accept_any_of_repeated_values() {
    let mut c = cand(1, prefix("/"));
    c.conditions = Conditions::new(
        None,
        vec![HeaderMatch {
            name: HeaderName::from_static("x-env"),
            value: ValueMatch::Exact("beta".into()),
        }],
        vec![],
    );
    let r = router(vec![(HostPattern::Any, c)]);
    assert_eq!(
        req("h", "/")
            .header("x-env", "prod")
            .header("x-env", "beta")
            .find(&r),
        Some(1)
    );
}

#[test]
fn query_values_are_percent_decoded() {
    let mut c = cand(1, prefix("/"));
    c.conditions = Conditions::new(
        None,
        vec![],
        vec![QueryMatch {
            name: "q".into(),
            value: ValueMatch::Exact("a b".into()),
        }],
    );
    let r = router(vec![(HostPattern::Any, c)]);
    assert_eq!(req("h", "/").query("q=a%20b").find(&r), Some(1));
    assert_eq!(req("h", "/").query("q=ab").find(&r), None);
}

#[test]
fn empty_router_finds_nothing() {
    assert_eq!(req("h", "/").find(&Router::default()), None);
}

#[test]
fn regex_literal_prefixes_are_conservative() {
    assert_eq!(literal_prefix("^(?:/v[0-9]+/items)$"), "/v");
    assert_eq!(literal_prefix("^(?:/api/.*)$"), "/api/");
    assert_eq!(
        literal_prefix("^(?:/items?)$"),
        "/item",
        "a quantified last char is optional"
    );
    assert_eq!(
        literal_prefix("^(?:/a|/b)$"),
        "",
        "alternation gives no prefix"
    );
    assert_eq!(
        literal_prefix("^(?:(?i)/admin)$"),
        "",
        "flags give no prefix"
    );
    assert_eq!(literal_prefix("^(?:\\/x)$"), "", "escapes stop the literal");
}

#[test]
fn regex_candidates_behind_a_literal_still_match() {
    let r = router(vec![
        (HostPattern::Any, cand(1, regex("/items?"))),
        (HostPattern::Any, cand(2, regex("(?i)/ADMIN"))),
    ]);
    assert_eq!(req("h", "/item").find(&r), Some(1));
    assert_eq!(req("h", "/items").find(&r), Some(1));
    assert_eq!(req("h", "/admin").find(&r), Some(2));
    assert_eq!(req("h", "/other").find(&r), None);
}

#[test]
fn a_patched_router_shares_each_path_with_the_candidate_it_was_given() {
    // At 10,000 routes a copy of every path per router patch was half a megabyte.
    let path: Arc<str> = "/api".into();
    let first = router(vec![(
        HostPattern::Any,
        cand(1, PathMatch::Prefix(Arc::clone(&path))),
    )]);
    // A new candidate in the same bucket: the bucket is rebuilt, the old candidate copied.
    let patched = first.patched(&[], vec![(HostPattern::Any, cand(2, prefix("/api")))]);
    let found = |r: &Router, rule: u32| {
        let mut bucket = r.any_host.prefix.get("/api").expect("the bucket").iter();
        bucket
            .find(|c| c.rule == rule)
            .expect("the candidate")
            .clone()
    };
    for r in [&first, &patched] {
        let PathMatch::Prefix(kept) = found(r, 1).path else {
            panic!("a prefix candidate");
        };
        assert!(
            Arc::ptr_eq(&kept, &path),
            "the path is the one given, not a copy"
        );
    }
}

#[test]
fn a_candidate_shows_its_conditions_in_the_snapshot_whether_or_not_it_has_any() {
    let plain = serde_json::to_value(cand(1, prefix("/api"))).expect("serialises");
    assert_eq!(plain["method"], serde_json::Value::Null);
    assert_eq!(plain["headers"], serde_json::json!([]));
    assert_eq!(plain["query"], serde_json::json!([]));
    let mut c = cand(2, exact("/x"));
    c.conditions = Conditions::new(Some(Method::PUT), vec![], vec![]);
    let with = serde_json::to_value(c).expect("serialises");
    assert_eq!(with["method"], "PUT");
    assert_eq!(with["rule"], 2);
    assert_eq!(with["headers"], serde_json::json!([]));
}

#[test]
fn a_candidate_without_conditions_is_48_bytes() {
    // Every match of every route is kept twice (the route cache's copy and the router's): at
    // 10,000 routes each 16 bytes here are a third of a megabyte.
    assert_eq!(size_of::<Candidate>(), 48);
}
