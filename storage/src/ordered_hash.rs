//! Whole-file hashing on storage that cannot read an unfinished upload back (S3, whose
//! parts are joined only once the file is verified): every chunk must be hashed in file
//! order as it passes, or kept readable (spilled) until completion.
//!
//! This process keeps, per upload, how far the whole-file hash has got here. A chunk that
//! arrives right at that point is hashed as it streams. One that arrives ahead keeps its
//! bytes (once, in memory, within a bound) until the hash reaches it: through the chunks
//! before it, streaming here now, or through the midstate storage keeps with a chunk
//! another server acknowledged (told by that server, [`OrderedHashing::told`], or read,
//! [`Backend::midstate_at`]). Only then is it acknowledged,
//! with the midstate after it; if its turn does not come in time, its bytes are spilled.
//! So an upload sent in order over several connections needs neither a read-back nor a
//! spill, and nothing acknowledged depends on this process's memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use common::UploadId;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::hash::PrefixHash;
use crate::record::UploadRecord;
use crate::upload::lock;

/// How long a kept chunk waits for the hash to reach it before it is spilled.
const WAIT_FOR_TURN: Duration = Duration::from_secs(20);
/// A kept chunk stops waiting sooner when the hash has not moved here for this long and no
/// chunk streams at it here: nothing in sight brings its turn (a client sending chunks out
/// of order one at a time waits for each answer). Another server's chunk ahead of it is
/// seen only once stored, so this is also how long that one may take.
const QUIET: Duration = Duration::from_secs(2);
/// How often a kept chunk asks storage whether another server got the hash to it: the
/// chain of chunks spread over several servers moves one link per answer, so this bounds
/// their throughput (200 ms: a quarter of one server's on Ceph; 50 ms: about as fast).
const POLL: Duration = Duration::from_millis(50);
/// How long, at least, the chain takes to pass one chunk held by another server (a read of
/// a claim, a hash, a claim written: about 50 ms on Ceph): a chunk whose turn is several
/// chunks away asks storage no sooner than that many links.
const HOP: Duration = Duration::from_millis(40);
/// How often a kept chunk asks storage while other servers tell this one of their claims
/// ([`crate::peers`]): the turn normally comes with a note, and the store is asked only
/// when one went astray.
const POLL_WHILE_TOLD: Duration = Duration::from_millis(500);
/// Notes count as coming for this long after the last one.
const TOLD_LATELY: Duration = Duration::from_secs(5);
/// How long a chunk waits for memory to be kept in before it is refused (retry soon).
const WAIT_FOR_MEMORY: Duration = Duration::from_secs(10);
/// Progress of an upload nobody touched for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// A chunk's bytes kept until the hash reaches them.
pub struct Kept {
    pieces: Vec<Bytes>,
    _permit: OwnedSemaphorePermit,
    _ahead: Ahead,
}

/// A chunk kept ahead of the hash, from its first byte to its acknowledgement: while it
/// is here, a chunk after it waiting for its turn knows the turn comes here, and asks
/// storage nothing (the chunk's body may still be arriving).
struct Ahead(Arc<Progress>, u64);

impl Drop for Ahead {
    fn drop(&mut self) {
        {
            let mut at = lock(&self.0.waiting_at);
            if let Some(i) = at.iter().position(|o| *o == self.1) {
                at.swap_remove(i);
            }
        }
        self.0.changed.notify_waiters();
    }
}

impl Kept {
    /// Keeps one more piece of the chunk (a reference, not a copy).
    pub fn push(&mut self, piece: Bytes) {
        self.pieces.push(piece);
    }

    /// The chunk's bytes.
    pub fn into_pieces(self) -> Vec<Bytes> {
        self.pieces
    }
}

/// One upload's hash progress in this process.
struct Progress {
    hash: Mutex<Option<PrefixHash>>,
    changed: Notify,
    /// Kept chunks of the upload waiting here.
    waiting: AtomicUsize,
    /// Where the chunks kept here begin (see [`Ahead`]).
    waiting_at: Mutex<Vec<u64>>,
    /// Chunks of the upload streaming at the hash here.
    streaming: AtomicUsize,
    touched: Mutex<Instant>,
    /// When another server last told of a claim of the upload.
    told: Mutex<Option<Instant>>,
}

