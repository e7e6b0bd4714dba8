//! A real webhook receiver for the tests: an axum server on a free loopback port that
//! records every delivery it gets (headers, raw body, what it answered) and answers as its
//! [`Policy`] says: accept, fail with 500, drop the connection without an answer, or hold
//! the request until the test releases it.
//!
//! Dropping a connection needs the socket, which a handler never sees: the listener wraps
//! each accepted stream in a [`KillableIo`] whose writes fail once its connection's flag
//! is set, and hands the flag to the handler as its connect info. The handler sets it and
//! returns; hyper's write of the answer fails and it closes the connection, so the sender
//! reads an end of stream instead of a status line.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use hmac::{KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How the receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// 200 to everything.
    Accept,
    /// 500 to everything.
    Fail,
    /// The first `n` requests (of any event) fail, alternately with a 500 and with a
    /// connection dropped before any answer; every later one gets 200.
    FailFirst(usize),
    /// Each request is held until [`Receiver::release`] (at most a minute), then gets 200.
    Hold,
}

/// What the receiver did with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered 200.
    Accepted,
    /// Answered 500.
    Failed,
    /// Closed the connection without answering.
    Dropped,
    /// Being held (becomes `Accepted` once answered).
    Held,
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// Position among every request the receiver got (0 first).
    pub seq: usize,
    /// Unix seconds when it arrived.
    pub at_unix: i64,
    /// `x-upload-event-id`.
    pub event_id: String,
    /// `x-upload-event`.
    pub kind: String,
    /// `x-upload-signature`.
    pub signature: String,
    /// `content-type`.
    pub content_type: String,
    /// The raw body, as signed.
    pub body: Bytes,
    /// The body as JSON (`Null` when it is not JSON).
    pub json: Value,
    /// What the receiver answered.
    pub outcome: Outcome,
}

/// The receiver's state, shared with its handler.
struct Shared {
    policy: Mutex<Policy>,
    arrivals: Mutex<Vec<Arrival>>,
    /// Requests being held now.
    holding: AtomicUsize,
    /// Set to release every held request (now and later).
    released: watch::Sender<bool>,
}

