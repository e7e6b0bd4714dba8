//! A model check, with [shuttle], of the upload state machine on shared S3 storage, under
//! many interleavings of requests served by different server processes.
//!
//! # What is modelled
//! One upload of three chunks (4, 4 and 2 bytes) in one bucket. The bucket is an in-memory
//! object store ([`Store`]) whose every request is one atomic step and one shuttle
//! scheduling point (a `shuttle::sync::Mutex` around the bucket): GET, HEAD, PUT,
//! PUT If-None-Match (create), PUT If-Match (version), DELETE, LIST, COPY, and the multipart
//! requests UploadPart, CompleteMultipartUpload (which joins the parts named, in ascending
//! part-number order, refuses a named part that is missing or whose ETag is not the one
//! named, and drops the parts not named, as S3 does), ListParts and AbortMultipartUpload.
//! Keys and object contents follow the layout of `storage/src/backend/s3.rs`: `record.json`
//! (the record and the multipart id), `chunks/{index:05}/lease` (`{holder} {unix expiry}
//! {generation}`), `chunks/{index:05}/claim`, the receipts
//! `chunks/{index:05}/{size}.{sha256}.{etag hex}.{part number}`, `hash.json`, `staging` and
//! `files/{id}`. Part numbers are fenced by the lease as in s3.rs: chunk `i` written under
//! lease generation `g` is part `i * slots + g % slots + 1` ([`part_number`]).
//!
//! The actors are shuttle threads, each standing for requests served by its own server
//! process, sharing nothing but the bucket ([`Node`] is one request's process: its parts
//! (ETag and number) between finish and commit, its cached multipart id). Each follows the
//! steps of the real code in the real order, every store call one step:
//! - chunk writers (`Uploads::put_chunk` with `S3Backend::writer_at`, `take_lease`,
//!   `read_claim`, the UploadPart of `S3ChunkWriter::finish`, `S3Backend::commit`, and the
//!   conditional save of the hash midstate), among them two racing writers of the same chunk
//!   with equal bytes and with different bytes; a writer answered "retry soon" (503, a live
//!   lease) is retried by its client, at most [`WRITER_ATTEMPTS`] times;
//! - a client that sends its chunks in parallel, waits for their answers and then completes,
//!   and completes again when the answer was lost;
//! - further completers on other servers (`Uploads::complete`, `verify`, `assemble`,
//!   `catch_up`, `publish`), one kind of which treats a verification in progress as stalled
//!   and takes it over (the `STALE_VERIFICATION` path, running `spawn_verify`'s task as a
//!   thread of its own that outlives the answer);
//! - a canceller (`Uploads::cancel`, `bury`, `S3Backend::discard`);
//! - an expirer (`Uploads::sweep` for this upload);
//! - status readers (`Uploads::status`).
//!
//! # Real types used
//! [`UploadRecord`] (serialized as the real record object), [`StoredState`] and its
//! `is_open` / `is_tombstone` / `visible`, `check_writable`, `chunk_len` / `chunk_offset` /
//! `chunk_end` / `chunk_count`; [`Upload::from_loaded`] over a [`Loaded`] of [`Receipt`]s, so
//! the [`ChunkTable`](storage::upload::ChunkTable) (`get`, `missing`, `received_bytes`) and the
//! restored whole-file hash are the ones every request builds on shared storage;
//! [`ChunkHasher`], [`PrefixHash`] and [`SavedPrefixHash`] for the in-flight and read-back
//! whole-file SHA-256; sha2 for digests and md-5 for part ETags (as S3 computes them);
//! [`Error`] for every answer.
//!
//! # What is abstracted
//! HTTP, request bodies (a chunk's bytes arrive whole), the store's own retries and failures
//! (no request to the store fails except by its conditions), crashes, the circuit breaker,
//! quotas, idempotency keys, in-order appends (tus: not on S3), and process-local machinery
//! that shares nothing across servers (`Writers` slots, the `op` lock and the busy count of a
//! handle loaded for one request, `OrderedHashing` and its `wait_idle`). Time does not pass:
//! every request runs at one "now", objects that exist before a schedule starts were written
//! longer ago than the upload TTL, and objects written during it are recent. So a lease
//! never expires by itself (nor is it renewed); a writer marked `lease_seen_expired` stands
//! for one that arrives after the holder stopped renewing (a holder stuck waiting for the
//! UploadPart answer, which renews nothing). A released lease (expiry 0, written by a writer
//! whose part failed) is expired for every writer. A verification is stale only for a
//! completer marked `stale`.
//!
//! # Expiry and requests in flight
//! `sweep` guards against expiring an upload with a request in flight by `Upload::is_busy`
//! and the `op` lock, but on shared storage every request loads its own handle, so the
//! sweep's handle is never busy and its lock always free. What remains is activity time:
//! `S3Backend::load` takes the newest `last_modified` under `chunks/` (a writer's lease is
//! written when it starts sending and renewed while it sends), and the sweep skips an upload
//! active within the TTL. The model's expirer uses exactly that guard, so it also races chunk
//! writers: a writer that loaded the record but has not written its lease yet is not seen
//! by that guard alone (the model found the upload expiring under such a request). So the
//! expiry (`Uploads::expire`) takes the chunk objects' marks before its idle check, stores
//! "expired", looks again and undoes the expiry if a mark changed; and a chunk request
//! checks the record once more after storing its receipt, answering "gone" for an ended
//! upload. [`model_expiry_never_reaps_an_active_upload`] checks that an upload never ends
//! expired with a chunk acknowledged after the sweep judged it idle (check "E").
//!
//! # Invariants and where they are checked
//! - **I1** an acknowledged chunk is never lost or altered: at every write of `files/{id}`,
//!   the bytes of every chunk acknowledged so far are the acknowledged ones; at the end of a
//!   schedule, if the upload is completed its file holds every acknowledged chunk's bytes,
//!   and while it is open every acknowledged chunk's claim names the acknowledged digest and
//!   its receipt exists.
//! - **I2** a file is published only when its whole-file SHA-256 matches the declared one,
//!   never partially: at every write of `files/{id}` (whole length, declared digest), at every
//!   record write that stores `completed` (its `sha256` is the declared one), and at the end
//!   (a completed upload has its file; a file exists only for a completed upload; every
//!   "completed" answer names the declared digest).
//! - **I3** exactly one completion per upload: at every record write storing `completed` and
//!   every `upload.completed` event (at most one of each), and at the end (as many events as
//!   transitions; one of each when any complete answered "completed"; a repeated complete
//!   after a "completed" answer answers the same; no upload left `completing` once every
//!   request and verification has ended).
//! - **I4** status never reports more than is durable: at each status read (status readers,
//!   the status a completer answers after losing the race, and a final read at the end), in
//!   the same atomic step as the listing the status is built from, every chunk the status
//!   counts as received (all of them for a completed upload) has a receipt and its bytes are
//!   stored (the part its receipt names, with its ETag, or the staging object, or the
//!   published file), unless the upload had been discarded by then (a tombstone or a failed
//!   upload: its status was read before the discard and is merely stale).
//!
//! # Scenarios and coverage
//! Six main scenarios ([`same_bytes_race`], [`different_bytes_race`], [`cancel_race`],
//! [`expiry_race`], [`stalled_verification_takeover`], [`all_at_once`]), and narrower ones
//! for the gaps fixed ([`outlived_lease`] among them). Each counts, per outcome (an
//! answer's kind, the final state), how many schedules reached it, prints the table
//! (`-- --nocapture`), and asserts that the outcomes that make it worth running were
//! reached (say, both "completed" and "failed" for the different-bytes race), so that a
//! check cannot pass by never getting anywhere.
//!
//! # Running and replaying
//! `cargo test -p storage --test model` runs every scenario; `MODEL_SCHEDULES` sets the
//! schedules per main scenario (default [`DEFAULT_SCHEDULES`], half random, half PCT of
//! depth [`PCT_DEPTH`]; below the default the coverage is not asserted). A failing schedule
//! panics with the invariant violated, and shuttle prints the schedule as a string (between
//! quotes, over several lines; it may print it twice, either replays). Replay it with the
//! same scenario and stack size: `MODEL_REPLAY_SCENARIO=<scenario name>
//! MODEL_REPLAY='<schedule>' cargo test -p storage --test model replay_schedule --
//! --nocapture` (see [`replay_schedule`]: `shuttle::replay` with the model's configuration,
//! since `shuttle::replay` itself runs with a 60 KiB stack). A failure under the random
//! scheduler also prints a seed: `SHUTTLE_RANDOM_SEED=<seed> MODEL_SCHEDULES=2 cargo test -p
//! storage --test model <test>` reruns it as the first random schedule. The model is
//! deterministic given the schedule (ordered maps only, a fixed upload id, no clock).
//!
//! # Teeth
//! The `teeth_*` tests run deliberately broken variants of the protocol ([`Flaws`]) and
//! assert that the check finds the violation each causes within [`SEARCH_BUDGET`]
//! schedules, then replay the failing schedule (recorded by [`Recording`]) and assert that
//! it fails the same way.
//!
//! # Gaps of the real protocol the model found
//! Three gaps the model found were fixed and are now checked: an acknowledged chunk whose
//! part was overwritten by a writer that outlived its lease, both writing the one part
//! number of the chunk (I4, then I1; now each lease generation writes a part number of its
//! own, so the late part lands where no receipt points and the join drops it:
//! [`model_outlived_lease`], and [`teeth_takeover_reuses_part`] for the old numbering), an
//! upload expired under a chunk request that was then acknowledged (check "E",
//! [`model_expiry_never_reaps_an_active_upload`]) and an upload answered "completed" whose
//! file could not be downloaded yet (check "C", [`model_completed_is_downloadable`]).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard as StdMutexGuard};

use common::api::UploadState;
use common::{Sha256Digest, UploadId};
use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shuttle::scheduler::{
    PctScheduler, RandomScheduler, ReplayScheduler, Schedule, Scheduler, Task, TaskId,
};
use shuttle::{Config, FailurePersistence, Runner};
use storage::backend::{Loaded, Receipt, StoredChunk};
use storage::hash::{ChunkHasher, PrefixHash, SavedPrefixHash};
use storage::record::{StoredState, UploadMode, UploadRecord};
use storage::upload::Upload;
use storage::{Error, Result, UploadsConfig};
use time::OffsetDateTime;

/// The one upload of every scenario: a fixed id, so that a schedule replays exactly.
const ID: &str = "6f1c2a34-5b6d-4e7f-8091-a2b3c4d5e6f7";
/// Bytes per chunk.
const CHUNK_SIZE: u64 = 4;
/// The file the client uploads and declares: chunks of 4, 4 and 2 bytes.
const FILE: &[u8] = b"abcdefghij";
/// Other bytes, of the same lengths, that a conflicting writer sends for a chunk.
const OTHER: &[u8] = b"ABCDEFGHIJ";
/// The multipart upload behind the upload's staging object.
const MULTIPART_ID: &str = "multipart-1";
/// How long a lease holds (`LEASE_SECS` of s3.rs).
const LEASE_SECS: i64 = 15;
/// The most parts one multipart upload may have (`MAX_PARTS` of s3.rs, S3's limit).
const MAX_PARTS: u64 = 10_000;
/// How many times a client sends a chunk that was answered "retry soon".
const WRITER_ATTEMPTS: usize = 3;
/// Schedules per main scenario when `MODEL_SCHEDULES` is not set: six scenarios make
/// 60,000 schedules.
const DEFAULT_SCHEDULES: usize = 10_000;
/// Preemptions the PCT scheduler places per schedule.
const PCT_DEPTH: usize = 3;
/// At most this many schedules to find the violation of a broken variant.
const SEARCH_BUDGET: usize = 20_000;
/// Stack of each shuttle thread (the default 60 KiB is tight for serde and sha2 in debug).
const STACK_SIZE: usize = 1 << 20;