impl Progress {
    fn told_lately(&self) -> bool {
        lock(&self.told).is_some_and(|t| t.elapsed() < TOLD_LATELY)
    }
}

/// A chunk streaming at the hash (see [`OrderedHashing::streaming`]).
pub struct Streaming(Arc<Progress>);

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.streaming.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// See the module documentation.
pub struct OrderedHashing {
    backend: Arc<dyn Backend>,
    memory: Arc<Semaphore>,
    /// MiB of `memory` in all: a chunk larger than that takes all of it.
    capacity: u32,
    uploads: Mutex<HashMap<UploadId, Arc<Progress>>>,
}

impl OrderedHashing {
    /// Keeps at most `max_mib` MiB of chunks at once.
    pub fn new(backend: Arc<dyn Backend>, max_mib: usize) -> Self {
        let capacity = u32::try_from(max_mib.max(1)).unwrap_or(u32::MAX >> 4);
        Self {
            backend,
            memory: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            uploads: Mutex::new(HashMap::new()),
        }
    }

    fn progress(&self, id: UploadId) -> Arc<Progress> {
        let mut all = lock(&self.uploads);
        all.retain(|_, p| Arc::strong_count(p) > 1 || lock(&p.touched).elapsed() < FORGET_AFTER);
        let p = all.entry(id).or_insert_with(|| {
            Arc::new(Progress {
                hash: Mutex::new(None),
                changed: Notify::new(),
                waiting: AtomicUsize::new(0),
                waiting_at: Mutex::new(Vec::new()),
                streaming: AtomicUsize::new(0),
                touched: Mutex::new(Instant::now()),
                told: Mutex::new(None),
            })
        });
        *lock(&p.touched) = Instant::now();
        p.clone()
    }

    /// The hash as it stands here, if this process has hashed any of the upload.
    pub fn current(&self, id: UploadId) -> Option<PrefixHash> {
        lock(&self.progress(id).hash).clone()
    }

    /// The hash of the bytes before `offset`, if it stands exactly there (from the start
    /// of the file when `offset` is 0).
    pub fn at(&self, id: UploadId, offset: u64) -> Option<Sha256> {
        let p = self.progress(id);
        let hash = lock(&p.hash);
        match &*hash {
            Some(h) if h.hashed_bytes == offset => Some(h.hasher.clone()),
            None if offset == 0 => Some(Sha256::new()),
            _ => None,
        }
    }

    /// Says that a chunk streams at the hash of `id` until the answer is dropped.
    pub fn streaming(&self, id: UploadId) -> Streaming {
        let p = self.progress(id);
        p.streaming.fetch_add(1, Ordering::SeqCst);
        Streaming(p)
    }

