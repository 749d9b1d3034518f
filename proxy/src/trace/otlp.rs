//! Export of one span per request over OTLP/HTTP (JSON encoding, `POST /v1/traces`).
//!
//! Never on a request's path: the pipeline's log phase hands a finished span to a bounded
//! queue (`try_send`; a full queue drops the span and counts it) and one background task sends
//! batches. A collector that is slow or down costs dropped spans, not latency.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::TraceContext;

/// Spans waiting to be sent before new ones are dropped.
const QUEUE: usize = 4096;
/// Most spans in one request to the collector.
const BATCH: usize = 512;
/// Longest a span waits for its batch.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Longest one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// One finished request, as the exporter needs it.
#[derive(Debug)]
pub struct Span {
    /// Where it sits in its trace.
    pub trace: TraceContext,
    /// `GET`, `POST`, ...
    pub method: http::Method,
    /// The request path (capped).
    pub path: Box<str>,
    /// `namespace/name` of the route and the rule, when one matched.
    pub route: Option<(std::sync::Arc<str>, std::sync::Arc<str>)>,
    /// The response status.
    pub status: u16,
    /// The endpoint of the last attempt.
    pub upstream: Option<std::net::SocketAddr>,
    /// The gateway's error kind, when it answered itself.
    pub error: Option<&'static str>,
    /// The request id.
    pub request_id: HeaderValue,
    /// When the request arrived and when its response headers were ready.
    pub start: SystemTime,
    /// Time from arrival to response headers.
    pub duration: Duration,
}

/// The exporter's handle, held by the gateway.
pub struct Exporter {
    queue: mpsc::Sender<Span>,
    dropped: IntCounter,
}

impl Exporter {
    /// Starts the background sender (on the current tokio runtime) for `endpoint`: a URL of a
    /// collector, to which `/v1/traces` is added unless it already ends so.
    pub fn start(endpoint: &str, registry: &Registry) -> Result<Self, String> {
        let uri = traces_uri(endpoint)?;
        let sent = IntCounterVec::new(
            Opts::new(
                "sluice_otlp_spans_total",
                "Spans handed to the OTLP exporter, by outcome (sent, failed, dropped)",
            ),
            &["outcome"],
        )
        .expect("valid metric definition");
        let _ = registry.register(Box::new(sent.clone()));
        let dropped = sent.with_label_values(&["dropped"]);
        let (queue, rx) = mpsc::channel(QUEUE);
        let client = https_client();
        tokio::spawn(send_batches(rx, client, uri, sent));
        Ok(Exporter { queue, dropped })
    }

