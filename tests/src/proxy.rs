//! A fault-injecting HTTP/1.1 proxy for the end-to-end tests, put between a client (the
//! `uploader` CLI) and the real `upload-server`.
//!
//! It understands just enough HTTP/1.1 to find request and response boundaries on
//! keep-alive connections (`Content-Length` and chunked bodies), and decides for each
//! request to the upload routes, with a seeded RNG, whether to
//! - forward it untouched;
//! - [`Fault::Reset`]: forward the head and half the body, then close both connections;
//! - [`Fault::Stall`]: forward the head and half the body, then stop moving bytes and
//!   hold the connection open (the client must notice the stall and retry);
//! - [`Fault::Unavailable`]: swallow the request and answer `503` with `Retry-After: 1`;
//!   [`Fault::TooLarge`]: `413`, as a proxy that limits request bodies;
//! - [`Fault::DropResponse`]: forward the whole request, then close the connection
//!   instead of returning the answer (the server did the work; the retry must be safe);
//! - [`Fault::Latency`], [`Fault::Trickle`]: delay the request, or crawl through the
//!   start of its body at 5 KB/s ([`Faults::chaos`] adds them to the others);
//! - [`Fault::Corrupt`]: forward the request with one byte of its body flipped (damage in
//!   transit that TCP did not catch: only an end-to-end digest can).
//!
//! [`Proxy::limit_faults`] stops injecting after a number of faults, so that a client's
//! retry of the damaged request goes through.
//!
//! [`Proxy::black_hole`] makes it a network black hole for as long as it lasts: it keeps
//! accepting connections and reading request heads, but forwards and answers nothing (nor
//! reads the bodies, so senders stall once the socket buffers are full); when it ends, the
//! connections it held are closed.
//!
//! With [`Faults::tamper_complete`], the SHA-256 declared in `POST .../complete` is
//! replaced by another one, so the real server reports a verification mismatch.
//!
//! `GET /v1` and other routes outside `/v1/uploads` are always forwarded, so a test can
//! tell "the server is down" from "the network is bad" ([`Faults::matching`] chooses
//! other requests, e.g. an S3 store's UploadPart). It counts the bytes that cross it
//! in each direction.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};

/// A fault the proxy can inject into one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Close both connections after half the request body.
    Reset,
    /// Stop moving bytes after half the request body; hold the connection.
    Stall,
    /// Answer 503 with `Retry-After: 1` without forwarding.
    Unavailable,
    /// Forward the request, then close instead of returning the answer.
    DropResponse,
    /// Hold the request 250 ms before forwarding it (a slow, distant link).
    Latency,
    /// Forward the first 10 KiB of the body at about 5 KB/s, then the rest (a link that
    /// crawls for a while: bytes keep moving, so it is no stall).
    Trickle,
    /// Forward the request with the middle byte of its body flipped (not for chunked bodies).
    Corrupt,
    /// Answer 413 without forwarding, as a proxy that limits request bodies does.
    TooLarge,
}

/// Which requests get a fault.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Probability that a request that `matching` selects gets a fault (0.0 to 1.0).
    pub rate: f64,
    /// Which requests may get a fault: those whose method and path (with its query),
    /// `"{method} {path}"`, contain this (`/v1/uploads` for the upload server; e.g.
    /// `partNumber=` for S3 UploadPart). A `*` stands for anything: the pieces between
    /// must appear in that order (`POST *?uploadId=` for S3 CompleteMultipartUpload).
    pub matching: String,
    /// The faults to pick from, uniformly.
    pub kinds: Vec<Fault>,
    /// RNG seed.
    pub seed: u64,
    /// How long a stalled connection is held before the proxy drops it.
    pub stall_hold: Duration,
    /// Replace the SHA-256 declared at completion with a wrong one.
    pub tamper_complete: bool,
}

impl Faults {
    /// No faults: a plain counting proxy.
    pub fn none() -> Self {
        Self {
            rate: 0.0,
            matching: "/v1/uploads".into(),
            kinds: Vec::new(),
            seed: 0,
            stall_hold: Duration::from_secs(30),
            tamper_complete: false,
        }
    }

    /// Every kind of fault at `rate`.
    pub fn all(rate: f64, seed: u64) -> Self {
        Self {
            rate,
            matching: "/v1/uploads".into(),
            kinds: vec![
                Fault::Reset,
                Fault::Stall,
                Fault::Unavailable,
                Fault::DropResponse,
            ],
            seed,
            stall_hold: Duration::from_secs(30),
            tamper_complete: false,
        }
    }
}

