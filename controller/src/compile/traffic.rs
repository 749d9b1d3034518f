//! A rule's traffic settings (`loadBalancer`, `retry`, `healthCheck`, `circuitBreaker`)
//! validated and converted into the snapshot's [`Traffic`], with the defaults filled in.

use std::time::Duration;

use http::HeaderName;
use sluice_proxy::balance::{Balancing, HashOn};
use sluice_proxy::circuit::CircuitLimits;
use sluice_proxy::health::{ActiveHealth, PassiveHealth};
use sluice_proxy::retry::RetryPolicy;
use sluice_proxy::snapshot::{Timeouts, Traffic};

use super::routes::{FieldError, err};
use crate::resources::{
    ActiveHealthCheck, CircuitBreaker, ConsistentHash, HashCookie, HealthCheck, LoadBalancer,
    LoadBalancerType, PassiveHealthCheck, Retry, parse_duration,
};

/// Defaults, as documented on the resource.
const RETRY_ATTEMPTS: i32 = 2;
const RETRY_BACKOFF: Duration = Duration::from_millis(25);
const RETRY_CODES: [u16; 3] = [502, 503, 504];
const MAX_RETRIES: i32 = 10;
const CONSECUTIVE_FAILURES: i32 = 5;
const EJECTION_TIME: Duration = Duration::from_secs(30);
const MAX_EJECTION_PERCENT: i32 = 50;
const CHECK_INTERVAL: Duration = Duration::from_secs(10);
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
const HEALTHY_THRESHOLD: i32 = 2;
const UNHEALTHY_THRESHOLD: i32 = 3;
const CIRCUIT_DEFAULT: i32 = 1024;
const CIRCUIT_MAX: i32 = 1_000_000;

/// The settings of one rule; `field` turns a path below the rule into its full field path.
pub(super) fn compile(
    field: &dyn Fn(&str) -> String,
    load_balancer: Option<&LoadBalancer>,
    retry: Option<&Retry>,
    health_check: Option<&HealthCheck>,
    circuit_breaker: Option<&CircuitBreaker>,
    timeouts: &Timeouts,
) -> Result<Traffic, FieldError> {
    let HealthCheck { passive, active } = health_check.cloned().unwrap_or_default();
    Ok(Traffic {
        balancing: load_balancer
            .map(|lb| balancing(field, lb))
            .transpose()?
            .unwrap_or_default(),
        retry: retry
            .map(|r| retry_policy(field, r, timeouts))
            .transpose()?,
        passive: passive.map(|p| passive_check(field, &p)).transpose()?,
        active: active.map(|a| active_check(field, &a)).transpose()?,
        circuit: circuit_breaker.map(|c| circuit(field, c)).transpose()?,
    })
}

fn duration(field: String, value: Option<&str>, default: Duration) -> Result<Duration, FieldError> {
    match value {
        None => Ok(default),
        Some(s) => parse_duration(s).ok_or_else(|| {
            err(
                field,
                format!("{s:?} is not a duration like 15s, 250ms or 1m30s"),
            )
        }),
    }
}

fn bounded(
    field: String,
    value: Option<i32>,
    default: i32,
    min: i32,
    max: i32,
) -> Result<u32, FieldError> {
    let v = value.unwrap_or(default);
    if !(min..=max).contains(&v) {
        return Err(err(field, format!("{v} must be between {min} and {max}")));
    }
    Ok(u32::try_from(v).unwrap_or(0))
}

fn balancing(field: &dyn Fn(&str) -> String, lb: &LoadBalancer) -> Result<Balancing, FieldError> {
    let LoadBalancer {
        lb_type,
        consistent_hash,
    } = lb;
    match (lb_type, consistent_hash) {
        (LoadBalancerType::ConsistentHash, Some(on)) => {
            Ok(Balancing::ConsistentHash(hash_on(field, on)?))
        }
        (LoadBalancerType::ConsistentHash, None) => Err(err(
            field("loadBalancer.consistentHash"),
            "type ConsistentHash needs consistentHash with one of header, cookie, sourceIP or claim",
        )),
        (other, Some(_)) => Err(err(
            field("loadBalancer.consistentHash"),
            format!("is only used with type ConsistentHash, not {other:?}"),
        )),
        (LoadBalancerType::LeastRequest, None) => Ok(Balancing::LeastRequest),
        (LoadBalancerType::RoundRobin, None) => Ok(Balancing::RoundRobin),
        (LoadBalancerType::Random, None) => Ok(Balancing::Random),
    }
}

