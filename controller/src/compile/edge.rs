//! Compile of a route's edge settings: `tls` certificates, and each rule's `cors`,
//! `securityHeaders` and `cache`.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use sluice_proxy::cache::CachePolicy;
use sluice_proxy::cors::{Cors as CorsStep, OriginPattern};
use sluice_proxy::security_headers::{DEFAULTS, SecurityHeaders as SecurityStep};
use smol_str::SmolStr;

use super::auth::SecretIndex;
use super::routes::{FieldError, err};
use crate::resources::{
    Cache, Cors, GatewayRoute, RouteTls, SecurityHeaders, parse_duration, parse_size,
};

/// Largest `maxEntrySize`: a cached body is held whole in memory.
const MAX_ENTRY_SIZE: u64 = 64 << 20;
const DEFAULT_ENTRY_SIZE: u64 = 1 << 20;
const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// A certificate one route serves for one host.
#[derive(Debug, Clone)]
pub(super) struct ServedCertificate {
    pub host: String,
    pub key: Arc<rustls::sign::CertifiedKey>,
    /// `namespace/name` of its Secret.
    pub secret: Arc<str>,
}

/// The certificates of a route's `tls` entries; a Secret that is missing or does not parse is
/// reported (`ResolvedRefs=False`) and its hosts get no certificate, while every other entry
/// serves.
pub(super) fn compile_tls(
    tls: &[RouteTls],
    hostnames: &[SmolStr],
    namespace: &str,
    secrets: &mut SecretIndex<'_>,
) -> (Vec<ServedCertificate>, Vec<FieldError>, Vec<FieldError>) {
    let mut served = Vec::new();
    let mut invalid = Vec::new();
    let mut unresolved = Vec::new();
    for (i, entry) in tls.iter().enumerate() {
        let field = format!("spec.tls[{i}]");
        let hosts = if entry.hosts.is_empty() {
            hostnames
        } else {
            &entry.hosts
        };
        if hosts.is_empty() {
            invalid.push(err(
                format!("{field}.hosts"),
                "a certificate needs hosts to be chosen by SNI: list them here or in spec.hostnames",
            ));
            continue;
        }
        if let Some(bad) = hosts.iter().find(|h| !valid_host(h)) {
            invalid.push(err(
                format!("{field}.hosts"),
                format!("{bad:?} is not a host name or *.suffix wildcard"),
            ));
            continue;
        }
        let name = &entry.secret_name;
        let secret_field = format!("{field}.secretName");
        let Some(secret_type) = secrets.secret_type(namespace, name) else {
            unresolved.push(err(
                secret_field,
                format!("Secret {namespace}/{name} not found: its hosts have no certificate"),
            ));
            continue;
        };
        if let Some(t) = secret_type.filter(|t| *t != "kubernetes.io/tls") {
            unresolved.push(err(
                secret_field,
                format!("Secret {namespace}/{name} is of type {t}, not kubernetes.io/tls"),
            ));
            continue;
        }
        let (cert, key) = (
            secrets.value(namespace, name, "tls.crt"),
            secrets.value(namespace, name, "tls.key"),
        );
        let (Some(cert), Some(key)) = (cert, key) else {
            unresolved.push(err(
                secret_field,
                format!("Secret {namespace}/{name} needs both tls.crt and tls.key"),
            ));
            continue;
        };
        match sluice_proxy::tls::certified_key(&cert, &key) {
            Ok(certified) => {
                let secret: Arc<str> = format!("{namespace}/{name}").into();
                for host in hosts {
                    served.push(ServedCertificate {
                        host: host.to_ascii_lowercase(),
                        key: Arc::clone(&certified),
                        secret: Arc::clone(&secret),
                    });
                }
            }
            Err(e) => unresolved.push(err(
                secret_field,
                format!("Secret {namespace}/{name}: {e}: its hosts have no certificate"),
            )),
        }
    }
    (served, invalid, unresolved)
}

