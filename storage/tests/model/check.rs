//! The invariants, checked against what the bucket holds: right after every store write
//! ([`after_request`]), at every status a client reads ([`status`]) and at the end of every
//! schedule ([`end`]).
//!
//! - **I1** an acknowledged chunk is never lost or altered: while the upload is open its
//!   claim names the acknowledged digest and the part it names holds those bytes under the
//!   ETag the claim names; once completed, the file holds them. Two acknowledgements of
//!   one chunk never name different bytes, and only one request stores a chunk first.
//! - **I2** a file appears at `files/{id}` only whole and matching the declared SHA-256,
//!   only once the record says completed, and only by joining parts (no copy, no PUT).
//! - **I3** exactly one completion: the record is stored "completed" at most once, never
//!   over another state than "completing", `upload.completed` is recorded only for a
//!   completed upload (and is recorded), and no upload is left "completing" once every
//!   request has ended and a stalled verification was taken over.
//! - **I4** a status never reports more than is durable.
//! - **E** an upload never ends expired with a chunk acknowledged whose claim the sweep did
//!   not see when it judged the upload idle.
//! - **C** after a cancel, an expiry or a failure nothing of the upload is left in the
//!   bucket but its record (the tombstone): no part, no claim, no file.
//! - Every claim with a midstate names the SHA-256 state of the claimed bytes before it.

use std::collections::BTreeMap;

use common::api::{UploadState, UploadStatus};
use common::Sha256Digest;
use sha2::{Digest, Sha256};
use storage::backend::s3::memory::Snapshot;
use storage::backend::s3::store::op;
use storage::hash::{PrefixHash, SavedPrefixHash};
use storage::record::StoredState;

use crate::world::{lock, sha, RecordObject, World};

/// A known gap: a chunk request that sent its part before the upload's parts were joined
/// (or aborted by a cancel or an expiry) and wrote its claim after the claims were
/// cleared. Its claim (and spill) stays behind, and the request is acknowledged unless it
/// took long enough to read the record again and find the upload ended, and then only
/// for a cancelled or expired one: a completed or failed upload is acknowledged.
pub const LATE_CLAIM: &str =
    "GAP: a chunk's objects written after the parts were joined or aborted (left behind)";

/// A known gap: an expiry whose second look at the chunks, or whose undo, did not happen
/// (the store failed a request, or lost the answer to the "expired" write) stays in place
/// unchecked, so a chunk acknowledged meanwhile is lost with the upload.
pub const UNCHECKED_EXPIRY: &str =
    "GAP: an expiry left in place unchecked after a store fault, a chunk lost";

/// A known gap: a chunk request reuses a record this server read up to 2 s before
/// (`RECORD_REUSE`) and measures its quickness from its own start, not from that read; a
/// request that began after the sweep stored "expired", with the record read just before,
/// can claim its chunk after the sweep's second look and still be quick enough to be
/// acknowledged without reading the record again, when the expiry's grace (a quarter of
/// the time to live, at most 10 s) is under twice `RECORD_REUSE` (a time to live under
/// 16 s). The chunk is lost with the upload.
pub const RECORD_REUSE: &str =
    "GAP: a chunk acknowledged on a record read before the expiry, claimed after its look";

/// A known gap: an append whose lease expired under it (its holder stalled past the
/// lease's 15 s) commits without checking that it still holds the lease: where another
/// appender has since claimed the chunk with other bytes, the claim's conflict is taken for
/// its own earlier write (`claim_appended`), and its piece is stored beside the other's at
/// the same offset (piece names differ by their midstates); the append is acknowledged for
/// bytes the upload does not hold.
pub const OUTLIVED_LEASE: &str =
    "GAP: an append that outlived its lease acknowledged for bytes another append replaced";

/// A known gap: an in-order append that completes a chunk and goes on into the next one
/// claims the first without a midstate (only the append's last chunk gets one); when the
/// append fails before its last claim, no claim carries the whole-file hash past that
/// chunk and every later append is refused (500).
pub const WEDGED: &str =
    "GAP: an append interrupted between its chunks' claims: the upload cannot continue";

