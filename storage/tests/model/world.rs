//! The world of one schedule: one bucket in memory, the server processes over it (each an
//! `Uploads` service over an `S3Backend` over its own connection to the bucket), the seeded
//! choices that make the schedule, and the log of what was stored and what clients were
//! told.
//!
//! A connection ([`crate::conn::Conn`]) is where the schedule is made: before and after
//! every store request it waits as long as the seeded generator says (nothing, a yield, or
//! a virtual delay from a millisecond to seconds), so that requests of different servers
//! interleave differently for each seed; it injects the faults the plan names (a request
//! refused, an answer lost after the store applied the request, a crash of the server);
//! and right after each write is applied, before any other task runs, it checks the
//! invariants that must hold at every instant ([`crate::check::after_request`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::{Sha256Digest, UploadId};
use futures_util::future::Either;
use sha2::{Digest, Sha256};
use storage::backend::s3::memory::MemoryStore;
use storage::backend::s3::{S3Backend, S3Config};
use storage::events::{Events, Outbox};
use storage::record::{StoredState, UploadMode, UploadRecord};
use storage::{Error, Uploads, UploadsConfig};
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::conn::{Conn, CountingOutbox};

/// The one upload of every schedule: a fixed id, so that a seed replays exactly.
pub const ID: &str = "6f1c2a34-5b6d-4e7f-8091-a2b3c4d5e6f7";

pub fn sha(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(bytes).into())
}

/// Deliberately broken variants of the protocol, made by distorting the backend's requests
/// on their way to the store (the backend's code is not changed).
#[derive(Clone, Copy, Debug, Default)]
pub struct Flaws {
    /// A chunk's claim is written unconditionally (no `If-None-Match: *`).
    pub claim_overwrites: bool,
    /// The record is written unconditionally (no `If-Match`).
    pub record_unconditional: bool,
    /// Listings of an upload's chunks omit what was written in the last 30 s (a store
    /// whose listings lag, as S3's did before 2020).
    pub stale_listing: bool,
}

/// The faults one schedule injects, by store request number (counted from 1 over the
/// schedule, every server together).
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Requests refused before the store applies them.
    pub fail: BTreeSet<u64>,
    /// Requests whose answer is lost after the store applied them.
    pub lose: BTreeSet<u64>,
    /// A server that dies right after the store applied one of its requests.
    pub crash: Option<Crash>,
}

/// See [`Plan::crash`].
#[derive(Clone, Debug)]
pub struct Crash {
    /// The server (by slot).
    pub server: usize,
    /// Which of its requests count (`None`: all of them).
    pub op: Option<&'static str>,
    /// It dies after the `nth` request that counts.
    pub nth: u64,
}

/// How the seeded scheduler waits around store requests: weights of nothing, a yield,
/// and virtual delays.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Per mille of waits that are a virtual delay of at least a second.
    pub slow: u32,
}

/// What a client was told for a chunk.
#[derive(Clone, Debug)]
pub struct Ack {
    pub index: u64,
    pub sha256: Sha256Digest,
    /// Stored by this request (not a retry answered from an earlier write).
    pub new: bool,
    pub seq: u64,
    /// Its claim was made after the upload's multipart upload was gone (joined or
    /// aborted): see [`Log::late_claims`].
    pub late: bool,
}

/// An "expired" a sweep stored.
#[derive(Clone, Copy, Debug)]
pub struct Expiry {
    /// The seq of the sweep's first look at the chunks (its marks).
    pub marks: u64,
    /// When the sweep looked at the chunks again after storing it (its second look).
    pub second_look: Option<u64>,
    /// A fault met a request of the sweep after it stored "expired" (the second look,
    /// the undo, or the discard).
    pub faulted: bool,
}

