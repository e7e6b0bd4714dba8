//! The accept loop: HTTP/1.1 and HTTP/2, over TLS or plain TCP, with timeouts, connection
//! slots and graceful shutdown.
//!
//! - **Protocols.** Over TLS, ALPN decides: `h2` is served as HTTP/2, anything else as
//!   HTTP/1.1. On a plain socket, a client that opens with the HTTP/2 preface (h2c "prior
//!   knowledge", as `curl --http2-prior-knowledge` or a gRPC-style client does) gets
//!   HTTP/2, everyone else HTTP/1.1.
//! - **Flow control.** HTTP/2 windows are sized for uploads: each stream may have
//!   [`H2_STREAM_WINDOW`] in flight and the connection [`H2_CONN_WINDOW`], so 4 parallel
//!   8 MiB chunks on one connection are not throttled by window updates; what a handler
//!   has not read yet is bounded by the same figures.
//! - **Timeouts.** `axum::serve` installs no timer, so hyper's header-read timeout would
//!   be inert; here every connection gets a Tokio timer. The TLS handshake has the header
//!   timeout too; a connection without a request for that long is closed; a client that
//!   reads nothing for the send timeout is cut; HTTP/2 peers are pinged and closed when
//!   they stop answering. Request bodies have their own timeout in the handlers.
//! - **Slots.** See [`crate::conn`]: a full server makes room by closing connections that
//!   do not use their slot.
//! - **Per request,** the handlers find the client's address (`ConnectInfo`, forwarded by
//!   a trusted proxy), the public base of absolute URLs
//!   ([`PublicBase`](crate::forwarded::PublicBase), also applied to
//!   `Location` and `Content-Location` here), and on HTTP/1.1 directly from the client,
//!   the handle for interim responses ([`Interim`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, Response, Version};
use axum::Router;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::conn::{request_ready, ConnIo, ConnState, Slot, Slots, CONNECTIONS};
use crate::forwarded::Edge;
use crate::interim::{Interim, InterimIo};
use crate::tls::{Tls, ALPN_H2};

/// Bytes an HTTP/2 stream may send ahead of the handler reading them.
pub const H2_STREAM_WINDOW: u32 = 4 << 20;
/// Bytes all of an HTTP/2 connection's streams may send ahead of their handlers: enough
/// for 80 MB/s over a 100 ms round trip, and what one connection may make the server
/// hold in memory (twice that made the bench's peak RSS pass 64 MiB).
pub const H2_CONN_WINDOW: u32 = 8 << 20;
/// Largest HTTP/2 frame a client may send: fewer frames (and window updates) per chunk.
const H2_MAX_FRAME: u32 = 256 << 10;
/// Streams one HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 64;
/// How often an HTTP/2 peer is pinged, and how long it has to answer.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// How much of a waiting connection's first bytes is looked at for a whole request head.
const PEEK_BYTES: usize = 8 << 10;
/// How often a waiting connection that sent part of a request head is looked at again.
const LOOK_AGAIN: Duration = Duration::from_millis(50);

/// How connections are served.
pub struct ServeOptions {
    /// Time a client has to send a request's headers (and to finish the TLS handshake);
    /// also how long a connection may go without a request.
    pub header_timeout: Duration,
    /// A write to a client blocked this long ends its connection.
    pub send_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// TLS, when configured.
    pub tls: Option<Arc<Tls>>,
    /// Public URL and trusted proxies.
    pub edge: Edge,
    /// Whether interim responses (`104`) may be sent at all.
    pub interim: bool,
    /// Whether HTTP/2 is offered (ALPN `h2`, h2c prior knowledge).
    pub http2: bool,
}

/// Which protocol a connection speaks.
#[derive(Clone, Copy)]
enum Protocol {
    /// Plain TCP: HTTP/2 for a client that opens with its preface, else HTTP/1.1.
    Detect,
    Http1,
    Http2,
}

/// Serves `app` on `listener` until `stop` turns true, then waits up to `grace` for the
/// requests in flight. Returns whether every connection finished in time.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> bool {
    let opts = Arc::new(opts);
    let slots = Slots::new(opts.max_connections);
    let upkeep = tokio::spawn(slots.clone().upkeep(opts.header_timeout));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            app: app.clone(),
            opts: opts.clone(),
            peer,
            watcher: graceful.watcher(),
            stop: stop.clone(),
        };
        let slots = slots.clone();
        tokio::spawn(async move {
            let Some(slot) = conn.wait_for_slot(&slots, &stream).await else {
                tracing::debug!(%peer, "no connection slot for it; closing");
                return;
            };
            conn.run(stream, slot.state().clone()).await;
            drop(slot);
        });
    }
    drop(listener);
    upkeep.abort();
    tokio::select! {
        _ = graceful.shutdown() => true,
        _ = tokio::time::sleep(grace) => false,
    }
}

/// One accepted connection and what it needs.
struct Connection {
    app: Router,
    opts: Arc<ServeOptions>,
    peer: SocketAddr,
    watcher: Watcher,
    stop: watch::Receiver<bool>,
}

