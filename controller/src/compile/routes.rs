//! GatewayRoute compile: each rule is validated and compiled on its own, so one bad rule costs
//! only itself. Conversions destructure every field, so a field added to the resource does not
//! compile until it is handled here.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use sluice_proxy::limit::RateLimit;
use sluice_proxy::path;
use sluice_proxy::pipeline::Step;
use sluice_proxy::router::{self, Candidate, HostPattern};
use sluice_proxy::snapshot::{
    Backend, HeaderFilter, PathRewrite, Rule, RulePolicy, Timeouts, Traffic,
};
use smol_str::{SmolStr, ToSmolStr};

use super::auth::{self, SecretIndex};
use super::edge::{self, ServedCertificate};
use super::endpoints::EndpointIndex;
use super::policies::PolicyIndex;
use super::traffic;
use super::{Condition, Diagnostic, Names, ObjectRef, RegexCache, StatusReport};
use crate::resources::{
    Authentication, BackendRef, GatewayRoute, GatewayRouteSpec, HeaderMatch, HeaderModifier,
    HeaderValuePair, PathMatch, PathMatchType, PathModifier, PathModifierType, QueryParamMatch,
    RouteFilters, RouteMatch, RouteRule, RouteTimeouts, UrlRewrite, ValueMatchType, parse_duration,
};

/// Bounds the schema sets, checked again here because standalone manifests never pass through
/// an API server.
const MAX_HOSTNAMES: usize = 16;
const MAX_RULES: usize = 64;
const MAX_MATCHES: usize = 64;
const MAX_BACKENDS: usize = 16;
const MAX_CONDITIONS: usize = 16;
const MAX_WEIGHT: i32 = 1_000_000;

/// Headers no filter or claim may set: they frame the message or describe the connection.
pub(super) const FRAMING_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What one route compiles to, on its own: rule ids count from 0 and tie-breaks leave out the
/// route's rank, so the output can be placed anywhere in a snapshot and reused unchanged when
/// neither the route nor the Services it names changed.
#[derive(Debug)]
pub(super) struct RouteOutput {
    pub rules: Box<[Arc<Rule>]>,
    pub candidates: Box<[(HostPattern, Candidate)]>,
    /// `None` when the source writes no statuses.
    pub status: Option<Arc<StatusReport>>,
    pub diagnostics: Box<[Diagnostic]>,
    /// Certificates of the route's `tls`, by host.
    pub certificates: Box<[ServedCertificate]>,
}

/// Appended to the problem of a rule kept only to refuse its requests.
const REFUSES: &str = "; the rule answers 503 until this is fixed, so that its requests cannot fall through to another rule";

/// Bits of a candidate's tie-break below the route's rank (rule index and match index).
pub(super) const RANK_SHIFT: u32 = 24;

/// A problem with one field.
#[derive(Debug)]
pub(super) struct FieldError {
    pub field: String,
    pub reason: String,
}

