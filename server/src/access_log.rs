//! One log line per request, written when its response has been sent (or abandoned):
//! status, duration, and the bytes that really crossed the wire each way. The method,
//! path, request id and upload id come from the request's span (`routes::app`), so they
//! are on this line and on anything else logged while the request runs.
//!
//! Only the path is logged, never the query (a signed URL's `sig=` is a credential) nor
//! any header (`Authorization`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use common::UploadId;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

/// The upload a request path names, if any: the first segment that is an upload id.
pub fn upload_id(path: &str) -> Option<UploadId> {
    path.split('/')
        .filter(|s| s.len() == 36)
        .find_map(|s| s.parse().ok())
}

/// Middleware: counts the request body's bytes and logs the request once its response
/// body is done.
pub async fn log(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let req = req.map(|body| {
        Body::new(Counted {
            inner: body,
            bytes: received.clone(),
        })
    });
    let resp = next.run(req).await;
    let line = Line {
        span: tracing::Span::current(),
        started,
        status: resp.status().as_u16(),
        received,
        sent: 0,
    };
    resp.map(|body| Body::new(Logged { inner: body, line }))
}

/// A body that adds the length of every data frame it yields to `bytes`.
struct Counted {
    inner: Body,
    bytes: Arc<AtomicU64>,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the log line says; written when the response body is dropped.
struct Line {
    span: tracing::Span,
    started: Instant,
    status: u16,
    received: Arc<AtomicU64>,
    sent: u64,
}

impl Drop for Line {
    fn drop(&mut self) {
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let bytes_in = self.received.load(Ordering::Relaxed);
        self.span.in_scope(|| {
            tracing::info!(
                status = self.status,
                duration_ms = (duration_ms * 1000.0).round() / 1000.0,
                bytes_in,
                bytes_out = self.sent,
                "request"
            )
        });
    }
}

/// The response body, counting what it yields; its [`Line`] is logged when it is dropped
/// (sent, or abandoned by a client that went away).
struct Logged {
    inner: Body,
    line: Line,
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.line.sent += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::upload_id;

    #[test]
    fn finds_the_upload_id_in_a_path() {
        let id = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        for path in [
            format!("/v1/uploads/{id}"),
            format!("/v1/uploads/{id}/chunks/3"),
            format!("/files/{id}"),
            format!("/uploads/{id}"),
        ] {
            assert_eq!(upload_id(&path).map(|u| u.to_string()).as_deref(), Some(id));
        }
        assert!(upload_id("/v1/uploads").is_none());
        assert!(upload_id("/v1/uploads/not-an-id-but-thirty-six-characters!!").is_none());
    }
}