impl Faults {
    /// [`Faults::all`] plus latency and trickling.
    pub fn chaos(rate: f64, seed: u64) -> Self {
        let mut f = Self::all(rate, seed);
        f.kinds.extend([Fault::Latency, Fault::Trickle]);
        f
    }
}

/// What crossed the proxy.
#[derive(Debug, Default)]
pub struct Stats {
    /// Bytes read from clients (request heads and bodies).
    pub bytes_up: AtomicU64,
    /// Bytes written to clients.
    pub bytes_down: AtomicU64,
    /// Requests seen.
    pub requests: AtomicU64,
    /// Faults injected, by kind: reset, stall, unavailable, dropped response.
    pub resets: AtomicU64,
    /// See `resets`.
    pub stalls: AtomicU64,
    /// See `resets`.
    pub unavailable: AtomicU64,
    /// See `resets`.
    pub dropped: AtomicU64,
    /// See `resets`.
    pub delayed: AtomicU64,
    /// See `resets`.
    pub trickled: AtomicU64,
    /// See `resets`.
    pub corrupted: AtomicU64,
    /// Client connections accepted (few, when the client keeps connections alive).
    pub connections: AtomicU64,
    /// Requests held unanswered by a black hole.
    pub held: AtomicU64,
}

impl Stats {
    /// Faults injected in all.
    pub fn faults(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
            + self.stalls.load(Ordering::Relaxed)
            + self.unavailable.load(Ordering::Relaxed)
            + self.dropped.load(Ordering::Relaxed)
            + self.delayed.load(Ordering::Relaxed)
            + self.trickled.load(Ordering::Relaxed)
            + self.corrupted.load(Ordering::Relaxed)
    }
}

struct Shared {
    upstream: String,
    faults: Faults,
    rng: Mutex<rand::rngs::StdRng>,
    stats: Stats,
    stop: AtomicBool,
    /// Faults still to inject.
    budget: AtomicU64,
    /// A black hole is on (see [`Proxy::black_hole`]).
    black_hole: AtomicBool,
}

/// A running proxy; stops accepting when dropped.
pub struct Proxy {
    addr: String,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port in front of `upstream` (`host:port`).
    pub fn start(upstream: &str, faults: Faults) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let shared = Arc::new(Shared {
            upstream: upstream.trim_start_matches("http://").to_string(),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(faults.seed)),
            faults,
            stats: Stats::default(),
            stop: AtomicBool::new(false),
            budget: AtomicU64::new(u64::MAX),
            black_hole: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                s.stats.connections.fetch_add(1, Ordering::Relaxed);
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(&s, conn);
                });
            }
        });
        Proxy { addr, shared }
    }

    /// Base URL of the proxy, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Injects at most `n` more faults, then forwards everything untouched.
    pub fn limit_faults(&self, n: u64) {
        self.shared.budget.store(n, Ordering::Relaxed);
    }

    /// Starts (`true`) or ends a black hole: while it lasts, every request whose head
    /// arrives, on a new connection or a kept-alive one, is held with no answer and its
    /// body left unread; when it ends, the connections held are closed (their requests
    /// never reached the upstream).
    pub fn black_hole(&self, on: bool) {
        self.shared.black_hole.store(on, Ordering::SeqCst);
    }
}

/// Whether `line` (`"{method} {path}"`) holds the pieces of `pattern` between its `*`s,
/// in order.
fn matches(line: &str, pattern: &str) -> bool {
    let mut rest = line;
    for piece in pattern.split('*') {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// A request or response head: the raw bytes and what framing they announce.
struct Head {
    raw: Vec<u8>,
    first_line: String,
    content_length: Option<u64>,
    chunked: bool,
}

fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut raw = Vec::new();
    let mut first_line = String::new();
    let mut content_length = None;
    let mut chunked = false;
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 {
            return if raw.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        raw.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if first_line.is_empty() {
            first_line = text;
            continue;
        }
        if text.is_empty() {
            break;
        }
        if let Some((k, v)) = text.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim();
            if k == "content-length" {
                content_length = v.parse().ok();
            } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
    }
    Ok(Some(Head {
        raw,
        first_line,
        content_length,
        chunked,
    }))
}

/// Copies up to `n` bytes from `r` to `w` (when given), counting them into `counter`.
fn copy_n(
    r: &mut impl Read,
    mut w: Option<&mut TcpStream>,
    n: u64,
    counter: &AtomicU64,
) -> std::io::Result<()> {
    let mut left = n;
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let k = r.read(&mut buf[..want])?;
        if k == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        counter.fetch_add(k as u64, Ordering::Relaxed);
        if let Some(w) = w.as_deref_mut() {
            w.write_all(&buf[..k])?;
        }
        left -= k as u64;
    }
    Ok(())
}

