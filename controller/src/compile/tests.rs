use std::path::Path;

use http::{HeaderMap, Method};
use sluice_proxy::router::RequestView;

use super::*;
use crate::sources::manifests::{Object, parse_file};

mod incremental;
mod policies;

const BACKENDS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: users, namespace: shop}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: users-abc
  namespace: shop
  labels: {kubernetes.io/service-name: users}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: ["10.0.0.1"]
  conditions: {ready: true}
- addresses: ["10.0.0.2"]
  conditions: {ready: false}
- addresses: ["10.0.0.3"]
- addresses: ["10.0.0.4"]
  conditions: {ready: true, terminating: true}
---
apiVersion: v1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  ports: [{port: 9000, targetPort: 9999}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: orders-1
  namespace: shop
  labels: {kubernetes.io/service-name: orders}
addressType: IPv4
ports: [{port: 9999}]
endpoints:
- addresses: ["10.0.1.1"]
"#;

fn inputs(yaml: &str) -> Inputs {
    let objects = parse_file(Path::new("test.yaml"), yaml).expect("test manifests parse");
    let mut inputs = Inputs::default();
    for (_, object) in objects {
        match object {
            Object::Route(r) => inputs.routes.push(r),
            Object::Policy(p) => inputs.policies.push(p),
            Object::Service(s) => inputs.services.push(s),
            Object::Slice(s) => inputs.slices.push(s),
            Object::Secret(s) => inputs.secrets.push(s),
        }
    }
    inputs
}

fn compile_with_backends(routes: &str) -> Compiled {
    compile(&inputs(&format!("{BACKENDS}\n---\n{routes}")), 1, None)
}

fn route(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {{name: {name}, namespace: shop, generation: 3}}\nspec:\n{spec}\n"
    )
}

fn find<'a>(c: &'a Compiled, host: &str, path: &str) -> Option<&'a sluice_proxy::snapshot::Rule> {
    let headers = HeaderMap::new();
    let view = RequestView {
        host,
        path,
        query: None,
        method: &Method::GET,
        headers: &headers,
    };
    c.snapshot
        .router
        .find(&view)
        .map(|cand| c.snapshot.rule(cand.rule))
}

fn only_diagnostic(c: &Compiled) -> &Diagnostic {
    assert_eq!(c.diagnostics.len(), 1, "{:#?}", c.diagnostics);
    &c.diagnostics[0]
}

const USERS_RULE: &str = "  - name: users\n    matches: [{path: {type: PathPrefix, value: /users}}]\n    backendRefs: [{name: users, port: 80}]";

#[test]
fn backend_port_resolves_through_the_service_port_name_to_the_slice_port() {
    let c = compile_with_backends(&route("r", &format!("  rules:\n{USERS_RULE}")));
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    let rule = find(&c, "any", "/users/1").expect("rule");
    let ready: Vec<String> = rule.backends[0]
        .endpoints
        .iter()
        .map(|e| e.addr.to_string())
        .collect();
    assert_eq!(
        ready,
        ["10.0.0.1:8080", "10.0.0.3:8080"],
        "absent ready counts as ready"
    );
    let not_ready: Vec<String> = rule.backends[0]
        .not_ready
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(
        not_ready,
        ["10.0.0.2:8080", "10.0.0.4:8080"],
        "not ready and terminating"
    );
}

#[test]
fn unnamed_ports_resolve_to_the_unnamed_slice_port() {
    let c = compile_with_backends(&route(
        "r",
        "  rules:\n  - backendRefs: [{name: orders, port: 9000}]",
    ));
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    let rule = find(&c, "h", "/x").expect("rule");
    assert_eq!(
        rule.backends[0].endpoints[0].addr.to_string(),
        "10.0.1.1:9999"
    );
    assert_eq!(&**rule.name(), "0", "an unnamed rule is named by its index");
}

