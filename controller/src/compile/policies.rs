//! RateLimitPolicy compile: each policy is validated on its own into limits; the routes it
//! targets put them in a `RateLimit` step of the rules named (see `routes`), and its status says
//! whether it was accepted and is in force.
//!
//! A policy with any invalid field is refused whole (`Accepted=False` naming the field): half a
//! policy would limit differently from what its author wrote. Its target keeps serving.

use std::collections::HashSet;
use std::sync::Arc;

use http::HeaderName;
use sluice_proxy::limit::{Limit, LimitKey, Rate, Scope};
use smol_str::{SmolStr, ToSmolStr};

use super::routes::{FieldError, err};
use super::{Condition, Diagnostic, FastMap, ObjectRef, StatusReport};
use crate::resources::{
    FailureMode, GatewayRoute, LimitKeyType, LimitScope, RateLimitPolicy, RateLimitPolicySpec,
    parse_duration,
};

/// Bounds the schema sets, checked again for manifests that never pass an API server.
const MAX_LIMITS: usize = 16;

/// One limit of an accepted policy, before it is placed in a rule.
#[derive(Debug, Clone)]
struct LimitTemplate {
    name: Arc<str>,
    rate: Rate,
    key: LimitKey,
}

/// A policy that passed validation.
#[derive(Debug)]
pub(super) struct ValidPolicy {
    /// `namespace/name`.
    id: Arc<str>,
    /// The rule targeted; `None`: every rule of the route.
    rule: Option<String>,
    scope: Scope,
    limits: Vec<LimitTemplate>,
}

/// Every policy, validated, by the route it targets.
pub(super) struct PolicyIndex<'a> {
    policies: Vec<(&'a Arc<RateLimitPolicy>, Result<ValidPolicy, FieldError>)>,
    /// `(namespace, route)` to indexes into `policies`, in `namespace/name` order.
    by_route: FastMap<(&'a str, &'a str), Vec<usize>>,
}

impl<'a> PolicyIndex<'a> {
    pub(super) fn new(policies: &'a [Arc<RateLimitPolicy>]) -> Self {
        let mut sorted: Vec<&Arc<RateLimitPolicy>> = policies.iter().collect();
        sorted.sort_by_key(|p| (p.metadata.namespace.as_deref(), p.metadata.name.as_deref()));
        let mut by_route: FastMap<(&str, &str), Vec<usize>> = FastMap::default();
        let policies: Vec<_> = sorted.into_iter().map(|p| (p, validate(p))).collect();
        for (i, (p, _)) in policies.iter().enumerate() {
            let ns = p.metadata.namespace.as_deref().unwrap_or("default");
            by_route
                .entry((ns, p.spec.target_ref.name.as_str()))
                .or_default()
                .push(i);
        }
        PolicyIndex { policies, by_route }
    }

    /// The addresses of the policy objects targeting route `namespace/name`, accepted or not:
    /// they key the route cache, so any change to them recompiles the route.
    pub(super) fn addresses_targeting(&self, namespace: &str, name: &str) -> Box<[usize]> {
        self.by_route
            .get(&(namespace, name))
            .into_iter()
            .flatten()
            .map(|&i| Arc::as_ptr(self.policies[i].0) as usize)
            .collect()
    }