/// Copies a chunked body verbatim (sizes, data, trailers).
fn copy_chunked(
    r: &mut impl BufRead,
    mut w: Option<&mut TcpStream>,
    counter: &AtomicU64,
) -> std::io::Result<()> {
    loop {
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line)?;
        counter.fetch_add(line.len() as u64, Ordering::Relaxed);
        if let Some(w) = w.as_deref_mut() {
            w.write_all(&line)?;
        }
        let text = String::from_utf8_lossy(&line);
        let size_text = text.trim().split(';').next().unwrap_or("").to_string();
        let size = u64::from_str_radix(&size_text, 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailers up to the empty line.
            loop {
                let mut t = Vec::new();
                r.read_until(b'\n', &mut t)?;
                counter.fetch_add(t.len() as u64, Ordering::Relaxed);
                if let Some(w) = w.as_deref_mut() {
                    w.write_all(&t)?;
                }
                if t == b"\r\n" || t == b"\n" || t.is_empty() {
                    return Ok(());
                }
            }
        }
        copy_n(r, w.as_deref_mut(), size + 2, counter)?;
    }
}

fn pick_fault(s: &Shared, first_line: &str) -> Option<Fault> {
    let mut words = first_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if !matches(&format!("{method} {path}"), &s.faults.matching)
        || s.faults.kinds.is_empty()
        || s.faults.rate <= 0.0
    {
        return None;
    }
    let mut rng = s.rng.lock().unwrap_or_else(|p| p.into_inner());
    if rng.random::<f64>() >= s.faults.rate {
        return None;
    }
    let spent = s
        .budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    spent.ok()?;
    let i = rng.random_range(0..s.faults.kinds.len());
    Some(s.faults.kinds[i])
}

