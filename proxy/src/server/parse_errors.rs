//! hyper answers a request head it cannot parse itself, before the gateway sees a request: a
//! bare `400`, `414` or `431` with no body. Every other error the gateway sends is JSON with a
//! request id (DESIGN.md "On the wire"), so the connection's writes are watched for those
//! answers and each is replaced by the gateway's own form.
//!
//! hyper writes such an answer only when no response is in progress on the connection, as
//! the first bytes of a write, and closes the connection after it. Every response that passes
//! the pipeline carries `x-request-id`; one without it, with hyper's status line and
//! `content-length: 0`, is hyper's.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::gateway::Gateway;

/// A connection whose hyper-made error answers are rewritten (and counted as the gateway's
/// unmatched requests).
pub(crate) struct Answering<IO> {
    io: IO,
    gateway: Arc<Gateway>,
    /// The replacement answer and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<IO> Answering<IO> {
    pub(crate) fn new(io: IO, gateway: Arc<Gateway>) -> Self {
        Answering {
            io,
            gateway,
            pending: None,
        }
    }
}

/// The status of `head` when it is one of hyper's own parse-error answers.
fn hyper_answer(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    let status = match rest.get(..4)? {
        b"400 " => 400,
        b"414 " => 414,
        b"431 " => 431,
        _ => return None,
    };
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = &head[..end + 2];
    let has = |line: &[u8]| {
        head.windows(line.len())
            .any(|w| w.eq_ignore_ascii_case(line))
    };
    (has(b"\r\ncontent-length: 0\r\n") && !has(b"\r\nx-request-id:")).then_some(status)
}

/// The gateway's JSON answer for `status`, closing the connection.
fn replacement(status: u16) -> Vec<u8> {
    let (reason, message) = match status {
        414 => ("URI Too Long", "the request target is too long"),
        431 => (
            "Request Header Fields Too Large",
            "the request head is too large or has too many headers",
        ),
        _ => ("Bad Request", "malformed request"),
    };
    raw_answer(status, reason, message, "")
}

/// A whole HTTP/1.1 error answer in the gateway's JSON form, with a fresh request id,
/// `extra` header lines (each ending in CRLF) and `connection: close`.
pub(super) fn raw_answer(status: u16, reason: &str, message: &str, extra: &str) -> Vec<u8> {
    let id = crate::headers::request_id(&http::HeaderMap::new());
    let id = id.to_str().unwrap_or_default();
    let body = serde_json::json!({ "error": message, "status": status, "requestId": id });
    let body = body.to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-request-id: {id}\r\n{extra}connection: close\r\ndate: {}\r\n\r\n{body}",
        body.len(),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    )
    .into_bytes()
}

impl<IO: AsyncWrite + Unpin> Answering<IO> {
    /// Writes what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = self.pending.as_mut() {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes the `len` bytes of a write holding hyper's answer `status`, and queues the
    /// gateway's own in their place.
    fn replace(&mut self, status: u16, len: usize, cx: &mut Context<'_>) -> io::Result<usize> {
        tracing::debug!(status, "request head refused by the HTTP parser");
        self.gateway.unmatched().observe(status, 0.0);
        self.pending = Some((replacement(status), 0));
        // Pending bytes are written by the next write, flush or shutdown.
        match self.poll_pending(cx) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(len),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Answering<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Answering<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(status) = hyper_answer(buf) {
            return Poll::Ready(self.replace(status, buf.len(), cx));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        // hyper queues a head as one buffer, ahead of any body.
        if let Some(status) = bufs
            .iter()
            .find(|b| !b.is_empty())
            .and_then(|b| hyper_answer(b))
        {
            let len = bufs.iter().map(|b| b.len()).sum();
            return Poll::Ready(self.replace(status, len, cx));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bare_answers_are_recognised() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 18:00:00 GMT\r\n\r\n";
        assert_eq!(hyper_answer(hyper), Some(431));
        let bad = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hyper_answer(bad), Some(400));
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-request-id: abc\r\n\r\n";
        assert_eq!(
            hyper_answer(ours),
            None,
            "a pipeline answer carries a request id"
        );
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n";
        assert_eq!(hyper_answer(with_body), None);
        assert_eq!(
            hyper_answer(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        assert_eq!(
            hyper_answer(b"HTTP/1.1 400 Bad Request\r\ncontent-le"),
            None,
            "no whole head"
        );
        assert_eq!(hyper_answer(b"\0\0\x12\x04"), None, "HTTP/2 frames");
    }

    #[test]
    fn the_replacement_is_a_json_error_with_a_request_id() {
        let raw = String::from_utf8(replacement(431)).expect("text");
        let (head, body) = raw.split_once("\r\n\r\n").expect("head");
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(json["status"], 431);
        let id = json["requestId"].as_str().expect("id");
        assert!(
            head.contains(&format!("\r\nx-request-id: {id}\r\n")),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}\r\n", body.len())),
            "{head}"
        );
    }
}