/// A known gap: part numbers are picked from the chunk's declared SHA-256 (at random
/// without one) within the chunk's range of `10000 / chunks` numbers, so a writer of other
/// bytes may pick the number of the part another writer was acknowledged for, and its
/// UploadPart replaces that part (it learns of the claim only after). Completion then
/// fails the upload, or, when the part is replaced between verification and the join,
/// the upload stays "completed" and its parts can never be joined.
pub const REPLACED: &str = "GAP: an acknowledged part replaced by a conflicting writer's part";

/// A chunk's claim, as the backend stores it.
#[derive(serde::Deserialize, Debug)]
pub struct Claim {
    pub size: u64,
    pub sha256: Sha256Digest,
    pub part: u64,
    pub etag: String,
    #[serde(default)]
    pub whole: Option<SavedPrefixHash>,
    #[serde(default)]
    pub spilled: bool,
}

/// The bucket as it stands, read for the upload of the schedule.
pub struct View<'a> {
    pub w: &'a World,
    pub snap: Snapshot,
    pub record: Option<RecordObject>,
}

impl<'a> View<'a> {
    pub fn now(w: &'a World) -> Self {
        let snap = w.store.snapshot();
        let record = snap
            .objects
            .get(&w.record_key())
            .map(|o| serde_json::from_slice(&o.bytes).expect("a readable record"));
        Self { w, snap, record }
    }

    pub fn state(&self) -> Option<StoredState> {
        self.record.as_ref().map(|r| r.record.state)
    }

    pub fn claim(&self, index: u64) -> Option<Claim> {
        let o = self.snap.objects.get(&self.w.claim_key(index))?;
        Some(serde_json::from_slice(&o.bytes).expect("a readable claim"))
    }

    pub fn file(&self) -> Option<&[u8]> {
        self.snap
            .objects
            .get(&self.w.file_key())
            .map(|o| &o.bytes[..])
    }

    /// The upload's multipart upload, if in progress.
    fn parts(&self) -> Option<&BTreeMap<u64, (bytes::Bytes, String)>> {
        let r = self.record.as_ref()?;
        self.snap.uploads.get(&r.multipart_id).map(|u| &u.parts)
    }

    /// The bytes chunk `index` has in the bucket by its claim, if they are there as the
    /// claim says: `Err` tells what is wrong.
    pub fn claimed_bytes(&self, index: u64) -> Result<(Claim, Vec<u8>), String> {
        let Some(claim) = self.claim(index) else {
            let aside = format!("{}{index:05}.resend", self.w.chunks_prefix());
            return Err(if self.snap.objects.contains_key(&aside) {
                // Set aside by a completion that found its part replaced: asked for again.
                format!("part of chunk {index} was replaced after its claim (set aside)")
            } else {
                format!("chunk {index} has no claim")
            });
        };
        let (bytes, etag) = self
            .parts()
            .and_then(|p| p.get(&claim.part))
            .ok_or_else(|| format!("part {} of chunk {index} is not in the store", claim.part))?;
        if *etag != claim.etag {
            return Err(format!(
                "part {} of chunk {index} was replaced after its claim (ETag {etag}, claimed {})",
                claim.part, claim.etag
            ));
        }
        if sha(bytes) != claim.sha256 || claim.size != bytes.len() as u64 {
            return Err(format!(
                "part {} of chunk {index} does not hold the claimed bytes",
                claim.part
            ));
        }
        if claim.spilled {
            let key = format!(
                "{}{index:05}.{}.{}.spill",
                self.w.chunks_prefix(),
                claim.part,
                claim.etag
            );
            match self.snap.objects.get(&key) {
                Some(o) if sha(&o.bytes) == claim.sha256 => {}
                Some(_) => {
                    return Err(format!(
                        "the spill of chunk {index} was replaced after its claim (part {})",
                        claim.part
                    ))
                }
                None => return Err(format!("the spill of chunk {index} is missing")),
            }
        }
        Ok((claim, bytes.to_vec()))
    }

