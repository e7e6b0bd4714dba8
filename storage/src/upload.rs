//! The in-memory handle of one open upload: its record, which chunks are stored, how far
//! the whole-file hash has got, and the locks that keep concurrent requests apart.
//!
//! Lock order, always: `op` → a chunk's writer slot → `stream` → `chunks` → `prefix`. `op` is shared by
//! chunk writes and exclusive for state changes (complete, cancel, expire), so a state
//! change never interleaves with a chunk being stored.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use common::ranges::{to_ranges, IndexRanges};
use common::{Sha256Digest, UploadId};
use time::OffsetDateTime;
use tokio::sync::RwLock;

use crate::backend::{Loaded, Receipt, StoredChunk};
use crate::error::{Error, Result};
use crate::hash::PrefixHash;
use crate::record::UploadRecord;
use crate::writers::Writers;

/// Which chunks are stored, with their digests, and how much of a partly appended chunk.
pub struct ChunkTable {
    digests: Vec<Option<Sha256Digest>>,
    /// `(index, len)`: the first `len` bytes of chunk `index` are stored (in-order appends).
    partial: Option<(u64, u64)>,
    received_bytes: u64,
    /// Bytes per chunk, to tell a shorter one.
    chunk_size: u64,
    /// `(index, len)`: the stored chunk shorter than the chunk size, which is the last one
    /// (or, while the length is deferred, says it will be).
    short: Option<(u64, u64)>,
}

impl ChunkTable {
    fn new(record: &UploadRecord, receipts: &[Receipt]) -> Self {
        let count = if record.state.is_tombstone() {
            0
        } else {
            record.chunk_count()
        };
        let mut t = Self {
            digests: vec![None; count as usize],
            partial: None,
            received_bytes: 0,
            chunk_size: record.chunk_size,
            short: None,
        };
        for r in receipts {
            match *r {
                Receipt::Chunk(c) => t.set(c.index, c.size, c.sha256),
                Receipt::Partial { index, len } => t.set_partial(index, len),
            }
        }
        t
    }

    /// Records the stored prefix of a chunk being appended to.
    pub fn set_partial(&mut self, index: u64, len: u64) {
        if (index as usize) >= self.digests.len() || self.get(index).is_some() {
            return;
        }
        if let Some((_, old)) = self.partial.take() {
            self.received_bytes -= old;
        }
        self.received_bytes += len;
        self.partial = Some((index, len));
    }

    /// The partly stored chunk, if any: `(index, len)`.
    pub fn partial(&self) -> Option<(u64, u64)> {
        self.partial
    }

    /// Bytes stored contiguously from the start: where the next in-order append goes.
    pub fn contiguous_bytes(&self, record: &UploadRecord) -> u64 {
        let first_missing = self
            .digests
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.digests.len()) as u64;
        if first_missing >= record.chunk_count() {
            return record.size;
        }
        let partial = match self.partial {
            Some((i, len)) if i == first_missing => len,
            _ => 0,
        };
        record.chunk_offset(first_missing) + partial
    }

    /// Digest of chunk `index` if it is stored.
    pub fn get(&self, index: u64) -> Option<Sha256Digest> {
        self.digests.get(index as usize).copied().flatten()
    }

    /// Records a stored chunk.
    pub fn set(&mut self, index: u64, size: u64, digest: Sha256Digest) {
        if let Some(slot) = self.digests.get_mut(index as usize) {
            if slot.replace(digest).is_none() {
                self.received_bytes += size;
                if size < self.chunk_size {
                    self.short = Some((index, size));
                }
                if let Some((i, len)) = self.partial {
                    if i == index {
                        self.received_bytes -= len;
                        self.partial = None;
                    }
                }
            }
        }
    }

    /// The stored chunk shorter than the chunk size, `(index, len)`, if any.
    pub fn short(&self) -> Option<(u64, u64)> {
        self.short
    }

    /// The highest index stored, if any.
    pub fn highest(&self) -> Option<u64> {
        self.digests
            .iter()
            .rposition(Option::is_some)
            .map(|i| i as u64)
    }

    /// Where the stored bytes of chunk `index` end, when it is stored (a chunk stored short
    /// ends before the record's geometry says, while the length is deferred).
    pub fn stored_end(&self, record: &UploadRecord, index: u64) -> Option<u64> {
        self.get(index)?;
        Some(match self.short {
            Some((i, len)) if i == index => record.chunk_offset(index) + len,
            _ => record.chunk_end(index),
        })
    }

    /// The rules for chunk `index` of `len` bytes while the length is deferred: every chunk
    /// is the chunk size but the last, which may be shorter; so a shorter chunk is the last,
    /// only one can be, and none is taken after it. (Completion checks them again against
    /// the length it declares.)
    pub fn check_deferred(&self, index: u64, len: u64) -> Result<()> {
        let short = self.short.filter(|(i, _)| *i != index);
        if len < self.chunk_size {
            if let Some((s, _)) = short {
                return Err(Error::InconsistentLength(format!(
                    "chunk {s} is already shorter than the chunk size of {}, so it is the last; \
                     chunk {index} cannot be shorter too",
                    self.chunk_size
                )));
            }
            if let Some(h) = self.highest().filter(|h| *h > index) {
                return Err(Error::InconsistentLength(format!(
                    "chunk {index} of {len} bytes would be the last, but chunk {h} is stored"
                )));
            }
        } else if let Some((s, _)) = short.filter(|(s, _)| *s < index) {
            return Err(Error::InconsistentLength(format!(
                "chunk {s} is shorter than the chunk size, so it is the last; no chunk after \
                 it is taken"
            )));
        }
        Ok(())
    }

    /// Bytes durably stored.
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes
    }

    /// Indexes not yet stored, as ranges.
    pub fn missing(&self) -> IndexRanges {
        to_ranges(
            self.digests
                .iter()
                .enumerate()
                .filter(|(_, d)| d.is_none())
                .map(|(i, _)| i as u64),
        )
    }

    /// Keeps only the first `count` chunks: an upload whose length, declared late, has
    /// fewer chunks than its ceiling had (none of the dropped ones can be stored yet).
    pub fn truncate(&mut self, count: u64) {
        self.digests.truncate(count as usize);
    }

    /// Forgets every chunk (the bytes were discarded).
    pub fn clear(&mut self) {
        self.digests.clear();
        self.partial = None;
        self.short = None;
        self.received_bytes = 0;
    }
}