/// "Now" for every request: time does not pass in the model.
fn now() -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + time::Duration::days(400)
}

/// Idle time after which an upload expires: the service's default.
fn ttl() -> std::time::Duration {
    UploadsConfig::default().upload_ttl
}

/// When the objects that exist before a schedule starts were written: longer ago than the
/// TTL, so that the upload is idle unless a request of the schedule writes something.
fn long_ago() -> OffsetDateTime {
    now() - ttl() * 2
}

/// The upload's id.
fn upload_id() -> UploadId {
    ID.parse().expect("a canonical id")
}

/// `uploads/{id}/record.json`.
fn record_key() -> String {
    format!("uploads/{ID}/record.json")
}

/// The folder of every chunk's lease, claim and receipt.
fn chunks_prefix() -> String {
    format!("uploads/{ID}/chunks/")
}

/// The folder of chunk `index`.
fn chunk_dir(index: u64) -> String {
    format!("uploads/{ID}/chunks/{index:05}")
}

/// `uploads/{id}/hash.json`: the whole-file hash midstate.
fn hash_key() -> String {
    format!("uploads/{ID}/hash.json")
}

/// `uploads/{id}/staging`: the joined parts, not yet verified.
fn staging_key() -> String {
    format!("uploads/{ID}/staging")
}

/// `files/{id}`: the published file.
fn file_key() -> String {
    format!("files/{ID}")
}

/// SHA-256 of `bytes`.
fn sha(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(bytes).into())
}

/// The ETag S3 gives a part: the quoted hex MD5 of its bytes.
fn part_etag(bytes: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Md5::digest(bytes)))
}

/// The bytes of chunk `index` of `file`.
fn chunk_of(file: &[u8], index: u64) -> Vec<u8> {
    let start = (index * CHUNK_SIZE) as usize;
    let end = (start + CHUNK_SIZE as usize).min(file.len());
    file[start..end].to_vec()
}

/// The part number of chunk `index` written under lease generation `generation` (as in
/// s3.rs): each chunk has `MAX_PARTS / chunk count` numbers of its own, in chunk order, so
/// that a writer that outlived its lease never writes the part a later generation wrote.
fn part_number(record: &UploadRecord, index: u64, generation: u64) -> u64 {
    let slots = (MAX_PARTS / record.chunk_count().max(1)).max(1);
    index * slots + generation % slots + 1
}

/// A part as the store acknowledged it: its number and its ETag (`SentPart` of s3.rs).
#[derive(Clone, Debug, PartialEq, Eq)]
struct SentPart {
    /// The part number.
    number: u64,
    /// The ETag UploadPart answered.
    etag: String,
}

/// `{size}.{sha256}.{etag hex}.{part number}`: a receipt's name in its chunk's folder (as in
/// s3.rs).
fn receipt_name(c: &StoredChunk, part: &SentPart) -> String {
    format!(
        "{}.{}.{}.{}",
        c.size,
        c.sha256.to_hex(),
        hex::encode(&part.etag),
        part.number
    )
}

/// Reads a receipt back from its key `.../chunks/{index:05}/{name}` (as in s3.rs); `None` for
/// the other objects of a chunk's folder (lease, claim). A name without a part number is a
/// receipt from before part numbers were fenced: part `index + 1`.
fn parse_receipt(key: &str) -> Option<(StoredChunk, SentPart)> {
    let mut parts = key.rsplit('/');
    let name = parts.next()?;
    let index = parts.next()?.parse().ok()?;
    let mut it = name.split('.');
    let size = it.next()?.parse().ok()?;
    let sha256 = it.next()?.parse().ok()?;
    let etag = String::from_utf8(hex::decode(it.next()?).ok()?).ok()?;
    let number = match it.next() {
        Some(n) => n.parse().ok()?,
        None => index + 1,
    };
    Some((
        StoredChunk {
            index,
            size,
            sha256,
        },
        SentPart { number, etag },
    ))
}

/// A chunk lease as stored: `{holder} {unix expiry} {generation}` (`Lease` of s3.rs).
struct Lease {
    /// The write holding it, or `released`.
    holder: String,
    /// Its expiry, in Unix seconds (0 once released).
    until: i64,
    /// How many times it was taken over since it was created.
    generation: u64,
}

impl Lease {
    /// Reads a stored lease; a missing field reads as 0 (a lease from before generations
    /// has generation 0).
    fn parse(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let mut it = text.split_whitespace();
        Self {
            holder: it.next().unwrap_or_default().to_string(),
            until: it.next().and_then(|u| u.parse().ok()).unwrap_or(0),
            generation: it.next().and_then(|g| g.parse().ok()).unwrap_or(0),
        }
    }

    /// The stored body.
    fn body(&self) -> Vec<u8> {
        format!("{} {} {}", self.holder, self.until, self.generation).into_bytes()
    }
}

/// The record object of s3.rs: the record and the multipart upload behind it.
#[derive(Serialize, Deserialize)]
struct RecordObject {
    /// The upload record (its `version` is the object's version, not stored in it).
    record: UploadRecord,
    /// The multipart upload id.
    multipart_id: String,
}

/// The state in a stored record object, if it parses.
fn stored_state(bytes: &[u8]) -> Option<StoredState> {
    serde_json::from_slice::<RecordObject>(bytes)
        .ok()
        .map(|o| o.record.state)
}

/// Broken variants of the protocol, for the teeth tests. All false is the real protocol.
#[derive(Clone, Copy, Debug, Default)]
struct Flaws {
    /// Record changes (the completion claim among them) are written unconditionally
    /// instead of If-Match on the version read.
    unconditional_record_write: bool,
    /// A chunk's lease is put unconditionally instead of If-None-Match.
    lease_not_exclusive: bool,
    /// A chunk's claim is put unconditionally (the last writer wins) instead of once.
    claim_not_create_once: bool,
    /// CompleteMultipartUpload joins whatever parts are stored, not checking their ETags.
    join_ignores_etags: bool,
    /// A chunk's part number ignores the lease generation (part `index * slots + 1` for
    /// every writer, as before the fencing), so a writer that outlived its lease overwrites
    /// the part of the writer that took it over.
    takeover_reuses_part: bool,
    /// Verification publishes without comparing the whole-file SHA-256 with the declared.
    skip_hash_check: bool,
}

/// Checks beyond I1–I4, enabled by the scenarios that need them.
#[derive(Clone, Copy, Debug, Default)]
struct Checks {
    /// An upload never ends expired with a chunk acknowledged after the sweep judged it
    /// idle (check "E").
    expiry_never_in_flight: bool,
    /// The file of an upload answered "completed" can be read right away.
    done_implies_downloadable: bool,
    /// I4 is not checked: for a broken variant whose other flaw would be found first.
    skip_i4: bool,
}

/// One stored object.
#[derive(Clone)]
struct Object {
    /// Its bytes.
    bytes: Vec<u8>,
    /// Its version: what conditional writes name (the ETag on S3).
    version: u64,
    /// When it was last written (S3's `last_modified`).
    modified: OffsetDateTime,
}

/// A multipart upload: its parts by number, each with its ETag.
struct Multipart {
    /// Neither completed nor aborted: parts may still be uploaded.
    open: bool,
    /// Parts by part number ([`part_number`]): bytes and ETag.
    parts: BTreeMap<u64, (Vec<u8>, String)>,
}

/// Everything the bucket holds.
#[derive(Default)]
struct Bucket {
    /// Objects by key.
    objects: BTreeMap<String, Object>,
    /// Multipart uploads by id.
    multiparts: BTreeMap<String, Multipart>,
    /// The last version given out.
    versions: u64,
}

/// Why a store request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoreError {
    /// No such key.
    NotFound,
    /// If-None-Match: the key exists.
    AlreadyExists,
    /// If-Match: another version is stored.
    Precondition,
    /// The multipart upload was completed or aborted.
    NoSuchUpload,
    /// CompleteMultipartUpload: a part named is missing or has another ETag.
    InvalidPart,
    /// CompleteMultipartUpload: the parts are not named in ascending part-number order.
    InvalidPartOrder,
}

/// What the backend makes of a store error (`store_err` of s3.rs).
fn store_err(e: StoreError) -> Error {
    match e {
        StoreError::NotFound => Error::NotFound,
        StoreError::AlreadyExists | StoreError::Precondition => Error::Conflict,
        other => Error::Io(std::io::Error::other(format!("{other:?}"))),
    }
}

/// What an observer outside the system sees: the answers given and the changes made. The
/// actors' logic never reads it.
#[derive(Default)]
struct Log {
    /// Chunks answered 2xx: index and bytes.
    chunk_acks: Vec<(u64, Vec<u8>)>,
    /// Record writes that stored state `completed`.
    completed_writes: usize,
    /// Events emitted, by name.
    events: Vec<&'static str>,
    /// An expirer has taken its first look at the chunk writes (its idle decision).
    expiry_marked: bool,
    /// Chunks answered 2xx after that look.
    acks_after_expiry_look: usize,
    /// Whether some complete answered "completed".
    answered_done: bool,
    /// What happened in this schedule, for the coverage summary ([`Outcomes`]).
    seen: BTreeSet<String>,
    /// Store requests made.
    steps: usize,
    /// The state last stored in the record (none written yet: uploading).
    state: Option<StoredState>,
}

/// What the bucket held at the instant of a listing, for I4.
#[derive(Default)]
struct Audit {
    /// The upload was discarded or being discarded (its record is a tombstone or failed):
    /// a status built from an earlier read of the record is stale, not a claim about bytes.
    discarded: bool,
    /// For each chunk with a listed receipt: whether the bytes it names are stored.
    durable: BTreeMap<u64, bool>,
}

/// The bucket, shared by every actor of one schedule, with the monitors of the invariants
/// that must hold at every step.
struct Store {
    /// The bucket: one lock, so that every request is one atomic step and one scheduling
    /// point.
    bucket: shuttle::sync::Mutex<Bucket>,
    /// The observer's log (a plain mutex: never held across a scheduling point).
    log: StdMutex<Log>,
    /// Which broken variant runs, if any.
    flaws: Flaws,
    /// Which extra checks are on.
    checks: Checks,
    /// Background verifications (`spawn_verify`), joined at the end of the schedule.
    background: StdMutex<Vec<shuttle::thread::JoinHandle<()>>>,
}