    /// Whether chunk `index` with `digest` is durable: in the file once published,
    /// otherwise claimed with its part in place.
    pub fn durable(&self, index: u64, digest: Sha256Digest) -> Result<(), String> {
        if let Some(file) = self.file() {
            let range = self.w.range(index);
            return match file.get(range) {
                Some(b) if sha(b) == digest => Ok(()),
                _ => Err(format!("the file does not hold acknowledged chunk {index}")),
            };
        }
        let (claim, _) = self.claimed_bytes(index)?;
        let aside = format!("{}{index:05}.resend", self.w.chunks_prefix());
        if claim.sha256 != digest && self.snap.objects.contains_key(&aside) {
            return Err(format!(
                "part of chunk {index} was replaced after its claim (set aside, sent again with other bytes)"
            ));
        }
        if claim.sha256 != digest {
            return Err(format!("the claim of chunk {index} names other bytes"));
        }
        Ok(())
    }

    /// The bytes of an in-order upload stored contiguously from its start: the file once
    /// published; otherwise the claimed parts, then the pieces of the first chunk without
    /// a claim.
    pub fn stream_bytes(&self) -> Vec<u8> {
        if let Some(f) = self.file() {
            return f.to_vec();
        }
        let mut out = Vec::new();
        for index in 0..self.w.chunk_count() {
            if let Ok((_, bytes)) = self.claimed_bytes(index) {
                out.extend(bytes);
                continue;
            }
            let dir = format!("{}{index:05}.pieces/", self.w.chunks_prefix());
            let mut at = 0;
            for (k, o) in self.snap.objects.range(dir.clone()..) {
                let Some(name) = k.strip_prefix(&dir) else {
                    break;
                };
                let start: u64 = name.split('.').next().unwrap().parse().unwrap();
                if start != at {
                    break;
                }
                out.extend_from_slice(&o.bytes);
                at += o.bytes.len() as u64;
            }
            break;
        }
        out
    }

    /// Whether the upload's bytes are gone (discarded), so what was reported earlier need
    /// not be there any more.
    fn discarded(&self) -> bool {
        self.state()
            .is_none_or(|s| s.is_tombstone() || s == StoredState::Failed)
    }
}

/// Called right after each store request of the schedule was applied (and answered
/// without error), before any other task runs.
pub fn after_request(w: &World, server: usize, what: &str, key: &str, seq: u64) {
    let write = matches!(
        what,
        "put"
            | "put-if-none-match"
            | "put-if-match"
            | op::DELETE
            | op::DELETE_MANY
            | op::UPLOAD_PART
            | op::COMPLETE_MULTIPART
            | op::ABORT_MULTIPART
    );
    if write {
        after_write(w, server, what, key, seq);
    }
}

/// Called when a store request's answer reaches the server that made it: the sweep's
/// looks at the chunks (its marks, then its second look after storing "expired").
pub fn answered(w: &World, server: usize, what: &str, key: &str, seq: u64) {
    if what != op::LIST || key != w.chunks_prefix() {
        return;
    }
    let mut log = lock(&w.log);
    match log.sweeping.get_mut(&server) {
        Some(first @ None) => *first = Some(seq),
        Some(Some(_)) => {
            if let Some(e) = log.expiries.last_mut() {
                e.second_look.get_or_insert(seq);
            }
        }
        None => {}
    }
}