#[test]
fn unknown_service_rejects_only_its_rule() {
    let c = compile_with_backends(&route(
        "r",
        &format!(
            "  rules:\n{USERS_RULE}\n  - name: ghost\n    matches: [{{path: {{value: /ghost}}}}]\n    backendRefs: [{{name: nope, port: 80}}]"
        ),
    ));
    let d = only_diagnostic(&c);
    assert_eq!(d.field, "spec.rules[1].backendRefs[0]");
    assert_eq!(d.reason, "Service shop/nope not found");
    assert_eq!(d.object.to_string(), "GatewayRoute/shop/r");
    assert!(
        find(&c, "h", "/users").is_some(),
        "the valid rule still serves"
    );
    assert!(find(&c, "h", "/ghost").is_none());
    let status = &c.statuses[0];
    assert_eq!(status.observed_generation, Some(3));
    assert!(status.condition("Accepted").expect("Accepted").status);
    let refs = status.condition("ResolvedRefs").expect("ResolvedRefs");
    assert!(!refs.status);
    assert_eq!(refs.reason, "BackendNotFound");
    assert!(
        refs.message.contains("spec.rules[1].backendRefs[0]"),
        "{}",
        refs.message
    );
    assert!(
        status
            .condition("PartiallyInvalid")
            .expect("PartiallyInvalid")
            .status
    );
}

#[test]
fn missing_service_port_and_missing_slice_port_are_reported() {
    let c = compile_with_backends(&route(
        "r",
        "  rules:\n  - backendRefs: [{name: users, port: 81}]",
    ));
    assert_eq!(
        only_diagnostic(&c).reason,
        "Service shop/users has no TCP port 81"
    );
    let statuses = &c.statuses[0];
    assert!(!statuses.condition("Accepted").expect("Accepted").status);

    let extra = r#"
apiVersion: v1
kind: Service
metadata: {name: misnamed, namespace: shop}
spec:
  ports: [{name: grpc, port: 50051}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: misnamed-1, namespace: shop, labels: {kubernetes.io/service-name: misnamed}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ["10.0.2.1"]}]
"#;
    let c = compile_with_backends(&format!(
        "{extra}---\n{}",
        route(
            "r",
            "  rules:\n  - backendRefs: [{name: misnamed, port: 50051}]"
        )
    ));
    assert!(
        only_diagnostic(&c)
            .reason
            .contains("has the port named grpc"),
        "{}",
        only_diagnostic(&c).reason
    );
}

#[test]
fn a_service_without_slices_is_valid_but_has_no_ready_endpoint() {
    let c = compile_with_backends(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: empty, namespace: shop}}\nspec:\n  ports: [{{port: 80}}]\n---\n{}",
        route("r", "  rules:\n  - backendRefs: [{name: empty, port: 80}]")
    ));
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    assert!(find(&c, "h", "/").expect("rule").pick(None, &[]).is_none());
}

#[test]
fn a_service_scaled_to_zero_keeps_its_route_and_answers_no_ready_endpoint() {
    // The EndpointSlice controller leaves one slice with no endpoints and no ports.
    let c = compile_with_backends(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: idle, namespace: shop}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: idle-1, namespace: shop, labels: {{kubernetes.io/service-name: idle}}}}\naddressType: IPv4\nports: null\nendpoints: []\n---\n{}",
        route("r", "  rules:\n  - backendRefs: [{name: idle, port: 80}]")
    ));
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    assert!(find(&c, "h", "/").expect("rule").pick(None, &[]).is_none());
}

#[test]
fn a_udp_service_port_does_not_carry_http() {
    let c = compile_with_backends(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dns, namespace: shop}}\nspec:\n  ports: [{{name: dns, port: 53, protocol: UDP}}]\n---\n{}",
        route("r", "  rules:\n  - backendRefs: [{name: dns, port: 53}]")
    ));
    assert_eq!(
        only_diagnostic(&c).reason,
        "Service shop/dns has no TCP port 53"
    );
}

#[test]
fn an_invalid_regex_is_shown_as_written_with_the_position_of_the_mistake() {
    for (pattern, expected) in [
        (
            "/items/([0-9]+",
            r#"invalid regular expression "/items/([0-9]+": unclosed group at character 8"#,
        ),
        (
            "/a[z-a]",
            r#"invalid regular expression "/a[z-a]": invalid character class range, the start must be <= the end at character 4"#,
        ),
    ] {
        let c = compile_with_backends(&route(
            "r",
            &format!(
                "  rules:\n  - matches: [{{path: {{type: RegularExpression, value: '{pattern}'}}}}]\n    backendRefs: [{{name: users, port: 80}}]"
            ),
        ));
        let d = only_diagnostic(&c);
        assert_eq!(d.reason, expected);
        assert!(
            !d.reason.contains("^(?:"),
            "the anchoring is ours, not the user's"
        );
    }
}