/// One upload held in memory while it is in use.
pub struct Upload {
    /// The upload's id.
    pub id: UploadId,
    /// Shared by chunk writes, exclusive for state changes.
    pub op: Arc<RwLock<()>>,
    record: Mutex<UploadRecord>,
    chunks: Mutex<ChunkTable>,
    prefix: Mutex<PrefixHash>,
    /// One writer per chunk (and one appender), with takeover of stalled ones.
    pub writers: Arc<Writers>,
    /// One in-order writer at a time; holds the hash of the partly appended chunk (`None`
    /// when it must be rebuilt from storage, e.g. after a restart).
    pub stream: tokio::sync::Mutex<Option<sha2::Sha256>>,
    /// Serializes whole-file hash catch-up.
    pub hash_runner: tokio::sync::Mutex<()>,
    /// A catch-up pass is wanted / running (see `Uploads::schedule_catch_up`).
    pub hash_wanted: AtomicBool,
    /// A background catch-up task exists.
    pub hash_running: AtomicBool,
    /// Bytes read back from storage to compute the whole-file hash.
    pub read_back: AtomicU64,
    last_activity: Mutex<OffsetDateTime>,
    busy: AtomicUsize,
    /// Stored version of the hash midstate this handle continued from (shared backends).
    prefix_version: Option<String>,
}

impl Upload {
    /// Builds the handle from what storage holds.
    pub fn from_loaded(loaded: Loaded) -> Self {
        let chunks = ChunkTable::new(&loaded.record, &loaded.receipts);
        let prefix_version = loaded.prefix_hash.as_ref().and_then(|p| p.version.clone());
        let durable = chunks.received_bytes();
        let prefix = loaded
            .prefix_hash
            .as_ref()
            .and_then(PrefixHash::restore)
            .filter(|p| p.hashed_bytes <= durable)
            .unwrap_or_default();
        let cursor = loaded
            .append_cursor
            .as_ref()
            .filter(|c| c.hashed_bytes == chunks.contiguous_bytes(&loaded.record))
            .and_then(PrefixHash::restore)
            .map(|c| c.hasher);
        Self {
            id: loaded.record.id,
            op: Arc::new(RwLock::new(())),
            record: Mutex::new(loaded.record),
            chunks: Mutex::new(chunks),
            prefix: Mutex::new(prefix),
            writers: Arc::default(),
            stream: tokio::sync::Mutex::new(cursor),
            hash_runner: tokio::sync::Mutex::new(()),
            hash_wanted: AtomicBool::new(false),
            hash_running: AtomicBool::new(false),
            read_back: AtomicU64::new(0),
            last_activity: Mutex::new(loaded.last_activity),
            busy: AtomicUsize::new(0),
            prefix_version,
        }
    }

    /// A copy of the current record.
    pub fn record(&self) -> UploadRecord {
        lock(&self.record).clone()
    }

    /// Replaces the record in memory, once the new one is stored.
    pub fn set_record(&self, record: UploadRecord) {
        *lock(&self.record) = record;
    }

    /// The chunk table.
    pub fn chunks(&self) -> MutexGuard<'_, ChunkTable> {
        lock(&self.chunks)
    }

    /// The whole-file hash progress.
    pub fn prefix(&self) -> MutexGuard<'_, PrefixHash> {
        lock(&self.prefix)
    }

    /// Records a stored chunk and, when the chunk was hashed in flight right at the prefix,
    /// advances the whole-file hash in the same step (so catch-up never re-reads it).
    pub fn commit(&self, chunk: &StoredChunk, advanced: Option<sha2::Sha256>) {
        let mut table = self.chunks();
        table.set(chunk.index, chunk.size, chunk.sha256);
        if let Some(h) = advanced {
            let mut p = self.prefix();
            if p.hashed_bytes == chunk.index * self.record_chunk_size() {
                p.hasher = h;
                p.hashed_bytes += chunk.size;
            }
        }
    }

    fn record_chunk_size(&self) -> u64 {
        lock(&self.record).chunk_size
    }

    /// Stored version of the hash midstate this handle was loaded with.
    pub fn prefix_version(&self) -> Option<String> {
        self.prefix_version.clone()
    }

    /// Marks activity now, for idle expiry.
    pub fn touch(&self) {
        *lock(&self.last_activity) = OffsetDateTime::now_utc();
    }

    /// Last activity.
    pub fn last_activity(&self) -> OffsetDateTime {
        *lock(&self.last_activity)
    }

    /// Counts a request in flight until the guard drops; busy uploads never expire.
    pub fn busy_guard(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.touch();
        BusyGuard(self.clone())
    }

    /// Whether a request is in flight.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst) > 0
    }
}

/// See [`Upload::busy_guard`].
pub struct BusyGuard(Arc<Upload>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Locks a std mutex, recovering from poisoning (the guarded data stays consistent: every
/// critical section here is a few assignments that cannot panic halfway).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
