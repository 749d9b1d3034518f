//! Replies from Redis, where their meaning is ours: the GCRA script's four integers become a
//! rate-limit decision and its headers, a `GET` of the shared cache becomes an entry or a
//! miss. Input: RESP bytes as a Redis (or something posing as one) would send them.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_proxy::cache::Entry;
use sluice_proxy::fuzzing::retry_secs;
use sluice_proxy::limit::Decision;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = redis::parse_redis_value(data) else {
        return;
    };
    if let Ok(reply) = redis::from_redis_value::<(i64, i64, i64, i64)>(value.clone()) {
        let d = Decision::from_gcra_reply(reply);
        assert_eq!(d.allowed, reply.0 == 1);
        assert_eq!(d.remaining, u64::try_from(reply.1).unwrap_or(0));
        let _ = (retry_secs(d.reset), retry_secs(d.retry_after));
    }
    if let Ok(Some(bytes)) = redis::from_redis_value::<Option<Vec<u8>>>(value) {
        let _ = Entry::decode(Bytes::from(bytes));
    }
});