#[test]
fn invalid_regex_names_the_field() {
    let c = compile_with_backends(&route(
        "r",
        "  rules:\n  - matches: [{path: {type: RegularExpression, value: '/a(['}}]\n    backendRefs: [{name: users, port: 80}]",
    ));
    let d = only_diagnostic(&c);
    assert_eq!(d.field, "spec.rules[0].matches[0].path.value");
    assert!(
        d.reason.starts_with("invalid regular expression"),
        "{}",
        d.reason
    );
    assert!(
        !c.statuses[0]
            .condition("Accepted")
            .expect("Accepted")
            .status
    );
}

#[test]
fn enormous_regex_is_refused() {
    let c = compile_with_backends(&route(
        "r",
        "  rules:\n  - matches: [{headers: [{type: RegularExpression, name: x, value: '(\\w{100}){100}'}]}]\n    backendRefs: [{name: users, port: 80}]",
    ));
    let d = only_diagnostic(&c);
    assert_eq!(d.field, "spec.rules[0].matches[0].headers[0].value");
    assert_eq!(d.reason, "regular expression is too large");
}

#[test]
fn replace_prefix_with_a_non_prefix_match_is_a_conflict() {
    let c = compile_with_backends(&route(
        "r",
        "  rules:\n  - matches: [{path: {type: PathPrefix, value: /a}}, {path: {type: Exact, value: /b}}]\n    filters: {urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}\n    backendRefs: [{name: users, port: 80}]",
    ));
    let d = only_diagnostic(&c);
    assert_eq!(d.field, "spec.rules[0].filters.urlRewrite.path.type");
    assert!(
        d.reason.contains("conflicting rewrite") && d.reason.contains("matches[1]"),
        "{}",
        d.reason
    );
}

#[test]
fn rewrite_type_and_value_must_agree() {
    let c = compile_with_backends(&route(
        "r",
        "  rules:\n  - filters: {urlRewrite: {path: {type: ReplaceFullPath, replacePrefixMatch: /x}}}\n    backendRefs: [{name: users, port: 80}]",
    ));
    assert_eq!(
        only_diagnostic(&c).field,
        "spec.rules[0].filters.urlRewrite.path.replacePrefixMatch"
    );
}

#[test]
fn paths_must_be_in_normal_form() {
    for (value, fragment) in [
        ("/a/../b", "not normalised"),
        ("/a//b", "not normalised"),
        ("/%7Euser", "not normalised"),
        ("relative", "must start with '/'"),
        ("/a?b=c", "'?'"),
    ] {
        let c = compile_with_backends(&route(
            "r",
            &format!(
                "  rules:\n  - matches: [{{path: {{type: Exact, value: '{value}'}}}}]\n    backendRefs: [{{name: users, port: 80}}]"
            ),
        ));
        let d = only_diagnostic(&c);
        assert_eq!(d.field, "spec.rules[0].matches[0].path.value");
        assert!(d.reason.contains(fragment), "{value}: {}", d.reason);
    }
}

#[test]
fn every_bad_hostname_is_reported_not_only_the_first() {
    let c = compile_with_backends(&route(
        "r",
        &format!(
            "  hostnames: [Bad.Example.com, ok.example.com, '10.0.0.1']\n  rules:\n{USERS_RULE}"
        ),
    ));
    let fields: Vec<&str> = c.diagnostics.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields, ["spec.hostnames[0]", "spec.hostnames[2]"]);
    assert!(c.diagnostics[1].reason.contains("is an IP address"));
    let accepted = c.statuses[0].condition("Accepted").expect("Accepted");
    assert!(
        accepted.message.contains("spec.hostnames[0]")
            && accepted.message.contains("spec.hostnames[2]"),
        "{}",
        accepted.message
    );
    assert!(c.snapshot.rules.is_empty());
}