fn hash_on(field: &dyn Fn(&str) -> String, on: &ConsistentHash) -> Result<HashOn, FieldError> {
    let ConsistentHash {
        header,
        cookie,
        source_ip,
        claim,
    } = on;
    let set = [
        header.is_some(),
        cookie.is_some(),
        source_ip.is_some(),
        claim.is_some(),
    ];
    if set.iter().filter(|&&s| s).count() != 1 {
        return Err(err(
            field("loadBalancer.consistentHash"),
            "needs exactly one of header, cookie, sourceIP or claim",
        ));
    }
    if let Some(h) = header {
        return HeaderName::from_bytes(h.as_bytes())
            .map(HashOn::Header)
            .map_err(|_| {
                err(
                    field("loadBalancer.consistentHash.header"),
                    format!("{h:?} is not a valid header name"),
                )
            });
    }
    if let Some(HashCookie { name, ttl }) = cookie {
        // RFC 6265 section 4.1.1: a cookie name is an RFC 7230 token.
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(err(
                field("loadBalancer.consistentHash.cookie.name"),
                format!("{name:?} is not a valid cookie name"),
            ));
        }
        let ttl = ttl
            .as_deref()
            .map(|t| {
                duration(
                    field("loadBalancer.consistentHash.cookie.ttl"),
                    Some(t),
                    Duration::ZERO,
                )
            })
            .transpose()?;
        if ttl.is_some_and(|t| t < Duration::from_secs(1)) {
            return Err(err(
                field("loadBalancer.consistentHash.cookie.ttl"),
                "must be at least 1s (Max-Age counts seconds)",
            ));
        }
        return Ok(HashOn::Cookie {
            name: name.as_str().into(),
            ttl,
        });
    }
    if let Some(c) = claim {
        if c.is_empty() {
            return Err(err(
                field("loadBalancer.consistentHash.claim"),
                "must not be empty",
            ));
        }
        return Ok(HashOn::Claim(c.as_str().into()));
    }
    Ok(HashOn::SourceIp)
}

fn retry_policy(
    field: &dyn Fn(&str) -> String,
    r: &Retry,
    timeouts: &Timeouts,
) -> Result<RetryPolicy, FieldError> {
    let Retry {
        attempts,
        backoff,
        codes,
        per_try_timeout,
        non_idempotent,
    } = r;
    let attempts = bounded(
        field("retry.attempts"),
        *attempts,
        RETRY_ATTEMPTS,
        0,
        MAX_RETRIES,
    )?;
    let backoff = duration(field("retry.backoff"), backoff.as_deref(), RETRY_BACKOFF)?;
    if backoff > Duration::from_secs(10) {
        return Err(err(field("retry.backoff"), "must be at most 10s"));
    }
    let codes: Vec<u16> = match codes {
        None => RETRY_CODES.to_vec(),
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, &c) in list.iter().enumerate() {
                let code = u16::try_from(c).ok().filter(|c| (400..=599).contains(c));
                let Some(code) = code else {
                    return Err(err(
                        field(&format!("retry.codes[{i}]")),
                        format!("{c} is not a status between 400 and 599"),
                    ));
                };
                if !out.contains(&code) {
                    out.push(code);
                }
            }
            out
        }
    };
    let per_try = per_try_timeout
        .as_deref()
        .map(|t| duration(field("retry.perTryTimeout"), Some(t), Duration::ZERO))
        .transpose()?;
    if per_try == Some(Duration::ZERO) {
        return Err(err(
            field("retry.perTryTimeout"),
            "a timeout of zero would fail every attempt",
        ));
    }
    if let (Some(p), Some(r)) = (per_try, timeouts.request)
        && p > r
    {
        return Err(err(
            field("retry.perTryTimeout"),
            "must not be longer than timeouts.request",
        ));
    }
    Ok(RetryPolicy::new(
        attempts,
        backoff,
        codes.into(),
        per_try,
        non_idempotent.unwrap_or(false),
    ))
}

