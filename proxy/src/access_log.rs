//! The access log: one JSON line per request, written by the pipeline's last phase.
//!
//! Cheap by construction: nothing is gathered when it is off; a line is formatted into a
//! per-thread scratch buffer without intermediate allocations and appended to one shared buffer
//! under a short lock; a dedicated thread writes the buffer out. A request never waits for the
//! output: when the buffer is full (the reader of stdout is slower than the traffic) the line is
//! dropped and counted in `sluice_access_log_dropped_total`.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Uri, Version};
use prometheus::IntCounter;

use crate::pipeline::RequestCtx;
use crate::snapshot::Rule;

/// Bytes buffered before lines are dropped.
const BUFFER_LIMIT: usize = 4 * 1024 * 1024;
/// Bytes buffered before the writer is woken early.
const WAKE_AT: usize = 64 * 1024;
/// Longest a line waits in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Where the lines go.
pub type Sink = Box<dyn Write + Send>;

struct Shared {
    buffer: Mutex<Pending>,
    wake: Condvar,
    dropped: IntCounter,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    stop: bool,
}

/// The access log of a gateway; [`AccessLog::off`] records nothing.
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
    /// Share of requests below 500 logged, in millionths (1_000_000: all).
    sample_ppm: u32,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AccessLog {
    /// No access log.
    pub fn off() -> Self {
        AccessLog {
            shared: None,
            sample_ppm: 1_000_000,
            writer: Mutex::new(None),
        }
    }

    /// Lines written to `sink` by a thread of their own; dropped lines counted in `dropped`.
    pub fn to(sink: Sink, dropped: IntCounter) -> Self {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            dropped,
        });
        let for_writer = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("sluice-access-log".to_owned())
            .spawn(move || write_out(&for_writer, sink))
            .ok();
        AccessLog {
            shared: writer.is_some().then_some(shared),
            sample_ppm: 1_000_000,
            writer: Mutex::new(writer),
        }
    }

    /// Logs only this share (0 to 1) of the requests answered below 500; every 5xx is logged.
    pub fn sampled_at(mut self, share: f64) -> Self {
        self.sample_ppm = (share.clamp(0.0, 1.0) * 1_000_000.0).round() as u32;
        self
    }

    /// True when a request answered with `status` is to be logged.
    pub(crate) fn sampled(&self, status: u16) -> bool {
        self.sample_ppm >= 1_000_000
            || status >= 500
            || fastrand::u32(..1_000_000) < self.sample_ppm
    }

    /// True when lines are recorded.
    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Records one request.
    pub(crate) fn record(&self, entry: &Entry<'_>) {
        let Some(shared) = &self.shared else { return };
        SCRATCH.with(|scratch| {
            let Ok(mut line) = scratch.try_borrow_mut() else {
                return;
            };
            line.clear();
            format_line(&mut line, entry);
            let mut pending = shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
            if pending.bytes.len() + line.len() > BUFFER_LIMIT {
                drop(pending);
                shared.dropped.inc();
                return;
            }
            pending.bytes.extend_from_slice(&line);
            let wake = pending.bytes.len() >= WAKE_AT;
            drop(pending);
            if wake {
                shared.wake.notify_one();
            }
        });
    }

    /// Writes out what is buffered and stops the writer (at shutdown); lines recorded after
    /// this are not written.
    pub fn close(&self) {
        if let Some(shared) = &self.shared {
            shared.buffer.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
            shared.wake.notify_one();
        }
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.close();
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    static CLOCK: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

fn write_out(shared: &Shared, mut sink: Sink) {
    let mut out = Vec::with_capacity(WAKE_AT);
    loop {
        let stop = {
            let mut pending = shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
            if pending.bytes.is_empty() && !pending.stop {
                pending = shared
                    .wake
                    .wait_timeout(pending, FLUSH_EVERY)
                    .map(|(p, _)| p)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            std::mem::swap(&mut out, &mut pending.bytes);
            pending.stop
        };
        if !out.is_empty() {
            // A sink that fails (stdout closed) loses the lines; the gateway carries on.
            let _ = sink.write_all(&out).and_then(|()| sink.flush());
            out.clear();
        }
        if stop {
            return;
        }
    }
}

/// The request line as it arrived, kept for the log only when there is a log to write.
pub(crate) struct RequestLine {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
}

/// What one access log line says about one request.
pub(crate) struct Entry<'a> {
    pub ctx: &'a RequestCtx<'a>,
    pub rule: Option<&'a Rule>,
    pub request: &'a RequestLine,
    pub status: u16,
    pub elapsed: Duration,
}

fn format_line(line: &mut Vec<u8>, entry: &Entry<'_>) {
    let Entry {
        ctx,
        rule,
        request: RequestLine {
            method,
            uri,
            version,
        },
        status,
        elapsed,
    } = *entry;
    line.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(line);
    line.extend_from_slice(b"\",\"target\":\"sluice::access\",\"request_id\":");
    json_str(line, ctx.request_id.to_str().unwrap_or_default());
    let _ = write!(line, ",\"client\":\"{}\",\"method\":", ctx.client.addr.ip());
    json_str(line, capped(method.as_str(), 32));
    line.extend_from_slice(b",\"path\":");
    json_str(line, capped(uri.path(), MAX_LOGGED));
    let _ = write!(
        line,
        ",\"version\":\"{version:?}\",\"status\":{status},\"route\":"
    );
    json_str(line, rule.map_or("", |r| r.route()));
    line.extend_from_slice(b",\"rule\":");
    json_str(line, rule.map_or("", |r| r.name()));
    if let Some(endpoint) = ctx.endpoint {
        let _ = write!(line, ",\"upstream\":\"{endpoint}\"");
    }
    if ctx.attempts > 1 {
        let _ = write!(line, ",\"attempts\":{}", ctx.attempts);
    }
    if let Some(cache) = &ctx.cache {
        let _ = write!(line, ",\"cache\":\"{}\"", cache.status.as_str());
    }
    if let Some(limit) = &ctx.limit {
        let _ = write!(line, ",\"rate_limit\":\"{}\"", limit.outcome());
    }
    if let Some(version) = ctx.client.tls {
        let _ = write!(line, ",\"tls\":\"{version}\"");
    }
    line.extend_from_slice(b",\"trace_id\":\"");
    line.extend_from_slice(&ctx.trace.trace_hex());
    line.push(b'"');
    if let Some(error) = ctx.error {
        line.extend_from_slice(b",\"error\":");
        json_str(line, error);
    }
    if let Some(detail) = ctx.detail {
        line.extend_from_slice(b",\"reason\":");
        json_str(line, detail);
    }
    match &ctx.identity {
        Some(crate::auth::Identity::Token(v)) => {
            line.extend_from_slice(b",\"auth\":");
            json_str(line, v.provider_header.to_str().unwrap_or_default());
            if let Some(sub) = v.claims.get("sub").and_then(|s| s.as_str()) {
                line.extend_from_slice(b",\"user\":");
                json_str(line, sub);
            }
        }
        Some(crate::auth::Identity::ApiKey(consumer)) => {
            line.extend_from_slice(b",\"auth\":\"apiKey\",\"user\":");
            json_str(line, consumer);
        }
        None => {}
    }
    let micros = elapsed.as_micros();
    let _ = writeln!(
        line,
        ",\"duration_ms\":{}.{:03}}}",
        micros / 1000,
        micros % 1000
    );
}

/// RFC 3339 UTC with microseconds; the date and time of day are formatted once per second per
/// thread.
fn timestamp(line: &mut Vec<u8>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    CLOCK.with(|clock| {
        let mut clock = clock.borrow_mut();
        if clock.0 != secs {
            clock.0 = secs;
            let mut text = Vec::with_capacity(19);
            civil(&mut text, secs);
            clock.1.copy_from_slice(&text[..19]);
        }
        line.extend_from_slice(&clock.1);
    });
    let _ = write!(line, ".{:06}Z", now.subsec_micros());
}

/// `YYYY-MM-DDTHH:MM:SS` of Unix time `secs` (Howard Hinnant's days-to-civil).
fn civil(out: &mut Vec<u8>, secs: u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
}

/// Longest path kept in a line: a client must not be able to make lines of 64 KiB.
const MAX_LOGGED: usize = 2048;

/// `s` cut to at most `max` bytes, at a character boundary.
pub(crate) fn capped(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends `s` as a JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => {
                out.extend_from_slice(&bytes[start..i]);
                let _ = write!(out, "\\u{b:04x}");
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time_matches_known_dates() {
        let mut out = Vec::new();
        civil(&mut out, 0);
        assert_eq!(out, b"1970-01-01T00:00:00");
        out.clear();
        civil(&mut out, 1_796_086_923);
        assert_eq!(out, b"2026-12-01T01:02:03");
        out.clear();
        civil(&mut out, 951_782_400); // a leap day
        assert_eq!(out, b"2000-02-29T00:00:00");
    }

    #[test]
    fn strings_are_json_escaped() {
        let mut out = Vec::new();
        json_str(&mut out, "a\"b\\c\nd\u{1}é");
        let parsed: String = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é");
    }

    /// A sink tests can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_valid_json_and_written_by_close() {
        let sink = Captured::default();
        let dropped = IntCounter::new("d", "d").expect("counter");
        let log = AccessLog::to(Box::new(sink.clone()), dropped.clone());
        let client = crate::pipeline::Client::new("192.0.2.1:4000".parse().expect("addr"));
        let mut ctx = RequestCtx::new(
            http::HeaderValue::from_static("rid-1"),
            std::time::Instant::now(),
            &client,
        );
        ctx.error = Some("unauthorized");
        ctx.detail = Some("token expired");
        let uri: Uri = "/a/\"b\"?q=1"
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/a"));
        let request = RequestLine {
            method: Method::GET,
            uri,
            version: Version::HTTP_11,
        };
        for _ in 0..3 {
            log.record(&Entry {
                ctx: &ctx,
                rule: None,
                request: &request,
                status: 401,
                elapsed: Duration::from_micros(1234),
            });
        }
        log.close();
        let text = String::from_utf8(sink.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON line");
        assert_eq!(v["request_id"], "rid-1");
        assert_eq!(v["status"], 401);
        assert_eq!(v["client"], "192.0.2.1");
        assert_eq!(v["reason"], "token expired");
        assert_eq!(v["duration_ms"], 1.234);
        assert_eq!(dropped.get(), 0);
    }
}
