//! The whole-file SHA-256, behind one type whatever the storage: every path by which it
//! advances lives here.
//!
//! - **In flight**: a chunk (or an append) that starts exactly where the hashed prefix
//!   ends continues the hash as its bytes stream in; nothing is read back.
//! - **Ahead, kept** (storage that cannot read an unfinished upload back, S3): a chunk
//!   that arrives ahead of the prefix keeps its bytes, bounded, until the prefix reaches
//!   it (see [`crate::ordered_hash`]).
//! - **Read back**: otherwise the stored bytes right after the prefix are read back, on
//!   local disk in the background while the upload goes on (mostly from the page cache),
//!   and at completion whatever is still missing.
//!
//! The midstate is saved so that a restart, or another server, continues it; losing it
//! only costs a re-read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::UploadId;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::backend::{Backend, Coverage, StoredChunk};
use crate::error::{Error, Result};
use crate::hash::{PrefixHash, SavedPrefixHash};
use crate::metrics;
use crate::ordered_hash::{Kept, OrderedHashing, Streaming};
use crate::record::UploadRecord;
use crate::upload::Upload;

/// How a chunk about to be stored takes part in the whole-file hash.
pub struct ChunkPlan {
    /// The prefix hash to continue in flight, when the chunk sits right at the prefix.
    pub prefix: Option<Sha256>,
    /// The chunk's bytes, kept until the prefix reaches them (storage that cannot read
    /// them back before completion).
    pub kept: Option<Kept>,
    /// Held while the chunk streams at the prefix: chunks kept behind it wait for it.
    pub streaming: Option<Streaming>,
}

impl ChunkPlan {
    /// Keeps a piece of the chunk when the plan says so (a reference, not a copy).
    pub fn keep(&mut self, piece: &Bytes) {
        if let Some(k) = &mut self.kept {
            k.push(piece.clone());
        }
    }
}

/// See the module documentation.
pub struct WholeHash {
    backend: Arc<dyn Backend>,
    /// Stored bytes can be read back before the upload is assembled (local disk).
    readable: bool,
    ordered: Arc<OrderedHashing>,
    read_back: Arc<AtomicU64>,
}

impl WholeHash {
    /// Hashing over `backend`, keeping at most `ahead_memory` bytes of chunks that arrive
    /// ahead of the prefix.
    pub fn new(backend: Arc<dyn Backend>, ahead_memory: u64) -> Self {
        let readable = backend.info().reads_before_assembly;
        let ahead_mib = usize::try_from(ahead_memory >> 20).unwrap_or(usize::MAX);
        Self {
            ordered: Arc::new(OrderedHashing::new(backend.clone(), ahead_mib)),
            backend,
            readable,
            read_back: Arc::default(),
        }
    }

    /// Bytes read back from storage since start.
    pub fn bytes_read_back(&self) -> u64 {
        self.read_back.load(Ordering::Relaxed)
    }

    /// How chunk `index` of `len` bytes will take part, decided before its bytes arrive.
    pub async fn plan_chunk(
        &self,
        up: &Upload,
        record: &UploadRecord,
        index: u64,
        len: u64,
    ) -> Result<ChunkPlan> {
        let offset = record.chunk_offset(index);
        if self.readable {
            let p = up.prefix();
            let prefix = (p.hashed_bytes == offset).then(|| p.hasher.clone());
            return Ok(ChunkPlan {
                prefix,
                kept: None,
                streaming: None,
            });
        }
        match self.ordered.at(record.id, offset) {
            Some(h) => Ok(ChunkPlan {
                prefix: Some(h),
                kept: None,
                streaming: Some(self.ordered.streaming(record.id)),
            }),
            None => Ok(ChunkPlan {
                prefix: None,
                kept: Some(self.ordered.keep(record.id, offset, len).await?),
                streaming: None,
            }),
        }
    }