impl Store {
    /// A bucket holding the upload as created, with the `preloaded` chunks acknowledged
    /// long ago (parts, claims, receipts and the hash midstate of the leading ones).
    fn new(scenario: &Scenario) -> Self {
        let mut b = Bucket::default();
        let record = UploadRecord {
            id: upload_id(),
            size: FILE.len() as u64,
            chunk_size: CHUNK_SIZE,
            mode: UploadMode::Chunks,
            declared_sha256: Some(sha(FILE)),
            sha256: None,
            filename: None,
            metadata: BTreeMap::new(),
            state: StoredState::Uploading,
            failure: None,
            concat: None,
            length_deferred: false,
            owner: None,
            created_at: long_ago(),
            updated_at: long_ago(),
            version: None,
        };
        let body = serde_json::to_vec(&RecordObject {
            record: record.clone(),
            multipart_id: MULTIPART_ID.into(),
        })
        .expect("record serializes");
        let old = |b: &mut Bucket, key: String, bytes: Vec<u8>| {
            b.versions += 1;
            let version = b.versions;
            b.objects.insert(
                key,
                Object {
                    bytes,
                    version,
                    modified: long_ago(),
                },
            );
        };
        old(&mut b, record_key(), body);
        let mut parts = BTreeMap::new();
        for &i in &scenario.preloaded {
            let bytes = chunk_of(FILE, i);
            let etag = part_etag(&bytes);
            let c = StoredChunk {
                index: i,
                size: bytes.len() as u64,
                sha256: sha(&bytes),
            };
            // Written by the chunk's first lease, generation 0.
            let part = SentPart {
                number: part_number(&record, i, 0),
                etag: etag.clone(),
            };
            let name = receipt_name(&c, &part);
            old(
                &mut b,
                format!("{}/claim", chunk_dir(i)),
                name.clone().into_bytes(),
            );
            old(&mut b, format!("{}/{name}", chunk_dir(i)), Vec::new());
            parts.insert(part.number, (bytes, etag));
        }
        b.multiparts
            .insert(MULTIPART_ID.into(), Multipart { open: true, parts });
        let leading = (0..).take_while(|i| scenario.preloaded.contains(i)).count();
        if leading > 0 {
            let end = (leading as u64 * CHUNK_SIZE).min(FILE.len() as u64);
            let mut p = PrefixHash::default();
            p.hasher.update(&FILE[..end as usize]);
            p.hashed_bytes = end;
            let saved = serde_json::to_vec(&p.save()).expect("midstate serializes");
            old(&mut b, hash_key(), saved);
        }
        Self {
            bucket: shuttle::sync::Mutex::new(b),
            log: StdMutex::new(Log::default()),
            flaws: scenario.flaws,
            checks: scenario.checks,
            background: StdMutex::new(Vec::new()),
        }
    }

    /// Takes the bucket: the one scheduling point of a store request.
    fn lock(&self) -> shuttle::sync::MutexGuard<'_, Bucket> {
        let b = self.bucket.lock().expect("bucket lock");
        self.log().steps += 1;
        b
    }

    /// Notes that `what` happened in this schedule.
    fn saw(&self, what: impl Into<String>) {
        self.log().seen.insert(what.into());
    }

    /// The observer's log.
    fn log(&self) -> StdMutexGuard<'_, Log> {
        self.log.lock().expect("log lock")
    }

    /// Stores `bytes` at `key` as a new version, after the monitors have seen the write.
    fn write(&self, b: &mut Bucket, key: &str, bytes: Vec<u8>) -> u64 {
        self.monitor(key, &bytes);
        b.versions += 1;
        let version = b.versions;
        b.objects.insert(
            key.to_string(),
            Object {
                bytes,
                version,
                modified: now(),
            },
        );
        version
    }

    /// The invariants checked at every write: record writes (I2, I3) and writes of the
    /// published file (I1, I2).
    fn monitor(&self, key: &str, bytes: &[u8]) {
        if key == record_key() {
            let obj: RecordObject =
                serde_json::from_slice(bytes).expect("the model writes records it can read");
            let mut log = self.log();
            log.state = Some(obj.record.state);
            if obj.record.state == StoredState::Completed {
                log.completed_writes += 1;
                assert!(
                    log.completed_writes <= 1,
                    "I3 violated: a second record write stores `completed`"
                );
                assert_eq!(
                    obj.record.sha256,
                    Some(sha(FILE)),
                    "I2 violated: the record says completed with a SHA-256 other than the declared one"
                );
            }
        }
        if key == file_key() {
            assert!(
                bytes.len() == FILE.len() && sha(bytes) == sha(FILE),
                "I2 violated: files/{{id}} written with {} bytes whose SHA-256 is not the declared one",
                bytes.len()
            );
            for (index, acked) in &self.log().chunk_acks {
                let start = (index * CHUNK_SIZE) as usize;
                assert_eq!(
                    bytes.get(start..start + acked.len()),
                    Some(acked.as_slice()),
                    "I1 violated: the published file does not hold acknowledged chunk {index}"
                );
            }
        }
    }

    /// GET: bytes and version.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u64)> {
        let b = self.lock();
        b.objects.get(key).map(|o| (o.bytes.clone(), o.version))
    }

    /// HEAD: the version.
    fn head(&self, key: &str) -> Option<u64> {
        self.lock().objects.get(key).map(|o| o.version)
    }

    /// PUT, unconditional.
    fn put(&self, key: &str, bytes: Vec<u8>) -> u64 {
        let mut b = self.lock();
        self.write(&mut b, key, bytes)
    }

    /// PUT If-None-Match: *.
    fn put_create(&self, key: &str, bytes: Vec<u8>) -> std::result::Result<u64, StoreError> {
        let mut b = self.lock();
        if b.objects.contains_key(key) {
            return Err(StoreError::AlreadyExists);
        }
        Ok(self.write(&mut b, key, bytes))
    }

    /// PUT If-Match: `version`.
    fn put_if_match(
        &self,
        key: &str,
        bytes: Vec<u8>,
        version: u64,
    ) -> std::result::Result<u64, StoreError> {
        let mut b = self.lock();
        match b.objects.get(key) {
            None => Err(StoreError::NotFound),
            Some(o) if o.version != version => Err(StoreError::Precondition),
            Some(_) => Ok(self.write(&mut b, key, bytes)),
        }
    }

    /// DELETE (of a missing key too).
    fn delete(&self, key: &str) {
        self.lock().objects.remove(key);
    }

    /// LIST under `prefix`: keys and last-modified times, in key order.
    fn list(&self, prefix: &str) -> Vec<(String, OffsetDateTime)> {
        let b = self.lock();
        Self::listing(&b, prefix)
    }

    /// `S3Backend::write_marks`: the keys under `prefix` with their versions (ETags).
    fn marks(&self, prefix: &str) -> Vec<String> {
        let b = self.lock();
        b.objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| format!("{k} {}", o.version))
            .collect()
    }

    /// The keys under `prefix` with their last-modified times.
    fn listing(b: &Bucket, prefix: &str) -> Vec<(String, OffsetDateTime)> {
        b.objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| (k.clone(), o.modified))
            .collect()
    }

    /// LIST of the upload's chunk folder, with what the bucket held at that instant for I4.
    fn list_audited(&self) -> (Vec<(String, OffsetDateTime)>, Audit) {
        let b = self.lock();
        let listed = Self::listing(&b, &chunks_prefix());
        let state = b
            .objects
            .get(&record_key())
            .and_then(|o| stored_state(&o.bytes));
        let discarded = !matches!(state, Some(s) if s.is_open() || s == StoredState::Completed);
        let durable = listed
            .iter()
            .filter_map(|(k, _)| parse_receipt(k))
            .map(|(c, part)| (c.index, Self::chunk_durable(&b, &c, &part)))
            .collect();
        (listed, Audit { discarded, durable })
    }

    /// Whether the bytes a receipt names are stored: as the part it names, with its ETag,
    /// or within the staging object or the published file.
    fn chunk_durable(b: &Bucket, c: &StoredChunk, part: &SentPart) -> bool {
        let as_part = b
            .multiparts
            .get(MULTIPART_ID)
            .filter(|m| m.open)
            .and_then(|m| m.parts.get(&part.number))
            .is_some_and(|(bytes, e)| {
                *e == part.etag && bytes.len() as u64 == c.size && sha(bytes) == c.sha256
            });
        let start = (c.index * CHUNK_SIZE) as usize;
        let range = start..start + c.size as usize;
        let within = |key: String| {
            b.objects
                .get(&key)
                .and_then(|o| o.bytes.get(range.clone()))
                .is_some_and(|s| sha(s) == c.sha256)
        };
        as_part || within(staging_key()) || within(file_key())
    }

    /// COPY `from` to `to`.
    fn copy(&self, from: &str, to: &str) -> std::result::Result<(), StoreError> {
        let mut b = self.lock();
        let bytes = b
            .objects
            .get(from)
            .ok_or(StoreError::NotFound)?
            .bytes
            .clone();
        self.write(&mut b, to, bytes);
        Ok(())
    }

    /// UploadPart: replaces part `number`; answers its ETag.
    fn upload_part(
        &self,
        multipart: &str,
        number: u64,
        bytes: &[u8],
    ) -> std::result::Result<String, StoreError> {
        let mut b = self.lock();
        let m = b
            .multiparts
            .get_mut(multipart)
            .filter(|m| m.open)
            .ok_or(StoreError::NoSuchUpload)?;
        let etag = part_etag(bytes);
        m.parts.insert(number, (bytes.to_vec(), etag.clone()));
        Ok(etag)
    }

    /// CompleteMultipartUpload: joins the parts named, in ascending part-number order and
    /// each carrying the ETag named, into `target`; the parts not named are dropped.
    fn complete_multipart(
        &self,
        multipart: &str,
        target: &str,
        parts: &[SentPart],
    ) -> std::result::Result<(), StoreError> {
        let mut b = self.lock();
        let m = b
            .multiparts
            .get(multipart)
            .filter(|m| m.open)
            .ok_or(StoreError::NoSuchUpload)?;
        if parts.windows(2).any(|w| w[0].number >= w[1].number) {
            return Err(StoreError::InvalidPartOrder);
        }
        let mut joined = Vec::new();
        for part in parts {
            match m.parts.get(&part.number) {
                Some((bytes, e)) if *e == part.etag || self.flaws.join_ignores_etags => {
                    joined.extend_from_slice(bytes)
                }
                _ => return Err(StoreError::InvalidPart),
            }
        }
        if let Some(m) = b.multiparts.get_mut(multipart) {
            m.open = false;
            m.parts.clear();
        }
        self.write(&mut b, target, joined);
        Ok(())
    }

    /// ListParts: the ETag of every part, by part number.
    fn part_etags(
        &self,
        multipart: &str,
    ) -> std::result::Result<BTreeMap<u64, String>, StoreError> {
        let b = self.lock();
        let m = b
            .multiparts
            .get(multipart)
            .filter(|m| m.open)
            .ok_or(StoreError::NoSuchUpload)?;
        Ok(m.parts.iter().map(|(n, (_, e))| (*n, e.clone())).collect())
    }

    /// AbortMultipartUpload: the parts are gone.
    fn abort_multipart(&self, multipart: &str) -> std::result::Result<(), StoreError> {
        let mut b = self.lock();
        let m = b
            .multiparts
            .get_mut(multipart)
            .filter(|m| m.open)
            .ok_or(StoreError::NotFound)?;
        m.open = false;
        m.parts.clear();
        Ok(())
    }

    /// Writes an event to the outbox (one store request), checking I3 for `completed`.
    fn emit(&self, kind: &'static str) {
        let _b = self.lock();
        let mut log = self.log();
        log.events.push(kind);
        let completed = log
            .events
            .iter()
            .filter(|k| **k == "upload.completed")
            .count();
        assert!(
            completed <= 1,
            "I3 violated: a second `upload.completed` event"
        );
    }
}

/// A complete's 2xx answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// 200: verified and published, with the status's SHA-256.
    Done(Option<Sha256Digest>),
    /// 202: the verification goes on.
    Verifying,
}

/// What a status read reported.
struct Seen {
    /// The state shown.
    state: UploadState,
    /// The SHA-256 shown.
    sha256: Option<Sha256Digest>,
}