/// A running receiver; stops listening when dropped (and releases held requests).
pub struct Receiver {
    /// Where webhooks are sent: `http://127.0.0.1:PORT/hook`.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver answering as `policy`.
    pub async fn start(policy: Policy) -> Receiver {
        let tcp = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = tcp.local_addr().expect("receiver address");
        let shared = Arc::new(Shared {
            policy: Mutex::new(policy),
            arrivals: Mutex::new(Vec::new()),
            holding: AtomicUsize::new(0),
            released: watch::channel(false).0,
        });
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(shared.clone())
            .into_make_service_with_connect_info::<Conn>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(KillableListener(tcp), app).await;
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            shared,
            task,
        }
    }

    /// Changes how later requests are answered.
    pub fn set_policy(&self, policy: Policy) {
        *self.shared.policy.lock().unwrap() = policy;
    }

    /// Answers every held request (and any later one at once).
    pub fn release(&self) {
        self.shared.released.send_replace(true);
    }

    /// Requests being held now.
    pub fn holding(&self) -> usize {
        self.shared.holding.load(Ordering::SeqCst)
    }

    /// Every request so far, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.shared.arrivals.lock().unwrap().clone()
    }

    /// Requests so far.
    pub fn count(&self) -> usize {
        self.shared.arrivals.lock().unwrap().len()
    }

    /// The requests that got a 200, in arrival order.
    pub fn accepted(&self) -> Vec<Arrival> {
        self.arrivals()
            .into_iter()
            .filter(|a| a.outcome == Outcome::Accepted)
            .collect()
    }

    /// Polls (every 20 ms) until `cond` holds of the arrivals; panics with `what` and the
    /// arrivals after `limit`.
    pub async fn wait_for(&self, limit: Duration, what: &str, cond: impl Fn(&[Arrival]) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            let arrivals = self.arrivals();
            if cond(&arrivals) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; arrivals: {:#?}",
                summary(&arrivals)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every one of `ids` was accepted at least once.
    pub async fn wait_accepted(&self, limit: Duration, ids: &[String]) {
        self.wait_for(limit, &format!("events {ids:?} to be accepted"), |arr| {
            ids.iter().all(|id| {
                arr.iter()
                    .any(|a| &a.event_id == id && a.outcome == Outcome::Accepted)
            })
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.release();
        self.task.abort();
    }
}

/// The arrivals in short, for failure messages.
pub fn summary(arrivals: &[Arrival]) -> Vec<String> {
    arrivals
        .iter()
        .map(|a| format!("#{} {} {} {:?}", a.seq, a.kind, a.event_id, a.outcome))
        .collect()
}

/// The webhook handler: records the request, then answers as the policy says.
async fn hook(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let policy = *shared.policy.lock().unwrap();
    let (seq, outcome) = {
        let mut arrivals = shared.arrivals.lock().unwrap();
        let seq = arrivals.len();
        let outcome = match policy {
            Policy::Accept => Outcome::Accepted,
            Policy::Fail => Outcome::Failed,
            Policy::FailFirst(n) if seq < n && seq % 2 == 0 => Outcome::Failed,
            Policy::FailFirst(n) if seq < n => Outcome::Dropped,
            Policy::FailFirst(_) => Outcome::Accepted,
            Policy::Hold => Outcome::Held,
        };
        arrivals.push(Arrival {
            seq,
            at_unix: unix_now(),
            event_id: text("x-upload-event-id"),
            kind: text("x-upload-event"),
            signature: text("x-upload-signature"),
            content_type: text("content-type"),
            json: serde_json::from_slice(&body).unwrap_or(Value::Null),
            body,
            outcome,
        });
        (seq, outcome)
    };
    match outcome {
        Outcome::Accepted => StatusCode::OK,
        Outcome::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        Outcome::Dropped => {
            conn.0.store(true, Ordering::SeqCst);
            StatusCode::OK
        }
        Outcome::Held => {
            shared.holding.fetch_add(1, Ordering::SeqCst);
            let mut released = shared.released.subscribe();
            let _ = tokio::time::timeout(Duration::from_secs(60), released.wait_for(|r| *r)).await;
            shared.arrivals.lock().unwrap()[seq].outcome = Outcome::Accepted;
            shared.holding.fetch_sub(1, Ordering::SeqCst);
            StatusCode::OK
        }
    }
}

/// Unix time in seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Checks an `X-Upload-Signature` (`t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`) of
/// `body` under `secret`, and that `t` is at most 5 s before `arrived` (and not after it,
/// but for a second of clock granularity). `Err` says what is wrong.
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    arrived: i64,
) -> Result<(), String> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => return Err(format!("unexpected part {part:?} in {header:?}")),
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err(format!("no t or no hex v1 in {header:?}"));
    };
    if t > arrived + 1 || t < arrived - 5 {
        return Err(format!("t={t} is not recent (arrived at {arrived})"));
    }
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&v1)
        .map_err(|_| format!("HMAC mismatch for {header:?}"))
}

/// Per-connection flag: once set, the connection's writes fail (see the module doc).
#[derive(Clone, Debug)]
struct Conn(Arc<AtomicBool>);

impl Connected<IncomingStream<'_, KillableListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A TCP listener whose connections can be dropped by their handler.
struct KillableListener(TcpListener);

impl Listener for KillableListener {
    type Io = KillableIo;
    type Addr = Conn;

    async fn accept(&mut self) -> (KillableIo, Conn) {
        loop {
            match self.0.accept().await {
                Ok((stream, _)) => {
                    let kill = Arc::new(AtomicBool::new(false));
                    return (
                        KillableIo {
                            stream,
                            kill: kill.clone(),
                        },
                        Conn(kill),
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Conn> {
        // Only the flag type fits `Addr`; the receiver reads the real address itself.
        Ok(Conn(Arc::new(AtomicBool::new(false))))
    }
}

/// A TCP stream whose writes fail once `kill` is set.
struct KillableIo {
    stream: TcpStream,
    kill: Arc<AtomicBool>,
}

impl KillableIo {
    fn killed(&self) -> io::Result<()> {
        if self.kill.load(Ordering::SeqCst) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "dropped on purpose",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for KillableIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.killed() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.killed() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