#[test]
fn a_bad_hostname_rejects_the_whole_route_rather_than_widening_it() {
    for host in ["Bad.Example.com", "a.*.com", "10.0.0.1", "-x.com"] {
        let c = compile_with_backends(&route(
            "r",
            &format!("  hostnames: ['{host}']\n  rules:\n{USERS_RULE}"),
        ));
        assert_eq!(only_diagnostic(&c).field, "spec.hostnames[0]", "{host}");
        assert!(c.snapshot.rules.is_empty(), "{host}: no rule may serve");
        assert!(
            !c.statuses[0]
                .condition("Accepted")
                .expect("Accepted")
                .status
        );
    }
}

#[test]
fn duplicate_rule_names_reject_the_second() {
    let c = compile_with_backends(&route(
        "r",
        &format!("  rules:\n{USERS_RULE}\n{USERS_RULE}"),
    ));
    let d = only_diagnostic(&c);
    assert_eq!(d.field, "spec.rules[1].name");
    assert_eq!(c.snapshot.rules.len(), 1);
}

#[test]
fn backend_timeout_longer_than_request_timeout_is_invalid() {
    let c = compile_with_backends(&route(
        "r",
        "  rules:\n  - timeouts: {request: 1s, backendRequest: 2s}\n    backendRefs: [{name: users, port: 80}]",
    ));
    assert_eq!(
        only_diagnostic(&c).field,
        "spec.rules[0].timeouts.backendRequest"
    );
    let c = compile_with_backends(&route(
        "r",
        "  rules:\n  - timeouts: {request: 10x}\n    backendRefs: [{name: users, port: 80}]",
    ));
    assert_eq!(only_diagnostic(&c).field, "spec.rules[0].timeouts.request");
}

#[test]
fn header_filters_refuse_framing_headers_and_conflicts() {
    let c = compile_with_backends(&route(
        "r",
        "  rules:\n  - filters: {requestHeaders: {set: [{name: Content-Length, value: '1'}]}}\n    backendRefs: [{name: users, port: 80}]",
    ));
    let d = only_diagnostic(&c);
    assert_eq!(d.field, "spec.rules[0].filters.requestHeaders.set[0].name");
    assert!(d.reason.contains("managed by the gateway"));
    let c = compile_with_backends(&route(
        "r",
        "  rules:\n  - filters: {requestHeaders: {add: [{name: X-User-Id, value: admin}]}}\n    backendRefs: [{name: users, port: 80}]",
    ));
    assert_eq!(
        only_diagnostic(&c).field,
        "spec.rules[0].filters.requestHeaders.add[0].name",
        "identity headers come only from verified credentials"
    );
    let c = compile_with_backends(&route(
        "r",
        "  rules:\n  - filters: {responseHeaders: {set: [{name: x-a, value: '1'}], remove: [X-A]}}\n    backendRefs: [{name: users, port: 80}]",
    ));
    let d = only_diagnostic(&c);
    assert_eq!(d.field, "spec.rules[0].filters.responseHeaders.remove[0]");
    assert!(d.reason.contains("conflicting"));
}

#[test]
fn the_older_route_wins_an_exact_tie_then_the_name() {
    let older = route("zzz", &format!("  rules:\n{USERS_RULE}")).replace(
        "generation: 3",
        "generation: 1, creationTimestamp: '2024-01-01T00:00:00Z'",
    );
    let newer = route("aaa", &format!("  rules:\n{USERS_RULE}")).replace(
        "generation: 3",
        "generation: 1, creationTimestamp: '2025-01-01T00:00:00Z'",
    );
    let c = compile_with_backends(&format!("{newer}---\n{older}"));
    assert_eq!(
        &**find(&c, "h", "/users").expect("rule").route(),
        "shop/zzz"
    );

    let c = compile_with_backends(&format!(
        "{}---\n{}",
        route("bbb", &format!("  rules:\n{USERS_RULE}")),
        route("aaa", &format!("  rules:\n{USERS_RULE}"))
    ));
    assert_eq!(
        &**find(&c, "h", "/users").expect("rule").route(),
        "shop/aaa"
    );
}