fn after_write(w: &World, server: usize, what: &str, key: &str, seq: u64) {
    let v = View::now(w);
    if what.starts_with("put") {
        let mut log = lock(&w.log);
        log.written
            .insert(key.to_string(), tokio::time::Instant::now());
        log.spilled |= key.ends_with(".spill");
    }
    let gone = v
        .record
        .as_ref()
        .is_some_and(|r| !v.snap.uploads.contains_key(&r.multipart_id));
    if gone && what.starts_with("put") && key.starts_with(&w.chunks_prefix()) {
        lock(&w.log).late_objects.insert(key.to_string());
        w.outcome(LATE_CLAIM);
    }
    if key == w.record_key() && what.starts_with("put") {
        record_written(w, &v, server);
    }
    claims_written(w, &v, seq);
    if let Some(file) = v.file() {
        let etag = v.snap.objects[&w.file_key()].etag.clone();
        if lock(&w.log).files_checked.insert(etag) {
            if sha(file) != sha(&w.file) {
                w.violation("I2: the file at files/{id} is not the declared file");
            }
            if !lock(&w.log).ever_completed {
                w.violation("I2: the file appeared before the record said completed");
            }
        }
    }
    acks_durable(w, &v, "at a store write");
}

/// Follows the record's state: legal moves only, one completion.
fn record_written(w: &World, v: &View, server: usize) {
    let Some(new) = v.state() else { return };
    let old = lock(&w.log).state.replace(new);
    use StoredState as S;
    let legal = match (old, new) {
        (None, _) => true,
        (Some(a), b) if a == b => !matches!(a, S::Completed | S::Cancelled | S::Expired),
        (Some(S::Uploading), b) => matches!(b, S::Completing | S::Cancelled | S::Expired),
        (Some(S::Completing), b) => {
            matches!(b, S::Completed | S::Failed | S::Uploading | S::Cancelled)
        }
        (Some(S::Completed | S::Failed), b) => b == S::Cancelled,
        (Some(S::Expired), b) => b == S::Uploading,
        (Some(S::Cancelled), _) => false,
    };
    if !legal {
        let what = format!("record: {old:?} -> {new:?} is not a legal move");
        if new == S::Completed {
            w.violation(format!("I3: completed twice ({what})"));
        } else {
            w.violation(what);
        }
    }
    if old == Some(S::Completing) && new == S::Completing {
        w.outcome("a stalled verification taken over");
    }
    if old == Some(S::Expired) && new == S::Uploading {
        w.outcome("an expiry undone: a chunk came meanwhile");
    }
    if new == S::Completed && old != Some(S::Completed) {
        let mut log = lock(&w.log);
        log.ever_completed = true;
        log.completions += 1;
        if log.completions > 1 {
            drop(log);
            w.violation("I3: a second completion was stored");
        }
        if v.record.as_ref().and_then(|r| r.record.sha256) != Some(sha(&w.file)) {
            w.violation("I2: completed with another SHA-256 than the declared one");
        }
    }
    if new == S::Expired && old != Some(S::Expired) {
        let mut log = lock(&w.log);
        if let Some(Some(marks)) = log.sweeping.get(&server).copied() {
            log.expiries.push(crate::world::Expiry {
                marks,
                second_look: None,
                faulted: false,
            });
        }
    }
}

/// Follows claims: create-once, and a midstate that matches the claimed bytes.
fn claims_written(w: &World, v: &View, seq: u64) {
    let prefix = w.chunks_prefix();
    let now: BTreeMap<String, String> = v
        .snap
        .objects
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter(|(k, _)| {
            let rest = &k[prefix.len()..];
            rest.len() == 5 && rest.bytes().all(|b| b.is_ascii_digit())
        })
        .map(|(k, o)| (k.clone(), o.etag.clone()))
        .collect();
    let joined_or_aborted = v
        .record
        .as_ref()
        .is_some_and(|r| !v.snap.uploads.contains_key(&r.multipart_id));
    let mut fresh = Vec::new();
    {
        let mut log = lock(&w.log);
        log.claims.retain(|k, _| now.contains_key(k));
        for (k, etag) in &now {
            match log.claims.get(k) {
                Some((_, seen)) if seen != etag => {
                    drop(log);
                    w.violation(format!("I1: the claim {k} was replaced"));
                    log = lock(&w.log);
                    log.claims.insert(k.clone(), (seq, etag.clone()));
                }
                Some(_) => {}
                None => {
                    log.claims.insert(k.clone(), (seq, etag.clone()));
                    let index = k[prefix.len()..].parse::<u64>().unwrap();
                    if v.claim(index)
                        .is_some_and(|c| c.sha256 != sha(w.chunk(index)))
                    {
                        log.other_claimed = true;
                    }
                    log.claims_created.insert(index, seq);
                    if joined_or_aborted {
                        log.late_claims.insert(index);
                    } else {
                        log.late_claims.remove(&index);
                    }
                    fresh.push(index);
                }
            }
        }
    }
    for index in fresh {
        midstate_matches(w, v, index);
    }
}

