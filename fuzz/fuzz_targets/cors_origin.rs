//! The CORS origin matcher. Input: an `allowOrigins` entry, a newline, a request's `Origin`.
//! An entry parses or is refused with a reason; an exact entry matches itself (in any case)
//! and nothing else; a `*.suffix` entry matches only origins with its scheme, port and at
//! least one label before the suffix, never the bare suffix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proxy::cors::OriginPattern;

fuzz_target!(|data: &[u8]| {
    let (entry, origin) = sluice_fuzz::split_once(data, b'\n');
    let (Ok(entry), Ok(origin)) = (std::str::from_utf8(entry), std::str::from_utf8(origin)) else {
        return;
    };
    let pattern = match OriginPattern::parse(entry) {
        Ok(p) => p,
        Err(reason) => {
            assert!(!reason.is_empty());
            return;
        }
    };
    let matched = pattern.matches(origin);
    match &pattern {
        OriginPattern::Any => assert!(matched),
        OriginPattern::Exact(o) => {
            assert!(pattern.matches(entry), "{entry} does not match itself");
            assert!(pattern.matches(&entry.to_ascii_uppercase()));
            assert_eq!(matched, o.eq_ignore_ascii_case(origin));
            assert!(!o.contains('*'));
        }
        OriginPattern::Subdomains {
            scheme,
            suffix,
            port,
        } => {
            let apex = format!("{scheme}{}{port}", &suffix[1..]);
            assert!(
                !pattern.matches(&apex),
                "{entry} matched its bare suffix {apex}"
            );
            let one = format!("{scheme}a{suffix}{port}");
            assert!(pattern.matches(&one), "{entry} does not match {one}");
            if matched {
                let lower = origin.to_ascii_lowercase();
                assert!(lower.starts_with(&**scheme));
                let tail = format!("{suffix}{port}");
                assert!(lower.ends_with(&tail), "{origin} matched {entry}");
                assert!(lower.len() > scheme.len() + tail.len());
                let host = &lower[scheme.len()..lower.len() - port.len()];
                assert!(
                    !host.contains([':', '/', '@', '?', '#']),
                    "{origin} matched {entry}"
                );
            }
        }
    }
});