#[test]
fn hostnames_select_host_groups() {
    let c = compile_with_backends(&format!(
        "{}---\n{}",
        route(
            "exact",
            &format!("  hostnames: [api.example.com]\n  rules:\n{USERS_RULE}")
        ),
        route(
            "wild",
            &format!("  hostnames: ['*.example.com']\n  rules:\n{USERS_RULE}")
        ),
    ));
    assert_eq!(
        &**find(&c, "api.example.com", "/users").expect("rule").route(),
        "shop/exact"
    );
    assert_eq!(
        &**find(&c, "www.example.com", "/users").expect("rule").route(),
        "shop/wild"
    );
    assert!(find(&c, "example.com", "/users").is_none());
}

#[test]
fn weights_split_traffic_between_backends() {
    let c = compile_with_backends(&route(
        "r",
        "  rules:\n  - backendRefs: [{name: users, port: 80, weight: 3}, {name: orders, port: 9000, weight: 1}]\n    loadBalancer: {type: RoundRobin}",
    ));
    let rule = find(&c, "h", "/").expect("rule");
    let mut to_orders = 0;
    for _ in 0..400 {
        if rule.pick(None, &[]).expect("endpoint").1.addr.port() == 9999 {
            to_orders += 1;
        }
    }
    assert_eq!(to_orders, 100);
}

#[test]
fn zero_weight_backends_get_nothing() {
    let c = compile_with_backends(&route(
        "r",
        "  rules:\n  - backendRefs: [{name: users, port: 80, weight: 0}, {name: orders, port: 9000}]",
    ));
    let rule = find(&c, "h", "/").expect("rule");
    assert!((0..50).all(|_| rule.pick(None, &[]).expect("endpoint").1.addr.port() == 9999));
}

#[test]
fn compile_is_deterministic() {
    let text = format!(
        "{}---\n{}",
        route("a", &format!("  rules:\n{USERS_RULE}")),
        route(
            "b",
            "  rules:\n  - backendRefs: [{name: orders, port: 9000}]"
        )
    );
    let a = compile_with_backends(&text);
    let b = compile_with_backends(&text);
    let json = |c: &Compiled| serde_json::to_value(&c.snapshot.rules).expect("json");
    assert_eq!(json(&a), json(&b));
    assert_eq!(a.statuses, b.statuses);
}

#[test]
fn regexes_of_the_previous_snapshot_are_reused() {
    let text = route(
        "r",
        "  rules:\n  - matches: [{path: {type: RegularExpression, value: '/v[0-9]+'}}]\n    backendRefs: [{name: users, port: 80}]",
    );
    let first = compile_with_backends(&text);
    let mut cache = RegexCache::from_snapshot(Some(&first.snapshot));
    cache.load_previous();
    assert!(cache.compiled.contains_key("^(?:/v[0-9]+)$"));
}

#[test]
fn an_endpoint_refresh_matches_a_full_compile_and_shares_everything_else() {
    let routes = format!(
        "{}---\n{}",
        route("users", &format!("  rules:\n{USERS_RULE}")),
        route(
            "orders",
            "  rules:\n  - matches: [{path: {value: /orders}}]\n    backendRefs: [{name: orders, port: 9000}]"
        )
    );
    let before = compile_with_backends(&routes);
    let flipped = format!("{BACKENDS}\n---\n{routes}").replace(
        "- addresses: [\"10.0.0.2\"]\n  conditions: {ready: false}",
        "- addresses: [\"10.0.0.2\"]\n  conditions: {ready: true}",
    );
    let inputs = inputs(&flipped);
    let services: HashSet<String> = ["shop/users".to_owned()].into();
    let refreshed = refresh_endpoints(&inputs, &services, 2, &before.snapshot).expect("refresh");
    let full = compile(&inputs, 2, None);

    let ready = |s: &Snapshot, path: &str| -> Vec<String> {
        let headers = HeaderMap::new();
        let view = RequestView {
            host: "h",
            path,
            query: None,
            method: &Method::GET,
            headers: &headers,
        };
        let rule = s.rule(s.router.find(&view).expect("match").rule);
        rule.backends[0]
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect()
    };
    assert_eq!(ready(&refreshed, "/users"), ready(&full.snapshot, "/users"));
    assert_eq!(
        ready(&refreshed, "/users"),
        ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
    );
    assert!(
        Arc::ptr_eq(&refreshed.router, &before.snapshot.router),
        "router shared"
    );
    let shared = refreshed
        .rules
        .iter()
        .zip(before.snapshot.rules.iter())
        .filter(|(a, b)| Arc::ptr_eq(a, b))
        .count();
    assert_eq!(
        shared, 1,
        "the orders rule is shared, the users rule rebuilt"
    );
}