    /// What the whole-file hash keeps with chunk `chunk` once its bytes are in: nothing
    /// where storage reads them back; elsewhere the midstate after it (hashed in flight,
    /// or once the hash reached its kept bytes), or its bytes to spill when it did not.
    /// Answers the coverage and the hash after the chunk, if there is one.
    pub async fn cover(
        &self,
        record: &UploadRecord,
        chunk: &StoredChunk,
        advanced: Option<Sha256>,
        kept: Option<Kept>,
    ) -> Result<(Coverage, Option<Sha256>)> {
        if self.readable {
            return Ok((Coverage::Readable, advanced));
        }
        let end = record.chunk_offset(chunk.index) + chunk.size;
        let saved = |h: &Sha256| {
            Coverage::Midstate(SavedPrefixHash {
                hashed_bytes: end,
                state: PrefixHash {
                    hashed_bytes: end,
                    hasher: h.clone(),
                }
                .save()
                .state,
                version: None,
            })
        };
        if let Some(h) = advanced {
            return Ok((saved(&h), Some(h)));
        }
        let kept = kept.ok_or_else(|| Error::Corrupt("a chunk neither hashed nor kept".into()))?;
        let offset = record.chunk_offset(chunk.index);
        match self.ordered.wait_for(record, offset).await? {
            Some(mut h) => {
                OrderedHashing::hash_kept(&mut h, &kept);
                Ok((saved(&h), Some(h)))
            }
            None => {
                tracing::info!(id = %record.id, index = chunk.index, "the whole-file hash did not reach a chunk in time: it is spilled");
                metrics::spilled(chunk.size);
                Ok((Coverage::Spill(kept.into_pieces()), None))
            }
        }
    }

    /// After chunk `chunk` was stored (by this request: not a retry answered from an
    /// earlier write), with the hash after it when there is one.
    pub fn chunk_stored(
        &self,
        up: &Arc<Upload>,
        record: &UploadRecord,
        chunk: &StoredChunk,
        after: Option<Sha256>,
    ) {
        if self.readable {
            if after.is_some() {
                metrics::hashed_in_flight(chunk.size);
            }
            up.commit(chunk, after);
            self.schedule_catch_up(up);
            return;
        }
        up.commit(chunk, None);
        if let Some(h) = after {
            metrics::hashed_in_flight(chunk.size);
            let from = record.chunk_offset(chunk.index);
            self.ordered.advanced(record.id, from, from + chunk.size, h);
        }
    }

    /// Another server stored a chunk at `from` with the midstate `after` it (see
    /// [`crate::peers`]): chunks kept here waiting for it go on at once.
    pub fn told(&self, id: UploadId, from: u64, after: &SavedPrefixHash) {
        if self.readable {
            return;
        }
        if let Some(h) = PrefixHash::restore(after) {
            self.ordered.told(id, from, h.hashed_bytes, h.hasher);
        }
    }

    /// Before an in-order append at `start`: whether it can continue the whole-file hash in
    /// flight. Where stored bytes can be read back, the hash first catches up with them
    /// (after a restart); elsewhere (S3) the midstate is stored with the bytes, so it is
    /// always there.
    pub async fn before_append(&self, up: &Upload, start: u64) -> Result<bool> {
        // Where storage keeps a midstate at `start` (S3: with the pieces or the claim the
        // append continues), it is the one to continue: this process's own progress may
        // describe bytes that are not the ones stored there (an append of this process
        // that outlived its lease, beside another appender's).
        if !self.readable && up.prefix().hashed_bytes != start {
            if let Some(h) = self
                .ordered
                .current(up.id)
                .filter(|h| h.hashed_bytes == start)
            {
                *up.prefix() = h;
            }
        }
        if up.prefix().hashed_bytes != start && self.readable {
            self.catch_up(up).await?;
        }
        let in_flight = up.prefix().hashed_bytes == start;
        if !in_flight {
            return Err(Error::Corrupt(
                "whole-file hash is behind the stored bytes".into(),
            ));
        }
        Ok(in_flight)
    }

    /// The coverage an append ending at `end` with the hash `prefix` commits with.
    pub fn append_coverage(&self, end: u64, prefix: &Sha256) -> Coverage {
        if self.readable {
            return Coverage::Readable;
        }
        Coverage::Midstate(
            PrefixHash {
                hashed_bytes: end,
                hasher: prefix.clone(),
            }
            .save(),
        )
    }

    /// After an append from `start` advanced the hash in flight to `prefix` at `end`.
    pub async fn append_stored(&self, up: &Upload, start: u64, end: u64, prefix: Sha256) {
        {
            let mut p = up.prefix();
            p.hashed_bytes = end;
            p.hasher = prefix.clone();
        }
        if self.readable {
            self.save(up).await;
        } else {
            self.ordered.advanced(up.id, start, end, prefix);
        }
    }