/// What the S3 backend's `writer_at` hands over: the part to send, under a lease.
struct PartWrite {
    /// Chunk index.
    index: u64,
    /// The multipart upload the part belongs to.
    multipart_id: String,
    /// The part number this write sends: its chunk's, for its lease generation.
    number: u64,
    /// The lease key, released if the part is not sent.
    lease: String,
    /// The lease as this write holds it, and its version, for the release.
    held: (Lease, u64),
}

/// One request on one server process: the service's and the S3 backend's steps, in the real
/// order, over the shared bucket. Requests share nothing but the bucket.
struct Node {
    /// The bucket.
    s: Arc<Store>,
    /// The process's name, in lease holder ids.
    process: String,
    /// Writes started here, for lease holder ids of their own.
    writes: Cell<u64>,
    /// Parts between a writer's finish and its commit (`S3Backend::pending`).
    pending: RefCell<BTreeMap<u64, SentPart>>,
    /// The multipart upload id, once read (`S3Backend::multipart_ids`).
    multipart_id: RefCell<Option<String>>,
}

impl Node {
    /// A request served by process `process`.
    fn new(s: &Arc<Store>, process: &str) -> Self {
        Self {
            s: s.clone(),
            process: process.to_string(),
            writes: Cell::new(0),
            pending: RefCell::new(BTreeMap::new()),
            multipart_id: RefCell::new(None),
        }
    }