#[test]
fn an_endpoint_refresh_gives_up_when_a_backend_stops_resolving() {
    let before = compile_with_backends(&route("users", &format!("  rules:\n{USERS_RULE}")));
    let renamed_port = format!(
        "{BACKENDS}\n---\n{}",
        route("users", &format!("  rules:\n{USERS_RULE}"))
    )
    .replace(
        "ports: [{name: http, port: 8080, protocol: TCP}]",
        "ports: [{name: web, port: 8080, protocol: TCP}]",
    );
    let services: HashSet<String> = ["shop/users".to_owned()].into();
    assert!(refresh_endpoints(&inputs(&renamed_port), &services, 2, &before.snapshot).is_none());
}

#[test]
fn services_that_failed_to_resolve_are_reported_for_the_refresh_path() {
    let c = compile_with_backends(&route(
        "r",
        "  rules:\n  - backendRefs: [{name: ghost, port: 80}]\n  - backendRefs: [{name: users, port: 81}]",
    ));
    let expected: HashSet<String> = ["shop/ghost".to_owned(), "shop/users".to_owned()].into();
    assert_eq!(c.unresolved_services, expected);
}

const ORDERS_ROUTE_SPEC: &str = "  rules:\n  - matches: [{path: {value: /orders}}]\n    backendRefs: [{name: orders, port: 9000}]";

/// What a snapshot serves, without the numbers placement chose: the rules by route and name,
/// and every router bucket with its candidates in order, each naming its rule as `route:rule`
/// and keeping of its tie-break only the rule and match index (ids and ranks differ between a
/// patched router and a fresh one; the order of candidates does not).
pub(crate) fn served(s: &Snapshot) -> serde_json::Value {
    let mut json = serde_json::to_value(s).expect("json");
    let mut rules: Vec<&Arc<sluice_proxy::snapshot::Rule>> = s.rules.iter().collect();
    rules.sort_by(|a, b| (a.route(), a.name()).cmp(&(b.route(), b.name())));
    json["rules"] = serde_json::to_value(rules).expect("json");
    let buckets: Vec<serde_json::Value> = s
        .router
        .buckets()
        .into_iter()
        .map(|(name, candidates)| {
            let candidates: Vec<serde_json::Value> = candidates
                .iter()
                .map(|c| {
                    let rule = s.rule(c.rule);
                    let mut v = serde_json::to_value(c).expect("json");
                    v["rule"] = format!("{}:{}", rule.route(), rule.name()).into();
                    v["tiebreak"] = (c.tiebreak & ((1 << 24) - 1)).into();
                    v
                })
                .collect();
            serde_json::json!([name, candidates])
        })
        .collect();
    json["router"] = buckets.into();
    json
}

/// The gateway's view of `c` equals a from-scratch compile of the same inputs.
fn assert_same_as_uncached(c: &Compiled, inputs: &Inputs) {
    let full = compile(inputs, c.snapshot.generation, None);
    assert_eq!(served(&c.snapshot), served(&full.snapshot));
    assert_eq!(c.statuses, full.statuses);
    assert_eq!(c.diagnostics, full.diagnostics);
    assert_eq!(c.unresolved_services, full.unresolved_services);
}

fn rule_of<'a>(c: &'a Compiled, route: &str) -> &'a Arc<sluice_proxy::snapshot::Rule> {
    c.snapshot
        .rules
        .iter()
        .find(|r| &**r.route() == route)
        .unwrap_or_else(|| panic!("a rule of {route}"))
}

fn replace_route(inputs: &mut Inputs, name: &str, yaml: &str) {
    let new = self::inputs(yaml).routes.pop().expect("one route");
    let at = inputs
        .routes
        .iter()
        .position(|r| r.metadata.name.as_deref() == Some(name))
        .expect("route present");
    inputs.routes[at] = new;
}

