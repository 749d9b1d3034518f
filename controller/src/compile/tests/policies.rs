//! RateLimitPolicy compile: validation naming fields, targets, and where the limits land.

use sluice_proxy::limit::{LimitKey, Scope};
use sluice_proxy::pipeline::Step;

use super::*;

const TWO_RULES: &str = "  rules:\n  - name: users\n    matches: [{path: {type: PathPrefix, value: /users}}]\n    backendRefs: [{name: users, port: 80}]\n  - name: orders\n    matches: [{path: {type: PathPrefix, value: /orders}}]\n    backendRefs: [{name: orders, port: 9000}]";

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {name}, namespace: shop, generation: 2}}\nspec:\n{spec}\n"
    )
}

fn with_route(policies: &str) -> Compiled {
    let mut i = inputs(&format!(
        "{BACKENDS}\n---\n{}\n---\n{policies}",
        route("r", TWO_RULES)
    ));
    i.shared_store = true;
    compile(&i, 1, None)
}

/// `(policy/limit, key)` of the limits on the rule serving `path`.
fn limits_at(c: &Compiled, path: &str) -> Vec<(String, LimitKey)> {
    let rule = find(c, "any.example", path).expect("rule serves");
    rule.policy
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::RateLimit(r) => Some(r),
            _ => None,
        })
        .flat_map(|r| r.limits.iter())
        .map(|l| (format!("{}/{}", l.policy, l.name), l.key.clone()))
        .collect()
}

fn status<'c>(c: &'c Compiled, name: &str) -> &'c StatusReport {
    c.statuses
        .iter()
        .find(|s| s.object.kind == "RateLimitPolicy" && s.object.name == name)
        .expect("policy status")
}

#[test]
fn a_route_wide_policy_limits_every_rule_and_a_rule_policy_only_its_rule() {
    let c = with_route(&format!(
        "{}---\n{}",
        policy(
            "everyone",
            "  targetRef: {kind: GatewayRoute, name: r}\n  limits: [{name: per-client, requests: 100, period: 1m, burst: 20, key: {type: ClientIP}}]"
        ),
        policy(
            "orders-only",
            "  targetRef: {kind: GatewayRoute, name: r, rule: orders}\n  limits: [{name: shared, requests: 5, period: 1s, key: {type: Route}}, {name: per-user, requests: 10, period: 1m, key: {type: Claim, name: sub}}]"
        )
    ));
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    assert_eq!(
        limits_at(&c, "/users"),
        vec![("shop/everyone/per-client".to_owned(), LimitKey::ClientIp)]
    );
    assert_eq!(
        limits_at(&c, "/orders"),
        vec![
            ("shop/everyone/per-client".to_owned(), LimitKey::ClientIp),
            (
                "shop/orders-only/per-user".to_owned(),
                LimitKey::Claim("sub".into())
            ),
            ("shop/orders-only/shared".to_owned(), LimitKey::Route),
        ],
        "policies on one target combine, in name order, shared Route buckets last"
    );
    for name in ["everyone", "orders-only"] {
        let s = status(&c, name);
        assert_eq!(s.observed_generation, Some(2));
        assert!(s.condition("Accepted").expect("Accepted").status, "{s:?}");
        assert!(
            s.condition("Programmed").expect("Programmed").status,
            "{s:?}"
        );
    }
    let accepted = status(&c, "orders-only")
        .condition("Accepted")
        .expect("Accepted");
    assert!(
        accepted
            .message
            .contains("without a verified \"sub\" claim are counted by client address"),
        "{}",
        accepted.message
    );
}

#[test]
fn bad_policies_are_refused_naming_the_field_and_the_route_keeps_serving() {
    let cases = [
        (
            "requests: 0, period: 1m, key: {type: ClientIP}",
            "spec.limits[0].requests",
            "at least 1",
        ),
        (
            "requests: -5, period: 1m, key: {type: ClientIP}",
            "spec.limits[0].requests",
            "at least 1",
        ),
        (
            "requests: 5, burst: -1, period: 1m, key: {type: ClientIP}",
            "spec.limits[0].burst",
            "negative",
        ),
        (
            "requests: 5, period: soon, key: {type: ClientIP}",
            "spec.limits[0].period",
            "not a duration",
        ),
        (
            "requests: 5, period: 0s, key: {type: ClientIP}",
            "spec.limits[0].requests",
            "not a usable rate",
        ),
        (
            "requests: 5, period: 1m, key: {type: Claim}",
            "spec.limits[0].key.name",
            "needs the name",
        ),
        (
            "requests: 5, period: 1m, key: {type: Header, name: 'bad header'}",
            "spec.limits[0].key.name",
            "not a header name",
        ),
        (
            "requests: 5, period: 1m, key: {type: ClientIP, name: x}",
            "spec.limits[0].key.name",
            "only Header and Claim",
        ),
    ];
    for (limit, field, reason) in cases {
        let c = with_route(&policy(
            "p",
            &format!(
                "  targetRef: {{kind: GatewayRoute, name: r}}\n  limits: [{{name: l, {limit}}}]"
            ),
        ));
        let d = only_diagnostic(&c);
        assert_eq!(d.object.to_string(), "RateLimitPolicy/shop/p", "{limit}");
        assert_eq!(d.field, field, "{limit}");
        assert!(d.reason.contains(reason), "{limit}: {}", d.reason);
        let accepted = status(&c, "p").condition("Accepted").expect("Accepted");
        assert!(!accepted.status);
        assert_eq!(accepted.reason, "Invalid");
        assert!(accepted.message.starts_with(field), "{}", accepted.message);
        assert!(
            limits_at(&c, "/users").is_empty(),
            "{limit}: nothing half-applied"
        );
        assert!(
            find(&c, "any.example", "/orders").is_some(),
            "the route keeps serving"
        );
    }
}

