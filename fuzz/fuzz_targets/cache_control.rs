//! `Cache-Control`, `Vary` and the freshness decision on what a backend and a client send:
//! never a panic; a response that says `no-store`, `no-cache` or `private`, or sets a cookie,
//! is never stored; `Vary: *` is never stored; the names `Vary` yields are the ones it lists;
//! no response is fresh for more than 2^31 seconds.
//! Input: request headers, a blank line, response headers; the first two bytes are the status.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use sluice_proxy::cache::{Directives, MAX_AGE_SECS, freshness, request_wants_fresh, vary_names};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let Ok(status) = StatusCode::from_u16(100 + u16::from_be_bytes([data[0], data[1]]) % 500)
    else {
        return;
    };
    let rest = &data[2..];
    let split = rest
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(rest.len());
    let request = sluice_fuzz::header_map(&rest[..split]);
    let response = sluice_fuzz::header_map(rest.get(split + 2..).unwrap_or(&[]));

    let _ = request_wants_fresh(&request);
    let d = Directives::of(&response);
    let vary = vary_names(&response);
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for authenticated in [false, true] {
        let stored = freshness(
            status,
            &request,
            &response,
            authenticated,
            Duration::from_secs(60),
            now,
        );
        if d.no_store || d.no_cache || d.private || response.contains_key("set-cookie") {
            assert!(stored.is_err(), "stored despite {d:?}");
        }
        if vary.is_none() {
            assert!(stored.is_err(), "stored despite Vary: *");
        }
        if let Ok(fresh) = stored {
            // RFC 9111 section 1.2.2's cap, which also keeps the wire form's milliseconds whole.
            assert!(
                fresh <= Duration::from_secs(MAX_AGE_SECS),
                "fresh for {fresh:?}"
            );
            assert!(SystemTime::checked_add(&now, fresh).is_some());
        }
    }
    if let Some(names) = vary {
        let listed: Vec<String> = response
            .get_all("vary")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|n| n.trim().to_ascii_lowercase())
            .collect();
        for name in names {
            assert!(
                listed.iter().any(|l| l == name.as_str()),
                "{name} is not in Vary"
            );
        }
    }
});