/// Everything one schedule records.
#[derive(Default)]
pub struct Log {
    /// Order of everything logged: store requests applied and answers given.
    pub seq: u64,
    /// Store requests made in the schedule.
    pub requests: u64,
    pub trace: Vec<String>,
    pub tracing: bool,
    pub acks: Vec<Ack>,
    /// The record's state as last written, and whether it was ever completed.
    pub state: Option<StoredState>,
    pub ever_completed: bool,
    pub completions: usize,
    /// When each chunk's claim was created (seq), while it exists.
    pub claims: BTreeMap<String, (u64, String)>,
    /// Servers sweeping now, with the seq of the sweep's first look at the chunks.
    pub sweeping: BTreeMap<usize, Option<u64>>,
    /// Each "expired" written by a sweep.
    pub expiries: Vec<Expiry>,
    /// A claim of other bytes than the file's was stored.
    pub other_claimed: bool,
    /// The append lease was made to expire under its holder.
    pub lease_aged: bool,
    /// An acknowledged part was replaced (see [`check::REPLACED`]).
    pub replaced_part: bool,
    /// Events recorded in the outbox, by kind.
    pub events: BTreeMap<&'static str, usize>,
    /// Answers "completed" given to clients.
    pub completed_answers: usize,
    pub crashes: usize,
    pub faults: usize,
    /// When each key was last written (virtual time), for the stale-listing flaw.
    pub written: BTreeMap<String, Instant>,
    /// Files already checked whole, by ETag.
    pub files_checked: BTreeSet<String>,
    /// When each chunk's claim was last created (seq).
    pub claims_created: BTreeMap<u64, u64>,
    /// Chunks whose claim was made after the upload's multipart upload was gone: a
    /// request that sent its part before the parts were joined (or aborted) and claimed
    /// it after the claims were cleared.
    pub late_claims: BTreeSet<u64>,
    /// Objects of the upload written after its multipart upload was gone (claims, spills,
    /// pieces, the append lease of requests that began before the join or the abort).
    pub late_objects: BTreeSet<String>,
    /// A chunk was spilled.
    pub spilled: bool,
    /// Bytes of an in-order upload acknowledged so far.
    pub stream_acked: u64,
    /// Known gaps of the protocol met (they fail the check only with `MODEL_STRICT`).
    pub gaps: Vec<String>,
    pub violations: Vec<String>,
    pub outcomes: BTreeSet<String>,
}

impl Log {
    /// A fault was injected into a request of `server`.
    pub fn faulted(&mut self, server: usize) {
        self.faults += 1;
        if self.sweeping.get(&server).is_some_and(|m| m.is_some()) {
            if let Some(e) = self.expiries.last_mut() {
                e.faulted = true;
            }
        }
    }
}

/// One server process: its service, and whether it is alive.
pub(crate) struct Slot {
    pub uploads: Arc<Uploads>,
    pub alive: Arc<AtomicBool>,
    pub died: Arc<watch::Sender<bool>>,
}

/// A client's answer that did not come: the server died with the request.
#[derive(Debug)]
pub enum Fail {
    Lost,
    E(Error),
}

impl Fail {
    /// Worth sending again (503, or no answer).
    pub fn retryable(&self) -> bool {
        matches!(self, Fail::Lost | Fail::E(Error::Unavailable { .. }))
    }

    pub fn label(&self) -> String {
        match self {
            Fail::Lost => "lost (server died)".into(),
            Fail::E(e) => error_label(e),
        }
    }
}

pub fn error_label(e: &Error) -> String {
    match e {
        Error::Unavailable { .. } => "503".into(),
        Error::ChunkConflict { .. } => "409 other bytes".into(),
        Error::Gone(s) => format!("410 {s}"),
        Error::MissingChunks(_) => "409 missing chunks".into(),
        Error::Sha256Mismatch { .. } => "409 sha256 mismatch".into(),
        Error::Locked => "423 locked".into(),
        Error::OffsetMismatch { .. } => "409 offset mismatch".into(),
        Error::Conflict => "409 conflict".into(),
        Error::Corrupt(_) => "500 corrupt".into(),
        Error::WrongState(s) => format!("409 {s}"),
        other => format!("other: {other}"),
    }
}

/// The world of one schedule (see the module documentation).
pub struct World {
    pub store: Arc<MemoryStore>,
    pub id: UploadId,
    /// The file the client uploads (and declares the SHA-256 of).
    pub file: Vec<u8>,
    pub chunk_size: u64,
    pub mode: UploadMode,
    pub config: UploadsConfig,
    pub flaws: Flaws,
    pub pace: Pace,
    rng: Mutex<fastrand::Rng>,
    pub plan: Mutex<Plan>,
    /// Per server, requests counted for the crash plan.
    pub counted: Mutex<BTreeMap<usize, u64>>,
    pub(crate) servers: Mutex<Vec<Slot>>,
    pub log: Mutex<Log>,
    pub began: Instant,
    /// Faults and pauses are off (the end of a schedule).
    calm: AtomicBool,
    pub crashed: Notify,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The record object as the backend stores it.
#[derive(serde::Deserialize)]
pub struct RecordObject {
    pub record: UploadRecord,
    pub multipart_id: String,
}

impl World {
    pub fn record_key(&self) -> String {
        format!("uploads/{}/record.json", self.id)
    }

    pub fn chunks_prefix(&self) -> String {
        format!("uploads/{}/chunks/", self.id)
    }

    pub fn claim_key(&self, index: u64) -> String {
        format!("{}{index:05}", self.chunks_prefix())
    }

    pub fn file_key(&self) -> String {
        format!("files/{}", self.id)
    }

    pub fn chunk_count(&self) -> u64 {
        (self.file.len() as u64).div_ceil(self.chunk_size)
    }

    pub fn range(&self, index: u64) -> Range<usize> {
        let start = (index * self.chunk_size) as usize;
        start..(start + self.chunk_size as usize).min(self.file.len())
    }