/// The `users` slice of `inputs` (the first slice) with endpoint 10.0.0.2 ready or not: a new
/// object, as a watch update brings.
fn users_slice_with_second(inputs: &Inputs, ready: bool) -> Arc<EndpointSlice> {
    let mut slice = (*inputs.slices[0]).clone();
    if let Some(c) = slice
        .endpoints
        .as_mut()
        .and_then(|e| e.get_mut(1))
        .and_then(|e| e.conditions.as_mut())
    {
        c.ready = Some(ready);
    }
    Arc::new(slice)
}

/// True when the `users` route sends traffic to 10.0.0.2.
fn second_users_endpoint_ready(c: &Compiled) -> bool {
    rule_of(c, "shop/users").backends[0]
        .endpoints
        .iter()
        .any(|e| e.addr.to_string() == "10.0.0.2:8080")
}

fn cached_pair() -> (Inputs, RouteCache, Compiled) {
    let inputs = inputs(&format!(
        "{BACKENDS}\n---\n{}---\n{}",
        route("users", &format!("  rules:\n{USERS_RULE}")),
        route("orders", ORDERS_ROUTE_SPEC)
    ));
    let mut cache = RouteCache::default();
    let first = compile_cached(&inputs, 1, None, &mut cache);
    assert_same_as_uncached(&first, &inputs);
    (inputs, cache, first)
}

#[test]
fn a_cached_compile_recompiles_only_the_changed_route() {
    let (mut inputs, mut cache, first) = cached_pair();
    replace_route(
        &mut inputs,
        "users",
        &route(
            "users",
            "  rules:\n  - matches: [{path: {value: /people}}]\n    backendRefs: [{name: users, port: 80}]",
        ),
    );
    let second = compile_cached(&inputs, 2, Some(&first.snapshot), &mut cache);
    assert_same_as_uncached(&second, &inputs);
    assert!(find(&second, "h", "/people").is_some());
    assert!(find(&second, "h", "/users").is_none());
    assert!(Arc::ptr_eq(
        rule_of(&first, "shop/orders"),
        rule_of(&second, "shop/orders")
    ));
    assert!(!Arc::ptr_eq(
        rule_of(&first, "shop/users"),
        rule_of(&second, "shop/users")
    ));
}

#[test]
fn a_cached_route_is_recompiled_when_its_service_endpoints_change() {
    let (mut inputs, mut cache, first) = cached_pair();
    assert!(!second_users_endpoint_ready(&first));
    inputs.slices[0] = users_slice_with_second(&inputs, true);
    let second = compile_cached(&inputs, 2, Some(&first.snapshot), &mut cache);
    assert_same_as_uncached(&second, &inputs);
    assert!(second_users_endpoint_ready(&second));
    assert!(Arc::ptr_eq(
        rule_of(&first, "shop/orders"),
        rule_of(&second, "shop/orders")
    ));
}

#[test]
fn a_service_created_later_brings_back_the_cached_route_that_named_it() {
    let mut inputs = inputs(&format!(
        "{BACKENDS}\n---\n{}",
        route("r", "  rules:\n  - backendRefs: [{name: ghost, port: 80}]")
    ));
    let mut cache = RouteCache::default();
    let first = compile_cached(&inputs, 1, None, &mut cache);
    assert!(first.snapshot.rules.is_empty());
    assert!(first.unresolved_services.contains("shop/ghost"));
    let ghost = self::inputs(
        "apiVersion: v1\nkind: Service\nmetadata: {name: ghost, namespace: shop}\nspec:\n  ports: [{port: 80}]\n",
    );
    inputs.services.extend(ghost.services);
    let second = compile_cached(&inputs, 2, Some(&first.snapshot), &mut cache);
    assert_same_as_uncached(&second, &inputs);
    assert_eq!(second.snapshot.rules.len(), 1);
    assert!(second.unresolved_services.is_empty());
}

