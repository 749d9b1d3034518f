//! Bodies stream through the gateway in both directions, and upgrades pass through.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_tests::backend::TestBackend;
use sluice_tests::harness::TestGateway;
use sluice_tests::manifests::{prefix_route, service};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

async fn gateway_to(backend: &TestBackend) -> TestGateway {
    TestGateway::start(&[
        ("svc.yaml", service("b", 80, &[(backend.addr, true)])),
        ("route.yaml", prefix_route("b", "/", "b")),
    ])
    .await
}

/// A request body fed chunk by chunk from a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn request_and_response_bodies_stream_without_buffering() {
    let b = TestBackend::start("echo").await;
    let gw = gateway_to(&b).await;
    let client: Client<_, ChannelBody> = Client::builder(TokioExecutor::new()).build_http();
    let (tx, rx) = mpsc::channel(1);
    let request = Request::post(format!("http://{}/echo-body", gw.addr))
        .body(ChannelBody(rx))
        .expect("request");
    tx.send(Bytes::from_static(b"first chunk"))
        .await
        .expect("send");
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
        .await
        .expect("headers arrive while the request body is still open")
        .expect("response");
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first chunk comes back before the request ends")
        .expect("a frame")
        .expect("data");
    assert_eq!(
        first.into_data().expect("data"),
        Bytes::from_static(b"first chunk")
    );
    tx.send(Bytes::from_static(b"second")).await.expect("send");
    drop(tx);
    let rest = body.collect().await.expect("rest").to_bytes();
    assert_eq!(rest, Bytes::from_static(b"second"));
}

#[tokio::test]
async fn a_large_download_streams_through_intact() {
    let b = TestBackend::start("big").await;
    let gw = gateway_to(&b).await;
    let client = sluice_tests::client::http1();
    let size: u64 = 64 * 1024 * 1024;
    let response = client
        .request(sluice_tests::client::get(
            gw.addr,
            "h",
            &format!("/stream?bytes={size}"),
        ))
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some(size.to_string().as_str())
    );
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("frame");
        if let Some(data) = frame.data_ref() {
            assert!(data.iter().all(|&c| c == b'x'));
            received += data.len() as u64;
        }
    }
    assert_eq!(received, size);
}

#[tokio::test]
async fn websocket_echo_passes_through_the_gateway() {
    let b = TestBackend::start("ws").await;
    let gw = gateway_to(&b).await;
    let stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut ws, response) =
        tokio_tungstenite::client_async(format!("ws://{}/ws", gw.addr), stream)
            .await
            .expect("websocket handshake through the gateway");
    assert_eq!(response.status(), 101);
    for text in ["hello", "through", "sluice"] {
        ws.send(Message::text(text)).await.expect("send");
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time")
            .expect("a message")
            .expect("ok");
        assert_eq!(echoed, Message::text(text));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send");
    let echoed = ws.next().await.expect("message").expect("ok");
    assert_eq!(echoed, Message::binary(vec![0u8, 1, 2, 255]));
    ws.close(None).await.expect("close");
}