    /// Before a completion: chunks acknowledged here may still be continuing the hash.
    pub async fn settle(&self, id: UploadId) {
        if !self.readable {
            self.ordered.settle(id, Duration::from_secs(30)).await;
        }
    }

    /// Whether a completion should wait for [`Self::settle`] first.
    pub fn needs_settling(&self) -> bool {
        !self.readable
    }

    /// The furthest of what `up` was loaded with and what this process hashed.
    pub fn adopt_progress(&self, up: &Upload) {
        if self.readable {
            return;
        }
        if let Some(h) = self.ordered.current(up.id) {
            let mut p = up.prefix();
            if h.hashed_bytes > p.hashed_bytes {
                *p = h;
            }
        }
    }

    /// Saves the midstate; advisory (losing it costs a re-hash).
    async fn save(&self, up: &Upload) {
        let saved = up.prefix().save_as(up.prefix_version());
        if let Err(e) = self.backend.save_prefix_hash(up.id, &saved).await {
            tracing::warn!(id = %up.id, error = %e, "could not save the hash midstate");
        }
    }

    /// Asks for a background pass of [`Self::catch_up`] unless one is already running.
    fn schedule_catch_up(&self, up: &Arc<Upload>) {
        up.hash_wanted.store(true, Ordering::SeqCst);
        if up.hash_running.swap(true, Ordering::SeqCst) {
            return;
        }
        let up = up.clone();
        let backend = self.backend.clone();
        let total = self.read_back.clone();
        tokio::spawn(async move {
            loop {
                up.hash_wanted.store(false, Ordering::SeqCst);
                if let Err(e) = catch_up(&*backend, &up, &total).await {
                    metrics::storage_error(&e);
                    tracing::warn!(id = %up.id, error = %e, "hash catch-up failed; it will be retried");
                }
                up.hash_running.store(false, Ordering::SeqCst);
                if !up.hash_wanted.load(Ordering::SeqCst)
                    || up.hash_running.swap(true, Ordering::SeqCst)
                {
                    break;
                }
            }
        });
    }

    /// Reads back and hashes whatever is stored right after the prefix; returns the bytes
    /// read back.
    pub async fn catch_up(&self, up: &Upload) -> Result<u64> {
        catch_up(&*self.backend, up, &self.read_back).await
    }

    /// The hash, so far, of the stored bytes `from..to` (the start of a partly appended
    /// chunk), read back: the append cursor, rebuilt after a restart.
    pub async fn hash_stored(&self, record: &UploadRecord, from: u64, to: u64) -> Result<Sha256> {
        let mut h = Sha256::new();
        if from == to {
            return Ok(h);
        }
        let mut s = self.backend.read_range(record, from, to - from).await?;
        while let Some(b) = s.next().await {
            h.update(&b?);
        }
        Ok(h)
    }
}

/// Advances the whole-file hash over the stored bytes right after the hashed prefix
/// (whole chunks, and the stored part of a partly appended chunk), reading them back from
/// storage, then saves the midstate. Returns the bytes read back.
async fn catch_up(backend: &dyn Backend, up: &Upload, total: &AtomicU64) -> Result<u64> {
    let _runner = up.hash_runner.lock().await;
    let record = up.record();
    let mut advanced = false;
    let mut read = 0;
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
                _ if t.get(index).is_some() => t
                    .stored_end(&record, index)
                    .unwrap_or(record.chunk_end(index)),
                Some((i, len)) if i == index => record.chunk_offset(index) + len,
                _ => break,
            }
        };
        if to <= from {
            break;
        }
        let started = Instant::now();
        let mut stream = backend.read_range(&record, from, to - from).await?;
        while let Some(b) = stream.next().await {
            hasher.update(&b?);
        }
        metrics::hashed_read_back(to - from, started.elapsed());
        up.read_back.fetch_add(to - from, Ordering::Relaxed);
        total.fetch_add(to - from, Ordering::Relaxed);
        read += to - from;
        let mut p = up.prefix();
        if p.hashed_bytes == from {
            p.hashed_bytes = to;
            p.hasher = hasher;
            advanced = true;
        }
    }
    if advanced {
        // Only a head start for another verifier: this one goes on with the hash it has.
        let saved = up.prefix().save();
        if let Err(e) = backend.save_prefix_hash(up.id, &saved).await {
            tracing::warn!(id = %up.id, error = %e, "could not save the hash midstate");
        }
    }
    Ok(read)
}