/// A new claim's midstate is the SHA-256 state of the claimed bytes of every chunk up to
/// and including it.
fn midstate_matches(w: &World, v: &View, index: u64) {
    let Some(claim) = v.claim(index) else { return };
    let Some(whole) = claim.whole else { return };
    let mut hasher = Sha256::new();
    for i in 0..=index {
        match v.claimed_bytes(i) {
            Ok((_, bytes)) => hasher.update(&bytes),
            // Not all there (being discarded, or a part replaced): checked elsewhere.
            Err(_) => return,
        }
    }
    let end = w.range(index).end as u64;
    let expected = PrefixHash {
        hashed_bytes: end,
        hasher,
    }
    .save();
    if whole.hashed_bytes != end || whole.state != expected.state {
        let what =
            format!("the midstate in chunk {index}'s claim is not the hash of the claimed bytes");
        let gone = v
            .record
            .as_ref()
            .is_some_and(|r| !v.snap.uploads.contains_key(&r.multipart_id));
        if gone && v.state() != Some(StoredState::Uploading) {
            w.outcome(format!(
                "GAP: a chunk acknowledged after its upload was {}",
                v.state().map_or("gone", |s| s.name())
            ));
            lock(&w.log).gaps.push(what);
        } else if lock(&w.log).lease_aged {
            w.outcome(OUTLIVED_LEASE);
            lock(&w.log).gaps.push(what);
        } else {
            w.violation(what);
        }
    }
}

/// I1 at this instant: every acknowledged chunk is durable while the upload is open.
pub fn acks_durable(w: &World, v: &View, when: &str) {
    if v.discarded() {
        return;
    }
    let acks = lock(&w.log).acks.clone();
    let mut seen = BTreeMap::new();
    for a in acks.into_iter().filter(|a| !a.late) {
        if seen.insert(a.index, a.sha256).is_some() {
            continue;
        }
        if let Err(why) = v.durable(a.index, a.sha256) {
            if why.contains("was replaced after its claim") {
                w.outcome(REPLACED);
                let mut log = lock(&w.log);
                log.replaced_part = true;
                log.gaps.push(format!("I1 {when}: {why}"));
            } else {
                w.violation(format!("I1 {when}: acknowledged chunk {}: {why}", a.index));
            }
        }
    }
}

/// Notes a claimed part that a conflicting writer replaced (see [`REPLACED`]), whether or
/// not the claim's write was acknowledged before its server died.
pub fn replaced_parts(w: &World, v: &View) {
    if v.discarded() {
        return;
    }
    for index in 0..w.chunk_count() {
        if let Err(why) = v.claimed_bytes(index) {
            if why.contains("was replaced after its claim") {
                w.outcome(REPLACED);
                let mut log = lock(&w.log);
                log.replaced_part = true;
                log.gaps.push(format!("chunk {index}: {why}"));
            }
        }
    }
}

/// I1 for in-order uploads: the bytes an append was acknowledged for are stored where it
/// put them (unless the upload was discarded since).
pub fn appended(w: &World, offset: u64, bytes: &[u8]) {
    let v = View::now(w);
    if v.discarded() {
        return;
    }
    let stored = v.stream_bytes();
    let range = offset as usize..offset as usize + bytes.len();
    if stored.get(range.clone()) != Some(bytes) {
        let what = format!(
            "I1: an append acknowledged for bytes {range:?}, the upload holds {:?} there",
            String::from_utf8_lossy(stored.get(range.clone()).unwrap_or_default())
        );
        let gone = v
            .record
            .as_ref()
            .is_some_and(|r| !v.snap.uploads.contains_key(&r.multipart_id));
        if gone && v.state() != Some(StoredState::Uploading) {
            w.outcome(format!(
                "GAP: a chunk acknowledged after its upload was {}",
                v.state().map_or("gone", |s| s.name())
            ));
            lock(&w.log).gaps.push(what);
        } else if lock(&w.log).lease_aged {
            w.outcome(OUTLIVED_LEASE);
            lock(&w.log).gaps.push(what);
        } else {
            w.violation(what);
        }
    }
}

