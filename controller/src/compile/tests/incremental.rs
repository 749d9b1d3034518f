//! A compile that patches the previous router equals one from scratch, over random sequences of
//! route edits (added, removed, rewritten, re-applied unchanged), with routes that share hosts
//! and paths so that edits land in buckets other routes hold too.

use proptest::prelude::*;

use super::*;

/// One generated route: its name, age, hostnames and rules.
#[derive(Debug, Clone)]
struct Spec {
    name: usize,
    namespace: usize,
    created: Option<u8>,
    hosts: Vec<&'static str>,
    rules: Vec<Vec<Match>>,
    /// Sends to a Service that does not exist (an unresolved backend).
    ghost: bool,
}

#[derive(Debug, Clone)]
struct Match {
    kind: &'static str,
    value: &'static str,
    method: Option<&'static str>,
    header: bool,
}

const PATHS: [&str; 4] = ["/", "/a", "/a/b", "/b"];
/// The last is invalid: its rule is dropped with a diagnostic.
const REGEXES: [&str; 3] = ["/a.*", "/[ab]", "/(a"];

fn a_match() -> impl Strategy<Value = Match> {
    (
        0..3usize,
        0..4usize,
        prop::option::of(0..2usize),
        any::<bool>(),
    )
        .prop_map(|(kind, value, method, header)| Match {
            kind: ["Exact", "PathPrefix", "RegularExpression"][kind],
            value: if kind == 2 {
                REGEXES[value % 3]
            } else {
                PATHS[value]
            },
            method: method.map(|m| ["GET", "POST"][m]),
            header,
        })
}

fn a_spec() -> impl Strategy<Value = Spec> {
    (
        0..8usize,
        0..2usize,
        prop::option::of(0..3u8),
        prop::sample::subsequence(vec!["x.test", "*.test"], 0..=2),
        prop::collection::vec(prop::collection::vec(a_match(), 1..3), 1..3),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(name, namespace, created, hosts, rules, ghost)| Spec {
            name,
            namespace,
            created,
            hosts,
            rules,
            ghost,
        })
}

impl Spec {
    fn yaml(&self) -> String {
        let mut out = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata:\n  name: r{}\n  namespace: {}\n",
            self.name,
            ["shop", "blog"][self.namespace]
        );
        if let Some(c) = self.created {
            out.push_str(&format!(
                "  creationTimestamp: \"2026-01-01T00:00:0{c}Z\"\n"
            ));
        }
        out.push_str("spec:\n");
        if !self.hosts.is_empty() {
            let quoted: Vec<String> = self.hosts.iter().map(|h| format!("\"{h}\"")).collect();
            out.push_str(&format!("  hostnames: [{}]\n", quoted.join(", ")));
        }
        out.push_str("  rules:\n");
        for matches in &self.rules {
            out.push_str("  - matches:\n");
            for m in matches {
                out.push_str(&format!(
                    "    - path: {{type: {}, value: \"{}\"}}\n",
                    m.kind, m.value
                ));
                if let Some(method) = m.method {
                    out.push_str(&format!("      method: {method}\n"));
                }
                if m.header {
                    out.push_str("      headers: [{name: x-canary, value: \"1\"}]\n");
                }
            }
            let service = if self.ghost { "ghost" } else { "users" };
            out.push_str(&format!(
                "    backendRefs: [{{name: {service}, port: 80}}]\n"
            ));
        }
        out
    }
}

#[derive(Debug, Clone)]
enum Edit {
    /// Applies a route (a new one, or a new version of one with the same name).
    Apply(Spec),
    /// Deletes the n-th route (modulo the count).
    Delete(usize),
    /// Re-applies the n-th route unchanged: a new object, the same content.
    Reapply(usize),
}

fn an_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => a_spec().prop_map(Edit::Apply),
        1 => any::<usize>().prop_map(Edit::Delete),
        1 => any::<usize>().prop_map(Edit::Reapply),
    ]
}

/// Which rule each of a set of requests reaches.
fn decisions(s: &Snapshot) -> Vec<Option<String>> {
    let mut canary = HeaderMap::new();
    canary.insert("x-canary", http::HeaderValue::from_static("1"));
    let plain = HeaderMap::new();
    let mut out = Vec::new();
    for host in ["x.test", "y.test", "other.example"] {
        for path in ["/", "/a", "/a/b", "/a/c", "/b", "/c"] {
            for method in [Method::GET, Method::POST] {
                for headers in [&plain, &canary] {
                    let view = RequestView {
                        host,
                        path,
                        query: None,
                        method: &method,
                        headers,
                    };
                    out.push(s.router.find(&view).map(|c| {
                        let rule = s.rule(c.rule);
                        format!("{}:{}", rule.route(), rule.name())
                    }));
                }
            }
        }
    }
    out
}