fn valid_host(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `filters.cors`.
pub(super) fn compile_cors(field: &str, cors: &Cors) -> Result<CorsStep, FieldError> {
    let Cors {
        allow_origins,
        allow_methods,
        allow_headers,
        expose_headers,
        allow_credentials,
        max_age,
    } = cors;
    if allow_origins.is_empty() {
        return Err(err(
            format!("{field}.allowOrigins"),
            "list at least one origin, such as https://app.example.com (or \"*\")",
        ));
    }
    let mut origins = Vec::with_capacity(allow_origins.len());
    for (i, o) in allow_origins.iter().enumerate() {
        origins.push(
            OriginPattern::parse(o).map_err(|e| err(format!("{field}.allowOrigins[{i}]"), e))?,
        );
    }
    let credentials = allow_credentials.unwrap_or(false);
    if credentials && origins.contains(&OriginPattern::Any) {
        return Err(err(
            format!("{field}.allowCredentials"),
            "cannot be true with allowOrigins \"*\": browsers refuse credentials for a wildcard origin; list the origins",
        ));
    }
    let mut methods = Vec::with_capacity(allow_methods.len());
    for (i, m) in allow_methods.iter().enumerate() {
        let method = Method::from_bytes(m.as_bytes())
            .ok()
            .filter(|_| m.bytes().all(|b| b.is_ascii_uppercase()))
            .ok_or_else(|| {
                err(
                    format!("{field}.allowMethods[{i}]"),
                    format!("{m:?} is not a method: write it in capitals, such as GET or POST"),
                )
            })?;
        methods.push(method);
    }
    let any_header = allow_headers.iter().any(|h| h == "*");
    if any_header && credentials {
        return Err(err(
            format!("{field}.allowHeaders"),
            "\"*\" does not mean any header when allowCredentials is true (browsers take it literally): list the headers",
        ));
    }
    let names = |list: &[String], what: &str| -> Result<Vec<String>, FieldError> {
        list.iter()
            .enumerate()
            .filter(|(_, h)| *h != "*")
            .map(|(i, h)| {
                HeaderName::from_bytes(h.as_bytes())
                    .map(|_| h.clone())
                    .map_err(|_| {
                        err(
                            format!("{field}.{what}[{i}]"),
                            format!("{h:?} is not a header name"),
                        )
                    })
            })
            .collect()
    };
    let headers = names(allow_headers, "allowHeaders")?;
    let expose = names(expose_headers, "exposeHeaders")?;
    let max_age = max_age
        .as_deref()
        .map(|d| {
            parse_duration(d).ok_or_else(|| {
                err(
                    format!("{field}.maxAge"),
                    format!("{d:?} is not a duration such as \"10m\""),
                )
            })
        })
        .transpose()?;
    CorsStep::new(
        origins,
        methods,
        (!any_header).then_some(headers),
        expose,
        credentials,
        max_age,
    )
    .map_err(|e| err(field, e))
}

/// `filters.securityHeaders`.
pub(super) fn compile_security_headers(
    field: &str,
    headers: &SecurityHeaders,
) -> Result<SecurityStep, FieldError> {
    let SecurityHeaders {
        strict_transport_security,
        content_type_options,
        frame_options,
        referrer_policy,
        cross_origin_opener_policy,
        content_security_policy,
        permissions_policy,
        remove,
        override_backend,
    } = headers;
    let given = [
        ("strictTransportSecurity", strict_transport_security),
        ("contentTypeOptions", content_type_options),
        ("frameOptions", frame_options),
        ("referrerPolicy", referrer_policy),
        ("crossOriginOpenerPolicy", cross_origin_opener_policy),
    ];
    let mut removed = Vec::new();
    for (i, name) in remove.iter().enumerate() {
        let lower = name.to_ascii_lowercase();
        let known = DEFAULTS.iter().any(|(n, _)| *n == lower)
            || lower == "content-security-policy"
            || lower == "permissions-policy";
        if !known {
            let names: Vec<&str> = DEFAULTS.iter().map(|(n, _)| *n).collect();
            return Err(err(
                format!("{field}.remove[{i}]"),
                format!(
                    "{name:?} is not one of the security headers ({})",
                    names.join(", ")
                ),
            ));
        }
        removed.push(lower);
    }
    let value = |f: &str, v: &str| {
        HeaderValue::from_str(v)
            .map_err(|_| err(format!("{field}.{f}"), "not a valid header value"))
    };
    let mut out = Vec::new();
    let mut hsts = None;
    for ((name, default), (f, given)) in DEFAULTS.iter().zip(given) {
        if removed.iter().any(|r| r == name) {
            continue;
        }
        let v = value(f, given.as_deref().unwrap_or(default))?;
        if *name == "strict-transport-security" {
            hsts = Some(v);
        } else {
            out.push((HeaderName::from_static(name), v));
        }
    }
    for (name, f, given) in [
        (
            "content-security-policy",
            "contentSecurityPolicy",
            content_security_policy,
        ),
        (
            "permissions-policy",
            "permissionsPolicy",
            permissions_policy,
        ),
    ] {
        if let Some(v) = given
            .as_deref()
            .filter(|_| !removed.iter().any(|r| r == name))
        {
            out.push((HeaderName::from_static(name), value(f, v)?));
        }
    }
    Ok(SecurityStep {
        headers: out.into(),
        hsts,
        override_backend: override_backend.unwrap_or(false),
    })
}

/// `cache`; `id` identifies the route's configuration.
pub(super) fn compile_cache(
    field: &str,
    cache: &Cache,
    id: u64,
    authenticated: bool,
) -> Result<CachePolicy, FieldError> {
    let Cache {
        ttl,
        max_entry_size,
        vary,
        shared,
    } = cache;
    let ttl = match ttl.as_deref() {
        None => DEFAULT_TTL,
        Some(t) => parse_duration(t).filter(|d| !d.is_zero()).ok_or_else(|| {
            err(
                format!("{field}.ttl"),
                format!("{t:?} is not a duration such as \"30s\""),
            )
        })?,
    };
    let max_entry_size = match max_entry_size.as_deref() {
        None => DEFAULT_ENTRY_SIZE,
        Some(s) => parse_size(s)
            .filter(|n| (1..=MAX_ENTRY_SIZE).contains(n))
            .ok_or_else(|| {
                err(
                    format!("{field}.maxEntrySize"),
                    format!("{s:?} is not a size from 1 to 64Mi, such as \"1Mi\" or \"512Ki\""),
                )
            })?,
    };
    let mut names = Vec::with_capacity(vary.len());
    for (i, v) in vary.iter().enumerate() {
        let name = HeaderName::from_bytes(v.as_bytes()).map_err(|_| {
            err(
                format!("{field}.vary[{i}]"),
                format!("{v:?} is not a header name"),
            )
        })?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(CachePolicy::new(
        id,
        ttl,
        max_entry_size,
        names,
        shared.unwrap_or(false),
        authenticated,
    ))
}

/// A fingerprint of the route's configuration (namespace, name and spec), the same in every
/// replica: cache entries are keyed by it, so a route change purges them everywhere, and
/// replicas sharing Redis find each other's entries.
pub(super) fn route_fingerprint(route: &GatewayRoute) -> u64 {
    let spec = serde_json::to_vec(&route.spec).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    feed(
        route
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default")
            .as_bytes(),
    );
    feed(route.metadata.name.as_deref().unwrap_or("").as_bytes());
    feed(&spec);
    h
}