pub(super) fn err(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Why a rule was dropped.
enum RuleError {
    /// A field is invalid.
    Invalid(FieldError),
    /// A backend reference does not resolve.
    Unresolved(FieldError),
}

impl From<FieldError> for RuleError {
    fn from(e: FieldError) -> Self {
        RuleError::Invalid(e)
    }
}

/// Compiles one route into `out`: its valid rules into the snapshot, its status, and a
/// diagnostic per problem.
pub(super) fn compile_route(
    route: &GatewayRoute,
    endpoints: &mut EndpointIndex<'_>,
    regexes: &mut RegexCache,
    secrets: &mut SecretIndex<'_>,
    policies: &PolicyIndex<'_>,
    interned: &mut Names,
    statuses: bool,
) -> RouteOutput {
    let object = ObjectRef::of(route);
    let route_id: Arc<str> = format!("{}/{}", object.namespace, object.name).into();
    let GatewayRouteSpec {
        hostnames,
        tls,
        https_redirect,
        authentication,
        rules,
    } = &route.spec;
    let generation = route.metadata.generation;

    // Every route-level problem is reported, not only the first: a user fixing one bad
    // hostname should not discover the next on the following apply.
    let mut route_errors = Vec::new();
    let hosts = compile_hostnames(hostnames).unwrap_or_else(|errors| {
        route_errors.extend(errors);
        Vec::new()
    });
    if rules.is_empty() || rules.len() > MAX_RULES {
        route_errors.push(err(
            "spec.rules",
            format!("must have 1 to {MAX_RULES} rules"),
        ));
    }
    let fingerprint = edge::route_fingerprint(route);
    let (certificates, tls_invalid, tls_unresolved) =
        edge::compile_tls(tls, hostnames, &object.namespace, secrets);
    route_errors.extend(tls_invalid);
    if https_redirect == &Some(true) && tls.is_empty() {
        route_errors.push(err(
            "spec.httpsRedirect",
            "needs spec.tls: without a certificate for the route's hosts the redirect leads nowhere",
        ));
    }
    if !route_errors.is_empty() {
        return RouteOutput {
            rules: Box::default(),
            candidates: Box::default(),
            status: statuses.then(|| {
                Arc::new(StatusReport {
                    object: object.clone(),
                    observed_generation: generation,
                    conditions: vec![Condition::new(
                        "Accepted",
                        false,
                        "UnsupportedValue",
                        summary(route_errors.iter()),
                    )],
                })
            }),
            diagnostics: route_errors
                .into_iter()
                .map(|e| diagnostic(&object, e))
                .collect(),
            certificates: Box::default(),
        };
    }
    let mut out_rules = Vec::new();
    let mut out_candidates = Vec::new();

    let mut accepted = 0;
    let mut invalid = Vec::new();
    let mut unresolved = Vec::new();
    // Unresolved references of rules that still serve (failing closed), such as a Secret, and
    // certificates that cannot be served (their hosts get none; plain HTTP still works).
    let mut unresolved_kept = tls_unresolved;
    let mut names = HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let name = rule.name.clone().unwrap_or_else(|| i.to_smolstr());
        if !names.insert(name.clone()) {
            invalid.push(err(
                format!("spec.rules[{i}].name"),
                format!("duplicate rule name {name:?}"),
            ));
            continue;
        }
        let ctx = RuleContext {
            namespace: &object.namespace,
            route: &route_id,
            route_name: &object.name,
            policies,
            route_auth: authentication.as_deref(),
            index: i,
            tiebreak: (i as u64) << 12,
            cache_id: fingerprint ^ ((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            https_redirect: https_redirect == &Some(true),
        };
        match compile_rule(&ctx, interned.get(&name), rule, endpoints, regexes, secrets) {
            Ok((compiled, candidates, kept_unresolved, refused)) => {
                unresolved_kept.extend(kept_unresolved);
                match refused {
                    None => accepted += 1,
                    Some(RuleError::Invalid(mut e)) => {
                        e.reason.push_str(REFUSES);
                        if !invalid
                            .iter()
                            .any(|x| x.field == e.field && x.reason == e.reason)
                        {
                            invalid.push(e);
                        }
                    }
                    Some(RuleError::Unresolved(mut e)) => {
                        e.reason.push_str(REFUSES);
                        unresolved.push(e);
                    }
                }
                let id = u32::try_from(out_rules.len()).unwrap_or(u32::MAX);
                out_rules.push(Arc::new(compiled));
                for mut candidate in candidates {
                    candidate.rule = id;
                    for host in &hosts {
                        out_candidates.push((host.clone(), candidate.clone()));
                    }
                }
            }
            // An invalid route-level default fails every rule inheriting it: say so once.
            Err(RuleError::Invalid(e))
                if invalid
                    .iter()
                    .any(|x: &FieldError| x.field == e.field && x.reason == e.reason) => {}
            Err(RuleError::Invalid(e)) => invalid.push(e),
            Err(RuleError::Unresolved(e)) => unresolved.push(e),
        }
    }

    // Standalone mode writes no status: it does not keep one per route either.
    let status = statuses.then(|| {
        let mut conditions = Vec::with_capacity(3);
        let dropped = invalid.len() + unresolved.len();
        conditions.push(if accepted > 0 {
            Condition::new(
                "Accepted",
                true,
                "Accepted",
                format!("{accepted} of {} rules accepted", rules.len()),
            )
        } else {
            Condition::new(
                "Accepted",
                false,
                "UnsupportedValue",
                summary(invalid.iter().chain(&unresolved)),
            )
        });
        conditions.push(if unresolved.is_empty() && unresolved_kept.is_empty() {
            Condition::new(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "all references resolved",
            )
        } else {
            let reason = if unresolved.is_empty() {
                "UnresolvedSecret"
            } else {
                "BackendNotFound"
            };
            Condition::new(
                "ResolvedRefs",
                false,
                reason,
                summary(unresolved.iter().chain(&unresolved_kept)),
            )
        });
        if accepted > 0 && dropped > 0 {
            conditions.push(Condition::new(
                "PartiallyInvalid",
                true,
                "UnsupportedValue",
                format!(
                    "dropped {dropped} rule(s): {}",
                    summary(invalid.iter().chain(&unresolved))
                ),
            ));
        }
        Arc::new(StatusReport {
            object: object.clone(),
            observed_generation: generation,
            conditions,
        })
    });
    let diagnostics = invalid
        .into_iter()
        .chain(unresolved)
        .chain(unresolved_kept)
        .map(|e| diagnostic(&object, e))
        .collect();
    RouteOutput {
        rules: out_rules.into_boxed_slice(),
        candidates: out_candidates.into_boxed_slice(),
        status,
        diagnostics,
        certificates: certificates.into_boxed_slice(),
    }
}

fn summary<'a>(errors: impl Iterator<Item = &'a FieldError>) -> String {
    errors
        .map(|e| format!("{}: {}", e.field, e.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

fn diagnostic(object: &ObjectRef, e: FieldError) -> Diagnostic {
    Diagnostic {
        object: object.clone(),
        field: e.field,
        reason: e.reason,
    }
}

fn compile_hostnames(hostnames: &[SmolStr]) -> Result<Vec<HostPattern>, Vec<FieldError>> {
    if hostnames.is_empty() {
        return Ok(vec![HostPattern::Any]);
    }
    if hostnames.len() > MAX_HOSTNAMES {
        return Err(vec![err(
            "spec.hostnames",
            format!("at most {MAX_HOSTNAMES} hostnames"),
        )]);
    }
    let mut seen = HashSet::new();
    let mut hosts = Vec::with_capacity(hostnames.len());
    let mut errors = Vec::new();
    for (i, h) in hostnames.iter().enumerate() {
        let field = || format!("spec.hostnames[{i}]");
        let (wildcard, name) = match h.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, h.as_str()),
        };
        if name.parse::<std::net::IpAddr>().is_ok() {
            errors.push(err(
                field(),
                format!("{h:?} is an IP address; hostnames must be DNS names"),
            ));
            continue;
        }
        if !is_dns_name(name) {
            errors.push(err(
                field(),
                format!(
                    "{h:?} is not a lower-case DNS name (a `*.` prefix is the only wildcard allowed)"
                ),
            ));
            continue;
        }
        let pattern = if wildcard {
            HostPattern::Wildcard(name.into())
        } else {
            HostPattern::Exact(name.into())
        };
        if seen.insert(pattern.clone()) {
            hosts.push(pattern);
        }
    }
    if errors.is_empty() {
        Ok(hosts)
    } else {
        Err(errors)
    }
}

fn is_dns_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

struct RuleContext<'a> {
    namespace: &'a str,
    route: &'a Arc<str>,
    /// The route's own name (without the namespace).
    route_name: &'a str,
    /// The rate-limit policies, by the routes they target.
    policies: &'a PolicyIndex<'a>,
    /// The route's default authentication.
    route_auth: Option<&'a Authentication>,
    index: usize,
    tiebreak: u64,
    /// The id of the rule's cache entries: changes with any change of the route.
    cache_id: u64,
    /// The route's `httpsRedirect`.
    https_redirect: bool,
}

impl RuleContext<'_> {
    fn field(&self, rest: &str) -> String {
        format!("spec.rules[{}].{rest}", self.index)
    }
}