#[test]
fn a_missing_target_is_not_accepted_until_it_appears() {
    let p = policy(
        "p",
        "  targetRef: {kind: GatewayRoute, name: later}\n  limits: [{name: l, requests: 5, period: 1m, key: {type: ClientIP}}]",
    );
    let c = with_route(&p);
    let d = only_diagnostic(&c);
    assert_eq!(d.field, "spec.targetRef.name");
    assert!(
        d.reason.contains("GatewayRoute shop/later not found"),
        "{}",
        d.reason
    );
    let accepted = status(&c, "p").condition("Accepted").expect("Accepted");
    assert_eq!(
        (accepted.status, accepted.reason),
        (false, "TargetNotFound")
    );

    let later = route(
        "later",
        "  hostnames: [later.example]\n  rules:\n  - backendRefs: [{name: users, port: 80}]",
    );
    let c = with_route(&format!("{p}---\n{later}"));
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    assert!(
        status(&c, "p")
            .condition("Accepted")
            .expect("Accepted")
            .status
    );
    let rule = find(&c, "later.example", "/").expect("later serves");
    assert!(
        rule.policy
            .steps
            .iter()
            .any(|s| matches!(s, Step::RateLimit(_)))
    );
}

#[test]
fn an_unknown_rule_is_named() {
    let c = with_route(&policy(
        "p",
        "  targetRef: {kind: GatewayRoute, name: r, rule: nope}\n  limits: [{name: l, requests: 5, period: 1m, key: {type: ClientIP}}]",
    ));
    let d = only_diagnostic(&c);
    assert_eq!(d.field, "spec.targetRef.rule");
    assert!(d.reason.contains("no rule named \"nope\""), "{}", d.reason);
    assert!(limits_at(&c, "/users").is_empty() && limits_at(&c, "/orders").is_empty());
}

#[test]
fn a_global_policy_without_redis_is_accepted_but_not_programmed() {
    let text = format!(
        "{BACKENDS}\n---\n{}\n---\n{}",
        route("r", TWO_RULES),
        policy(
            "g",
            "  targetRef: {kind: GatewayRoute, name: r}\n  scope: Global\n  failureMode: Closed\n  limits: [{name: l, requests: 5, period: 1m, key: {type: ApiKey}}]"
        )
    );
    let mut i = inputs(&text);
    let c = compile(&i, 1, None);
    let s = status(&c, "g");
    assert!(s.condition("Accepted").expect("Accepted").status);
    let programmed = s.condition("Programmed").expect("Programmed");
    assert_eq!(
        (programmed.status, programmed.reason),
        (false, "NoSharedStore")
    );
    let d = only_diagnostic(&c);
    assert_eq!(d.field, "spec.scope");
    // The limit is still in place: with no store, its failureMode decides (Closed: 503).
    let rule = find(&c, "any.example", "/users").expect("rule");
    let limit = rule
        .policy
        .steps
        .iter()
        .find_map(|s| match s {
            Step::RateLimit(r) => r.limits.first(),
            _ => None,
        })
        .expect("limit");
    assert_eq!(limit.scope, Scope::Global { fail_open: false });

    i.shared_store = true;
    let c = compile(&i, 1, None);
    assert!(
        status(&c, "g")
            .condition("Programmed")
            .expect("Programmed")
            .status
    );
}

#[test]
fn a_policy_change_recompiles_only_the_route_it_targets() {
    let other = route(
        "other",
        "  hostnames: [other.example]\n  rules:\n  - backendRefs: [{name: users, port: 80}]",
    );
    let base = format!("{BACKENDS}\n---\n{}\n---\n{other}", route("r", TWO_RULES));
    let mut i = inputs(&base);
    let mut cache = RouteCache::default();
    let first = compile_cached(&i, 1, None, &mut cache);
    assert!(limits_at(&first, "/users").is_empty());

    let p = inputs(&policy(
        "p",
        "  targetRef: {kind: GatewayRoute, name: r}\n  limits: [{name: l, requests: 5, period: 1m, key: {type: ClientIP}}]",
    ))
    .policies;
    i.policies = p;
    let second = compile_cached(&i, 2, Some(&first.snapshot), &mut cache);
    assert_eq!(
        limits_at(&second, "/users").len(),
        1,
        "the new policy applies"
    );
    let untouched = |c: &Compiled| {
        let rule = find(c, "other.example", "/").expect("other");
        Arc::as_ptr(&rule.policy)
    };
    assert_eq!(
        untouched(&first),
        untouched(&second),
        "other routes are reused"
    );

    i.policies.clear();
    let third = compile_cached(&i, 3, Some(&second.snapshot), &mut cache);
    assert!(
        limits_at(&third, "/users").is_empty(),
        "a deleted policy stops applying"
    );
}