    /// Room to keep the chunk of `len` bytes at `offset` of `id`; waits a while for
    /// memory, then answers "retry soon".
    pub async fn keep(&self, id: UploadId, offset: u64, len: u64) -> Result<Kept> {
        let mib = u32::try_from(len.div_ceil(1 << 20))
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity);
        let permit =
            tokio::time::timeout(WAIT_FOR_MEMORY, self.memory.clone().acquire_many_owned(mib))
                .await
                .ok()
                .and_then(|p| p.ok())
                .ok_or(Error::Unavailable {
                    retry_after: Duration::from_secs(1),
                })?;
        let p = self.progress(id);
        lock(&p.waiting_at).push(offset);
        Ok(Kept {
            pieces: Vec::new(),
            _permit: permit,
            _ahead: Ahead(p, offset),
        })
    }

    /// The hash now stands at `to` (`hasher`), having been at `from`: what a chunk (or an
    /// append) whose midstate was stored with it moved it to.
    pub fn advanced(&self, id: UploadId, from: u64, to: u64, hasher: Sha256) {
        let p = self.progress(id);
        {
            let mut hash = lock(&p.hash);
            let stands = hash.as_ref().map_or(0, |h| h.hashed_bytes);
            if stands != from && stands >= to {
                return;
            }
            *hash = Some(PrefixHash {
                hashed_bytes: to,
                hasher,
            });
        }
        p.changed.notify_waiters();
    }

    /// Another server stored a chunk at `from` with the midstate `hasher` after it, at
    /// `to`: the hash here moves there when it was behind. Only for uploads this process
    /// works on: the others would have nothing to do with it.
    pub fn told(&self, id: UploadId, from: u64, to: u64, hasher: Sha256) {
        let Some(p) = lock(&self.uploads).get(&id).cloned() else {
            return;
        };
        *lock(&p.told) = Some(Instant::now());
        self.advanced(id, from, to, hasher);
    }

    /// Waits until the hash stands at `offset`, here or in what storage keeps, for at most
    /// [`WAIT_FOR_TURN`]; answers the hash there, or `None` when its turn did not come.
    pub async fn wait_for(&self, record: &UploadRecord, offset: u64) -> Result<Option<Sha256>> {
        let id = record.id;
        let p = self.progress(id);
        p.waiting.fetch_add(1, Ordering::SeqCst);
        let waited = self.wait_inner(record, &p, offset).await;
        p.waiting.fetch_sub(1, Ordering::SeqCst);
        p.changed.notify_waiters();
        waited
    }

    async fn wait_inner(
        &self,
        record: &UploadRecord,
        p: &Progress,
        offset: u64,
    ) -> Result<Option<Sha256>> {
        let deadline = Instant::now() + WAIT_FOR_TURN;
        // Storage is asked only after a first wait, and only while the hash here makes no
        // progress: while it does (the chunks before this one are being sent here, a few
        // at a time), the turn comes with no store request.
        let hashed_here = |p: &Progress| lock(&p.hash).as_ref().map(|h| h.hashed_bytes);
        // The first ask waits for the links between the hash here and this chunk.
        let first_poll = |here: Option<u64>| {
            let gap = (offset - here.unwrap_or(0).min(offset)).div_ceil(record.chunk_size.max(1));
            let links = u32::try_from(gap.saturating_sub(1))
                .unwrap_or(u32::MAX)
                .min(20);
            if p.told_lately() {
                return Instant::now() + POLL_WHILE_TOLD;
            }
            Instant::now() + POLL + HOP * links
        };
        let mut next_poll = first_poll(hashed_here(p));
        let mut seen = hashed_here(p);
        let mut moved = Instant::now();
        loop {
            let changed = p.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(h) = self.at(record.id, offset) {
                return Ok(Some(h));
            }
            if lock(&p.hash)
                .as_ref()
                .is_some_and(|h| h.hashed_bytes > offset)
            {
                // Hashed past this chunk already (another request of the same chunk).
                return Ok(None);
            }
            let here = hashed_here(p);
            // A chunk before this one streaming or waiting here brings the turn here.
            let earlier_here = p.streaming.load(Ordering::SeqCst) > 0
                || lock(&p.waiting_at).iter().any(|o| *o < offset);
            if here != seen || earlier_here {
                seen = here;
                moved = Instant::now();
                next_poll = first_poll(here);
            }
            if Instant::now() >= next_poll {
                if let Some(saved) = self.backend.midstate_at(record, offset).await? {
                    if let Some(h) = PrefixHash::restore(&saved) {
                        let hasher = h.hasher.clone();
                        let mut hash = lock(&p.hash);
                        if hash.as_ref().is_none_or(|cur| cur.hashed_bytes < offset) {
                            *hash = Some(h);
                        }
                        return Ok(Some(hasher));
                    }
                }
                next_poll = Instant::now()
                    + if p.told_lately() {
                        POLL_WHILE_TOLD
                    } else {
                        POLL
                    };
            }
            if Instant::now() >= deadline || moved.elapsed() >= QUIET {
                return Ok(None);
            }
            let _ = tokio::time::timeout(POLL, changed).await;
        }
    }

    /// Hashes a kept chunk's bytes onto `hasher`.
    pub fn hash_kept(hasher: &mut Sha256, kept: &Kept) {
        for piece in &kept.pieces {
            hasher.update(piece);
        }
    }

    /// Waits (at most `limit`) until no kept chunk of `id` waits here, so that a completion
    /// finds as much hashed as possible.
    pub async fn settle(&self, id: UploadId, limit: Duration) {
        let p = self.progress(id);
        let deadline = Instant::now() + limit;
        while p.waiting.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            let changed = p.changed.notified();
            if p.waiting.load(Ordering::SeqCst) == 0 {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), changed).await;
        }
    }
}