impl Connection {
    /// Waits for a slot (see [`crate::conn`]), telling the slots when the client has sent
    /// a whole request head; `None` when the connection is to be closed instead.
    async fn wait_for_slot(&self, slots: &Arc<Slots>, stream: &TcpStream) -> Option<Slot> {
        let tls = self.opts.tls.is_some();
        let mut head = vec![0u8; PEEK_BYTES];
        let (mut seen, is_ready) = peek_head(stream, &mut head, tls)?;
        let ready = Arc::new(AtomicBool::new(is_ready));
        let Some(mut granted) = slots.enqueue(ready.clone()) else {
            crate::conn::closed("shed");
            return None;
        };
        let deadline = tokio::time::sleep(self.opts.header_timeout);
        tokio::pin!(deadline);
        let mut stop = self.stop.clone();
        loop {
            let waiting = !ready.load(Ordering::Acquire);
            tokio::select! {
                slot = &mut granted => return slot.ok(),
                _ = &mut deadline => {
                    crate::conn::closed("shed");
                    return None;
                }
                _ = stop.wait_for(|s| *s) => return None,
                // Nothing sent yet: wait for bytes. Some sent: look again now and then
                // (the socket stays readable while they are unread).
                r = stream.readable(), if waiting && seen == 0 => {
                    if r.is_err() {
                        return None;
                    }
                }
                _ = tokio::time::sleep(LOOK_AGAIN), if waiting && seen > 0 => {}
            }
            if waiting {
                let (n, now_ready) = peek_head(stream, &mut head, tls)?;
                seen = n;
                if now_ready {
                    ready.store(true, Ordering::Release);
                    slots.poke();
                }
            }
        }
    }

    /// Serves the connection until it ends, is closed for a newcomer or idles too long.
    async fn run(self, stream: TcpStream, state: Arc<ConnState>) {
        let io = ConnIo::new(stream, state.clone(), self.opts.send_timeout);
        let Some(tls) = self.opts.tls.clone() else {
            let protocol = if self.opts.http2 {
                Protocol::Detect
            } else {
                Protocol::Http1
            };
            return self.http(io, protocol, false, state).await;
        };
        let mut stop = self.stop.clone();
        let handshake = tokio::time::timeout(self.opts.header_timeout, tls.acceptor().accept(io));
        let stream = tokio::select! {
            r = handshake => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                    crate::conn::closed("tls_handshake");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                    crate::conn::closed("tls_handshake");
                    return;
                }
            },
            _ = state.closed() => return,
            _ = stop.wait_for(|s| *s) => return,
        };
        let protocol = if stream.get_ref().1.alpn_protocol() == Some(ALPN_H2) {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        self.http(stream, protocol, true, state).await
    }

    /// Serves HTTP on `io`; all but HTTP/2 connections get the means to send interim
    /// responses.
    async fn http<I>(self, io: I, protocol: Protocol, tls: bool, state: Arc<ConnState>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if let Protocol::Http2 = protocol {
            return self.serve(io, None, protocol, tls, state).await;
        }
        let (io, interim) = InterimIo::new(io);
        self.serve(io, Some(interim), protocol, tls, state).await
    }

    async fn serve<I>(
        self,
        io: I,
        interim: Option<Interim>,
        protocol: Protocol,
        tls: bool,
        state: Arc<ConnState>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            app,
            opts,
            peer,
            watcher,
            ..
        } = self;
        let requests = state.clone();
        let options = opts.clone();
        let counted = std::sync::atomic::AtomicBool::new(false);
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let mut guard = requests.begin();
            if !counted.swap(true, std::sync::atomic::Ordering::Relaxed) {
                let protocol = if req.version() == Version::HTTP_2 {
                    "h2"
                } else {
                    "http/1.1"
                };
                metrics::counter!(CONNECTIONS, "protocol" => protocol, "tls" => tls.to_string())
                    .increment(1);
            }
            let arrival = opts.edge.classify(peer, req.headers(), tls);
            req.extensions_mut().insert(ConnectInfo(arrival.client));
            if let Some(interim) = interim
                .as_ref()
                .filter(|_| opts.interim && req.version() == Version::HTTP_11 && !arrival.proxied)
            {
                req.extensions_mut()
                    .insert(interim.with_base(arrival.base.clone()));
            }
            req.extensions_mut().insert(arrival.base.clone());
            let app = app.clone();
            async move {
                let Ok(mut resp) = app.oneshot(req).await;
                arrival.base.absolutize(resp.headers_mut());
                if is_event_stream(&resp) {
                    guard.streaming();
                }
                // The request lasts until its answer's body is sent (or dropped).
                Ok::<_, Infallible>(resp.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _in_progress = &guard;
                        frame
                    }))
                }))
            }
        });
        let builder = builder(protocol, &options);
        let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
        tokio::select! {
            r = conn => if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            },
            _ = state.closed() => {
                tracing::debug!(%peer, "connection closed: idle, or its slot was taken");
            }
        }
    }
}

/// How many bytes the client has sent so far (up to `buf`'s size), and whether they make a
/// whole request head; without waiting. `None` once the client has closed the connection.
fn peek_head(stream: &TcpStream, buf: &mut [u8], tls: bool) -> Option<(usize, bool)> {
    match stream.peek(buf).now_or_never() {
        None => Some((0, false)),
        Some(Ok(0) | Err(_)) => None,
        Some(Ok(n)) => Some((n, request_ready(&buf[..n], tls))),
    }
}

/// Whether `resp` is an event stream (`text/event-stream`).
fn is_event_stream(resp: &Response<Body>) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// The connection builder for `protocol` (see the module documentation for the figures).
fn builder(protocol: Protocol, opts: &ServeOptions) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    match protocol {
        Protocol::Detect => b,
        Protocol::Http1 => b.http1_only(),
        Protocol::Http2 => b.http2_only(),
    }
}

/// The base of the URLs handed out for requests that name none (for the start-up log).
pub fn describe_base(edge: &Edge) -> String {
    match (&edge.public_url, edge.trusted.is_empty()) {
        (Some(url), _) => format!("{url} (absolute URLs)"),
        (None, false) => {
            "from X-Forwarded-Proto/-Host of trusted proxies, else relative URLs".into()
        }
        (None, true) => "none (relative URLs)".into(),
    }
}