    /// The limits rule `rule` of route `namespace/name` must enforce, in policy order.
    pub(super) fn limits_for(&self, namespace: &str, route: &str, rule: &str) -> Vec<Limit> {
        let Some(indexes) = self.by_route.get(&(namespace, route)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for &i in indexes {
            let Ok(policy) = &self.policies[i].1 else {
                continue;
            };
            if policy.rule.as_deref().is_some_and(|r| r != rule) {
                continue;
            }
            for l in &policy.limits {
                out.push(Limit::new(
                    Arc::clone(&policy.id),
                    Arc::clone(&l.name),
                    l.rate,
                    l.key.clone(),
                    policy.scope,
                ));
            }
        }
        // Per-client limits first, then shared `Route` buckets: checking stops at the first
        // refusal, so a client over its own limit does not drain everyone's shared budget.
        out.sort_by_key(|l| l.key == LimitKey::Route);
        out
    }

    /// A status per policy, and a diagnostic per problem. `programmed` holds the
    /// `(namespace/route, rule)` of every rule in the snapshot; `shared_store` says whether
    /// `Global` limits have a Redis.
    pub(super) fn statuses(
        &self,
        routes: &[Arc<GatewayRoute>],
        programmed: &HashSet<(&str, &str)>,
        shared_store: bool,
        statuses: &mut Vec<StatusReport>,
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        let routes: FastMap<(&str, &str), &GatewayRoute> = routes
            .iter()
            .filter_map(|r| {
                let ns = r.metadata.namespace.as_deref().unwrap_or("default");
                Some(((ns, r.metadata.name.as_deref()?), &**r))
            })
            .collect();
        for (policy, validated) in &self.policies {
            let object = ObjectRef::of(&***policy);
            let target = &policy.spec.target_ref;
            let accepted = validated.as_ref().map_err(clone_error).and_then(|valid| {
                let route = routes
                    .get(&(object.namespace.as_str(), target.name.as_str()))
                    .ok_or_else(|| {
                        err(
                            "spec.targetRef.name",
                            format!(
                                "GatewayRoute {}/{} not found; the policy applies once it exists",
                                object.namespace, target.name
                            ),
                        )
                    })?;
                if let Some(rule) = &target.rule
                    && !route_rule_names(route).any(|n| n == *rule)
                {
                    return Err(err(
                        "spec.targetRef.rule",
                        format!(
                            "GatewayRoute {}/{} has no rule named {rule:?}",
                            object.namespace, target.name
                        ),
                    ));
                }
                Ok(valid)
            });
            let conditions = match accepted {
                Err(e) => {
                    let reason = if e.field.starts_with("spec.targetRef") {
                        "TargetNotFound"
                    } else {
                        "Invalid"
                    };
                    let message = format!("{}: {}", e.field, e.reason);
                    diagnostics.push(Diagnostic {
                        object: object.clone(),
                        field: e.field,
                        reason: e.reason,
                    });
                    vec![
                        Condition::new("Accepted", false, reason, message.clone()),
                        Condition::new("Programmed", false, reason, message),
                    ]
                }
                Ok(valid) => {
                    let route_id = format!("{}/{}", object.namespace, target.name);
                    let in_force = programmed.iter().any(|(r, rule)| {
                        *r == route_id && valid.rule.as_deref().is_none_or(|t| t == *rule)
                    });
                    let programmed = if matches!(valid.scope, Scope::Global { .. }) && !shared_store
                    {
                        let message = "scope Global needs --redis; until then the failureMode decides every request";
                        diagnostics.push(Diagnostic {
                            object: object.clone(),
                            field: "spec.scope".to_owned(),
                            reason: message.to_owned(),
                        });
                        Condition::new("Programmed", false, "NoSharedStore", message)
                    } else if in_force {
                        Condition::new("Programmed", true, "Programmed", "limits are enforced")
                    } else {
                        Condition::new(
                            "Programmed",
                            false,
                            "TargetNotProgrammed",
                            format!(
                                "the targeted rules of GatewayRoute {route_id} are not serving (see its status)"
                            ),
                        )
                    };
                    vec![
                        Condition::new("Accepted", true, "Accepted", accepted_message(valid)),
                        programmed,
                    ]
                }
            };
            statuses.push(StatusReport {
                object,
                observed_generation: policy.metadata.generation,
                conditions,
            });
        }
    }
}

fn clone_error(e: &FieldError) -> FieldError {
    err(e.field.clone(), e.reason.clone())
}

/// The names rules of `route` go by: their `name`, or their index.
fn route_rule_names(route: &GatewayRoute) -> impl Iterator<Item = SmolStr> + '_ {
    route
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| r.name.clone().unwrap_or_else(|| i.to_smolstr()))
}

