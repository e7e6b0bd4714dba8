//! Connection slots: at most `--max-connections` connections are served at once, and
//! those that hold a slot without using it cannot keep clients out.
//!
//! Each connection is tracked by its [`ConnState`]: requests in progress (and how many
//! of them are event streams), since when it has had none, and since when a write to its
//! client has been blocked. With that:
//!
//! - **Idle connections are closed** after `idle_timeout` without a request: one that
//!   never finishes its TLS handshake, its first request's headers (byte by byte, or not
//!   at all), or an HTTP/2 connection whose streams all ended.
//! - **A client that stops reading is cut:** a write blocked for `send_timeout` fails the
//!   connection ([`ConnIo`]), for a download or an event stream as for any answer.
//! - **When every slot is taken,** new connections wait, and the server makes room for
//!   them by closing connections that do not use their slot: first one that has been idle
//!   for a second (a client that sends nothing, or trickles its headers, or sits between
//!   requests: it reconnects), else one whose writes have been blocked for a second (its
//!   client is not reading), else the oldest that only follows event streams (an
//!   `EventSource` reconnects and resumes with `Last-Event-ID`). Connections sending or
//!   receiving an upload are never taken.
//! - **Ready clients first.** A waiting connection whose client has already sent a whole
//!   request head (or, with TLS, its whole ClientHello) is *ready*: it gets the next slot
//!   before any connection that has not, and it may take the place of a connection that
//!   has never sent a request at once, without the second of grace. So a flood of
//!   clients trickling headers (reconnecting as fast as they are closed) only ever
//!   competes with itself. The waiting room holds as many connections as there are
//!   slots; when it is full, the longest-waiting connection that is not ready is closed.
//!
//! A newcomer waits at most the idle timeout; then its connection is closed.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, Notify};
use tokio::time::{Instant, Sleep};

/// A connection idle this long may be closed to make room for a newcomer.
const GRACE: Duration = Duration::from_secs(1);
/// A write blocked this long makes its connection a candidate too.
const BLOCKED_EVICTABLE: Duration = Duration::from_secs(1);
/// How often the slots are looked over (idle connections, room for waiting ones).
const UPKEEP: Duration = Duration::from_millis(100);

/// Counter: connections served, by `protocol` (`http/1.1`, `h2`) and `tls`.
pub const CONNECTIONS: &str = "upload_http_connections_total";
/// Counter: connections the server closed, by `reason`: `idle` (no request for the header
/// timeout), `evicted` (its slot went to a newcomer), `shed` (it waited for a slot in a
/// full waiting room, or too long), `send_timeout` (the client read nothing),
/// `tls_handshake` (failed or too slow).
pub const CONNECTIONS_CLOSED: &str = "upload_http_connections_closed_total";
/// Gauge: connections holding a slot.
pub const CONNECTIONS_OPEN: &str = "upload_http_connections_open";

/// Describes this module's metrics (once the exporter is installed).
pub fn describe_metrics() {
    metrics::describe_counter!(CONNECTIONS, "Connections served, by protocol and TLS.");
    metrics::describe_counter!(
        CONNECTIONS_CLOSED,
        "Connections the server closed: idle, evicted for a newcomer, shed while waiting, \
         send timeout, TLS handshake."
    );
    metrics::describe_gauge!(CONNECTIONS_OPEN, "Connections holding a slot.");
}

/// Counts a connection the server closed for `reason`.
pub fn closed(reason: &'static str) {
    metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(1);
}

/// Why a connection is to be closed ([`ConnState::evicted`]).
const OPEN: u8 = 0;
const IDLE: u8 = 1;
const EVICTED: u8 = 2;

/// The slots of one listener.
pub struct Slots {
    max: usize,
    epoch: Instant,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next: u64,
    conns: HashMap<u64, Arc<ConnState>>,
    /// Connections waiting for a slot, by arrival.
    waiters: BTreeMap<u64, Waiter>,
}