#[test]
fn routes_crowding_one_spot_move_their_neighbours_not_every_route() {
    // 60 routes, then 40 more whose names all sort between the same two of them: each takes
    // the place after the one before it, halving the gap until neighbours must move apart.
    let spec = |name: &str| {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /x}}}}]\n    backendRefs: [{{name: users, port: 80}}]\n"
        )
    };
    let mut now = inputs(BACKENDS);
    for i in 0..30 {
        now.routes.extend(inputs(&spec(&format!("a{i:02}"))).routes);
        now.routes.extend(inputs(&spec(&format!("z{i:02}"))).routes);
    }
    let mut cache = RouteCache::default();
    let mut generation = 1;
    compile_cached(&now, generation, None, &mut cache);
    for i in 0..40 {
        now.routes.extend(inputs(&spec(&format!("m{i:02}"))).routes);
        generation += 1;
        let patched = compile_cached(&now, generation, None, &mut cache);
        let fresh = compile(&now, generation, None);
        assert_eq!(
            served(&patched.snapshot),
            served(&fresh.snapshot),
            "after m{i:02}"
        );
    }
    assert_eq!(
        cache.full_placements, 1,
        "only the first compile placed every route"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn a_patched_router_equals_one_built_from_scratch(
        first in prop::collection::vec(a_spec(), 0..6),
        edits in prop::collection::vec(an_edit(), 1..24),
    ) {
        let backends = inputs(BACKENDS);
        let mut routes: Vec<Arc<GatewayRoute>> = Vec::new();
        let apply = |routes: &mut Vec<Arc<GatewayRoute>>, spec: &Spec| {
            let parsed = inputs(&spec.yaml()).routes.remove(0);
            match routes.iter().position(|r| r.metadata.name == parsed.metadata.name
                && r.metadata.namespace == parsed.metadata.namespace) {
                Some(i) => routes[i] = parsed,
                None => routes.push(parsed),
            }
        };
        for spec in &first {
            apply(&mut routes, spec);
        }
        let mut cache = RouteCache::default();
        // Standalone mode's compile, which leaves statuses out and visits only routes with
        // problems, certificates or unresolved Services for the rest.
        let mut quiet_cache = RouteCache::default();
        // Standalone mode's too, told which route objects came and went.
        let mut delta_cache = RouteCache::default();
        let mut last_routes: Vec<Arc<GatewayRoute>> = Vec::new();
        let mut prev: Option<Snapshot> = None;
        for (generation, edit) in std::iter::once(None).chain(edits.iter().map(Some)).enumerate() {
            match edit {
                None => {}
                Some(Edit::Apply(spec)) => apply(&mut routes, spec),
                Some(Edit::Delete(n)) if !routes.is_empty() => {
                    let n = n % routes.len();
                    routes.remove(n);
                }
                Some(Edit::Reapply(n)) if !routes.is_empty() => {
                    let n = n % routes.len();
                    let copy = GatewayRoute::clone(&routes[n]);
                    routes[n] = Arc::new(copy);
                }
                Some(_) => {}
            }
            let mut now = backends.clone();
            now.routes = routes.clone();
            let generation = generation as u64 + 1;
            let patched = compile_cached(&now, generation, prev.as_ref(), &mut cache);
            let fresh = compile(&now, generation, None);
            prop_assert_eq!(served(&patched.snapshot), served(&fresh.snapshot));
            prop_assert_eq!(decisions(&patched.snapshot), decisions(&fresh.snapshot));
            prop_assert_eq!(&patched.statuses, &fresh.statuses);
            prop_assert_eq!(&patched.diagnostics, &fresh.diagnostics);
            prop_assert_eq!(&patched.unresolved_services, &fresh.unresolved_services);
            let mut quiet_inputs = now.clone();
            quiet_inputs.skip_statuses = true;
            let quiet = compile_cached(&quiet_inputs, generation, None, &mut quiet_cache);
            prop_assert!(quiet.statuses.is_empty());
            prop_assert_eq!(served(&quiet.snapshot), served(&fresh.snapshot));
            prop_assert_eq!(&quiet.diagnostics, &fresh.diagnostics);
            prop_assert_eq!(&quiet.unresolved_services, &fresh.unresolved_services);
            let address = |r: &Arc<GatewayRoute>| Arc::as_ptr(r) as usize;
            let had = |list: &[Arc<GatewayRoute>], r: &Arc<GatewayRoute>| {
                list.iter().any(|x| Arc::ptr_eq(x, r))
            };
            let mut delta_inputs = quiet_inputs.clone();
            delta_inputs.routes_delta = Some(RoutesDelta {
                added: routes.iter().filter(|r| !had(&last_routes, r)).cloned().collect(),
                removed: last_routes
                    .iter()
                    .filter(|r| !had(&routes, r))
                    .map(address)
                    .collect(),
            });
            let followed = compile_cached(&delta_inputs, generation, None, &mut delta_cache);
            prop_assert_eq!(served(&followed.snapshot), served(&fresh.snapshot));
            prop_assert_eq!(&followed.diagnostics, &fresh.diagnostics);
            last_routes = routes.clone();
            prev = Some(patched.snapshot);
        }
    }
}
