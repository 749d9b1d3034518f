//! The shared cache's wire form, as read back from Redis: whatever bytes come back (another
//! version, a corrupted or hostile value), decoding gives an entry or a miss, never a panic;
//! an entry decoded re-encodes to bytes that decode to the same entry; serving it (age,
//! freshness, the response) never panics.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_proxy::cache::Entry;

fuzz_target!(|data: &[u8]| {
    let Some(entry) = Entry::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let encoded = entry.encode();
    let again = Entry::decode(encoded.clone()).expect("what we encode decodes");
    assert_eq!(again.encode(), encoded, "the wire form round-trips");
    for now in [UNIX_EPOCH, UNIX_EPOCH + Duration::from_secs(1_800_000_000)] {
        let _ = entry.age(now);
        let _ = entry.is_fresh(now);
        let _ = entry.remaining(now);
        for (head, not_modified) in [(false, false), (true, false), (false, true)] {
            let _ = entry.to_response(now, head, not_modified);
        }
    }
    let _ = (entry.weight(), entry.etag(), entry.last_modified());
});