struct Waiter {
    /// Set by the connection's task once its client has sent a request head.
    ready: Arc<AtomicBool>,
    slot: oneshot::Sender<Slot>,
}

impl Waiter {
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// What the slots know of one connection.
#[derive(Debug)]
pub struct ConnState {
    epoch: Instant,
    opened_ms: u64,
    /// Whether its client had sent a request head when it got the slot.
    admitted_ready: bool,
    /// Whether a request ever began on it.
    served: AtomicBool,
    /// Requests in progress (from their headers until their answer is sent).
    active: AtomicU32,
    /// Of those, event streams (`text/event-stream` answers).
    streaming: AtomicU32,
    /// When `active` last fell to zero (or the connection got its slot).
    idle_since_ms: AtomicU64,
    /// When the current blocked write began; `u64::MAX` when none is blocked.
    blocked_since_ms: AtomicU64,
    /// Set once the connection was chosen to be closed: why.
    evicted: AtomicU8,
    close: Notify,
}

/// One connection's slot: frees it when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    state: Arc<ConnState>,
}

impl Slots {
    /// Slots for at most `max` connections at once.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            epoch: Instant::now(),
            table: Mutex::new(Table::default()),
        })
    }

    fn now_ms(&self) -> u64 {
        ms_since(self.epoch)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections holding a slot.
    pub fn len(&self) -> usize {
        self.table().conns.len()
    }

    /// Whether no connection holds a slot.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a new connection for a slot; `ready` says (and its task keeps saying)
    /// whether its client has sent a request head. The slot comes through the receiver,
    /// at once when one is free; an error means the connection was shed. `None`: shed at
    /// once (the waiting room is full of ready connections).
    pub fn enqueue(self: &Arc<Self>, ready: Arc<AtomicBool>) -> Option<oneshot::Receiver<Slot>> {
        let (tx, rx) = oneshot::channel();
        let mut rejected = Vec::new();
        {
            let mut t = self.table();
            t.waiters.retain(|_, w| !w.slot.is_closed());
            if t.waiters.len() >= self.max {
                let unready = t
                    .waiters
                    .iter()
                    .find(|(_, w)| !w.is_ready())
                    .map(|(k, _)| *k);
                match unready {
                    Some(k) => {
                        t.waiters.remove(&k);
                        closed("shed");
                    }
                    None => return None,
                }
            }
            let seq = t.next;
            t.next += 1;
            t.waiters.insert(seq, Waiter { ready, slot: tx });
            self.admit(&mut t, &mut rejected);
        }
        drop(rejected);
        Some(rx)
    }

    /// Looks again for room: a waiting connection became ready.
    pub fn poke(self: &Arc<Self>) {
        let mut rejected = Vec::new();
        self.admit(&mut self.table(), &mut rejected);
        drop(rejected);
    }

    /// Gives free slots to waiting connections (ready ones first, then by arrival), and
    /// makes room for those still waiting. Slots whose waiter is gone are put in
    /// `rejected`, to be dropped once the table is unlocked.
    fn admit(self: &Arc<Self>, t: &mut Table, rejected: &mut Vec<Slot>) {
        while t.conns.len() < self.max {
            let next = t
                .waiters
                .iter()
                .find(|(_, w)| w.is_ready())
                .or_else(|| t.waiters.iter().next())
                .map(|(k, _)| *k);
            let Some(waiter) = next.and_then(|k| t.waiters.remove(&k)) else {
                break;
            };
            let id = t.next;
            t.next += 1;
            let state = Arc::new(ConnState::new(self.epoch, waiter.is_ready()));
            t.conns.insert(id, state.clone());
            let slot = Slot {
                slots: self.clone(),
                id,
                state,
            };
            if let Err(slot) = waiter.slot.send(slot) {
                rejected.push(slot);
            }
        }
        metrics::gauge!(CONNECTIONS_OPEN).set(t.conns.len() as f64);
        if t.waiters.is_empty() {
            return;
        }
        // One connection closing per waiting one, ready ones served first.
        let closing = t
            .conns
            .values()
            .filter(|c| c.evicted.load(Ordering::Acquire) != OPEN)
            .count();
        let ready = t.waiters.values().filter(|w| w.is_ready()).count();
        let mut for_ready = ready.saturating_sub(closing);
        let mut wanted = t.waiters.len().saturating_sub(closing);
        let now = self.now_ms();
        while wanted > 0 {
            let Some(victim) = pick_victim(t, now, for_ready > 0) else {
                break;
            };
            victim.evict(EVICTED);
            wanted -= 1;
            for_ready = for_ready.saturating_sub(1);
        }
    }

    /// Closes the connections that have had no request for `idle`, and makes room for
    /// waiting connections as candidates come of age; runs until dropped.
    pub async fn upkeep(self: Arc<Self>, idle: Duration) {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let mut tick = tokio::time::interval(UPKEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = self.now_ms();
            let mut rejected = Vec::new();
            let mut t = self.table();
            for c in t.conns.values() {
                if c.active.load(Ordering::Acquire) == 0
                    && now.saturating_sub(c.idle_since_ms.load(Ordering::Acquire)) >= idle_ms
                {
                    c.evict(IDLE);
                }
            }
            t.waiters.retain(|_, w| !w.slot.is_closed());
            self.admit(&mut t, &mut rejected);
            drop(t);
            drop(rejected);
        }
    }
}