    /// `S3Backend::get_record`: the record, with its version, and the multipart id.
    fn get_record(&self) -> Result<Option<(UploadRecord, String)>> {
        let Some((bytes, version)) = self.s.get(&record_key()) else {
            return Ok(None);
        };
        let mut obj: RecordObject =
            serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt(format!("record: {e}")))?;
        obj.record.version = Some(version.to_string());
        Ok(Some((obj.record, obj.multipart_id)))
    }

    /// `S3Backend::load`: the record, the receipts of one listing (with the audit of that
    /// instant), the hash midstate, and the last activity.
    fn load(&self) -> Result<Option<(Loaded, Audit)>> {
        let Some((record, _)) = self.get_record()? else {
            return Ok(None);
        };
        let mut last_activity = record.updated_at;
        let mut receipts = Vec::new();
        let mut audit = Audit {
            discarded: true,
            durable: BTreeMap::new(),
        };
        if !record.state.is_tombstone() {
            let (listed, a) = self.s.list_audited();
            audit = a;
            if let Some(newest) = listed.iter().map(|(_, m)| *m).max() {
                last_activity = last_activity.max(newest);
            }
            receipts.extend(
                listed
                    .iter()
                    .filter_map(|(k, _)| parse_receipt(k))
                    .map(|(c, _)| Receipt::Chunk(c)),
            );
        }
        let prefix_hash = self.load_prefix_hash().unwrap_or(None);
        Ok(Some((
            Loaded {
                record,
                receipts,
                prefix_hash,
                last_activity,
                append_cursor: None,
            },
            audit,
        )))
    }

    /// `Uploads::get` on shared storage: a handle of this request's own, loaded afresh.
    fn get(&self) -> Result<(Upload, Audit)> {
        let (loaded, audit) = self.load()?.ok_or(Error::NotFound)?;
        Ok((Upload::from_loaded(loaded), audit))
    }

    /// `S3Backend::multipart_id`.
    fn multipart_id(&self) -> Result<String> {
        if let Some(m) = self.multipart_id.borrow().clone() {
            return Ok(m);
        }
        let (_, m) = self.get_record()?.ok_or(Error::NotFound)?;
        *self.multipart_id.borrow_mut() = Some(m.clone());
        Ok(m)
    }

    /// `S3Backend::load_prefix_hash`.
    fn load_prefix_hash(&self) -> Result<Option<SavedPrefixHash>> {
        let Some((bytes, version)) = self.s.get(&hash_key()) else {
            return Ok(None);
        };
        Ok(serde_json::from_slice::<SavedPrefixHash>(&bytes)
            .ok()
            .map(|mut s| {
                s.version = Some(version.to_string());
                s
            }))
    }

    /// `S3Backend::save_prefix_hash`: create, or If-Match the version it continues; losing
    /// the race is quietly fine.
    fn save_prefix_hash(&self, saved: &SavedPrefixHash) -> Result<()> {
        let body = serde_json::to_vec(saved).map_err(|e| Error::Corrupt(e.to_string()))?;
        let put = match &saved.version {
            None => self.s.put_create(&hash_key(), body),
            Some(v) => self.s.put_if_match(&hash_key(), body, version_of(v)?),
        };
        match put {
            Ok(_) | Err(StoreError::Precondition) | Err(StoreError::AlreadyExists) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }

    /// `S3Backend::save_record`: If-Match the version the record was read as.
    fn save_record(&self, record: &UploadRecord) -> Result<Option<String>> {
        let Some((_, multipart_id)) = self.get_record()? else {
            return Err(Error::NotFound);
        };
        let body = serde_json::to_vec(&RecordObject {
            record: record.clone(),
            multipart_id,
        })
        .map_err(|e| Error::Corrupt(e.to_string()))?;
        let version = if self.s.flaws.unconditional_record_write {
            self.s.put(&record_key(), body)
        } else {
            let read = version_of(record.version.as_deref().unwrap_or_default())?;
            self.s
                .put_if_match(&record_key(), body, read)
                .map_err(store_err)?
        };
        Ok(Some(version.to_string()))
    }

    /// `Uploads::transition`: stores a changed record, then adopts it.
    fn transition(
        &self,
        up: &Upload,
        change: impl FnOnce(&mut UploadRecord),
    ) -> Result<UploadRecord> {
        let mut record = up.record();
        change(&mut record);
        record.updated_at = now();
        record.version = self.save_record(&record)?;
        up.set_record(record.clone());
        Ok(record)
    }

    /// `Uploads::put_chunk` over the S3 backend; answers whether the chunk is new.
    fn put_chunk(&self, w: &Write) -> Result<bool> {
        let (up, _) = self.get()?;
        let record = up.record();
        storage::lifecycle::apply(
            &record,
            storage::lifecycle::Step::StoreBytes(UploadMode::Chunks),
            now(),
        )?;
        let len = record.chunk_len(w.index)?;
        if w.bytes.len() as u64 != len {
            return Err(Error::Invalid(format!("chunk {} has {len} bytes", w.index)));
        }
        let mut already = up.chunks().get(w.index);
        let mut writer = None;
        if already.is_none() {
            match self.writer_at(&record, w.index, w.lease_seen_expired) {
                Ok(part) => writer = Some(part),
                Err(Error::StoredMeanwhile { stored, .. }) => already = Some(stored),
                Err(e) => return Err(e),
            }
        }
        if let Some(stored) = already {
            let mut h = ChunkHasher::new(len, None);
            h.update(&w.bytes)?;
            let (actual, _) = h.finish()?;
            if actual != stored {
                return Err(Error::ChunkConflict {
                    index: w.index,
                    stored,
                });
            }
            return Ok(false);
        }
        let in_flight_prefix = {
            let p = up.prefix();
            (p.hashed_bytes == record.chunk_offset(w.index)).then(|| p.hasher.clone())
        };
        let mut h = ChunkHasher::new(len, in_flight_prefix);
        h.update(&w.bytes)?;
        let (actual, advanced) = h.finish()?;
        let part = writer.ok_or_else(|| Error::Corrupt("no chunk writer".into()))?;
        self.finish_part(part, &w.bytes)?;
        let chunk = StoredChunk {
            index: w.index,
            size: len,
            sha256: actual,
        };
        let stored_first = self.commit(&chunk)?;
        // An upload expired or cancelled meanwhile: its chunk is not acknowledged.
        if let Some((now, _)) = self.get_record()? {
            if now.state.is_tombstone() {
                return Err(Error::Gone(now.state.name()));
            }
        }
        let in_flight = advanced.is_some();
        up.commit(&chunk, advanced);
        if in_flight {
            let saved = up.prefix().save_as(up.prefix_version());
            // Advisory, as in the real code: a lost race only costs a read-back.
            let _ = self.save_prefix_hash(&saved);
        }
        Ok(stored_first == 0)
    }

    /// `S3Backend::writer_at`: takes the chunk's lease, and turns into a retry when the
    /// chunk was claimed meanwhile.
    fn writer_at(
        &self,
        record: &UploadRecord,
        index: u64,
        lease_seen_expired: bool,
    ) -> Result<PartWrite> {
        record.chunk_len(index)?;
        let multipart_id = self.multipart_id()?;
        let lease = format!("{}/lease", chunk_dir(index));
        // A retry of a stored chunk is answered by the claim, before any lease.
        if let Some((stored, _)) = self.read_claim_named(index)? {
            return Err(Error::StoredMeanwhile {
                index,
                stored: stored.sha256,
            });
        }
        let n = self.writes.get();
        self.writes.set(n + 1);
        let holder = format!("{}-{n}", self.process);
        let held = self.take_lease(&lease, &holder, lease_seen_expired)?;
        if let Some((stored, _)) = self.read_claim_named(index)? {
            self.s.delete(&lease);
            return Err(Error::StoredMeanwhile {
                index,
                stored: stored.sha256,
            });
        }
        let generation = if self.s.flaws.takeover_reuses_part {
            0
        } else {
            held.0.generation
        };
        Ok(PartWrite {
            index,
            multipart_id,
            number: part_number(record, index, generation),
            lease,
            held,
        })
    }

    /// `S3Backend::take_lease`: create it (generation 0), or take over one whose holder is
    /// gone, one generation up. Time standing still, a holder is gone only when it released
    /// the lease (expiry 0) or for a writer marked `lease_seen_expired`. Answers the lease
    /// as held and its version.
    fn take_lease(&self, lease: &str, holder: &str, seen_expired: bool) -> Result<(Lease, u64)> {
        let mut mine = Lease {
            holder: holder.to_string(),
            until: now().unix_timestamp() + LEASE_SECS,
            generation: 0,
        };
        let created = if self.s.flaws.lease_not_exclusive {
            Ok(self.s.put(lease, mine.body()))
        } else {
            self.s.put_create(lease, mine.body())
        };
        match created {
            Ok(version) => return Ok((mine, version)),
            Err(StoreError::AlreadyExists) | Err(StoreError::Precondition) => {}
            Err(e) => return Err(store_err(e)),
        }
        let Some((held, version)) = self.s.get(lease) else {
            return Err(Error::Conflict);
        };
        let held = Lease::parse(&held);
        let live = held.until > now().unix_timestamp() && !seen_expired;
        if held.holder != holder && live {
            return Err(Error::Conflict);
        }
        mine.generation = held.generation + 1;
        // A lease deleted meanwhile is lost like one taken over (`lease_err`): retry soon.
        let version = self
            .s
            .put_if_match(lease, mine.body(), version)
            .map_err(|e| match e {
                StoreError::NotFound => Error::Conflict,
                e => store_err(e),
            })?;
        self.s.saw(if held.holder == "released" {
            "lease: taken over after a release"
        } else {
            "lease: taken over from a writer that outlived it"
        });
        Ok((mine, version))
    }

    /// `S3ChunkWriter::finish`: the UploadPart answers with the part's ETag; a failed part
    /// releases the lease (the writer's `Drop`): not deleted, since a part sent in full may
    /// still land, but marked released, so that the next writer takes it over one
    /// generation up, onto a part number of its own (a failed release is ignored).
    fn finish_part(&self, part: PartWrite, bytes: &[u8]) -> Result<()> {
        match self.s.upload_part(&part.multipart_id, part.number, bytes) {
            Ok(etag) => {
                let acked = self
                    .s
                    .log()
                    .chunk_acks
                    .iter()
                    .any(|(i, _)| *i == part.index);
                if acked {
                    self.s.saw("part: landed after its chunk was acknowledged");
                }
                self.pending.borrow_mut().insert(
                    part.index,
                    SentPart {
                        number: part.number,
                        etag,
                    },
                );
                Ok(())
            }
            Err(e) => {
                let (held, version) = part.held;
                let released = Lease {
                    holder: "released".into(),
                    until: 0,
                    generation: held.generation,
                };
                let _ = self.s.put_if_match(&part.lease, released.body(), version);
                Err(Error::Io(std::io::Error::other(format!(
                    "UploadPart answered {e:?}"
                ))))
            }
        }
    }

    /// `S3Backend::read_claim_named`: the chunk the claim names, and the receipt's name.
    fn read_claim_named(&self, index: u64) -> Result<Option<(StoredChunk, String)>> {
        let dir = chunk_dir(index);
        let Some((held, _)) = self.s.get(&format!("{dir}/claim")) else {
            return Ok(None);
        };
        let held = String::from_utf8_lossy(&held).into_owned();
        let (first, _) = parse_receipt(&format!("{dir}/{held}"))
            .ok_or_else(|| Error::Corrupt(format!("bad claim of chunk {index}")))?;
        Ok(Some((first, held)))
    }

    /// `S3Backend::commit` of one chunk: claim (once), receipt, lease release. Answers how
    /// many chunks another request had claimed first with the same bytes.
    fn commit(&self, c: &StoredChunk) -> Result<u64> {
        let part = self
            .pending
            .borrow_mut()
            .remove(&c.index)
            .ok_or_else(|| Error::Corrupt(format!("no stored part for chunk {}", c.index)))?;
        let dir = chunk_dir(c.index);
        let name = receipt_name(c, &part);
        let claim = format!("{dir}/claim");
        let mut stored_first = 0;
        let created = if self.s.flaws.claim_not_create_once {
            Ok(self.s.put(&claim, name.clone().into_bytes()))
        } else {
            self.s.put_create(&claim, name.clone().into_bytes())
        };
        let claimed = match created {
            Ok(_) => name,
            Err(StoreError::AlreadyExists) | Err(StoreError::Precondition) => {
                let Some((first, held)) = self.read_claim_named(c.index)? else {
                    return Err(Error::Corrupt(format!(
                        "the claim of chunk {} vanished",
                        c.index
                    )));
                };
                if first.sha256 != c.sha256 {
                    return Err(Error::ChunkConflict {
                        index: c.index,
                        stored: first.sha256,
                    });
                }
                stored_first += 1;
                held
            }
            Err(e) => return Err(store_err(e)),
        };
        match self.s.put_create(&format!("{dir}/{claimed}"), Vec::new()) {
            Ok(_) | Err(StoreError::AlreadyExists) | Err(StoreError::Precondition) => {}
            Err(e) => return Err(store_err(e)),
        }
        self.s.delete(&format!("{dir}/lease"));
        Ok(stored_first)
    }

    /// `Uploads::complete` (with no digest in the request: the declared one is the
    /// record's). `stale` treats a verification in progress as stalled.
    fn complete(&self, stale: bool) -> Result<Answer> {
        let (mut up, _) = self.get()?;
        if up.record().state == StoredState::Uploading && up.chunks().missing().is_empty() {
            // `OrderedHashing::wait_idle` is process memory (nothing kept here); the reload
            // after it is a real one.
            up = self.get()?.0;
        }
        let record = up.record();
        let expected = record.declared_sha256;
        match record.state {
            StoredState::Uploading => {}
            StoredState::Completed => {
                let actual = record
                    .sha256
                    .ok_or_else(|| Error::Corrupt("completed without sha256".into()))?;
                if let Some(e) = expected.filter(|e| *e != actual) {
                    return Err(Error::Sha256Mismatch {
                        expected: e,
                        actual,
                    });
                }
                return Ok(Answer::Done(Some(actual)));
            }
            StoredState::Completing => {
                if stale && self.transition(&up, |_| {}).is_ok() {
                    self.s.saw("complete: took over a stalled verification");
                    self.spawn_verify(up);
                }
                return Ok(Answer::Verifying);
            }
            StoredState::Failed => {
                return Err(match (record.declared_sha256, record.sha256) {
                    (Some(expected), Some(actual)) => Error::Sha256Mismatch { expected, actual },
                    _ => Error::WrongState("failed"),
                })
            }
            s => return Err(Error::Gone(s.name())),
        }
        let missing = up.chunks().missing();
        if !missing.is_empty() {
            return Err(Error::MissingChunks(missing));
        }
        let claimed = self.transition(&up, |r| {
            r.declared_sha256 = expected;
            r.state = StoredState::Completing;
        });
        match claimed {
            Ok(_) => {}
            Err(Error::Conflict) => {
                let seen = self.status()?;
                return Ok(match seen.state {
                    UploadState::Completed => Answer::Done(seen.sha256),
                    _ => Answer::Verifying,
                });
            }
            Err(e) => return Err(e),
        }
        // The model's file is far below `inline_verify_limit`: verified inline.
        self.verify(&up)?;
        let done = up.record();
        Ok(Answer::Done(done.sha256.or(done.declared_sha256)))
    }

    /// `Uploads::spawn_verify`: the verification goes on in a task of its own, after the
    /// answer.
    fn spawn_verify(&self, up: Upload) {
        let s = self.s.clone();
        let name = format!("{}.bg", self.process);
        let task = shuttle::thread::spawn(move || {
            let node = Node::new(&s, &name);
            if up.record().state != StoredState::Completing {
                return;
            }
            let _ = node.verify(&up);
        });
        self.s
            .background
            .lock()
            .expect("background lock")
            .push(task);
    }

    /// `Uploads::verify`: assemble, finish the hash, settle as failed or completed, publish.
    fn verify(&self, up: &Upload) -> Result<()> {
        let record = up.record();
        let chunks: Vec<StoredChunk> = {
            let t = up.chunks();
            (0..record.chunk_count())
                .filter_map(|i| {
                    Some(StoredChunk {
                        index: i,
                        size: record.chunk_len(i).ok()?,
                        sha256: t.get(i)?,
                    })
                })
                .collect()
        };
        match self.assemble(&chunks) {
            Ok(()) => {}
            Err(e @ Error::MissingChunks(_)) => {
                self.transition(up, |r| r.state = StoredState::Uploading)?;
                return Err(e);
            }
            Err(Error::Corrupt(why)) => {
                self.transition(up, |r| {
                    r.state = StoredState::Failed;
                    r.failure = Some(why.clone());
                })?;
                self.discard()?;
                self.s.emit("upload.failed");
                return Err(Error::Corrupt(why));
            }
            Err(e) => return Err(e),
        }
        self.catch_up(up)?;
        let actual = up.prefix().digest();
        let expected = up.record().declared_sha256;
        let mismatch = expected
            .filter(|e| *e != actual)
            .filter(|_| !self.s.flaws.skip_hash_check);
        if let Some(expected) = mismatch {
            self.transition(up, |r| {
                r.state = StoredState::Failed;
                r.sha256 = Some(actual);
                r.failure = Some(format!("SHA-256 {actual} does not match {expected}"));
            })?;
            self.discard()?;
            up.chunks().clear();
            self.s.emit("upload.failed");
            return Err(Error::Sha256Mismatch { expected, actual });
        }
        let record = self.transition(up, |r| {
            r.state = StoredState::Completed;
            r.sha256 = Some(actual);
        })?;
        self.publish(&record)?;
        self.s.emit("upload.completed");
        Ok(())
    }

    /// `S3Backend::assemble`: joins the parts the receipts name into the staging object.
    fn assemble(&self, chunks: &[StoredChunk]) -> Result<()> {
        let staging = staging_key();
        if self.s.head(&staging).is_some() {
            return Ok(());
        }
        let (_, multipart_id) = self.get_record()?.ok_or(Error::NotFound)?;
        let mut first_by_index: BTreeMap<u64, (StoredChunk, SentPart)> = BTreeMap::new();
        for (c, part) in self
            .s
            .list(&chunks_prefix())
            .iter()
            .filter_map(|(k, _)| parse_receipt(k))
        {
            first_by_index.entry(c.index).or_insert((c, part));
        }
        let mut parts = Vec::with_capacity(chunks.len());
        for c in chunks {
            match first_by_index.get(&c.index) {
                Some((r, part)) if r.sha256 == c.sha256 => parts.push(part.clone()),
                _ => return Err(Error::MissingChunks(common::ranges::to_ranges([c.index]))),
            }
        }
        let refused = match self.s.complete_multipart(&multipart_id, &staging, &parts) {
            Ok(()) => return Ok(()),
            Err(e) => match self.s.head(&staging) {
                Some(_) => return Ok(()),
                None => e,
            },
        };
        // A part that no longer holds its receipt's bytes, at the number the receipt names:
        // that chunk is forgotten.
        let stored = self.s.part_etags(&multipart_id).map_err(store_err)?;
        let changed: Vec<u64> = chunks
            .iter()
            .filter(|c| {
                first_by_index
                    .get(&c.index)
                    .is_some_and(|(_, part)| stored.get(&part.number) != Some(&part.etag))
            })
            .map(|c| c.index)
            .collect();
        if changed.is_empty() {
            return Err(Error::Corrupt(format!(
                "the store refused to join the parts: {refused:?}"
            )));
        }
        for index in &changed {
            for (key, _) in self.s.list(&format!("{}/", chunk_dir(*index))) {
                self.s.delete(&key);
            }
        }
        Err(Error::MissingChunks(common::ranges::to_ranges(changed)))
    }

    /// `catch_up`: advances the whole-file hash over the stored chunks after the hashed
    /// prefix, reading them back, then saves the midstate (create only, best effort).
    fn catch_up(&self, up: &Upload) -> Result<()> {
        let record = up.record();
        let mut advanced = false;
        loop {
            let (from, mut hasher) = {
                let p = up.prefix();
                (p.hashed_bytes, p.hasher.clone())
            };
            if from >= record.size {
                break;
            }
            let index = from / record.chunk_size;
            let to = {
                let t = up.chunks();
                match t.partial() {
                    _ if t.get(index).is_some() => record.chunk_end(index),
                    Some((i, len)) if i == index => record.chunk_offset(index) + len,
                    _ => break,
                }
            };
            if to <= from {
                break;
            }
            let bytes = self.read_range(&record, from, to - from)?;
            hasher.update(&bytes);
            let mut p = up.prefix();
            if p.hashed_bytes == from {
                p.hashed_bytes = to;
                p.hasher = hasher;
                advanced = true;
            }
        }
        if advanced {
            // A failed save is only a lost head start for another verifier.
            let saved = up.prefix().save();
            let _ = self.save_prefix_hash(&saved);
        }
        Ok(())
    }

    /// `S3Backend::read_range`: from the file once completed, else from the staging object.
    fn read_range(&self, record: &UploadRecord, offset: u64, len: u64) -> Result<Vec<u8>> {
        let key = if record.state == StoredState::Completed {
            file_key()
        } else {
            staging_key()
        };
        let (bytes, _) = self.s.get(&key).ok_or(Error::NotFound)?;
        bytes
            .get(offset as usize..(offset + len) as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::Io(std::io::Error::other("range past the end")))
    }

    /// `S3Backend::publish`: copy the staging object to the file, then remove it.
    fn publish(&self, _record: &UploadRecord) -> Result<()> {
        match self.s.copy(&staging_key(), &file_key()) {
            Ok(()) => {}
            Err(StoreError::NotFound) => return Ok(()),
            Err(e) => return Err(store_err(e)),
        }
        self.s.delete(&staging_key());
        Ok(())
    }

    /// `S3Backend::discard`: abort the multipart upload, remove every object but the record.
    fn discard(&self) -> Result<()> {
        if let Some((_, multipart_id)) = self.get_record()? {
            // Ok or NotFound: either way nothing is left to abort.
            let _ = self.s.abort_multipart(&multipart_id);
        }
        for (key, _) in self.s.list(&chunks_prefix()) {
            self.s.delete(&key);
        }
        for key in [staging_key(), file_key(), hash_key()] {
            self.s.delete(&key);
        }
        Ok(())
    }

    /// `Uploads::bury`: the tombstone first, then the bytes go.
    fn bury(&self, up: &Upload, state: StoredState) -> Result<()> {
        self.transition(up, |r| r.state = state)?;
        self.discard()?;
        up.chunks().clear();
        Ok(())
    }

    /// `Uploads::cancel`.
    fn cancel(&self) -> Result<()> {
        let (up, _) = self.get()?;
        let state = up.record().state;
        if state.is_tombstone() {
            return Err(Error::Gone(state.name()));
        }
        self.bury(&up, StoredState::Cancelled)?;
        self.s.emit("upload.cancelled");
        Ok(())
    }

    /// `Uploads::sweep`, for this upload: expires it when it is uploading and idle past the
    /// TTL. Purging tombstones (after their own TTL) is not modelled.
    fn sweep(&self) -> Result<bool> {
        let _ids = self.s.list("uploads/");
        let Some((record, _)) = self.get_record()? else {
            return Ok(false);
        };
        if record.state != StoredState::Uploading {
            return Ok(false);
        }
        let marks = self.s.marks(&chunks_prefix());
        self.s.log().expiry_marked = true;
        let (up, _) = self.get()?;
        if up.is_busy() || now() - up.last_activity() <= ttl() {
            return Ok(false);
        }
        // `op.try_write()` on this sweep's own handle always succeeds.
        if up.is_busy() || up.record().state != StoredState::Uploading {
            return Ok(false);
        }
        // `Uploads::expire`.
        match self.transition(&up, |r| r.state = StoredState::Expired) {
            Ok(_) => {}
            Err(Error::Conflict) => return Ok(false),
            Err(e) => return Err(e),
        }
        let now = self.s.marks(&chunks_prefix());
        if now.iter().any(|m| !marks.contains(m)) {
            self.s
                .saw("sweep: expiry undone, a chunk write began meanwhile");
            match self.transition(&up, |r| r.state = StoredState::Uploading) {
                Ok(_) | Err(Error::Conflict) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.discard()?;
        up.chunks().clear();
        self.s.emit("upload.expired");
        Ok(true)
    }

    /// `Uploads::status`, checking I4 against the instant of its listing.
    fn status(&self) -> Result<Seen> {
        let (up, audit) = self.get()?;
        let r = up.record();
        let state = r.state.visible()?;
        let t = up.chunks();
        let counted: Vec<u64> = (0..r.chunk_count())
            .filter(|i| state == UploadState::Completed || t.get(*i).is_some())
            .collect();
        let received = if state == UploadState::Completed {
            r.size
        } else {
            t.received_bytes()
        };
        if !audit.discarded && !self.s.checks.skip_i4 {
            for i in &counted {
                assert_eq!(
                    audit.durable.get(i),
                    Some(&true),
                    "I4 violated: status ({state:?}) counts chunk {i} as received, but its receipt \
                     or its bytes are not stored"
                );
            }
            let durable: u64 = counted.iter().filter_map(|i| r.chunk_len(*i).ok()).sum();
            assert!(
                received <= durable,
                "I4 violated: status reports {received} bytes received, {durable} are durable"
            );
        }
        Ok(Seen {
            state,
            sha256: r.sha256.or(r.declared_sha256),
        })
    }

    /// What a client downloading the file right after "completed" gets (`Uploads::content`,
    /// whose `S3Backend::content` publishes a file not yet there, then `read_range`).
    fn download(&self) -> Result<Vec<u8>> {
        let (record, _) = self.get_record()?.ok_or(Error::NotFound)?;
        if record.state != StoredState::Completed {
            return Err(Error::WrongState(record.state.name()));
        }
        if self.s.get(&file_key()).is_none() {
            self.publish(&record)?;
        }
        self.read_range(&record, 0, record.size)
    }
}

/// Parses a stored version.
fn version_of(v: &str) -> Result<u64> {
    v.parse()
        .map_err(|_| Error::Corrupt(format!("bad version {v:?}")))
}

/// One chunk request's content.
#[derive(Clone, Debug)]
struct Write {
    /// Chunk index.
    index: u64,
    /// The bytes sent.
    bytes: Vec<u8>,
    /// Arrives after the lease holder stopped renewing: sees its lease as expired.
    lease_seen_expired: bool,
}

/// Chunk `index` with the file's bytes.
fn good(index: u64) -> Write {
    Write {
        index,
        bytes: chunk_of(FILE, index),
        lease_seen_expired: false,
    }
}

/// Chunk `index` with other bytes than the file's.
fn bad(index: u64) -> Write {
    Write {
        index,
        bytes: chunk_of(OTHER, index),
        lease_seen_expired: false,
    }
}

/// An actor of a scenario: requests made in turn, each on its own server.
#[derive(Clone, Debug)]
enum Actor {
    /// A client: sends its chunks in parallel, waits for their answers, then completes
    /// `completes` times (every complete after the first is a retry after a lost answer).
    Client {
        /// The chunks it sends.
        writes: Vec<Write>,
        /// How many times it completes.
        completes: usize,
    },
    /// One more request for a chunk (a duplicate, or another client's bytes).
    Writer(Write),
    /// A complete; `stale` takes over a verification in progress.
    Completer {
        /// Treats a `completing` record as stalled.
        stale: bool,
    },
    /// A cancel.
    Canceller,
    /// A sweep.
    Expirer,
    /// Status reads.
    StatusReader {
        /// How many.
        reads: usize,
    },
}

/// A scenario: the upload's starting point and the actors racing on it.
#[derive(Clone, Debug)]
struct Scenario {
    /// Its name, for replays.
    name: &'static str,
    /// Chunks acknowledged before the schedule starts.
    preloaded: Vec<u64>,
    /// The actors, each a thread.
    actors: Vec<Actor>,
    /// The broken variant, if any.
    flaws: Flaws,
    /// Extra checks.
    checks: Checks,
    /// Outcomes some schedule must reach (see [`Outcomes`]).
    reaches: Vec<&'static str>,
}

impl Scenario {
    /// A scenario of the real protocol.
    fn new(name: &'static str, preloaded: &[u64], actors: Vec<Actor>) -> Self {
        Self {
            name,
            preloaded: preloaded.to_vec(),
            actors,
            flaws: Flaws::default(),
            checks: Checks::default(),
            reaches: Vec::new(),
        }
    }

    /// The same scenario, required to reach `outcomes`.
    fn reaching(mut self, outcomes: &[&'static str]) -> Self {
        self.reaches = outcomes.to_vec();
        self
    }

    /// The same scenario over a broken protocol.
    fn flawed(mut self, name: &'static str, flaws: Flaws) -> Self {
        self.name = name;
        self.flaws = flaws;
        self
    }

    /// The same scenario with extra checks.
    fn checked(mut self, name: &'static str, checks: Checks) -> Self {
        self.name = name;
        self.checks = checks;
        self
    }
}

/// The chunk race with equal bytes: a duplicate of chunk 1 on another server, a second
/// completer, a retried complete, status reads.
fn same_bytes_race() -> Scenario {
    Scenario::new(
        "same_bytes_race",
        &[0],
        vec![
            Actor::Client {
                writes: vec![good(1), good(2)],
                completes: 2,
            },
            Actor::Writer(good(1)),
            Actor::Completer { stale: false },
            Actor::StatusReader { reads: 2 },
        ],
    )
    .reaching(&[
        "chunk: already stored",
        "chunk: error Conflict",
        "complete: verifying",
        "end: completed",
    ])
}

/// The chunk race with different bytes: another client's bytes for chunk 2.
fn different_bytes_race() -> Scenario {
    Scenario::new(
        "different_bytes_race",
        &[0],
        vec![
            Actor::Client {
                writes: vec![good(1), good(2)],
                completes: 2,
            },
            Actor::Writer(bad(2)),
            Actor::Completer { stale: false },
            Actor::StatusReader { reads: 1 },
        ],
    )
    .reaching(&[
        "chunk: error ChunkConflict",
        "complete: error Sha256Mismatch",
        "end: completed",
        "end: failed",
    ])
}

/// A cancel racing the last chunk (sent twice), two completers and a status read.
fn cancel_race() -> Scenario {
    Scenario::new(
        "cancel_race",
        &[0, 1],
        vec![
            Actor::Client {
                writes: vec![good(2)],
                completes: 1,
            },
            Actor::Writer(good(2)),
            Actor::Completer { stale: false },
            Actor::Canceller,
            Actor::StatusReader { reads: 1 },
        ],
    )
    .reaching(&[
        "cancel: error Conflict",
        "complete: error Gone",
        "end: cancelled",
        "end: completed",
    ])
}

/// A sweep of an idle upload racing its last chunk, two completers and a status read.
fn expiry_race() -> Scenario {
    Scenario::new(
        "expiry_race",
        &[0, 1],
        vec![
            Actor::Client {
                writes: vec![good(2)],
                completes: 1,
            },
            Actor::Completer { stale: false },
            Actor::Expirer,
            Actor::StatusReader { reads: 1 },
        ],
    )
    .reaching(&[
        "sweep: expired",
        "sweep: skipped",
        "chunk: error Gone",
        "end: completed",
    ])
}

/// Completers that take over a verification they see in progress, racing the client's
/// complete and its retry.
fn stalled_verification_takeover() -> Scenario {
    Scenario::new(
        "stalled_verification_takeover",
        &[0, 1, 2],
        vec![
            Actor::Client {
                writes: vec![],
                completes: 2,
            },
            Actor::Completer { stale: true },
            Actor::Completer { stale: true },
            Actor::StatusReader { reads: 1 },
        ],
    )
    .reaching(&[
        "complete: took over a stalled verification",
        "end: completed",
    ])
}

/// Everything at once: both chunk races, a completer that takes over, a cancel, a sweep.
fn all_at_once() -> Scenario {
    Scenario::new(
        "all_at_once",
        &[0],
        vec![
            Actor::Client {
                writes: vec![good(1), good(2)],
                completes: 2,
            },
            Actor::Writer(good(1)),
            Actor::Writer(bad(2)),
            Actor::Completer { stale: true },
            Actor::Canceller,
            Actor::Expirer,
            Actor::StatusReader { reads: 1 },
        ],
    )
    .reaching(&[
        "end: completed",
        "end: failed",
        "end: cancelled",
        "end: expired",
    ])
}

/// A writer that sees the lease of another writer of the same chunk as expired, and takes
/// it over with other bytes: the part of whichever writer lost the claim may land after the
/// winner was acknowledged.
fn outlived_lease() -> Scenario {
    let mut late = bad(2);
    late.lease_seen_expired = true;
    Scenario::new(
        "outlived_lease",
        &[0, 1],
        vec![
            Actor::Client {
                writes: vec![good(2)],
                completes: 1,
            },
            Actor::Writer(late),
            Actor::StatusReader { reads: 2 },
        ],
    )
    .reaching(&[
        "lease: taken over from a writer that outlived it",
        "part: landed after its chunk was acknowledged",
        "end: completed",
        "end: failed",
    ])
}

/// Every scenario, main, broken and narrower ones, by name (for replays).
fn all_scenarios() -> Vec<Scenario> {
    vec![
        same_bytes_race(),
        different_bytes_race(),
        cancel_race(),
        expiry_race(),
        stalled_verification_takeover(),
        all_at_once(),
        teeth_unconditional_record_write_scenario(),
        teeth_hash_not_checked_scenario(),
        teeth_lease_not_exclusive_scenario(),
        teeth_join_ignores_etags_scenario(),
        teeth_claim_not_create_once_scenario(),
        teeth_takeover_reuses_part_scenario(),
        expiry_never_reaps_scenario(),
        outlived_lease(),
        completed_is_downloadable_scenario(),
    ]
}

/// Runs one schedule of `scenario`: the actors, then the background verifications, then
/// the final status read and the end-of-schedule checks.
fn run(scenario: &Scenario) {
    let store = Arc::new(Store::new(scenario));
    let actors: Vec<_> = scenario
        .actors
        .iter()
        .cloned()
        .enumerate()
        .map(|(n, actor)| {
            let s = store.clone();
            shuttle::thread::spawn(move || run_actor(&s, &format!("p{n}"), actor))
        })
        .collect();
    for a in actors {
        a.join().expect("actor");
    }
    loop {
        let next = store.background.lock().expect("background lock").pop();
        match next {
            Some(task) => task.join().expect("background verification"),
            None => break,
        }
    }
    let _ = Node::new(&store, "final").status();
    check_end(&store);
    Outcomes::record(scenario.name, &store.log());
}

/// One actor's requests.
fn run_actor(s: &Arc<Store>, name: &str, actor: Actor) {
    match actor {
        Actor::Client { writes, completes } => {
            let sends: Vec<_> = writes
                .into_iter()
                .enumerate()
                .map(|(i, w)| {
                    let s = s.clone();
                    let name = format!("{name}.w{i}");
                    shuttle::thread::spawn(move || send_chunk(&s, &name, &w))
                })
                .collect();
            for send in sends {
                send.join().expect("chunk request");
            }
            complete_times(s, name, false, completes);
        }
        Actor::Writer(w) => send_chunk(s, name, &w),
        Actor::Completer { stale } => complete_times(s, name, stale, 1),
        Actor::Canceller => {
            let answer = Node::new(s, name).cancel();
            s.saw(format!(
                "cancel: {}",
                outcome(answer.as_ref().map(|()| "ok"))
            ));
        }
        Actor::Expirer => {
            let answer = Node::new(s, name).sweep();
            let answer = answer
                .as_ref()
                .map(|expired| if *expired { "expired" } else { "skipped" });
            s.saw(format!("sweep: {}", outcome(answer)));
        }
        Actor::StatusReader { reads } => {
            for i in 0..reads {
                let _ = Node::new(s, &format!("{name}.r{i}")).status();
            }
        }
    }
}

/// A client sending one chunk, again while it is answered "retry soon"; every 2xx answer is
/// logged as an acknowledgement.
fn send_chunk(s: &Arc<Store>, name: &str, w: &Write) {
    for attempt in 0..WRITER_ATTEMPTS {
        let node = Node::new(s, &format!("{name}.a{attempt}"));
        let answer = node.put_chunk(w);
        {
            let mut log = s.log();
            if answer.is_ok() {
                log.chunk_acks.push((w.index, w.bytes.clone()));
                if log.expiry_marked {
                    log.acks_after_expiry_look += 1;
                }
                if matches!(answer, Ok(true)) && log.state.is_some_and(StoredState::is_tombstone) {
                    log.seen
                        .insert("chunk: new, answered after the upload was discarded".into());
                }
            }
            let answer = answer
                .as_ref()
                .map(|new| if *new { "new" } else { "already stored" });
            log.seen.insert(format!("chunk: {}", outcome(answer)));
        }
        if !matches!(answer, Err(Error::Conflict)) {
            return;
        }
    }
}

/// A client completing `times` times, each after the previous answer was lost; checks that
/// a repeat after "completed" answers the same (I3).
fn complete_times(s: &Arc<Store>, name: &str, stale: bool, times: usize) {
    let mut done: Option<Answer> = None;
    for attempt in 0..times {
        let node = Node::new(s, &format!("{name}.c{attempt}"));
        let answer = node.complete(stale);
        s.saw(format!(
            "complete: {}",
            outcome(answer.as_ref().map(|a| match a {
                Answer::Done(_) => "done",
                Answer::Verifying => "verifying",
            }))
        ));
        if let Ok(Answer::Done(sha256)) = &answer {
            assert_eq!(
                *sha256,
                Some(sha(FILE)),
                "I2 violated: a complete answered completed with another SHA-256"
            );
            s.log().answered_done = true;
            if s.checks.done_implies_downloadable {
                let got = node.download();
                assert!(
                    matches!(&got, Ok(b) if b == FILE),
                    "C violated: answered completed, but downloading the file gives {got:?}"
                );
            }
        }
        if let Some(first) = done {
            assert!(
                matches!(answer, Ok(a) if a == first) || matches!(answer, Err(Error::Gone(_))),
                "I3 violated: a complete repeated after {first:?} answered {answer:?}"
            );
        }
        if let Ok(a @ Answer::Done(_)) = answer {
            done = Some(a);
        }
    }
}

/// A short name for an answer: its `Ok` value, or the error's kind.
fn outcome<T: std::fmt::Display>(answer: std::result::Result<T, &Error>) -> String {
    match answer {
        Ok(v) => v.to_string(),
        Err(e) => {
            let debug = format!("{e:?}");
            let kind: String = debug.chars().take_while(|c| c.is_alphanumeric()).collect();
            format!("error {kind}")
        }
    }
}

/// How many schedules of each scenario saw each outcome, so that a check that passes can
/// be seen to have reached the states that matter (and asserted to, in [`check`]).
struct Outcomes;

/// Per scenario: schedules run, store requests made, and schedules per outcome.
type OutcomeTable = BTreeMap<String, (usize, usize, BTreeMap<String, usize>)>;

/// Every scenario's outcomes in this process.
static OUTCOMES: StdMutex<OutcomeTable> = StdMutex::new(BTreeMap::new());

impl Outcomes {
    /// Adds one schedule of `scenario`.
    fn record(scenario: &str, log: &Log) {
        let mut all = OUTCOMES.lock().expect("outcomes lock");
        let entry = all.entry(scenario.to_string()).or_default();
        entry.0 += 1;
        entry.1 += log.steps;
        for what in &log.seen {
            *entry.2.entry(what.clone()).or_default() += 1;
        }
    }

    /// Schedules run, store requests made, and schedules per outcome, of `scenario`.
    fn of(scenario: &str) -> (usize, usize, BTreeMap<String, usize>) {
        OUTCOMES
            .lock()
            .expect("outcomes lock")
            .get(scenario)
            .cloned()
            .unwrap_or_default()
    }
}

/// The checks at the end of a schedule, every request and verification having ended.
fn check_end(s: &Store) {
    let b = s.lock();
    let state = b
        .objects
        .get(&record_key())
        .and_then(|o| stored_state(&o.bytes))
        .expect("the record stays");
    s.saw(format!("end: {}", state.name()));
    if state == StoredState::Expired && s.checks.expiry_never_in_flight {
        let after = s.log().acks_after_expiry_look;
        assert_eq!(
            after, 0,
            "E violated: the upload expired though {after} chunk(s) were acknowledged after \
             the sweep judged it idle"
        );
    }
    if state.is_tombstone() && b.objects.keys().any(|k| k.starts_with(&chunks_prefix())) {
        s.saw("end: objects left under chunks/ of a tombstone");
    }
    let log = s.log();
    let file = b.objects.get(&file_key()).map(|o| o.bytes.clone());
    let completed_events = log
        .events
        .iter()
        .filter(|k| **k == "upload.completed")
        .count();
    assert_eq!(
        completed_events, log.completed_writes,
        "I3 violated: {} transitions to completed, {completed_events} completed events",
        log.completed_writes
    );
    if log.answered_done {
        assert_eq!(
            log.completed_writes, 1,
            "I3 violated: answered completed without exactly one completion"
        );
    }
    assert_ne!(
        state,
        StoredState::Completing,
        "I3 violated: the upload is left completing with no verification running"
    );
    if state == StoredState::Completed {
        assert!(
            file.as_deref().is_some_and(|f| sha(f) == sha(FILE)),
            "I2 violated: completed, but the file published is missing or wrong"
        );
    } else {
        assert!(
            file.is_none(),
            "I2 violated: a file is published for an upload that is {state:?}"
        );
    }
    for (index, acked) in &log.chunk_acks {
        if state == StoredState::Completed {
            let start = (index * CHUNK_SIZE) as usize;
            assert_eq!(
                file.as_deref()
                    .and_then(|f| f.get(start..start + acked.len())),
                Some(acked.as_slice()),
                "I1 violated: the completed file does not hold acknowledged chunk {index}"
            );
        } else if state.is_open() {
            let dir = chunk_dir(*index);
            let claim = b
                .objects
                .get(&format!("{dir}/claim"))
                .map(|o| String::from_utf8_lossy(&o.bytes).into_owned());
            let named = claim
                .as_deref()
                .and_then(|name| parse_receipt(&format!("{dir}/{name}")));
            assert_eq!(
                named.map(|(c, _)| c.sha256),
                Some(sha(acked)),
                "I1 violated: the claim of acknowledged chunk {index} is gone or names other bytes"
            );
            let receipt = format!("{dir}/{}", claim.unwrap_or_default());
            assert!(
                b.objects.contains_key(&receipt),
                "I1 violated: the receipt of acknowledged chunk {index} is gone"
            );
        }
    }
}

/// The shuttle configuration of every run.
fn config(persistence: FailurePersistence) -> Config {
    let mut c = Config::new();
    c.stack_size = STACK_SIZE;
    c.failure_persistence = persistence;
    c
}

/// Runs `scenario` under `scheduler`; answers how many schedules ran.
fn run_with(scenario: &Scenario, scheduler: impl Scheduler + 'static, config: Config) -> usize {
    let scenario = scenario.clone();
    Runner::new(scheduler, config).run(move || run(&scenario))
}

/// A scheduler that records the decisions of the schedule in progress, so that a failing
/// one can be replayed without going through shuttle's printout (its panic hook is global
/// and keeps the persistence settings of the first run of the process).
struct Recording<S> {
    /// The scheduler deciding.
    inner: S,
    /// The schedule in progress.
    current: Arc<StdMutex<Schedule>>,
    /// Schedules started so far.
    started: Arc<std::sync::atomic::AtomicUsize>,
}

impl<S: Scheduler> Scheduler for Recording<S> {
    /// Starts recording a new schedule.
    fn new_execution(&mut self) -> Option<Schedule> {
        let schedule = self.inner.new_execution()?;
        *self.current.lock().expect("schedule lock") = schedule.clone();
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(schedule)
    }

    /// Lets the inner scheduler choose the next task, and records it.
    fn next_task(
        &mut self,
        runnable_tasks: &[&Task],
        current_task: Option<TaskId>,
        is_yielding: bool,
    ) -> Option<TaskId> {
        let next = self
            .inner
            .next_task(runnable_tasks, current_task, is_yielding)?;
        self.current.lock().expect("schedule lock").push_task(next);
        Some(next)
    }

    /// Records a random choice (the model makes none).
    fn next_u64(&mut self) -> u64 {
        self.current.lock().expect("schedule lock").push_random();
        self.inner.next_u64()
    }
}

/// Schedules per main scenario: `MODEL_SCHEDULES`, or [`DEFAULT_SCHEDULES`].
fn schedules() -> usize {
    std::env::var("MODEL_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SCHEDULES)
}

/// Checks a scenario of the real protocol: half the schedules random, half PCT.
fn check(scenario: &Scenario) {
    let n = schedules();
    let random = run_with(
        scenario,
        RandomScheduler::new(n / 2),
        config(FailurePersistence::Print),
    );
    let pct = run_with(
        scenario,
        PctScheduler::new(PCT_DEPTH, n - n / 2),
        config(FailurePersistence::Print),
    );
    assert_eq!(random + pct, n, "every schedule ran");
    let (runs, steps, seen) = Outcomes::of(scenario.name);
    println!(
        "{}: {random} random and {pct} PCT schedules, no violation; {} store requests per \
         schedule; schedules per outcome: {seen:#?}",
        scenario.name,
        steps / runs.max(1)
    );
    // With fewer schedules than the default, rare outcomes may be missed: not asserted.
    let asserted = if n >= DEFAULT_SCHEDULES {
        scenario.reaches.as_slice()
    } else {
        &[]
    };
    for what in asserted {
        assert!(
            seen.contains_key(*what),
            "{}: no schedule reached {what:?}: the check would prove little",
            scenario.name
        );
    }
}

/// The message of a panic payload.
fn message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Searches schedules of `scenario` (random, at most [`SEARCH_BUDGET`]) until one fails,
/// asserts that it violates one of `invariants`, then replays that schedule and asserts that
/// it fails the same way.
fn expect_violation(scenario: &Scenario, invariants: &[&str]) {
    let current = Arc::new(StdMutex::new(Schedule::new(0)));
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let search = Recording {
        inner: RandomScheduler::new(SEARCH_BUDGET),
        current: current.clone(),
        started: started.clone(),
    };
    let found = catch_unwind(AssertUnwindSafe(|| {
        run_with(scenario, search, config(FailurePersistence::Print))
    }));
    let payload = found.expect_err(&format!(
        "{}: no schedule out of {SEARCH_BUDGET} violates {invariants:?}",
        scenario.name
    ));
    let first = message(payload.as_ref());
    assert!(
        invariants
            .iter()
            .any(|i| first.contains(&format!("{i} violated"))),
        "{}: expected a violation of {invariants:?}, got: {first}",
        scenario.name
    );
    let schedule = current.lock().expect("schedule lock").clone();
    let replayed = catch_unwind(AssertUnwindSafe(|| {
        run_with(
            scenario,
            ReplayScheduler::new_from_schedule(schedule),
            config(FailurePersistence::None),
        )
    }));
    let again = message(
        replayed
            .expect_err("the recorded schedule fails again")
            .as_ref(),
    );
    assert_eq!(again, first, "the replay fails the same way");
    println!(
        "{}: found in schedule {} and replayed: {}",
        scenario.name,
        started.load(std::sync::atomic::Ordering::Relaxed),
        first.lines().next().unwrap_or_default()
    );
}

/// Main scenario: racing writers of one chunk with equal bytes.
#[test]
fn model_same_bytes_race() {
    check(&same_bytes_race());
}

/// Main scenario: racing writers of one chunk with different bytes.
#[test]
fn model_different_bytes_race() {
    check(&different_bytes_race());
}

/// Main scenario: a cancel racing writers and completers.
#[test]
fn model_cancel_race() {
    check(&cancel_race());
}

/// Main scenario: an expiry racing a writer and completers.
#[test]
fn model_expiry_race() {
    check(&expiry_race());
}

/// Main scenario: takeovers of a verification in progress.
#[test]
fn model_stalled_verification_takeover() {
    check(&stalled_verification_takeover());
}

/// Main scenario: everything at once.
#[test]
fn model_all_at_once() {
    check(&all_at_once());
}

/// Broken: the completion claim (every record change) written without If-Match.
fn teeth_unconditional_record_write_scenario() -> Scenario {
    same_bytes_race().flawed(
        "teeth_unconditional_record_write",
        Flaws {
            unconditional_record_write: true,
            ..Flaws::default()
        },
    )
}

/// Two completers both claim the completion and both complete.
#[test]
fn teeth_unconditional_record_write() {
    expect_violation(&teeth_unconditional_record_write_scenario(), &["I3"]);
}

/// Broken: verification publishes without comparing the whole-file SHA-256.
fn teeth_hash_not_checked_scenario() -> Scenario {
    different_bytes_race().flawed(
        "teeth_hash_not_checked",
        Flaws {
            skip_hash_check: true,
            ..Flaws::default()
        },
    )
}

/// The other client's bytes win chunk 2 and are published.
#[test]
fn teeth_hash_not_checked() {
    expect_violation(&teeth_hash_not_checked_scenario(), &["I2"]);
}

/// Broken: the lease is put unconditionally, so two writers send the same part.
fn teeth_lease_not_exclusive_scenario() -> Scenario {
    different_bytes_race().flawed(
        "teeth_lease_not_exclusive",
        Flaws {
            lease_not_exclusive: true,
            ..Flaws::default()
        },
    )
}

/// The loser's part replaces the winner's: a status counts bytes that are not stored (I4),
/// or completion forgets the acknowledged chunk (I1).
#[test]
fn teeth_lease_not_exclusive() {
    expect_violation(&teeth_lease_not_exclusive_scenario(), &["I4", "I1"]);
}

/// Broken: parts joined without checking their ETags, with a lease outlived and part
/// numbers that ignore the lease generation, else the late part lands where no receipt
/// points and is never joined (that numbering breaks I4 by itself, see
/// [`teeth_takeover_reuses_part`]: I4 is off here).
fn teeth_join_ignores_etags_scenario() -> Scenario {
    outlived_lease()
        .flawed(
            "teeth_join_ignores_etags",
            Flaws {
                join_ignores_etags: true,
                takeover_reuses_part: true,
                ..Flaws::default()
            },
        )
        .checked(
            "teeth_join_ignores_etags",
            Checks {
                skip_i4: true,
                ..Checks::default()
            },
        )
}

/// The acknowledged bytes of chunk 2 were replaced by a late part, and published.
#[test]
fn teeth_join_ignores_etags() {
    expect_violation(&teeth_join_ignores_etags_scenario(), &["I1", "I2"]);
}

/// Broken: the claim written by every writer (with a lease that is not exclusive either,
/// else no second writer gets that far; I4 is off, as that lease alone breaks it, so that
/// the search is for what the claim adds).
fn teeth_claim_not_create_once_scenario() -> Scenario {
    different_bytes_race()
        .flawed(
            "teeth_claim_not_create_once",
            Flaws {
                lease_not_exclusive: true,
                claim_not_create_once: true,
                ..Flaws::default()
            },
        )
        .checked(
            "teeth_claim_not_create_once",
            Checks {
                skip_i4: true,
                ..Checks::default()
            },
        )
}

/// Both writers of chunk 2 are acknowledged, with different bytes.
#[test]
fn teeth_claim_not_create_once() {
    expect_violation(&teeth_claim_not_create_once_scenario(), &["I1"]);
}

/// A sweep of an idle upload racing chunk requests, checking that it never expires an
/// upload with a chunk acknowledged after it judged the upload idle.
fn expiry_never_reaps_scenario() -> Scenario {
    Scenario::new(
        "expiry_never_reaps",
        &[0],
        vec![
            Actor::Writer(good(1)),
            Actor::Writer(good(2)),
            Actor::Expirer,
        ],
    )
    .checked(
        "expiry_never_reaps",
        Checks {
            expiry_never_in_flight: true,
            ..Checks::default()
        },
    )
}

/// An expiry racing chunk requests: either the requests are answered "gone" (nothing
/// acknowledged) or the expiry is undone. (Before the second look and the writer's check,
/// the model found the upload expiring under a chunk request that was then acknowledged.)
#[test]
fn model_expiry_never_reaps_an_active_upload() {
    check(&expiry_never_reaps_scenario());
}

/// When a lease is outlived (its holder waits longer than `LEASE_SECS` for its UploadPart
/// answer, during which nothing renews it), another writer takes the chunk over, one lease
/// generation up, and may be acknowledged before the first part lands. The late part lands
/// on its own generation's part number, which no receipt names, so the acknowledged part
/// stays as its receipt says (I4) and the join drops the late one (I1). (Before part
/// numbers were fenced by the generation, the model found the late part landing over the
/// acknowledged one: see [`teeth_takeover_reuses_part`].)
#[test]
fn model_outlived_lease() {
    check(&outlived_lease());
}

/// Broken: the part number ignores the lease generation (the protocol before the fencing).
fn teeth_takeover_reuses_part_scenario() -> Scenario {
    outlived_lease().flawed(
        "teeth_takeover_reuses_part",
        Flaws {
            takeover_reuses_part: true,
            ..Flaws::default()
        },
    )
}

/// The late part lands over the part of the writer that took the lease over and was
/// acknowledged: a status counts a chunk whose acknowledged bytes are no longer stored (I4),
/// then the join refuses that part's ETag and completion forgets the acknowledged chunk
/// (I1).
#[test]
fn teeth_takeover_reuses_part() {
    expect_violation(&teeth_takeover_reuses_part_scenario(), &["I4", "I1"]);
}

/// Two completers of a fully sent upload, each downloading the file once answered
/// "completed".
fn completed_is_downloadable_scenario() -> Scenario {
    Scenario::new(
        "completed_is_downloadable",
        &[0, 1, 2],
        vec![
            Actor::Completer { stale: false },
            Actor::Completer { stale: false },
        ],
    )
    .checked(
        "completed_is_downloadable",
        Checks {
            done_implies_downloadable: true,
            ..Checks::default()
        },
    )
}

/// `verify` stores `completed` before `publish` copies the staging object to
/// `files/{id}`, so a completer that lost the race may answer "completed" first; the
/// download then finds no file and publishes it itself (`S3Backend::content`), as it
/// would after the publishing process died between the two steps. (Before that repair,
/// the model found the download failing here.)
#[test]
fn model_completed_is_downloadable() {
    check(&completed_is_downloadable_scenario());
}

/// Replays one schedule: `MODEL_REPLAY_SCENARIO=<name> MODEL_REPLAY='<schedule>'`, with the
/// schedule string shuttle printed. Does nothing without them.
#[test]
fn replay_schedule() {
    let (Ok(name), Ok(schedule)) = (
        std::env::var("MODEL_REPLAY_SCENARIO"),
        std::env::var("MODEL_REPLAY"),
    ) else {
        return;
    };
    let scenario = all_scenarios()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario named {name}"));
    // The schedule may be pasted as printed, over several lines.
    let schedule: String = schedule.split_whitespace().collect();
    let mut replay = ReplayScheduler::new_from_encoded(&schedule);
    replay.set_allow_incomplete();
    run_with(&scenario, replay, config(FailurePersistence::Print));
}