#[test]
fn cached_routes_take_their_new_place_when_a_preferred_route_arrives_or_one_goes() {
    let (mut inputs, mut cache, first) = cached_pair();
    // Same age as the others (none given), so `namespace/name` decides: it sorts first.
    let preferred = route(
        "aa-first",
        "  rules:\n  - matches: [{path: {value: /orders}}]\n    backendRefs: [{name: users, port: 80}]",
    );
    inputs.routes.extend(self::inputs(&preferred).routes);
    let second = compile_cached(&inputs, 2, Some(&first.snapshot), &mut cache);
    assert_same_as_uncached(&second, &inputs);
    assert_eq!(
        &**find(&second, "h", "/orders").expect("match").route(),
        "shop/aa-first",
        "the new route wins the tie over the cached one"
    );
    inputs
        .routes
        .retain(|r| r.metadata.name.as_deref() != Some("aa-first"));
    let third = compile_cached(&inputs, 3, Some(&second.snapshot), &mut cache);
    assert_same_as_uncached(&third, &inputs);
    assert_eq!(
        &**find(&third, "h", "/orders").expect("match").route(),
        "shop/orders"
    );
    assert_eq!(cache.len(), 2, "the removed route left the cache");
}

#[test]
fn a_replaced_slice_is_never_mistaken_for_the_one_it_replaced() {
    // The allocator is free to put a new object where a freed one was. Two updates between
    // compiles (as a watch can deliver) free the object the last fingerprint was made from
    // before the final one is allocated: an address fingerprint must still tell them apart.
    let (mut inputs, mut cache, mut prev) = cached_pair();
    for round in 0..40 {
        let ready = round % 2 == 0;
        inputs.slices[0] = users_slice_with_second(&inputs, !ready);
        inputs.slices[0] = users_slice_with_second(&inputs, ready);
        let next = compile_cached(&inputs, round + 2, Some(&prev.snapshot), &mut cache);
        assert_eq!(second_users_endpoint_ready(&next), ready, "round {round}");
        prev = next;
    }
}

#[test]
fn a_route_naming_one_service_many_times_still_sees_its_endpoint_changes() {
    // 64 rules on one Service: an identity folded per reference could cancel out.
    let rules: String = (0..64)
        .map(|i| {
            format!(
                "  - matches: [{{path: {{value: /many/{i}}}}}]\n    backendRefs: [{{name: users, port: 80}}, {{name: users, port: 80}}]\n"
            )
        })
        .collect();
    let mut inputs = inputs(&format!(
        "{BACKENDS}\n---\n{}",
        route("many", &format!("  rules:\n{rules}"))
    ));
    let mut cache = RouteCache::default();
    let mut prev = compile_cached(&inputs, 1, None, &mut cache);
    for round in 0..6u64 {
        let ready = round % 2 == 0;
        inputs.slices[0] = users_slice_with_second(&inputs, ready);
        let next = compile_cached(&inputs, round + 2, Some(&prev.snapshot), &mut cache);
        assert_same_as_uncached(&next, &inputs);
        prev = next;
    }
}

#[test]
fn a_cached_route_reports_only_its_own_unresolved_services() {
    let failing = route(
        "a-fails",
        "  rules:\n  - backendRefs: [{name: users, port: 81}]",
    );
    let fine = route("b-fine", &format!("  rules:\n{USERS_RULE}"));
    let mut inputs = inputs(&format!("{BACKENDS}\n---\n{failing}---\n{fine}"));
    let mut cache = RouteCache::default();
    let first = compile_cached(&inputs, 1, None, &mut cache);
    assert!(first.unresolved_services.contains("shop/users"));
    replace_route(
        &mut inputs,
        "a-fails",
        &route(
            "a-fails",
            "  rules:\n  - backendRefs: [{name: users, port: 80}]",
        ),
    );
    let second = compile_cached(&inputs, 2, Some(&first.snapshot), &mut cache);
    assert_same_as_uncached(&second, &inputs);
    assert!(second.unresolved_services.is_empty());
}

#[test]
fn statuses_are_built_only_for_a_source_that_writes_them() {
    let (mut inputs, mut cache, first) = cached_pair();
    assert_eq!(first.statuses.len(), 2);
    inputs.skip_statuses = true;
    let quiet = compile_cached(&inputs, 2, Some(&first.snapshot), &mut cache);
    assert!(quiet.statuses.is_empty());
    assert!(find(&quiet, "h", "/users").is_some());
    // The same cache serving a source that writes statuses again has them all.
    inputs.skip_statuses = false;
    let third = compile_cached(&inputs, 3, Some(&quiet.snapshot), &mut cache);
    assert_same_as_uncached(&third, &inputs);
    assert_eq!(third.statuses.len(), 2);
}