/// The connection to close for a waiting one, if any (see the module documentation);
/// `for_ready`: the waiting one has sent its request head.
fn pick_victim(t: &Table, now: u64, for_ready: bool) -> Option<&Arc<ConnState>> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let live = || {
        t.conns
            .values()
            .filter(|c| c.evicted.load(Ordering::Acquire) == OPEN)
    };
    let idle = live()
        .filter(|c| c.active.load(Ordering::Acquire) == 0)
        .filter(|c| {
            let never_used = !c.admitted_ready && !c.served.load(Ordering::Acquire);
            (for_ready && never_used)
                || now.saturating_sub(c.idle_since_ms.load(Ordering::Acquire)) >= ms(GRACE)
        })
        .min_by_key(|c| c.idle_since_ms.load(Ordering::Acquire));
    if idle.is_some() {
        return idle;
    }
    let blocked = live()
        .map(|c| (c, c.blocked_since_ms.load(Ordering::Acquire)))
        .filter(|(_, since)| {
            *since != u64::MAX && now.saturating_sub(*since) >= ms(BLOCKED_EVICTABLE)
        })
        .min_by_key(|(_, since)| *since)
        .map(|(c, _)| c);
    if blocked.is_some() {
        return blocked;
    }
    live()
        .filter(|c| {
            let active = c.active.load(Ordering::Acquire);
            active > 0 && active == c.streaming.load(Ordering::Acquire)
        })
        .min_by_key(|c| c.opened_ms)
}

impl Slot {
    /// The connection's state, for its I/O and its requests.
    pub fn state(&self) -> &Arc<ConnState> {
        &self.state
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut rejected = Vec::new();
        {
            let mut t = self.slots.table();
            t.conns.remove(&self.id);
            self.slots.admit(&mut t, &mut rejected);
        }
        drop(rejected);
    }
}

impl ConnState {
    fn new(epoch: Instant, admitted_ready: bool) -> Self {
        let now = ms_since(epoch);
        Self {
            epoch,
            opened_ms: now,
            admitted_ready,
            served: AtomicBool::new(false),
            active: AtomicU32::new(0),
            streaming: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(now),
            blocked_since_ms: AtomicU64::new(u64::MAX),
            evicted: AtomicU8::new(OPEN),
            close: Notify::new(),
        }
    }

    fn evict(&self, why: u8) {
        if self
            .evicted
            .compare_exchange(OPEN, why, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.close.notify_one();
        }
    }

    /// Resolves once the connection is to be closed (evicted or idle too long), and
    /// counts it.
    pub async fn closed(&self) {
        self.close.notified().await;
        closed(match self.evicted.load(Ordering::Acquire) {
            IDLE => "idle",
            _ => "evicted",
        });
    }

