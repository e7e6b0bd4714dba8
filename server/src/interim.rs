//! Interim (1xx) responses, which hyper 1.x servers cannot send (they write only the final
//! response head): each connection's stream is wrapped so that a handler can queue the
//! head of an interim response (`104 Upload Resumption Supported`). It goes out before
//! anything hyper writes on the connection, and as soon as the connection reads again
//! (a handler sends it just before it reads the body).
//!
//! HTTP/1.1 only: hyper's HTTP/2 server has no way to send one, so the accept loop gives
//! this handle only to HTTP/1.1 requests that reach the server directly (see
//! [`crate::forwarded`]); handlers take it as optional.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use axum::http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::forwarded::PublicBase;

/// What a connection's handlers queued, and who to wake to write it.
#[derive(Default)]
struct Shared {
    queue: Mutex<Vec<u8>>,
    waker: Mutex<Option<Waker>>,
}

/// Sends interim responses on the connection of the request whose extensions hold it.
#[derive(Clone)]
pub struct Interim {
    shared: Arc<Shared>,
    /// Makes a relative `Location` absolute, as in the final answer.
    base: PublicBase,
}

impl Interim {
    /// The same connection's handle, for a request whose URLs go under `base`.
    pub fn with_base(&self, base: PublicBase) -> Self {
        Self {
            shared: self.shared.clone(),
            base,
        }
    }

    /// Queues the 1xx `status` (`reason` its phrase) with `headers`, ahead of the final
    /// response.
    pub fn send(&self, status: u16, reason: &str, headers: &HeaderMap) {
        debug_assert!(
            (100..200).contains(&status),
            "not an interim status: {status}"
        );
        let mut head = format!("HTTP/1.1 {status} {reason}\r\n").into_bytes();
        let mut headers = headers.clone();
        self.base.absolutize(&mut headers);
        for (name, value) in &headers {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        lock(&self.shared.queue).extend_from_slice(&head);
        if let Some(w) = lock(&self.shared.waker).take() {
            w.wake();
        }
    }
}

/// A connection's stream with room for interim responses (see the module documentation).
pub struct InterimIo<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> InterimIo<S> {
    /// Wraps `inner`; the handle sends on it.
    pub fn new(inner: S) -> (Self, Interim) {
        let shared = Arc::new(Shared::default());
        (
            Self {
                inner,
                shared: shared.clone(),
            },
            Interim {
                shared,
                base: PublicBase::default(),
            },
        )
    }
}

impl<S: AsyncWrite + Unpin> InterimIo<S> {
    /// Writes what is queued; `Ready(Ok)` once nothing is.
    fn flush_queue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut queue = lock(&self.shared.queue);
        while !queue.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &queue) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    queue.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for InterimIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Not waiting for the write: a client that does not read is no reason to stop
        // reading (the final response's write waits for it instead).
        if let Poll::Ready(Err(e)) = self.flush_queue(cx) {
            return Poll::Ready(Err(e));
        }
        *lock(&self.shared.waker) = Some(cx.waker().clone());
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for InterimIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.flush_queue(cx))?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.flush_queue(cx))?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.flush_queue(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