fn serve(s: &Shared, client: TcpStream) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let mut client_w = client.try_clone()?;
    let mut client_r = BufReader::new(client);
    let mut upstream: Option<(TcpStream, BufReader<TcpStream>)> = None;
    let stats = &s.stats;
    loop {
        let Some(head) = read_head(&mut client_r)? else {
            return Ok(());
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats
            .bytes_up
            .fetch_add(head.raw.len() as u64, Ordering::Relaxed);
        if s.black_hole.load(Ordering::SeqCst) {
            stats.held.fetch_add(1, Ordering::Relaxed);
            while s.black_hole.load(Ordering::SeqCst) && !s.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = client_w.shutdown(Shutdown::Both);
            if let Some((up, _)) = &upstream {
                let _ = up.shutdown(Shutdown::Both);
            }
            return Ok(());
        }
        let method = head
            .first_line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        let body_len = head.content_length.unwrap_or(0);
        let fault = pick_fault(s, &head.first_line);

        if matches!(fault, Some(Fault::Unavailable | Fault::TooLarge)) {
            stats.unavailable.fetch_add(1, Ordering::Relaxed);
            if head.chunked {
                copy_chunked(&mut client_r, None, &stats.bytes_up)?;
            } else {
                copy_n(&mut client_r, None, body_len, &stats.bytes_up)?;
            }
            let (status, extra) = if fault == Some(Fault::TooLarge) {
                ("413 Content Too Large", "")
            } else {
                ("503 Service Unavailable", "Retry-After: 1\r\n")
            };
            let body = format!(
                r#"{{"type":"about:blank","title":"{status}","status":{},"detail":"injected by the test proxy"}}"#,
                &status[..3]
            );
            let body = body.as_bytes();
            let resp = format!(
                "HTTP/1.1 {status}\r\n{extra}Content-Type: application/problem+json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            client_w.write_all(resp.as_bytes())?;
            client_w.write_all(body)?;
            stats
                .bytes_down
                .fetch_add((resp.len() + body.len()) as u64, Ordering::Relaxed);
            continue;
        }

        if upstream.is_none() {
            let up = TcpStream::connect(&s.upstream)?;
            let _ = up.set_nodelay(true);
            let r = BufReader::new(up.try_clone()?);
            upstream = Some((up, r));
        }
        let Some((up_w, up_r)) = upstream.as_mut() else {
            return Ok(());
        };
        if fault == Some(Fault::Latency) {
            stats.delayed.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(250));
        }
        up_w.write_all(&head.raw)?;
        let mut body_len = body_len;
        if fault == Some(Fault::Trickle) && !head.chunked {
            stats.trickled.fetch_add(1, Ordering::Relaxed);
            // 512 bytes every 100 ms: about 5 KB/s, for the first 10 KiB.
            let slow = body_len.min(10 << 10);
            let mut sent = 0;
            while sent < slow {
                let piece = (slow - sent).min(512);
                copy_n(&mut client_r, Some(up_w), piece, &stats.bytes_up)?;
                up_w.flush()?;
                sent += piece;
                std::thread::sleep(Duration::from_millis(100));
            }
            body_len -= slow;
        }

        if matches!(fault, Some(Fault::Reset) | Some(Fault::Stall)) {
            // Half the body (nothing when there is none), then the fault.
            let half = body_len / 2;
            copy_n(&mut client_r, Some(up_w), half, &stats.bytes_up)?;
            if fault == Some(Fault::Reset) {
                stats.resets.fetch_add(1, Ordering::Relaxed);
                let _ = up_w.shutdown(Shutdown::Both);
                let _ = client_w.shutdown(Shutdown::Both);
            } else {
                stats.stalls.fetch_add(1, Ordering::Relaxed);
                // Hold both connections open without moving a byte; the client must give
                // up on its own. The thread (and the sockets) go away afterwards.
                std::thread::sleep(s.faults.stall_hold);
            }
            return Ok(());
        }

        let path = head.first_line.split_whitespace().nth(1).unwrap_or("");
        if s.faults.tamper_complete && method == "POST" && path.ends_with("/complete") {
            // Same length, so Content-Length still holds.
            let mut body = vec![0u8; usize::try_from(body_len).unwrap_or(0)];
            client_r.read_exact(&mut body)?;
            stats.bytes_up.fetch_add(body_len, Ordering::Relaxed);
            let text = String::from_utf8_lossy(&body).into_owned();
            let tampered = match text.split_once("\"sha256\":\"") {
                Some((a, b)) if b.len() >= 64 => {
                    format!("{a}\"sha256\":\"{}{}", "0".repeat(64), &b[64..])
                }
                _ => text,
            };
            up_w.write_all(tampered.as_bytes())?;
        } else if head.chunked {
            copy_chunked(&mut client_r, Some(up_w), &stats.bytes_up)?;
        } else if fault == Some(Fault::Corrupt) && body_len > 0 {
            stats.corrupted.fetch_add(1, Ordering::Relaxed);
            let half = body_len / 2;
            copy_n(&mut client_r, Some(up_w), half, &stats.bytes_up)?;
            let mut byte = [0u8; 1];
            client_r.read_exact(&mut byte)?;
            stats.bytes_up.fetch_add(1, Ordering::Relaxed);
            up_w.write_all(&[byte[0] ^ 0x20])?;
            copy_n(
                &mut client_r,
                Some(up_w),
                body_len - half - 1,
                &stats.bytes_up,
            )?;
        } else {
            copy_n(&mut client_r, Some(up_w), body_len, &stats.bytes_up)?;
        }

        // The response (skipping interim 1xx answers).
        let resp = loop {
            let Some(resp) = read_head(up_r)? else {
                return Ok(());
            };
            let code = resp.first_line.split_whitespace().nth(1).unwrap_or("");
            if code.starts_with('1') && code != "101" {
                client_w.write_all(&resp.raw)?;
                continue;
            }
            break resp;
        };
        let code: u16 = resp
            .first_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let drop_it = fault == Some(Fault::DropResponse);
        if drop_it {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            let _ = up_w.shutdown(Shutdown::Both);
            let _ = client_w.shutdown(Shutdown::Both);
            return Ok(());
        }
        client_w.write_all(&resp.raw)?;
        stats
            .bytes_down
            .fetch_add(resp.raw.len() as u64, Ordering::Relaxed);
        let no_body = method == "HEAD" || code == 204 || code == 304;
        if !no_body {
            if resp.chunked {
                copy_chunked(up_r, Some(&mut client_w), &stats.bytes_down)?;
            } else if let Some(n) = resp.content_length {
                copy_n(up_r, Some(&mut client_w), n, &stats.bytes_down)?;
            } else {
                // Delimited by close.
                let mut rest = Vec::new();
                up_r.read_to_end(&mut rest)?;
                stats
                    .bytes_down
                    .fetch_add(rest.len() as u64, Ordering::Relaxed);
                client_w.write_all(&rest)?;
                return Ok(());
            }
        }
    }
}
