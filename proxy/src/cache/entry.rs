//! One stored response, and its wire form in Redis for `shared` caches.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{AGE, CONTENT_LENGTH, ETAG, HeaderMap, HeaderName, HeaderValue, LAST_MODIFIED};
use http::{Response, StatusCode};

use crate::body::{self, ProxyBody};

/// A stored response: the backend's status, headers (hop-by-hop already gone) and body.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The `cache` id of the rule that stored it: a route change makes a new id.
    pub rule: u64,
    /// The backend's status.
    pub status: StatusCode,
    /// The backend's headers, `Age` left out (it is recomputed on every hit).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// When it was stored (wall clock: shared entries are read by other replicas).
    pub stored_at: SystemTime,
    /// How long it stays fresh from `stored_at`.
    pub fresh_for: Duration,
    /// The `Age` the backend's response already had.
    pub initial_age: Duration,
}

const MAGIC: &[u8; 4] = b"SLC1";

impl Entry {
    /// Bytes it holds, for the cache's size bound.
    pub fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        u32::try_from(self.body.len() + headers + 128).unwrap_or(u32::MAX)
    }

    /// Its age now (RFC 9111 section 4.2.3, simplified: the gateway is next to the backend).
    pub fn age(&self, now: SystemTime) -> Duration {
        self.initial_age
            .saturating_add(now.duration_since(self.stored_at).unwrap_or_default())
    }

    /// True while it may be served without asking the backend.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        now.duration_since(self.stored_at).unwrap_or_default() < self.fresh_for
    }

    /// Time left until it is stale.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.fresh_for
            .saturating_sub(now.duration_since(self.stored_at).unwrap_or_default())
    }

    /// The response a hit gets: the stored one with `Age`; `head` leaves the body out;
    /// `not_modified` makes it a `304` (with the validators and no body).
    pub fn to_response(
        &self,
        now: SystemTime,
        head: bool,
        not_modified: bool,
    ) -> Response<ProxyBody> {
        let body = if head || not_modified {
            body::local(Bytes::new())
        } else {
            body::local(self.body.clone())
        };
        let (status, mut headers) = if not_modified {
            // RFC 9110 section 15.4.5: what a 304 carries.
            let mut out = HeaderMap::new();
            for name in [
                http::header::CACHE_CONTROL,
                http::header::CONTENT_LOCATION,
                http::header::DATE,
                ETAG,
                http::header::EXPIRES,
                LAST_MODIFIED,
                http::header::VARY,
            ] {
                for v in self.headers.get_all(&name) {
                    out.append(name.clone(), v.clone());
                }
            }
            (StatusCode::NOT_MODIFIED, out)
        } else {
            (self.status, self.headers.clone())
        };
        headers.insert(AGE, HeaderValue::from(self.age(now).as_secs()));
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }

    /// The stored `ETag`.
    pub fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(ETAG)
    }

    /// The stored `Last-Modified`.
    pub fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers.get(LAST_MODIFIED)
    }

    /// Its bytes for Redis.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.weight() as usize);
        out.put_slice(MAGIC);
        out.put_u64(self.rule);
        out.put_u16(self.status.as_u16());
        out.put_u64(millis(self.stored_at));
        out.put_u64(self.fresh_for.as_millis() as u64);
        out.put_u64(self.initial_age.as_secs());
        out.put_u16(self.headers.len() as u16);
        for (name, value) in &self.headers {
            out.put_u16(name.as_str().len() as u16);
            out.put_slice(name.as_str().as_bytes());
            out.put_u32(value.len() as u32);
            out.put_slice(value.as_bytes());
        }
        out.put_slice(&self.body);
        out.freeze()
    }

    /// An entry from Redis; `None` for anything this version did not write (it is treated as
    /// a miss, never trusted).
    pub fn decode(mut b: Bytes) -> Option<Entry> {
        let need = |b: &Bytes, n: usize| (b.remaining() >= n).then_some(());
        need(&b, 4 + 8 + 2 + 8 + 8 + 8 + 2)?;
        if &b[..4] != MAGIC {
            return None;
        }
        b.advance(4);
        let rule = b.get_u64();
        let status = StatusCode::from_u16(b.get_u16()).ok()?;
        let stored_at = UNIX_EPOCH + Duration::from_millis(b.get_u64());
        let fresh_for = Duration::from_millis(b.get_u64());
        let initial_age = Duration::from_secs(b.get_u64());
        let count = b.get_u16();
        // Found by the `cache_entry` fuzz target: a count past what a HeaderMap holds (32,768)
        // panicked in `with_capacity`; such a value was never written by us.
        let mut headers = HeaderMap::try_with_capacity(usize::from(count)).ok()?;
        for _ in 0..count {
            need(&b, 2)?;
            let n = usize::from(b.get_u16());
            need(&b, n)?;
            let name = HeaderName::from_bytes(&b.split_to(n)).ok()?;
            need(&b, 4)?;
            let n = b.get_u32() as usize;
            need(&b, n)?;
            let value = HeaderValue::from_maybe_shared(b.split_to(n)).ok()?;
            headers.try_append(name, value).ok()?;
        }
        if headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n != b.len())
        {
            return None;
        }
        Some(Entry {
            rule,
            status,
            headers,
            body: b,
            stored_at,
            fresh_for,
            initial_age,
        })
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert(ETAG, HeaderValue::from_static("\"v1\""));
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        Entry {
            rule: 7,
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"hello"),
            stored_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            fresh_for: Duration::from_secs(30),
            initial_age: Duration::from_secs(3),
        }
    }

    #[test]
    fn entries_survive_the_wire_form() {
        let e = entry();
        let back = Entry::decode(e.encode()).expect("decodes");
        assert_eq!(back.rule, 7);
        assert_eq!(back.status, StatusCode::OK);
        assert_eq!(back.body, e.body);
        assert_eq!(back.stored_at, e.stored_at);
        assert_eq!(back.fresh_for, e.fresh_for);
        assert_eq!(back.headers, e.headers);
        // Truncated or foreign bytes are a miss, never a panic.
        let bytes = e.encode();
        for cut in 0..bytes.len() {
            let _ = Entry::decode(bytes.slice(..cut));
        }
        assert!(Entry::decode(Bytes::from_static(b"nonsense")).is_none());
    }

    /// Found by the `cache_entry` fuzz target: a value claiming more headers than a HeaderMap
    /// holds panicked the request that read it from Redis.
    #[test]
    fn a_header_count_past_what_a_header_map_holds_is_a_miss() {
        let mut bytes = entry().encode().to_vec();
        let count_at = 4 + 8 + 2 + 8 + 8 + 8;
        bytes[count_at..count_at + 2].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(Entry::decode(Bytes::from(bytes)).is_none());
    }

    #[test]
    fn a_hit_carries_its_age_and_a_304_only_the_validators() {
        let e = entry();
        let now = e.stored_at + Duration::from_secs(10);
        let r = e.to_response(now, false, false);
        assert_eq!(r.headers()[AGE], "13");
        assert_eq!(r.headers()["x-a"], "1");
        let r = e.to_response(now, false, true);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(r.headers()[ETAG], "\"v1\"");
        assert!(!r.headers().contains_key("x-a"));
        assert!(e.is_fresh(now));
        assert!(!e.is_fresh(e.stored_at + Duration::from_secs(30)));
    }
}