/// A compiled rule, its router candidates, the references it could not resolve but serves
/// without (failing closed), and, for a rule kept only to refuse requests, why.
type CompiledRule = (Rule, Vec<Candidate>, Vec<FieldError>, Option<RuleError>);

fn compile_rule(
    ctx: &RuleContext<'_>,
    name: Arc<str>,
    rule: &RouteRule,
    endpoints: &mut EndpointIndex<'_>,
    regexes: &mut RegexCache,
    secrets: &mut SecretIndex<'_>,
) -> Result<CompiledRule, RuleError> {
    // Every field named, so that a new one does not compile until it is handled; the ones
    // marked `_` are compiled by `compile_rule_body`.
    let RouteRule {
        name: declared_name,
        matches,
        filters: _,
        backend_refs: _,
        timeouts: _,
        authentication,
        authorization,
        load_balancer: _,
        retry: _,
        health_check: _,
        circuit_breaker: _,
        cache: _,
    } = rule;
    if let Some(n) = declared_name
        && !is_dns_label(n)
    {
        return Err(err(
            ctx.field("name"),
            format!("{n:?} must be a lower-case DNS label"),
        )
        .into());
    }
    if matches.len() > MAX_MATCHES {
        return Err(err(
            ctx.field("matches"),
            format!("at most {MAX_MATCHES} matches"),
        )
        .into());
    }
    let default_match = [RouteMatch::default()];
    let matches = if matches.is_empty() {
        &default_match[..]
    } else {
        matches
    };
    let candidates = matches
        .iter()
        .enumerate()
        .map(|(j, m)| compile_match(ctx, j, m, regexes))
        .collect::<Result<Vec<_>, _>>()?;

    // A rule that asks for authentication (its own, or the route's) and fails to compile past
    // its matches is kept, refusing every request: dropped, its requests would fall through to
    // whatever other rule matches them, which may well be an open one.
    let guarded = authorization.is_some()
        || authentication
            .as_deref()
            .or(ctx.route_auth)
            .is_some_and(|a| a.anonymous != Some(true) || a.jwt.is_some() || a.api_key.is_some());
    match compile_rule_body(ctx, &name, rule, matches, endpoints, secrets) {
        Ok((compiled, unresolved)) => Ok((compiled, candidates, unresolved, None)),
        Err(e) if guarded => {
            let policy = RulePolicy {
                route: ctx.route.clone(),
                name,
                rewrite: None,
                timeouts: Timeouts::default(),
                steps: Box::new([Step::Refuse]),
                traffic: Traffic::default().shared(),
                https_redirect: ctx.https_redirect,
                stats: Default::default(),
            };
            Ok((
                Rule::new(Arc::new(policy), Vec::new()),
                candidates,
                Vec::new(),
                Some(e),
            ))
        }
        Err(e) => Err(e),
    }
}

