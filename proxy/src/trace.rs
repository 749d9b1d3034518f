//! W3C Trace Context (`traceparent`, `tracestate`): kept from the client or started here, and
//! passed on with the gateway's own span as the parent; the span itself can be exported over
//! OTLP/HTTP ([`otlp`]).

pub mod otlp;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// One request's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace, the client's when it sent a valid `traceparent`.
    pub trace_id: [u8; 16],
    /// The client's span (the gateway's span's parent), when it sent one.
    pub parent_id: Option<[u8; 8]>,
    /// The gateway's span for this request.
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceContext {
    /// The context of a request with `headers`: the client's trace continued when its
    /// `traceparent` is valid, otherwise a new sampled trace.
    pub fn from_request(headers: &HeaderMap) -> Self {
        let span_id = nonzero_u64().to_be_bytes();
        let continued = headers
            .get(&TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()));
        match continued {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                parent_id: Some(parent),
                span_id,
                flags,
            },
            None => TraceContext {
                trace_id: nonzero_u128().to_be_bytes(),
                parent_id: None,
                span_id,
                flags: 0x01,
            },
        }
    }

    /// True when the client's trace was continued.
    pub fn continued(&self) -> bool {
        self.parent_id.is_some()
    }

    /// The `traceparent` sent to the backend: the same trace, the gateway's span as parent.
    pub fn traceparent(&self) -> HeaderValue {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        hex_into(&mut out[3..35], &self.trace_id);
        out[35] = b'-';
        hex_into(&mut out[36..52], &self.span_id);
        out[52] = b'-';
        hex_into(&mut out[53..55], &[self.flags]);
        HeaderValue::from_bytes(&out).expect("hex digits are a valid header value")
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_hex(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex_into(&mut out, &self.trace_id);
        out
    }

    /// The gateway's span id as 16 lower-case hex digits.
    pub fn span_hex(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        hex_into(&mut out, &self.span_id);
        out
    }

    /// Rewrites the request's trace headers for the backend: `traceparent` with the gateway's
    /// span; `tracestate` kept only when the client's trace was continued (it belongs to that
    /// trace), and only one line of it.
    pub(crate) fn propagate(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT.clone(), self.traceparent());
        if !self.continued() {
            headers.remove(&TRACESTATE);
        }
    }
}

/// `version-traceid-parentid-flags` as W3C Trace Context level 1 defines it: lower-case hex,
/// neither id all zeros, version `ff` invalid; a later version may carry more fields after the
/// flags.
fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = unhex::<1>(&v[..2])?[0];
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace = unhex::<16>(&v[3..35])?;
    let parent = unhex::<8>(&v[36..52])?;
    let flags = unhex::<1>(&v[53..55])?[0];
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags))
}

fn unhex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

fn nonzero_u128() -> u128 {
    fastrand::u128(1..)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(traceparent: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            &TRACEPARENT,
            HeaderValue::from_str(traceparent).expect("value"),
        );
        h
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let h = headers("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let t = TraceContext::from_request(&h);
        assert!(t.continued());
        assert_eq!(&t.trace_hex(), b"4bf92f3577b34da6a3ce929d0e0e4736");
        let sent = t.traceparent();
        let sent = sent.to_str().expect("ascii");
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(sent.ends_with("-01"));
        assert_ne!(
            &sent[36..52],
            "00f067aa0ba902b7",
            "the gateway's span is the parent"
        );
        assert_eq!(
            parse_traceparent(sent.as_bytes()).map(|p| p.0),
            Some(t.trace_id)
        );
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "garbage",
        ] {
            let t = TraceContext::from_request(&headers(bad));
            assert!(!t.continued(), "{bad} was continued");
            assert_eq!(t.flags, 1);
            let sent = t.traceparent();
            assert!(parse_traceparent(sent.as_bytes()).is_some());
        }
        // A later version may add fields.
        let t = TraceContext::from_request(&headers(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more",
        ));
        assert!(t.continued());
        assert_eq!(t.flags, 0);
    }
}
