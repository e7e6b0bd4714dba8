//! The in-memory handle of one open upload: its record, which chunks are stored, how far
//! the whole-file hash has got, and the locks that keep concurrent requests apart.
//!
//! Lock order, always: `op` → a chunk's writer slot → `stream` → `chunks` → `prefix`. `op` is shared by
//! chunk writes and exclusive for state changes (complete, cancel, expire), so a state
//! change never interleaves with a chunk being stored.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use common::ranges::IndexRanges;
use common::{Sha256Digest, UploadId};
use time::OffsetDateTime;
use tokio::sync::RwLock;

use crate::backend::{Loaded, Receipt, StoredChunk};
use crate::error::{Error, Result};
use crate::hash::PrefixHash;
use crate::record::{Concat, UploadRecord};
use crate::writers::Writers;

/// Which chunks are stored, with their digests, and how much of a partly appended chunk.
///
/// Memory follows what is stored, never what was declared: digests are kept in runs of
/// consecutive chunk indexes (32 bytes a stored chunk, and a few words a run), so an
/// upload that declares 100,000 chunks and stores none costs nothing here.
pub struct ChunkTable {
    /// Chunks the upload has.
    count: u64,
    /// Stored chunks: sorted by start, disjoint, and never adjacent (adjacent runs merge).
    runs: Vec<Run>,
    /// `(index, len)`: the first `len` bytes of chunk `index` are stored (in-order appends).
    partial: Option<(u64, u64)>,
    received_bytes: u64,
    /// Bytes per chunk, to tell a shorter one.
    chunk_size: u64,
    /// `(index, len)`: the stored chunk shorter than the chunk size, which is the last one
    /// (or, while the length is deferred, says it will be).
    short: Option<(u64, u64)>,
}

/// Consecutive stored chunks from `start`, with their digests in order.
struct Run {
    start: u64,
    digests: VecDeque<Sha256Digest>,
}

impl Run {
    fn end(&self) -> u64 {
        self.start + self.digests.len() as u64
    }
}