/// Everything of a rule past its matches.
fn compile_rule_body(
    ctx: &RuleContext<'_>,
    name: &Arc<str>,
    rule: &RouteRule,
    matches: &[RouteMatch],
    endpoints: &mut EndpointIndex<'_>,
    secrets: &mut SecretIndex<'_>,
) -> Result<(Rule, Vec<FieldError>), RuleError> {
    let RouteRule {
        filters,
        backend_refs,
        timeouts,
        authentication,
        authorization,
        load_balancer,
        retry,
        health_check,
        circuit_breaker,
        cache,
        ..
    } = rule;
    let RouteFilters {
        url_rewrite,
        request_headers,
        response_headers,
        cors,
        security_headers,
    } = filters.as_deref().cloned().unwrap_or_default();
    let cors = cors
        .map(|c| edge::compile_cors(&ctx.field("filters.cors"), &c))
        .transpose()?;
    let security_headers = security_headers
        .map(|s| edge::compile_security_headers(&ctx.field("filters.securityHeaders"), &s))
        .transpose()?;
    let rewrite = url_rewrite
        .map(|r| compile_rewrite(ctx, &r, matches).map(Box::new))
        .transpose()?;
    let request_headers =
        compile_header_filter(&ctx.field("filters.requestHeaders"), request_headers)?;
    let response_headers =
        compile_header_filter(&ctx.field("filters.responseHeaders"), response_headers)?;
    let timeouts = compile_timeouts(ctx, timeouts.as_deref())?;
    let traffic = traffic::compile(
        &|rest| ctx.field(rest),
        load_balancer.as_deref(),
        retry.as_deref(),
        health_check.as_deref(),
        circuit_breaker.as_deref(),
        &timeouts,
    )?;
    let auth = auth::compile(
        ctx.route_auth,
        authentication.as_deref(),
        authorization.as_deref(),
        &|rest| ctx.field(rest),
        ctx.namespace,
        secrets,
    )?;
    if let Some(authn) = &auth.authenticate {
        // The identity headers are set before the rule's header filter runs: a filter naming one
        // would overwrite (or remove) what the credentials said.
        let claimed = authn
            .jwt
            .iter()
            .flat_map(|p| p.claim_to_headers.iter().map(|c| &c.header));
        let filtered = request_headers
            .set
            .iter()
            .chain(request_headers.add.iter())
            .map(|(n, _)| n)
            .chain(request_headers.remove.iter());
        for name in filtered {
            if claimed.clone().any(|c| c == name) {
                return Err(err(
                    ctx.field("filters.requestHeaders"),
                    format!("{name} carries a verified claim and cannot be changed by a filter"),
                )
                .into());
            }
        }
    }
    let backends = compile_backends(ctx, backend_refs, endpoints)?;

    let cache = cache
        .as_ref()
        .map(|c| {
            edge::compile_cache(
                &ctx.field("cache"),
                c,
                ctx.cache_id,
                auth.authenticate.is_some(),
            )
        })
        .transpose()?;

    let mut steps = Vec::with_capacity(4);
    steps.extend(cors.map(|c| Step::Cors(Box::new(c))));
    steps.extend(auth.authenticate.map(|a| Step::Authenticate(Box::new(a))));
    steps.extend(auth.authorize.map(|a| Step::Authorize(Box::new(a))));
    let limits = ctx.policies.limits_for(ctx.namespace, ctx.route_name, name);
    if !limits.is_empty() {
        steps.push(Step::RateLimit(Box::new(RateLimit::new(limits))));
    }
    if !request_headers.is_empty() {
        steps.push(Step::RequestHeaders(request_headers));
    }
    if !response_headers.is_empty() {
        steps.push(Step::ResponseHeaders(response_headers));
    }
    steps.extend(security_headers.map(|s| Step::SecurityHeaders(Box::new(s))));
    steps.extend(cache.map(|c| Step::Cache(Box::new(c))));
    let policy = RulePolicy {
        route: ctx.route.clone(),
        name: Arc::clone(name),
        rewrite,
        timeouts,
        steps: steps.into_boxed_slice(),
        traffic: traffic.shared(),
        https_redirect: ctx.https_redirect,
        stats: Default::default(),
    };
    Ok((Rule::new(Arc::new(policy), backends), auth.unresolved))
}

fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len()) && is_dns_name(s) && !s.contains('.')
}

fn compile_match(
    ctx: &RuleContext<'_>,
    j: usize,
    m: &RouteMatch,
    regexes: &mut RegexCache,
) -> Result<Candidate, FieldError> {
    let RouteMatch {
        path,
        method,
        headers,
        query_params,
    } = m;
    let field = |rest: &str| ctx.field(&format!("matches[{j}].{rest}"));
    let path = match path {
        None => router::PathMatch::Prefix("/".into()),
        Some(PathMatch { match_type, value }) => match match_type {
            PathMatchType::Exact => router::PathMatch::Exact(
                valid_path(value)
                    .map_err(|r| err(field("path.value"), r))?
                    .into(),
            ),
            PathMatchType::PathPrefix => {
                let p = valid_path(value).map_err(|r| err(field("path.value"), r))?;
                let trimmed = p.trim_end_matches('/');
                router::PathMatch::Prefix(if trimmed.is_empty() { "/" } else { trimmed }.into())
            }
            PathMatchType::RegularExpression => router::PathMatch::Regex(Box::new(
                regexes
                    .anchored(value)
                    .map_err(|r| err(field("path.value"), r))?,
            )),
        },
    };
    let method = method.map(|m| {
        Method::from_bytes(format!("{m:?}").as_bytes()).expect("enum variants are valid methods")
    });
    if headers.len() > MAX_CONDITIONS || query_params.len() > MAX_CONDITIONS {
        return Err(err(
            field("headers"),
            format!("at most {MAX_CONDITIONS} header and query conditions each"),
        ));
    }
    let mut header_names = HashSet::new();
    let headers = headers
        .iter()
        .enumerate()
        .map(|(k, h)| {
            let HeaderMatch {
                match_type,
                name,
                value,
            } = h;
            let f = |rest: &str| field(&format!("headers[{k}].{rest}"));
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| err(f("name"), format!("{name:?} is not a valid header name")))?;
            if !header_names.insert(name.clone()) {
                return Err(err(f("name"), format!("header {name} is matched twice")));
            }
            let value = value_match(*match_type, value, regexes).map_err(|r| err(f("value"), r))?;
            Ok(router::HeaderMatch { name, value })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut query_names = HashSet::new();
    let query = query_params
        .iter()
        .enumerate()
        .map(|(k, q)| {
            let QueryParamMatch {
                match_type,
                name,
                value,
            } = q;
            let f = |rest: &str| field(&format!("queryParams[{k}].{rest}"));
            if name.is_empty() {
                return Err(err(f("name"), "must not be empty"));
            }
            if !query_names.insert(name.clone()) {
                return Err(err(
                    f("name"),
                    format!("query parameter {name:?} is matched twice"),
                ));
            }
            let value = value_match(*match_type, value, regexes).map_err(|r| err(f("value"), r))?;
            Ok(router::QueryMatch {
                name: name.as_str().into(),
                value,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Candidate {
        rule: 0,
        path,
        conditions: router::Conditions::new(method, headers, query),
        tiebreak: ctx.tiebreak | j as u64,
    })
}

fn value_match(
    kind: ValueMatchType,
    value: &str,
    regexes: &mut RegexCache,
) -> Result<router::ValueMatch, String> {
    Ok(match kind {
        ValueMatchType::Exact => router::ValueMatch::Exact(value.into()),
        ValueMatchType::RegularExpression => router::ValueMatch::Regex(regexes.anchored(value)?),
    })
}

/// A configured path must already be in the normal form requests are matched in; otherwise it
/// could never match (or would match something other than what it says).
fn valid_path(value: &str) -> Result<&str, String> {
    if !value.starts_with('/') {
        return Err(format!("{value:?} must start with '/'"));
    }
    if value.contains(['?', '#']) {
        return Err(format!("{value:?} must not contain '?' or '#'"));
    }
    if http::uri::PathAndQuery::try_from(value).is_err() {
        return Err(format!(
            "{value:?} contains characters not allowed in a URI path"
        ));
    }
    match path::normalize(value) {
        Ok(n) if n == value => Ok(value),
        Ok(n) => Err(format!(
            "{value:?} is not normalised (requests are matched as {n:?})"
        )),
        Err(e) => Err(format!("{value:?}: {e}")),
    }
}

fn compile_rewrite(
    ctx: &RuleContext<'_>,
    rewrite: &UrlRewrite,
    matches: &[RouteMatch],
) -> Result<PathRewrite, FieldError> {
    let UrlRewrite {
        path:
            PathModifier {
                modifier_type,
                replace_prefix_match,
                replace_full_path,
            },
    } = rewrite;
    let field = |rest: &str| ctx.field(&format!("filters.urlRewrite.path.{rest}"));
    match modifier_type {
        PathModifierType::ReplacePrefixMatch => {
            if replace_full_path.is_some() {
                return Err(err(
                    field("replaceFullPath"),
                    "conflicts with type ReplacePrefixMatch",
                ));
            }
            let Some(value) = replace_prefix_match else {
                return Err(err(
                    field("replacePrefixMatch"),
                    "required with type ReplacePrefixMatch",
                ));
            };
            for (j, m) in matches.iter().enumerate() {
                if let Some(p) = &m.path
                    && p.match_type != PathMatchType::PathPrefix
                {
                    return Err(err(
                        field("type"),
                        format!(
                            "conflicting rewrite: ReplacePrefixMatch needs PathPrefix matches, \
                             but matches[{j}] uses {:?}",
                            p.match_type
                        ),
                    ));
                }
            }
            let v = valid_path(value).map_err(|r| err(field("replacePrefixMatch"), r))?;
            Ok(PathRewrite::ReplacePrefixMatch(v.into()))
        }
        PathModifierType::ReplaceFullPath => {
            if replace_prefix_match.is_some() {
                return Err(err(
                    field("replacePrefixMatch"),
                    "conflicts with type ReplaceFullPath",
                ));
            }
            let Some(value) = replace_full_path else {
                return Err(err(
                    field("replaceFullPath"),
                    "required with type ReplaceFullPath",
                ));
            };
            let v = valid_path(value).map_err(|r| err(field("replaceFullPath"), r))?;
            Ok(PathRewrite::ReplaceFullPath(v.into()))
        }
    }
}

fn compile_header_filter(
    field: &str,
    modifier: Option<HeaderModifier>,
) -> Result<HeaderFilter, FieldError> {
    let Some(HeaderModifier { set, add, remove }) = modifier else {
        return Ok(HeaderFilter::default());
    };
    let mut seen = HashSet::new();
    let mut name_of = |list: &str, k: usize, raw: &str| -> Result<HeaderName, FieldError> {
        let f = format!("{field}.{list}[{k}]");
        let name = HeaderName::from_bytes(raw.as_bytes()).map_err(|_| {
            err(
                format!("{f}.name"),
                format!("{raw:?} is not a valid header name"),
            )
        })?;
        // Identity comes only from verified credentials; a static filter would let any route
        // author assert a user to the backend.
        if FRAMING_HEADERS.contains(&name.as_str())
            || sluice_proxy::headers::IDENTITY_HEADERS.contains(&&name)
        {
            return Err(err(
                format!("{f}.name"),
                format!("{name} is managed by the gateway and cannot be changed"),
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(err(
                format!("{f}.name"),
                format!("conflicting filter: {name} appears more than once"),
            ));
        }
        Ok(name)
    };
    let pairs =
        |list: &str,
         items: &[HeaderValuePair],
         name_of: &mut dyn FnMut(&str, usize, &str) -> Result<HeaderName, FieldError>| {
            items
                .iter()
                .enumerate()
                .map(|(k, HeaderValuePair { name, value })| {
                    let name = name_of(list, k, name)?;
                    let value = HeaderValue::from_str(value).map_err(|_| {
                        err(
                            format!("{field}.{list}[{k}].value"),
                            "not a valid header value",
                        )
                    })?;
                    Ok((name, value))
                })
                .collect::<Result<Vec<_>, FieldError>>()
        };
    let set = pairs("set", &set, &mut name_of)?;
    let add = pairs("add", &add, &mut name_of)?;
    let remove = remove
        .iter()
        .enumerate()
        .map(|(k, n)| {
            name_of("remove", k, n).map_err(|mut e| {
                e.field = format!("{field}.remove[{k}]");
                e
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HeaderFilter {
        set: set.into(),
        add: add.into(),
        remove: remove.into(),
    })
}

fn compile_timeouts(
    ctx: &RuleContext<'_>,
    timeouts: Option<&RouteTimeouts>,
) -> Result<Timeouts, FieldError> {
    let Some(RouteTimeouts {
        request,
        backend_request,
    }) = timeouts
    else {
        return Ok(Timeouts::default());
    };
    let parse = |name: &str, v: &Option<String>| -> Result<Option<Duration>, FieldError> {
        v.as_deref()
            .map(|s| {
                parse_duration(s).ok_or_else(|| {
                    err(
                        ctx.field(&format!("timeouts.{name}")),
                        format!("{s:?} is not a duration like 15s, 250ms or 1m30s"),
                    )
                })
            })
            .transpose()
    };
    let request = parse("request", request)?;
    let backend_request = parse("backendRequest", backend_request)?;
    if let (Some(r), Some(b)) = (request, backend_request)
        && b > r
    {
        return Err(err(
            ctx.field("timeouts.backendRequest"),
            "must not be longer than timeouts.request",
        ));
    }
    if request == Some(Duration::ZERO) || backend_request == Some(Duration::ZERO) {
        return Err(err(
            ctx.field("timeouts"),
            "a timeout of zero would fail every request",
        ));
    }
    Ok(Timeouts {
        request,
        backend_request,
    })
}

fn compile_backends(
    ctx: &RuleContext<'_>,
    refs: &[BackendRef],
    endpoints: &mut EndpointIndex<'_>,
) -> Result<Vec<Backend>, RuleError> {
    if refs.is_empty() || refs.len() > MAX_BACKENDS {
        return Err(err(
            ctx.field("backendRefs"),
            format!("must have 1 to {MAX_BACKENDS} backends"),
        )
        .into());
    }
    refs.iter()
        .enumerate()
        .map(|(k, BackendRef { name, port, weight })| {
            let field = |rest: &str| ctx.field(&format!("backendRefs[{k}]{rest}"));
            let Ok(port_u16) = u16::try_from(*port) else {
                return Err(err(field(".port"), format!("{port} is not a port (1-65535)")).into());
            };
            if port_u16 == 0 {
                return Err(err(field(".port"), "0 is not a port (1-65535)").into());
            }
            let weight = weight.unwrap_or(1);
            if !(0..=MAX_WEIGHT).contains(&weight) {
                return Err(err(
                    field(".weight"),
                    format!("{weight} is outside 0-{MAX_WEIGHT}"),
                )
                .into());
            }
            let resolved = endpoints
                .resolve(ctx.namespace, name, *port)
                .map_err(|reason| RuleError::Unresolved(err(field(""), reason)))?;
            Ok(Backend::new(
                resolved.service,
                port_u16,
                weight.unsigned_abs(),
                resolved.ready,
                resolved.not_ready,
            ))
        })
        .collect()
}