/// I4: what a status reports received is durable (unless discarded since).
pub fn status(w: &World, st: &UploadStatus) {
    let v = View::now(w);
    if v.discarded() {
        return;
    }
    let missing: Vec<u64> = common::ranges::iter_ranges(&st.missing).collect();
    if st.state == UploadState::Completed {
        if v.file().is_none() && v.state() != Some(StoredState::Completed) {
            w.violation("I4: status says completed, the record does not");
        }
        return;
    }
    let mut durable_bytes = 0;
    for index in 0..w.chunk_count() {
        if missing.contains(&index) {
            continue;
        }
        match v.claimed_bytes(index) {
            Ok((_, bytes)) => durable_bytes += bytes.len() as u64,
            Err(_) if v.file().is_some() => durable_bytes += w.range(index).len() as u64,
            Err(why) if why.contains("was replaced after its claim") => {
                w.outcome(REPLACED);
                lock(&w.log).replaced_part = true;
                durable_bytes += w.range(index).len() as u64;
            }
            Err(why) => w.violation(format!(
                "I4: status reports chunk {index} received, but {why}"
            )),
        }
    }
    // Appends: the stored part of a chunk not yet whole is in its pieces.
    let pieces: u64 = v
        .snap
        .objects
        .iter()
        .filter(|(k, _)| k.starts_with(&w.chunks_prefix()) && k.contains(".pieces/"))
        .map(|(_, o)| o.bytes.len() as u64)
        .sum();
    if st.received_bytes > durable_bytes + pieces {
        w.violation(format!(
            "I4: status reports {} bytes received, {} are durable",
            st.received_bytes,
            durable_bytes + pieces
        ));
    }
}