    /// A request began on the connection; it ends when the guard is dropped (with the
    /// answer's body).
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        RequestGuard {
            conn: self.clone(),
            streaming: false,
        }
    }
}

/// One request in progress on a connection (see [`ConnState::begin`]).
pub struct RequestGuard {
    conn: Arc<ConnState>,
    streaming: bool,
}

impl RequestGuard {
    /// The answer is an event stream: the connection may be taken for a newcomer.
    pub fn streaming(&mut self) {
        if !self.streaming {
            self.streaming = true;
            self.conn.streaming.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.streaming {
            self.conn.streaming.fetch_sub(1, Ordering::AcqRel);
        }
        self.conn
            .idle_since_ms
            .store(ms_since(self.conn.epoch), Ordering::Release);
        self.conn.active.fetch_sub(1, Ordering::AcqRel);
    }
}

fn ms_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Whether `head`, the first bytes a client sent, make a whole request head: an HTTP/1
/// head to its blank line, the HTTP/2 preface and a frame header, or (`tls`) a whole TLS
/// record (the ClientHello).
pub fn request_ready(head: &[u8], tls: bool) -> bool {
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    if tls {
        return head.len() >= 5
            && head[0] == 0x16
            && head.len() >= 5 + usize::from(u16::from_be_bytes([head[3], head[4]]));
    }
    if head.starts_with(H2_PREFACE) {
        return head.len() >= H2_PREFACE.len() + 9;
    }
    head.windows(4).any(|w| w == b"\r\n\r\n")
}

/// A connection's socket, timing its writes: one blocked for `send_timeout` fails with
/// `TimedOut`, which ends the connection.
pub struct ConnIo<S> {
    inner: S,
    state: Arc<ConnState>,
    send_timeout: Duration,
    stall: Option<Pin<Box<Sleep>>>,
}

impl<S> ConnIo<S> {
    /// Wraps `inner`, the socket of the connection `state` describes.
    pub fn new(inner: S, state: Arc<ConnState>, send_timeout: Duration) -> Self {
        Self {
            inner,
            state,
            send_timeout,
            stall: None,
        }
    }