impl ChunkTable {
    fn new(record: &UploadRecord, receipts: &[Receipt]) -> Self {
        let count = if record.state.is_tombstone() {
            0
        } else {
            record.chunk_count()
        };
        let mut t = Self {
            count,
            runs: Vec::new(),
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

    /// The position of the run holding `index`, or where a run starting at it would go.
    fn find(&self, index: u64) -> Result<usize, usize> {
        let after = self.runs.partition_point(|r| r.start <= index);
        match after.checked_sub(1) {
            Some(at) if self.runs[at].end() > index => Ok(at),
            _ => Err(after),
        }
    }

    /// Records the stored prefix of a chunk being appended to.
    pub fn set_partial(&mut self, index: u64, len: u64) {
        if index >= self.count || self.get(index).is_some() {
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
        let first_missing = match self.runs.first() {
            Some(r) if r.start == 0 => r.end(),
            _ => 0,
        };
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
        let at = self.find(index).ok()?;
        let run = &self.runs[at];
        run.digests.get((index - run.start) as usize).copied()
    }

    /// Records a stored chunk.
    pub fn set(&mut self, index: u64, size: u64, digest: Sha256Digest) {
        if index >= self.count {
            return;
        }
        let at = match self.find(index) {
            Ok(at) => {
                let run = &mut self.runs[at];
                run.digests[(index - run.start) as usize] = digest;
                return;
            }
            Err(at) => at,
        };
        let joins_left = at > 0 && self.runs[at - 1].end() == index;
        let joins_right = self.runs.get(at).is_some_and(|r| r.start == index + 1);
        match (joins_left, joins_right) {
            (true, true) => {
                self.runs[at - 1].digests.push_back(digest);
                let right = self.runs.remove(at);
                let left = &mut self.runs[at - 1];
                // The shorter run moves into the longer one: merging stays cheap whatever
                // the order chunks arrive in.
                if left.digests.len() >= right.digests.len() {
                    left.digests.extend(right.digests);
                } else {
                    let mut right = right;
                    for d in left.digests.drain(..).rev() {
                        right.digests.push_front(d);
                    }
                    right.start = left.start;
                    *left = right;
                }
            }
            (true, false) => self.runs[at - 1].digests.push_back(digest),
            (false, true) => {
                let run = &mut self.runs[at];
                run.digests.push_front(digest);
                run.start = index;
            }
            (false, false) => self.runs.insert(
                at,
                Run {
                    start: index,
                    digests: VecDeque::from([digest]),
                },
            ),
        }
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

    /// The stored chunk shorter than the chunk size, `(index, len)`, if any.
    pub fn short(&self) -> Option<(u64, u64)> {
        self.short
    }

    /// The highest index stored, if any.
    pub fn highest(&self) -> Option<u64> {
        self.runs.last().map(|r| r.end() - 1)
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
        let mut out = IndexRanges::new();
        let mut next = 0;
        for r in &self.runs {
            if r.start > next {
                out.push([next, r.start - 1]);
            }
            next = r.end();
        }
        if next < self.count {
            out.push([next, self.count - 1]);
        }
        out
    }

    /// Keeps only the first `count` chunks: an upload whose length, declared late, has
    /// fewer chunks than its ceiling had (none of the dropped ones can be stored yet).
    pub fn truncate(&mut self, count: u64) {
        self.count = self.count.min(count);
        self.runs.retain(|r| r.start < count);
        if let Some(last) = self.runs.last_mut() {
            last.digests.truncate((count - last.start) as usize);
        }
    }

    /// Forgets every chunk (the bytes were discarded).
    pub fn clear(&mut self) {
        self.count = 0;
        self.runs = Vec::new();
        self.partial = None;
        self.short = None;
        self.received_bytes = 0;
    }

    /// Heap memory held, roughly.
    pub fn heap_bytes(&self) -> usize {
        self.runs.capacity() * std::mem::size_of::<Run>()
            + self
                .runs
                .iter()
                .map(|r| r.digests.capacity() * std::mem::size_of::<Sha256Digest>())
                .sum::<usize>()
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

    /// Memory this handle holds, roughly: what keeping it in memory while idle costs.
    pub fn approx_bytes(&self) -> usize {
        let record = {
            let r = lock(&self.record);
            let text = |s: &String| s.len() + std::mem::size_of::<String>();
            r.filename.as_ref().map_or(0, text)
                + r.metadata
                    .iter()
                    .map(|(k, v)| text(k) + text(v) + 16)
                    .sum::<usize>()
                + match &r.concat {
                    Some(Concat::Final { parts, urls }) => {
                        parts.len() * std::mem::size_of::<UploadId>()
                            + urls.iter().map(text).sum::<usize>()
                    }
                    _ => 0,
                }
        };
        // The handle itself with its locks, hashers and writer table.
        const HANDLE: usize = 1024;
        HANDLE + record + self.chunks().heap_bytes()
    }

    /// Whether dropping this handle while nobody uses it is safe and costs nothing: the
    /// upload is uploading, and not an in-order upload whose bytes are all stored (it is
    /// about to be completed).
    pub fn idle_droppable(&self) -> bool {
        let r = lock(&self.record);
        if r.state != crate::record::StoredState::Uploading {
            return false;
        }
        let all_stored = r.mode == crate::record::UploadMode::Stream
            && !r.length_deferred
            && self.chunks().contiguous_bytes(&r) == r.size;
        !all_stored
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
/// critical section of this crate under a std mutex is a few assignments that cannot panic
/// halfway). The one such helper of the crate.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::record::{StoredState, UploadMode};

    fn record(size: u64, chunk_size: u64) -> UploadRecord {
        UploadRecord {
            id: UploadId::new_random(),
            size,
            chunk_size,
            mode: UploadMode::Chunks,
            declared_sha256: None,
            sha256: None,
            filename: None,
            metadata: Default::default(),
            state: StoredState::Uploading,
            failure: None,
            concat: None,
            length_deferred: false,
            owner: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
            version: None,
        }
    }

    fn digest(i: u64) -> Sha256Digest {
        let mut d = [0u8; 32];
        d[..8].copy_from_slice(&i.to_le_bytes());
        Sha256Digest(d)
    }

    /// An upload that declares 100,000 chunks and stores none holds no chunk memory; one
    /// that stores them in order holds one run.
    #[test]
    fn memory_follows_stored_chunks_not_declared_ones() {
        let r = record(100_000 * 65536, 65536);
        let mut t = ChunkTable::new(&r, &[]);
        assert_eq!(t.heap_bytes(), 0);
        assert_eq!(t.missing(), vec![[0, 99_999]]);
        for i in 0..1000 {
            t.set(i, 65536, digest(i));
        }
        assert_eq!(t.runs.len(), 1);
        assert!(t.heap_bytes() <= 2 * 1000 * 32 + 64, "{}", t.heap_bytes());
    }

    proptest! {
        /// Whatever order chunks (and partial appends) arrive in, the table answers as a
        /// plain map of index to digest would.
        #[test]
        fn the_table_answers_as_a_map_would(
            count in 1u64..64,
            ops in prop::collection::vec((0u64..70, any::<bool>(), 1u64..10), 0..200),
            cut in prop::option::of(0u64..64),
        ) {
            let cs = 10;
            let r = record(count * cs, cs);
            let mut t = ChunkTable::new(&r, &[]);
            let mut model: BTreeMap<u64, Sha256Digest> = BTreeMap::new();
            let mut partial: Option<(u64, u64)> = None;
            for (index, whole, len) in ops {
                if whole {
                    t.set(index, cs, digest(index));
                    if index < count {
                        model.insert(index, digest(index));
                        if partial.is_some_and(|(i, _)| i == index) {
                            partial = None;
                        }
                    }
                } else {
                    t.set_partial(index, len);
                    if index < count && !model.contains_key(&index) {
                        partial = Some((index, len));
                    }
                }
            }
            let mut count = count;
            if let Some(c) = cut {
                t.truncate(c);
                count = count.min(c);
                model.retain(|i, _| *i < c);
            }
            for i in 0..70 {
                prop_assert_eq!(t.get(i), model.get(&i).copied(), "chunk {}", i);
            }
            let missing: Vec<u64> = (0..count).filter(|i| !model.contains_key(i)).collect();
            prop_assert_eq!(t.missing(), common::ranges::to_ranges(missing));
            prop_assert_eq!(t.partial(), partial);
            if cut.is_none() {
                let stored = model.len() as u64 * cs + partial.map_or(0, |p| p.1);
                prop_assert_eq!(t.received_bytes(), stored);
            }
            for w in t.runs.windows(2) {
                prop_assert!(w[0].end() < w[1].start, "runs are disjoint and apart");
            }
        }
    }
}