/// The checks at the end of a schedule, once every request has ended, dead servers were
/// restarted and a stalled verification taken over.
pub fn end(w: &World) {
    let v = View::now(w);
    let Some(state) = v.state() else {
        w.violation("the record is gone");
        return;
    };
    w.outcome(format!("end: {}", state.name()));
    let log = lock(&w.log);
    let acks = log.acks.clone();
    let expiries = log.expiries.clone();
    let claims_created = log.claims_created.clone();
    let ever_completed = log.ever_completed;
    let completed_events = log.events.get("upload.completed").copied().unwrap_or(0);
    let crashes = log.crashes;
    let other_claimed = log.other_claimed;
    let faults = log.faults;
    drop(log);

    // Two acknowledgements of one chunk never name other bytes; one stored it first.
    let mut by_index: BTreeMap<u64, (Sha256Digest, usize)> = BTreeMap::new();
    for a in acks.iter().filter(|a| a.late) {
        match state {
            StoredState::Completed | StoredState::Failed => w.outcome(format!(
                "GAP: a chunk acknowledged after its upload was {}",
                state.name()
            )),
            _ => w.outcome(format!(
                "a chunk acknowledged after a concurrent {}",
                state.name()
            )),
        }
        if sha(w.chunk(a.index)) != a.sha256 && state == StoredState::Completed {
            w.outcome("GAP: other bytes acknowledged (200) after the upload was completed");
            lock(&w.log).gaps.push(format!(
                "chunk {}: other bytes acknowledged after completion",
                a.index
            ));
        }
    }
    for a in acks.iter().filter(|a| !a.late) {
        let e = by_index.entry(a.index).or_insert((a.sha256, 0));
        if e.0 != a.sha256 {
            w.violation(format!(
                "I1: chunk {} acknowledged with two different contents",
                a.index
            ));
        }
        e.1 += usize::from(a.new);
        // A chunk whose acknowledged part was replaced is set aside and stored again.
        if e.1 > 1 && !lock(&w.log).replaced_part {
            w.violation(format!(
                "I1: two requests both stored chunk {} first",
                a.index
            ));
        }
    }

    match state {
        StoredState::Completing => {
            w.violation("I3: left completing after every request ended and a takeover")
        }
        StoredState::Completed => {
            if v.file().is_none() && lock(&w.log).replaced_part {
                w.outcome("GAP: completed, but a replaced part cannot be joined: no file ever");
            } else if v.file().is_none_or(|f| f != w.file) {
                w.violation("I2: completed, but the file is not the declared file");
            }
            if completed_events == 0 && v.file().is_some() {
                let why = "GAP: completed, but upload.completed was never recorded";
                if crashes + faults > 0 {
                    w.outcome(why);
                } else {
                    w.violation(why);
                }
            }
        }
        StoredState::Failed => {
            let other = other_claimed;
            let reason = v
                .record
                .as_ref()
                .and_then(|r| r.record.failure.clone())
                .unwrap_or_default();
            if reason.contains("not the one acknowledged") {
                w.outcome("GAP: failed: an acknowledged part was replaced");
            } else if !other {
                w.violation(format!("a correct upload failed: {reason}"));
            }
        }
        StoredState::Expired => {
            // E: the expiry that stuck is the last one stored.
            if let Some(&crate::world::Expiry {
                marks,
                second_look,
                faulted,
            }) = expiries.last()
            {
                for a in &acks {
                    let claimed = claims_created.get(&a.index).copied().unwrap_or(0);
                    if a.new && claimed > marks {
                        let what = format!(
                            "E: expired with chunk {} acknowledged, its claim made after the \
                             sweep judged the upload idle",
                            a.index
                        );
                        if second_look.is_some_and(|l| claimed > l) && !faulted {
                            w.outcome(RECORD_REUSE);
                            lock(&w.log).gaps.push(what);
                        } else if second_look.is_some() && !faulted {
                            w.violation(what);
                        } else {
                            w.outcome(UNCHECKED_EXPIRY);
                            lock(&w.log).gaps.push(what);
                        }
                    } else if !a.new && a.seq > marks {
                        w.outcome("GAP: a retry answered 200 during the expiry, then expired");
                    }
                }
            }
        }
        StoredState::Uploading | StoredState::Cancelled => {}
    }
    if ever_completed && !matches!(state, StoredState::Completed | StoredState::Cancelled) {
        w.violation(format!("I3: completed once, now {}", state.name()));
    }
    if !v.discarded() {
        acks_durable(w, &v, "at the end");
    }
    if v.discarded() || (state == StoredState::Completed && v.file().is_some()) {
        leftovers(w, &v, crashes + faults > 0);
    }
}

/// C: a tombstone (or a published upload) leaves nothing of the upload in the bucket but
/// its record (and its file).
fn leftovers(w: &World, v: &View, faults: bool) {
    let late = lock(&w.log).late_objects.clone();
    let mut left: Vec<String> = v
        .snap
        .objects
        .keys()
        .filter(|k| k.starts_with(&format!("uploads/{}/", w.id)) && **k != w.record_key())
        .filter(|k| !late.contains(*k))
        .cloned()
        .collect();
    if v.state() != Some(StoredState::Completed) && v.file().is_some() {
        left.push(w.file_key());
    }
    left.extend(
        v.snap
            .uploads
            .iter()
            .filter(|(_, u)| u.key == w.file_key())
            .map(|(id, _)| format!("multipart upload {id}")),
    );
    if left.is_empty() {
        return;
    }
    let what = format!("C: left after the upload ended: {left:?}");
    if faults {
        w.outcome("GAP: objects left after an end whose clean-up met a fault");
        lock(&w.log).gaps.push(what);
    } else {
        w.violation(what);
    }
}