    /// Queues a finished span of a sampled trace (others are not exported); drops it
    /// (counted) when the queue is full.
    pub fn record(&self, span: Span) {
        if span.trace.flags & 1 == 0 {
            return;
        }
        if self.queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

fn traces_uri(endpoint: &str) -> Result<http::Uri, String> {
    let trimmed = endpoint.trim_end_matches('/');
    let full = if trimmed.ends_with("/v1/traces") {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1/traces")
    };
    let uri: http::Uri = full
        .parse()
        .map_err(|e| format!("--otlp-endpoint {endpoint:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(uri),
        _ => Err(format!(
            "--otlp-endpoint {endpoint:?} must be an http:// or https:// URL, such as http://otel-collector:4318"
        )),
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn https_client() -> HttpsClient {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let connector = match builder.with_native_roots() {
        Ok(b) => b.https_or_http().enable_http1().build(),
        Err(e) => {
            tracing::warn!(error = %e, "no CA certificates found; OTLP export over https will fail");
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
                .https_or_http()
                .enable_http1()
                .build()
        }
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn send_batches(
    mut rx: mpsc::Receiver<Span>,
    client: HttpsClient,
    uri: http::Uri,
    counts: IntCounterVec,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let body = Bytes::from(encode(&batch).to_string());
        batch.clear();
        let request = http::Request::post(uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body));
        let outcome = match request {
            Ok(request) => {
                let exchange = async {
                    let response = client.request(request).await?;
                    let ok = response.status().is_success();
                    let status = response.status();
                    // The body is read within the same bound: a collector that stalls it must
                    // not hold the one sender.
                    let _ = response.into_body().collect().await;
                    Ok::<_, hyper_util::client::legacy::Error>((ok, status))
                };
                match tokio::time::timeout(EXPORT_TIMEOUT, exchange).await {
                    Ok(Ok((true, _))) => "sent",
                    Ok(Ok((false, status))) => {
                        tracing::debug!(%status, "OTLP collector refused spans");
                        "failed"
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "OTLP export failed");
                        "failed"
                    }
                    Err(_) => "failed",
                }
            }
            Err(_) => "failed",
        };
        counts.with_label_values(&[outcome]).inc_by(n);
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn attr(key: &str, value: Value) -> Value {
    json!({"key": key, "value": value})
}

/// An OTLP `ExportTraceServiceRequest` in the JSON encoding (ids as hex, as that encoding
/// specifies).
fn encode(spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let name = match &s.route {
                Some((route, rule)) => format!("{} {route}/{rule}", s.method),
                None => s.method.to_string(),
            };
            let mut attributes = vec![
                attr(
                    "http.request.method",
                    json!({"stringValue": s.method.as_str()}),
                ),
                attr("url.path", json!({"stringValue": &*s.path})),
                attr(
                    "http.response.status_code",
                    json!({"intValue": s.status.to_string()}),
                ),
                attr(
                    "sluice.request_id",
                    json!({"stringValue": text(s.request_id.as_bytes())}),
                ),
            ];
            if let Some((route, rule)) = &s.route {
                attributes.push(attr("sluice.route", json!({"stringValue": &**route})));
                attributes.push(attr("sluice.rule", json!({"stringValue": &**rule})));
            }
            if let Some(addr) = s.upstream {
                attributes.push(attr(
                    "server.address",
                    json!({"stringValue": addr.ip().to_string()}),
                ));
                attributes.push(attr(
                    "server.port",
                    json!({"intValue": addr.port().to_string()}),
                ));
            }
            if let Some(kind) = s.error {
                attributes.push(attr("error.type", json!({"stringValue": kind})));
            }
            let end = s.start + s.duration;
            let mut span = json!({
                "traceId": text(&s.trace.trace_hex()),
                "spanId": text(&s.trace.span_hex()),
                "name": name,
                "kind": 2,
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(end),
                "attributes": attributes,
                "flags": u32::from(s.trace.flags),
                // A server span's status is an error only for 5xx (OpenTelemetry's HTTP
                // conventions): a 404 is the client's affair.
                "status": {"code": if s.status >= 500 { 2 } else { 0 }},
            });
            if let Some(parent) = s.trace.parent_id {
                let mut hex = [0u8; 16];
                super::hex_into(&mut hex, &parent);
                span["parentSpanId"] = json!(text(&hex));
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [attr("service.name", json!({"stringValue": "sluice"}))]},
            "scopeSpans": [{"scope": {"name": "sluice", "version": env!("CARGO_PKG_VERSION")}, "spans": spans}],
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_gets_the_traces_path_once() {
        assert_eq!(
            traces_uri("http://collector:4318")
                .expect("uri")
                .to_string(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_uri("http://collector:4318/v1/traces/")
                .expect("uri")
                .to_string(),
            "http://collector:4318/v1/traces"
        );
        assert!(traces_uri("collector:4318").is_err());
        assert!(traces_uri("grpc://collector:4317").is_err());
    }

    #[test]
    fn spans_encode_as_otlp_json() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let trace = TraceContext::from_request(&headers);
        let span = Span {
            trace,
            method: http::Method::GET,
            path: "/a".into(),
            route: Some(("shop/users".into(), "list".into())),
            status: 502,
            upstream: Some("10.0.0.1:80".parse().expect("addr")),
            error: Some("backend_error"),
            request_id: HeaderValue::from_static("r1"),
            start: UNIX_EPOCH + Duration::from_secs(1),
            duration: Duration::from_millis(5),
        };
        let v = encode(&[span]);
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(s["name"], "GET shop/users/list");
        assert_eq!(s["startTimeUnixNano"], "1000000000");
        assert_eq!(s["endTimeUnixNano"], "1005000000");
        assert_eq!(s["status"]["code"], 2);
    }

    use http::HeaderMap;
}