fn passive_check(
    field: &dyn Fn(&str) -> String,
    p: &PassiveHealthCheck,
) -> Result<PassiveHealth, FieldError> {
    let PassiveHealthCheck {
        consecutive_failures,
        ejection_time,
        max_ejection_percent,
    } = p;
    let f = |rest: &str| field(&format!("healthCheck.passive.{rest}"));
    let ejection_time = duration(f("ejectionTime"), ejection_time.as_deref(), EJECTION_TIME)?;
    if ejection_time.is_zero() || ejection_time > Duration::from_secs(3600) {
        return Err(err(f("ejectionTime"), "must be more than 0 and at most 1h"));
    }
    Ok(PassiveHealth {
        consecutive_failures: bounded(
            f("consecutiveFailures"),
            *consecutive_failures,
            CONSECUTIVE_FAILURES,
            1,
            1000,
        )?,
        ejection_time,
        max_ejection_percent: bounded(
            f("maxEjectionPercent"),
            *max_ejection_percent,
            MAX_EJECTION_PERCENT,
            0,
            100,
        )? as u8,
    })
}

fn active_check(
    field: &dyn Fn(&str) -> String,
    a: &ActiveHealthCheck,
) -> Result<ActiveHealth, FieldError> {
    let ActiveHealthCheck {
        path,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
    } = a;
    let f = |rest: &str| field(&format!("healthCheck.active.{rest}"));
    let path = path.as_deref().unwrap_or("/");
    if !path.starts_with('/') || http::uri::PathAndQuery::try_from(path).is_err() {
        return Err(err(
            f("path"),
            format!("{path:?} must be an absolute path such as /health"),
        ));
    }
    let interval = duration(f("interval"), interval.as_deref(), CHECK_INTERVAL)?;
    if interval < Duration::from_millis(100) || interval > Duration::from_secs(3600) {
        return Err(err(f("interval"), "must be between 100ms and 1h"));
    }
    let timeout = duration(
        f("timeout"),
        timeout.as_deref(),
        CHECK_TIMEOUT.min(interval),
    )?;
    if timeout.is_zero() || timeout > interval {
        return Err(err(
            f("timeout"),
            "must be more than 0 and at most the interval",
        ));
    }
    Ok(ActiveHealth {
        path: path.into(),
        interval,
        timeout,
        healthy_threshold: bounded(
            f("healthyThreshold"),
            *healthy_threshold,
            HEALTHY_THRESHOLD,
            1,
            100,
        )?,
        unhealthy_threshold: bounded(
            f("unhealthyThreshold"),
            *unhealthy_threshold,
            UNHEALTHY_THRESHOLD,
            1,
            100,
        )?,
    })
}

fn circuit(
    field: &dyn Fn(&str) -> String,
    c: &CircuitBreaker,
) -> Result<CircuitLimits, FieldError> {
    let CircuitBreaker {
        max_connections,
        max_pending_requests,
        max_requests,
    } = c;
    let f = |rest: &str| field(&format!("circuitBreaker.{rest}"));
    Ok(CircuitLimits {
        max_connections: bounded(
            f("maxConnections"),
            *max_connections,
            CIRCUIT_DEFAULT,
            1,
            CIRCUIT_MAX,
        )?,
        max_pending_requests: bounded(
            f("maxPendingRequests"),
            *max_pending_requests,
            CIRCUIT_DEFAULT,
            0,
            CIRCUIT_MAX,
        )?,
        max_requests: bounded(
            f("maxRequests"),
            *max_requests,
            CIRCUIT_DEFAULT,
            1,
            CIRCUIT_MAX,
        )?,
    })
}