    pub fn chunk(&self, index: u64) -> &[u8] {
        &self.file[self.range(index)]
    }

    /// A world over an empty bucket with the upload created (by a server that is not one
    /// of the schedule's: its requests are neither paced nor counted).
    pub async fn new(
        seed: u64,
        file: &[u8],
        chunk_size: u64,
        mode: UploadMode,
        config: UploadsConfig,
        flaws: Flaws,
    ) -> Arc<Self> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let pace = Pace {
            slow: [0, 5, 30, 100][rng.usize(..4)],
        };
        let store = MemoryStore::new();
        let id: UploadId = ID.parse().unwrap();
        let now = OffsetDateTime::now_utc();
        let record = UploadRecord {
            id,
            size: file.len() as u64,
            chunk_size,
            mode,
            declared_sha256: Some(sha(file)),
            sha256: None,
            filename: None,
            metadata: BTreeMap::new(),
            state: StoredState::Uploading,
            failure: None,
            concat: None,
            length_deferred: false,
            owner: None,
            created_at: now,
            updated_at: now,
            version: None,
        };
        // The service refuses chunks under 5 MiB on S3; the protocol does not depend on
        // their size, and small ones keep a schedule to a few milliseconds.
        let setup = S3Backend::over(store.clone(), &S3Config::default());
        storage::Backend::create(&setup, &record).await.unwrap();
        Arc::new(Self {
            store,
            id,
            file: file.to_vec(),
            chunk_size,
            mode,
            config,
            flaws,
            pace,
            rng: Mutex::new(rng),
            plan: Mutex::new(Plan::default()),
            counted: Mutex::new(BTreeMap::new()),
            servers: Mutex::new(Vec::new()),
            log: Mutex::new(Log {
                state: Some(StoredState::Uploading),
                tracing: std::env::var_os("MODEL_TRACE").is_some(),
                ..Log::default()
            }),
            began: Instant::now(),
            calm: AtomicBool::new(false),
            crashed: Notify::new(),
        })
    }

    /// Makes the upload look created a day ago (the wall clock does not move in the
    /// model): idle for any time to live, until a request of the schedule writes.
    pub fn age_everything(&self) {
        let day = Duration::from_secs(24 * 3600);
        self.age_record(day);
        self.store.backdate("", day);
    }

    /// Moves the expiry of the append lease `by` into the past, in place: time passing for
    /// a holder that stopped renewing it. Answers whether there is a lease.
    pub fn age_lease(&self, by: Duration) -> bool {
        let key = format!("{}append-lease", self.chunks_prefix());
        self.store.edit_in_place(&key, |bytes| {
            let text = String::from_utf8_lossy(bytes);
            let mut it = text.split_whitespace();
            let holder = it.next().unwrap_or_default();
            let until: i64 = it.next().and_then(|u| u.parse().ok()).unwrap_or(0);
            let generation = it.next().unwrap_or("0");
            let until = until - by.as_secs() as i64;
            format!("{holder} {until} {generation}").into_bytes()
        })
    }

    /// Moves the record's timestamps `by` into the past, in place: time passing.
    pub fn age_record(&self, by: Duration) -> bool {
        self.store.edit_in_place(&self.record_key(), |bytes| {
            let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            for field in ["created_at", "updated_at"] {
                let at = v["record"][field].as_str().unwrap();
                let at = OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                    .unwrap()
                    - by;
                v["record"][field] = serde_json::Value::String(
                    at.format(&time::format_description::well_known::Rfc3339)
                        .unwrap(),
                );
            }
            serde_json::to_vec(&v).unwrap()
        })
    }

    pub fn set_plan(&self, plan: Plan) {
        *lock(&self.plan) = plan;
    }

    /// Faults and pauses off: what follows is the end of the schedule.
    pub fn calm_down(&self) {
        self.calm.store(true, Ordering::SeqCst);
        *lock(&self.plan) = Plan::default();
    }

    pub fn rng<T>(&self, f: impl FnOnce(&mut fastrand::Rng) -> T) -> T {
        f(&mut lock(&self.rng))
    }

    pub fn chance(&self, per_mille: u32) -> bool {
        self.rng(|r| r.u32(..1000) < per_mille)
    }

    pub fn pick(&self, n: usize) -> usize {
        self.rng(|r| r.usize(..n))
    }