    /// Records the outcome of a write: progress clears the stall, `Pending` starts or
    /// checks it.
    fn track<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            if self.stall.take().is_some() {
                self.state
                    .blocked_since_ms
                    .store(u64::MAX, Ordering::Release);
            }
            return r;
        }
        if self.stall.is_none() {
            self.state
                .blocked_since_ms
                .store(ms_since(self.state.epoch), Ordering::Release);
        }
        let send_timeout = self.send_timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(send_timeout)));
        ready!(stall.as_mut().poll(cx));
        closed("send_timeout");
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client read nothing for {send_timeout:?}"),
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ConnIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ConnIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.track(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn take(slots: &Arc<Slots>, ready: bool) -> oneshot::Receiver<Slot> {
        slots
            .enqueue(Arc::new(AtomicBool::new(ready)))
            .expect("queued")
    }

    async fn now(slots: &Arc<Slots>, ready: bool) -> Slot {
        take(slots, ready).await.await.expect("a free slot")
    }

    #[tokio::test(start_paused = true)]
    async fn a_ready_newcomer_takes_the_place_of_a_silent_connection_at_once() {
        let slots = Slots::new(2);
        let busy = now(&slots, true).await;
        let _request = busy.state().begin();
        let silent = now(&slots, false).await;
        let waiting = take(&slots, true).await;
        tokio::time::timeout(Duration::from_millis(1), silent.state().closed())
            .await
            .expect("the silent connection is told to close at once");
        assert_eq!(busy.state().evicted.load(Ordering::Acquire), OPEN);
        drop(silent);
        let _newcomer = waiting.await.expect("its slot");
        assert_eq!(slots.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newcomer_that_is_not_ready_waits_for_the_grace() {
        let slots = Slots::new(1);
        let silent = now(&slots, false).await;
        let t0 = Instant::now();
        let upkeep = tokio::spawn(slots.clone().upkeep(Duration::from_secs(30)));
        let waiting = take(&slots, false).await;
        silent.state().closed().await;
        assert!(t0.elapsed() >= GRACE, "{:?}", t0.elapsed());
        drop(silent);
        let _newcomer = waiting.await.expect("its slot");
        upkeep.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn ready_waiters_get_free_slots_first_and_a_full_room_sheds_unready_ones() {
        let slots = Slots::new(1);
        let holder = now(&slots, true).await;
        let _request = holder.state().begin();
        let slow = take(&slots, false).await;
        let ready = take(&slots, true).await;
        drop(_request);
        drop(holder);
        let _got = ready.await.expect("the ready one is served first");
        // The room holds one waiter: a newcomer sheds the unready one.
        let _slow2 = take(&slots, false).await;
        assert!(slow.await.is_err(), "shed");
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connections_are_never_taken_event_streams_are() {
        let slots = Slots::new(1);
        let busy = now(&slots, true).await;
        let request = busy.state().begin();
        let upkeep = tokio::spawn(slots.clone().upkeep(Duration::from_secs(60)));
        let waiting = take(&slots, true).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(busy.state().evicted.load(Ordering::Acquire), OPEN);
        // An event stream only: taken.
        let mut sse = busy.state().begin();
        sse.streaming();
        drop(request);
        busy.state().closed().await;
        drop(sse);
        drop(busy);
        let _newcomer = waiting.await.expect("its slot");
        upkeep.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_writer_is_taken_after_a_second() {
        let slots = Slots::new(1);
        let downloader = now(&slots, true).await;
        let request = downloader.state().begin();
        downloader
            .state()
            .blocked_since_ms
            .store(slots.now_ms(), Ordering::Release);
        let upkeep = tokio::spawn(slots.clone().upkeep(Duration::from_secs(60)));
        let t0 = Instant::now();
        let waiting = take(&slots, true).await;
        downloader.state().closed().await;
        assert!(t0.elapsed() >= BLOCKED_EVICTABLE);
        drop(request);
        drop(downloader);
        let _newcomer = waiting.await.expect("its slot");
        upkeep.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed_busy_ones_kept() {
        let slots = Slots::new(4);
        let idle = now(&slots, true).await;
        let busy = now(&slots, true).await;
        let _request = busy.state().begin();
        let upkeep = tokio::spawn(slots.clone().upkeep(Duration::from_secs(3)));
        tokio::time::timeout(Duration::from_secs(5), idle.state().closed())
            .await
            .expect("closed after the idle timeout");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(busy.state().evicted.load(Ordering::Acquire), OPEN);
        upkeep.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_past_the_send_timeout_fails() {
        // A duplex pipe whose reader never reads: writes block once its buffer is full.
        let (ours, _theirs) = tokio::io::duplex(1024);
        let slots = Slots::new(1);
        let slot = now(&slots, true).await;
        let mut io = ConnIo::new(ours, slot.state().clone(), Duration::from_secs(30));
        let t0 = Instant::now();
        let err = tokio::io::AsyncWriteExt::write_all(&mut io, &[0u8; 4096])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(t0.elapsed() >= Duration::from_secs(30));
        assert_ne!(
            slot.state().blocked_since_ms.load(Ordering::Acquire),
            u64::MAX
        );
    }

    #[test]
    fn a_request_head_is_ready_once_whole() {
        assert!(request_ready(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false));
        assert!(!request_ready(b"GET / HTTP/1.1\r\nHost: x\r\n", false));
        let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        assert!(!request_ready(&h2, false));
        h2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert!(request_ready(&h2, false));
        let hello = [0x16, 3, 1, 0, 2, 1, 1];
        assert!(request_ready(&hello, true));
        assert!(!request_ready(&hello[..6], true));
        assert!(!request_ready(b"GET / HTTP/1.1\r\n\r\n", true));
    }
}