fn accepted_message(policy: &ValidPolicy) -> String {
    let mut message = format!("{} limit(s)", policy.limits.len());
    for l in &policy.limits {
        match &l.key {
            LimitKey::Claim(claim) => message.push_str(&format!(
                "; {}: requests without a verified {claim:?} claim are counted by client address",
                l.name
            )),
            LimitKey::ApiKey => message.push_str(&format!(
                "; {}: requests without an API key are counted by client address",
                l.name
            )),
            LimitKey::Header(h) => message.push_str(&format!(
                "; {}: requests without {h} share one bucket",
                l.name
            )),
            LimitKey::ClientIp | LimitKey::Route => {}
        }
    }
    message
}

fn validate(policy: &RateLimitPolicy) -> Result<ValidPolicy, FieldError> {
    let RateLimitPolicySpec {
        target_ref,
        limits,
        scope,
        failure_mode,
    } = &policy.spec;
    if target_ref.name.is_empty() {
        return Err(err("spec.targetRef.name", "must name a GatewayRoute"));
    }
    if limits.is_empty() || limits.len() > MAX_LIMITS {
        return Err(err(
            "spec.limits",
            format!("must have 1 to {MAX_LIMITS} limits"),
        ));
    }
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(limits.len());
    for (i, limit) in limits.iter().enumerate() {
        let field = |rest: &str| format!("spec.limits[{i}].{rest}");
        if limit.name.is_empty()
            || limit.name.len() > 63
            || !limit
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(err(
                field("name"),
                format!("{:?} must be a lower-case DNS label", limit.name),
            ));
        }
        if !names.insert(limit.name.as_str()) {
            return Err(err(
                field("name"),
                format!("duplicate limit name {:?}", limit.name),
            ));
        }
        if limit.requests < 1 {
            return Err(err(
                field("requests"),
                format!("{} must be at least 1", limit.requests),
            ));
        }
        let burst = limit.burst.unwrap_or(0);
        if burst < 0 {
            return Err(err(field("burst"), format!("{burst} must not be negative")));
        }
        let period = parse_duration(&limit.period).ok_or_else(|| {
            err(
                field("period"),
                format!("{:?} is not a duration like 1m, 30s or 1h", limit.period),
            )
        })?;
        let rate = Rate::new(limit.requests as u64, period, burst as u64).ok_or_else(|| {
            err(
                field("requests"),
                format!(
                    "{} per {} with burst {burst} is not a usable rate: at least 1 ms per period, 1 µs per request, and at most {} requests plus burst",
                    limit.requests,
                    limit.period,
                    sluice_proxy::limit::MAX_CAPACITY
                ),
            )
        })?;
        let name = limit.key.name.as_deref().map(str::trim);
        let key = match (limit.key.key_type, name) {
            (LimitKeyType::ClientIP, None) => LimitKey::ClientIp,
            (LimitKeyType::ApiKey, None) => LimitKey::ApiKey,
            (LimitKeyType::Route, None) => LimitKey::Route,
            (LimitKeyType::ClientIP | LimitKeyType::ApiKey | LimitKeyType::Route, Some(_)) => {
                return Err(err(
                    field("key.name"),
                    "only Header and Claim keys take a name",
                ));
            }
            (LimitKeyType::Header, Some(n)) if !n.is_empty() => {
                HeaderName::from_bytes(n.as_bytes())
                    .map(LimitKey::Header)
                    .map_err(|_| err(field("key.name"), format!("{n:?} is not a header name")))?
            }
            (LimitKeyType::Claim, Some(n)) if !n.is_empty() => LimitKey::Claim(n.into()),
            (LimitKeyType::Header | LimitKeyType::Claim, _) => {
                return Err(err(
                    field("key.name"),
                    format!("a {:?} key needs the name to count by", limit.key.key_type),
                ));
            }
        };
        out.push(LimitTemplate {
            name: limit.name.as_str().into(),
            rate,
            key,
        });
    }
    let scope = match scope {
        LimitScope::Local => Scope::Local,
        LimitScope::Global => Scope::Global {
            fail_open: *failure_mode == FailureMode::Open,
        },
    };
    let object = ObjectRef::of(policy);
    Ok(ValidPolicy {
        id: format!("{}/{}", object.namespace, object.name).into(),
        rule: target_ref.rule.clone(),
        scope,
        limits: out,
    })
}