    /// A client's think time: up to `max_ms` of virtual time.
    pub async fn think(&self, max_ms: u64) {
        let ms = self.rng(|r| r.u64(..=max_ms));
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    /// The seeded wait around a store request.
    pub async fn pause(&self) {
        if self.calm.load(Ordering::SeqCst) {
            return;
        }
        let slow = self.pace.slow;
        let ms = self.rng(|r| {
            let roll = r.u32(..1000);
            if roll < slow {
                return Some([1_000, 2_500, 6_000, 12_000][r.usize(..4)]);
            }
            match r.u32(..10) {
                0..=3 => None,
                4..=5 => Some(0),
                6..=7 => Some(r.u64(1..20)),
                _ => Some(r.u64(20..400)),
            }
        });
        match ms {
            None => {}
            Some(0) => tokio::task::yield_now().await,
            Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    }

    pub fn note(&self, line: impl FnOnce() -> String) -> u64 {
        let mut log = lock(&self.log);
        log.seq += 1;
        if log.tracing {
            let t = self.began.elapsed().as_secs_f64();
            let line = format!("{t:9.3}s #{:<4} {}", log.seq, line());
            log.trace.push(line);
        }
        log.seq
    }

    pub fn outcome(&self, what: impl Into<String>) {
        lock(&self.log).outcomes.insert(what.into());
    }

    pub fn violation(&self, what: impl Into<String>) {
        let what = what.into();
        let mut log = lock(&self.log);
        if log.replaced_part {
            // What follows an acknowledged part replaced by a conflicting writer is that
            // known gap's consequence (the acknowledged bytes are gone), counted with it.
            drop(log);
            self.note(|| format!("GAP (after a replaced part) {what}"));
            lock(&self.log)
                .gaps
                .push(format!("{}: {what}", crate::check::REPLACED));
            return;
        }
        log.violations.push(what.clone());
        drop(log);
        self.note(|| format!("VIOLATION {what}"));
    }

    /// Starts server `server` (again, after a crash): a new process over the same bucket.
    pub async fn start(self: &Arc<Self>, server: usize) {
        let alive = Arc::new(AtomicBool::new(true));
        let died = Arc::new(watch::channel(false).0);
        let conn = Arc::new(Conn {
            world: self.clone(),
            server,
            alive: alive.clone(),
            died: died.clone(),
        });
        let backend = Arc::new(S3Backend::over(conn, &S3Config::default()));
        let outbox: Arc<dyn Outbox> = Arc::new(CountingOutbox {
            world: Arc::downgrade(self),
        });
        let uploads = loop {
            let events = Events::new(Some(outbox.clone()));
            match Uploads::open_with_events(backend.clone(), self.config.clone(), events).await {
                Ok(u) => break u,
                // A fault injected while it starts: it starts again.
                Err(e) => {
                    self.note(|| format!("s{server} did not start: {e}"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        self.note(|| format!("s{server} started"));
        let slot = Slot {
            uploads,
            alive,
            died,
        };
        let mut servers = lock(&self.servers);
        if server < servers.len() {
            servers[server] = slot;
        } else {
            servers.push(slot);
        }
    }

    pub fn server_count(&self) -> usize {
        lock(&self.servers).len()
    }

    pub fn alive(&self, server: usize) -> bool {
        lock(&self.servers)[server].alive.load(Ordering::SeqCst)
    }

    /// A live server, picked by the seed.
    pub fn any_live(&self) -> Option<usize> {
        let live: Vec<usize> = (0..self.server_count())
            .filter(|&s| self.alive(s))
            .collect();
        (!live.is_empty()).then(|| live[self.pick(live.len())])
    }

    /// The service of server `server`, when it is alive.
    pub fn uploads(&self, server: usize) -> Option<Arc<Uploads>> {
        let servers = lock(&self.servers);
        let s = &servers[server];
        s.alive.load(Ordering::SeqCst).then(|| s.uploads.clone())
    }

    /// Forgets every server (they hold the world: a cycle) at the end of a schedule.
    pub fn shut_down(&self) {
        lock(&self.servers).clear();
    }

    /// Restarts every dead server (at the end of a schedule).
    pub async fn restart_dead(self: &Arc<Self>) {
        for s in 0..self.server_count() {
            if !self.alive(s) {
                self.start(s).await;
            }
        }
    }

    /// Asks server `server` something, as a client over a connection: no answer when the
    /// server dies first.
    pub async fn ask<T, F, Fut>(&self, server: usize, f: F) -> std::result::Result<T, Fail>
    where
        F: FnOnce(Arc<Uploads>) -> Fut,
        Fut: Future<Output = storage::Result<T>>,
    {
        let (uploads, mut died) = {
            let servers = lock(&self.servers);
            let s = &servers[server];
            if !s.alive.load(Ordering::SeqCst) {
                return Err(Fail::Lost);
            }
            (s.uploads.clone(), s.died.subscribe())
        };
        let request = Box::pin(f(uploads));
        let death = Box::pin(async move {
            let _ = died.wait_for(|d| *d).await;
        });
        match futures_util::future::select(request, death).await {
            Either::Left((r, _)) => r.map_err(Fail::E),
            Either::Right(_) => Err(Fail::Lost),
        }
    }
}
