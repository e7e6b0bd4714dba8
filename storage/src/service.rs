//! `Uploads`: the domain service every protocol calls. It owns the rules (states,
//! lengths, digests, idempotency, expiry) and the locks; backends only persist.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::api::{
    Capabilities, ChunkReceipt, ChunkSizeBounds, CreateUpload, UploadState, UploadStatus,
};
use common::{Sha256Digest, UploadId};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::backend::{Backend, Content, IdempotencyClaim, Receipt, StoredChunk};
use crate::breaker::Breaker;
use crate::checksum::BodyChecksum;
use crate::error::{Error, Result};
use crate::events::{EventKind, Events};
use crate::hash::ChunkHasher;
use crate::metrics;
use crate::ordered_hash::OrderedHashing;
use crate::principal;
use crate::quota::{Ledger, QuotaLimits};
use crate::record::{Concat, Limits, StoredState, UploadMode, UploadRecord};
use crate::upload::Upload;

/// Most chunks of an upload whose length is deferred, at the largest size allowed.
pub const DEFERRED_CHUNKS: u64 = 4096;
/// How long a verification may stay silent before another request takes it over.
const STALE_VERIFICATION: Duration = Duration::from_secs(60);

/// Operator settings of the service.
#[derive(Clone, Debug)]
pub struct UploadsConfig {
    /// Largest upload accepted.
    pub max_upload_size: u64,
    /// Idle time after which an unfinished upload expires.
    pub upload_ttl: Duration,
    /// How long a cancelled, expired or failed upload answers "gone" before it is purged.
    pub tombstone_ttl: Duration,
    /// Above this many bytes still to hash, completion answers "verifying" and finishes in
    /// the background.
    pub inline_verify_limit: u64,
    /// A request for a chunk (or an append) that is being written by a request that has
    /// moved no byte this long stops that one and takes its place.
    pub stall_takeover: Duration,
    /// Per-owner limits on open uploads.
    pub quota: QuotaLimits,
    /// Memory for chunks that arrive ahead of the whole-file hash on storage that cannot
    /// read them back before completion (S3), kept to be hashed in their turn instead of
    /// read back at completion (see [`crate::ordered_hash`]).
    pub hash_ahead_memory: u64,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        Self {
            max_upload_size: 1 << 40,
            upload_ttl: Duration::from_secs(24 * 3600),
            tombstone_ttl: Duration::from_secs(7 * 24 * 3600),
            inline_verify_limit: 1 << 30,
            stall_takeover: Duration::from_secs(5),
            quota: QuotaLimits::default(),
            hash_ahead_memory: 64 << 20,
        }
    }
}

/// The outcome of a create.
#[derive(Debug)]
pub struct Created {
    /// The upload's status.
    pub status: UploadStatus,
    /// False when an idempotent retry returned an existing upload.
    pub new: bool,
}

/// The outcome of a chunk PUT.
#[derive(Debug)]
pub struct ChunkStored {
    /// The chunk's receipt.
    pub receipt: ChunkReceipt,
    /// False when the same bytes were already stored (a retry).
    pub new: bool,
}

/// Where an in-order upload stands, read in one go: for tus and IETF `HEAD`.
#[derive(Debug)]
pub struct Position {
    /// The record.
    pub record: UploadRecord,
    /// Bytes stored contiguously from the start: where the next append goes.
    pub offset: u64,
    /// The status document.
    pub status: UploadStatus,
}

/// The outcome of an in-order append.
#[derive(Debug)]
pub struct Appended {
    /// The upload's offset after the append.
    pub offset: u64,
    /// The final status, when this append completed the upload.
    pub completed: Option<UploadStatus>,
}

/// The outcome of a complete.
#[derive(Debug)]
pub enum Completion {
    /// Verified and published.
    Done(UploadStatus),
    /// Verification continues in the background; poll the status.
    Verifying(UploadStatus),
}

/// Counters of the service, for logs, metrics and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Bytes read back from storage to finish whole-file hashes.
    pub bytes_read_back: u64,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Uploads expired.
    pub expired: usize,
    /// Tombstones purged.
    pub purged: usize,
    /// Leftovers no upload names, removed (see [`Backend::sweep_leftovers`]).
    pub leftovers: u64,
}

/// The upload service.
pub struct Uploads {
    backend: Arc<dyn Backend>,
    config: UploadsConfig,
    limits: Limits,
    open: Mutex<HashMap<UploadId, Arc<Upload>>>,
    create_lock: tokio::sync::Mutex<()>,
    read_back: Arc<AtomicU64>,
    breaker: Breaker,
    ordered: Arc<OrderedHashing>,
    ledger: Ledger,
    events: Events,
}

impl Uploads {
    /// Starts the service over a backend and resumes verifications a crash interrupted.
    pub async fn open(backend: Arc<dyn Backend>, config: UploadsConfig) -> Result<Arc<Self>> {
        Self::open_with_events(backend, config, Events::default()).await
    }

    /// [`Self::open`] with an events hub: state changes are recorded in its outbox (when it
    /// has one) and announced to its subscribers. Recent changes whose event a crash may
    /// have lost are reconciled into the outbox first.
    pub async fn open_with_events(
        backend: Arc<dyn Backend>,
        config: UploadsConfig,
        events: Events,
    ) -> Result<Arc<Self>> {
        let info = backend.info();
        let limits = Limits {
            max_upload_size: config.max_upload_size,
            chunk_size: info.chunk_size,
            max_chunks: info.max_chunks,
        };
        let backend_for_hashing = backend.clone();
        let ahead_mib = usize::try_from(config.hash_ahead_memory >> 20).unwrap_or(usize::MAX);
        let ledger = Ledger::new(config.quota);
        let this = Arc::new(Self {
            backend,
            config,
            limits,
            open: Mutex::new(HashMap::new()),
            create_lock: tokio::sync::Mutex::new(()),
            read_back: Default::default(),
            breaker: Breaker::new(Duration::from_secs(2)),
            ordered: Arc::new(OrderedHashing::new(backend_for_hashing, ahead_mib)),
            ledger,
            events,
        });
        let now = OffsetDateTime::now_utc();
        let began = Instant::now();
        let mut open = Vec::new();
        for id in this.backend.list().await? {
            match this.backend.load_record(id).await {
                Ok(Some(r)) => {
                    if let Err(e) = this.events.reconcile(&r, now).await {
                        tracing::warn!(%id, error = %e, "could not reconcile the upload's events");
                    }
                    if r.state.is_open() {
                        open.push((r.owner.clone(), id, r.reserved_bytes()));
                    }
                    if r.state == StoredState::Completing {
                        tracing::info!(%id, "resuming an interrupted verification");
                        let up = this.get(id).await?;
                        this.clone().spawn_verify(up);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(%id, error = %e, "skipping an unreadable upload"),
            }
        }
        metrics::set_active(open.len() as u64);
        this.ledger.rebuild(open, began);
        Ok(this)
    }

    /// What clients may send, for `GET /v1`.
    pub fn capabilities(&self) -> Capabilities {
        let l = &self.limits;
        Capabilities {
            version: "1".into(),
            max_upload_size: l.max_upload_size,
            chunk_size: ChunkSizeBounds {
                min: l.chunk_size.min,
                max: l.chunk_size.max,
                default: l.chunk_size.default,
            },
            max_chunks: l.max_chunks,
            storage: self.backend.info().name.into(),
            checksums: vec!["sha-256".into()],
        }
    }

    /// The events hub: the outbox of webhook events and announcements of changes.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        Stats {
            bytes_read_back: self.read_back.load(Ordering::Relaxed),
        }
    }

    /// Checks the storage.
    pub async fn health(&self) -> Result<()> {
        if self.breaker.is_open() {
            self.breaker.check()?;
        }
        let r = self.backend.health().await;
        self.breaker.record(&r);
        r
    }

    /// Creates an upload. With an idempotency key, a repeat of the same request returns the
    /// upload the first one created, and another request under the same key is refused.
    pub async fn create(
        &self,
        req: CreateUpload,
        idempotency_key: Option<&str>,
    ) -> Result<Created> {
        self.create_with_mode(req, idempotency_key, UploadMode::Chunks)
            .await
    }

    /// Creates an upload whose bytes arrive as chunks or as in-order appends (tus, IETF).
    pub async fn create_with_mode(
        &self,
        req: CreateUpload,
        idempotency_key: Option<&str>,
        mode: UploadMode,
    ) -> Result<Created> {
        self.create_full(req, idempotency_key, mode, None, false)
            .await
    }

    /// Creates an in-order upload whose length is not known yet (tus
    /// creation-defer-length, an IETF upload created without a length): it may grow to
    /// the largest upload allowed, and completes once [`Self::declare_length`] said how
    /// long it is and its bytes are there. `req.size` is ignored. Its chunks are large
    /// (a ceiling of 1 TiB has at most [`DEFERRED_CHUNKS`]), so that its chunk table stays
    /// small while its length is unknown.
    pub async fn create_deferred(&self, mut req: CreateUpload) -> Result<Created> {
        const MIB: u64 = 1 << 20;
        req.size = self.limits.max_upload_size;
        req.chunk_size = Some(
            req.size
                .div_ceil(DEFERRED_CHUNKS)
                .div_ceil(MIB)
                .saturating_mul(MIB)
                .clamp(self.limits.chunk_size.default, self.limits.chunk_size.max),
        );
        self.create_full(req, None, UploadMode::Stream, None, true)
            .await
    }

    /// Declares the length of an upload created without one (tus `Upload-Length` on a
    /// PATCH; IETF `Upload-Length`, or `Upload-Complete: ?1` on an append). A known length
    /// never changes: another one is refused, the same one accepted. An upload whose bytes
    /// are all there is then completed (verified and published), and its status returned.
    pub async fn declare_length(
        self: &Arc<Self>,
        id: UploadId,
        length: u64,
    ) -> Result<Option<UploadStatus>> {
        let up = self.get(id).await?;
        // A known length: nothing to change, so no lock to take (an append may be running).
        if !up.record().length_deferred {
            return up.record().same_length(length).map(|()| None);
        }
        let offset = {
            let _op = up.op.try_write().map_err(|_| Error::Locked)?;
            let record = up.record();
            record.check_writable(UploadMode::Stream)?;
            if !record.length_deferred {
                // Said by another request meanwhile.
                return record.same_length(length).map(|()| None);
            }
            let offset = up.chunks().contiguous_bytes(&record);
            if length < offset {
                return Err(Error::Invalid(format!(
                    "a length of {length} bytes is less than the {offset} bytes already stored"
                )));
            }
            if length > record.size {
                return Err(Error::TooLarge {
                    size: length,
                    max: record.size,
                });
            }
            let record = self
                .transition(&up, |r| {
                    r.size = length;
                    r.length_deferred = false;
                })
                .await?;
            up.chunks().truncate(record.chunk_count());
            self.ledger
                .recount(record.owner.as_deref(), id, record.size);
            tracing::info!(%id, size = length, "upload length declared");
            if offset == length && offset % record.chunk_size != 0 {
                self.close_last_chunk(&up, &record, offset).await?;
            }
            offset
        };
        if offset < length {
            return Ok(None);
        }
        match self.complete(id, None).await? {
            Completion::Done(s) | Completion::Verifying(s) => Ok(Some(s)),
        }
    }

    /// The hash, so far, of the stored bytes `from..to` of a partly appended chunk: the
    /// append cursor, rebuilt after a restart.
    async fn hash_stored(&self, record: &UploadRecord, from: u64, to: u64) -> Result<Sha256> {
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

    /// The partly appended chunk at `end`, now known to be the last one, becomes a whole
    /// chunk with its digest (from the append cursor, or read back after a restart).
    async fn close_last_chunk(&self, up: &Upload, record: &UploadRecord, end: u64) -> Result<()> {
        let index = end / record.chunk_size;
        let from = record.chunk_offset(index);
        let mut cursor = up.stream.lock().await;
        let hasher = match cursor.take() {
            Some(h) => h,
            None => self.hash_stored(record, from, end).await?,
        };
        let chunk = StoredChunk {
            index,
            size: end - from,
            sha256: Sha256Digest(hasher.finalize().into()),
        };
        self.backend
            .commit(record, &[Receipt::Chunk(chunk)])
            .await?;
        up.chunks().set(index, chunk.size, chunk.sha256);
        Ok(())
    }

    async fn create_full(
        &self,
        req: CreateUpload,
        idempotency_key: Option<&str>,
        mode: UploadMode,
        concat: Option<Concat>,
        length_deferred: bool,
    ) -> Result<Created> {
        let chunk_size = self.limits.validate(&req)?;
        let _serial = match idempotency_key {
            Some(_) => Some(self.create_lock.lock().await),
            None => None,
        };
        let now = OffsetDateTime::now_utc();
        let record = UploadRecord {
            id: UploadId::new_random(),
            size: req.size,
            chunk_size,
            mode,
            declared_sha256: req.sha256,
            sha256: None,
            filename: req.filename.clone(),
            metadata: req.metadata.clone().unwrap_or_default(),
            state: StoredState::Uploading,
            failure: None,
            concat,
            length_deferred,
            owner: principal::current().and_then(|p| p.owner().map(str::to_string)),
            created_at: now,
            updated_at: now,
            version: None,
        };
        if let Some(key) = idempotency_key {
            // Keys are per owner: two owners may pick the same key.
            let mut h = Sha256::new();
            h.update(record.owner.as_deref().unwrap_or("").as_bytes());
            h.update([0]);
            h.update(key.as_bytes());
            let key_digest = Sha256Digest(h.finalize().into());
            // The same request written differently (an empty metadata object or none) is
            // the same request.
            let mut canonical = req.clone();
            canonical.metadata = canonical.metadata.filter(|m| !m.is_empty());
            let body = serde_json::to_vec(&canonical).map_err(|e| Error::Corrupt(e.to_string()))?;
            let claim = IdempotencyClaim {
                id: record.id,
                fingerprint: Sha256Digest(Sha256::digest(&body).into()),
            };
            if let Some(existing) = self
                .backend
                .claim_idempotency_key(&key_digest, &claim)
                .await?
            {
                if existing.fingerprint != claim.fingerprint {
                    return Err(Error::IdempotencyConflict);
                }
                match self.status(existing.id).await {
                    Ok(status) => return Ok(Created { status, new: false }),
                    // The claim was written but the upload was not (a crash between the
                    // two): create it now under the claimed id.
                    Err(Error::NotFound) => {
                        // Usually the request that made the claim is creating the upload
                        // right now: give it a moment before concluding it crashed.
                        for _ in 0..20 {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            if let Ok(status) = self.status(existing.id).await {
                                return Ok(Created { status, new: false });
                            }
                        }
                        let record = UploadRecord {
                            id: existing.id,
                            ..record
                        };
                        return match self.insert_new(record).await {
                            Err(Error::Conflict) => Ok(Created {
                                status: self.status(existing.id).await?,
                                new: false,
                            }),
                            other => other,
                        };
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.insert_new(record).await
    }

    async fn insert_new(&self, mut record: UploadRecord) -> Result<Created> {
        self.breaker.check()?;
        self.ledger
            .reserve(record.owner.as_deref(), record.id, record.reserved_bytes())?;
        let created = self.backend.create(&record).await;
        self.breaker.record(&created);
        if created.is_err() {
            self.ledger.release(record.id);
        } else {
            self.ledger.stored(record.id);
        }
        record.version = self.store_failure(created)?;
        let up = Arc::new(Upload::from_loaded(crate::backend::Loaded {
            last_activity: record.updated_at,
            record,
            receipts: Vec::new(),
            prefix_hash: None,
            append_cursor: None,
        }));
        if !self.backend.info().shared {
            self.lock_open().insert(up.id, up.clone());
        }
        tracing::info!(id = %up.id, size = up.record().size, "upload created");
        metrics::created();
        self.events.emit(EventKind::Created, &up.record()).await;
        Ok(Created {
            status: self.status_of(&up)?,
            new: true,
        })
    }

    /// The status document of an upload.
    pub async fn status(&self, id: UploadId) -> Result<UploadStatus> {
        let up = self.get(id).await?;
        self.status_of(&up)
    }

    fn status_of(&self, up: &Upload) -> Result<UploadStatus> {
        let r = up.record();
        let state = r.state.visible()?;
        let (received_bytes, missing) = {
            let t = up.chunks();
            (t.received_bytes(), t.missing())
        };
        let expires_at =
            (state == UploadState::Uploading).then(|| up.last_activity() + self.config.upload_ttl);
        Ok(UploadStatus {
            id: r.id,
            state,
            size: r.size,
            chunk_size: r.chunk_size,
            chunk_count: r.chunk_count(),
            received_bytes: if state == UploadState::Completed {
                r.size
            } else {
                received_bytes
            },
            missing: if state == UploadState::Completed {
                Vec::new()
            } else {
                missing
            },
            sha256: r.sha256.or(r.declared_sha256),
            filename: r.filename,
            metadata: r.metadata,
            created_at: r.created_at,
            expires_at,
            length_deferred: r.length_deferred,
        })
    }

    /// Stores chunk `index` from `body`. `declared_len` is the request's Content-Length when
    /// it had one; `digest` its `Content-Digest`. Answers only once the chunk is durable.
    pub async fn put_chunk<S>(
        &self,
        id: UploadId,
        index: u64,
        declared_len: Option<u64>,
        digest: Option<Sha256Digest>,
        mut body: S,
    ) -> Result<ChunkStored>
    where
        S: Stream<Item = Result<Bytes>> + Send + Unpin,
    {
        let up = self.get_for_write(id).await?;
        let _busy = up.busy_guard();
        let _op = up.op.read().await;
        let record = up.record();
        record.check_writable(UploadMode::Chunks)?;
        let len = record.chunk_len(index)?;
        if let Some(d) = declared_len.filter(|d| *d != len) {
            return Err(Error::Invalid(format!(
                "the body is {d} bytes, but chunk {index} must be exactly {len} bytes"
            )));
        }
        let writer_slot = up.writers.enter(index, self.config.stall_takeover).await;
        let slot = &writer_slot.slot;
        // The next piece of the body, unless a newer request took over.
        macro_rules! next_piece {
            () => {
                tokio::select! {
                    b = body.next() => { slot.progressed(); b }
                    _ = slot.abort.notified() => return Err(Error::Superseded),
                }
            };
        }

        let mut already = up.chunks().get(index);
        let mut writer = None;
        if already.is_none() {
            match self
                .backend
                .writer_at(&record, record.chunk_offset(index))
                .await
            {
                Ok(w) => writer = Some(w),
                Err(Error::StoredMeanwhile { stored, .. }) => already = Some(stored),
                Err(e) => return Err(e),
            }
        }
        if let Some(stored) = already {
            // A retry: read the body to tell "same bytes" from "other bytes", store nothing.
            let mut h = ChunkHasher::new(len, None);
            while let Some(b) = next_piece!() {
                h.update(&b?)?;
            }
            let (actual, _) = h.finish()?;
            check_digest(digest, actual)?;
            if actual != stored {
                return Err(Error::ChunkConflict { index, stored });
            }
            return Ok(ChunkStored {
                receipt: ChunkReceipt {
                    index,
                    size: len,
                    sha256: actual,
                },
                new: false,
            });
        }

        let in_flight_prefix = {
            let p = up.prefix();
            (p.hashed_bytes == record.chunk_offset(index)).then(|| p.hasher.clone())
        };
        // Ahead of the prefix on storage that cannot read it back before completion: keep
        // the bytes to continue the whole-file hash when its turn comes.
        let mut kept = if in_flight_prefix.is_none() && !self.backend.info().reads_before_assembly {
            self.ordered.keep(len)
        } else {
            None
        };
        let mut h = ChunkHasher::new(len, in_flight_prefix);
        let mut writer = writer.ok_or_else(|| Error::Corrupt("no chunk writer".into()))?;
        while let Some(b) = next_piece!() {
            let b = b?;
            h.update(&b)?;
            if let Some(k) = &mut kept {
                k.push(b.clone());
            }
            writer.write(b).await?;
        }
        // Length and digest are checked before the write is finished: a body that is
        // short or wrong is dropped unfinished (on S3 its part request is aborted), so
        // it is refused for what it is and stores nothing.
        let (actual, advanced) = h.finish()?;
        check_digest(digest, actual)?;
        writer.finish().await?;
        let chunk = StoredChunk {
            index,
            size: len,
            sha256: actual,
        };
        let stored_first = self
            .backend
            .commit(&record, &[Receipt::Chunk(chunk)])
            .await?;
        if self.backend.info().shared {
            // Another process may have expired or cancelled the upload while this chunk
            // was sent: a chunk of an ended upload is not acknowledged (see
            // [`Self::expire`]).
            if let Some(now) = self.backend.load_record(id).await? {
                if now.state.is_tombstone() {
                    return Err(Error::Gone(now.state.name()));
                }
            }
        }
        let in_flight = advanced.is_some();
        if stored_first == 0 {
            metrics::received(len);
        }
        if in_flight {
            metrics::hashed_in_flight(len);
        }
        up.commit(&chunk, advanced);
        self.events.changed(id);
        if self.backend.info().reads_before_assembly {
            self.schedule_catch_up(&up);
        } else if in_flight {
            // Another process may continue the hash from here.
            let saved = up.prefix().save_as(up.prefix_version());
            if let Err(e) = self.backend.save_prefix_hash(id, &saved).await {
                tracing::warn!(%id, error = %e, "could not save the hash midstate");
            }
            self.ordered.saved(id);
        }
        if let Some(k) = kept {
            self.ordered
                .continue_later(id, record.chunk_offset(index), k);
        }
        Ok(ChunkStored {
            receipt: ChunkReceipt {
                index,
                size: len,
                sha256: actual,
            },
            new: stored_first == 0,
        })
    }

    /// Where the next in-order append goes: the bytes stored contiguously from the start.
    /// An in-order upload whose every byte is stored but which is not completed (a crash
    /// or a store failure between its last append and the verification) is completed
    /// here: its client sees nothing left to send and would never ask again.
    pub async fn offset(self: &Arc<Self>, id: UploadId) -> Result<Position> {
        let mut up = self.get(id).await?;
        let record = up.record();
        if record.mode == UploadMode::Stream
            && record.state == StoredState::Uploading
            && !record.length_deferred
            && up.chunks().contiguous_bytes(&record) == record.size
        {
            tracing::info!(%id, "completing an upload whose bytes are all stored");
            self.complete(id, None).await?;
            up = self.get(id).await?;
        }
        let status = self.status_of(&up)?;
        let record = up.record();
        let offset = up.chunks().contiguous_bytes(&record);
        Ok(Position {
            record,
            offset,
            status,
        })
    }

    /// Appends `body` at `offset`, which must be the upload's current offset (tus PATCH,
    /// IETF append). One appender at a time: a concurrent one gets [`Error::Locked`]. With
    /// a `checksum`, the append is all or nothing; without, a body cut short keeps what
    /// arrived, as tus expects. The bytes are durable when this returns; the upload is
    /// completed (verified and published) when they reach its size.
    pub async fn append<S>(
        self: &Arc<Self>,
        id: UploadId,
        offset: u64,
        len: Option<u64>,
        checksum: Option<BodyChecksum>,
        mut body: S,
    ) -> Result<Appended>
    where
        S: Stream<Item = Result<Bytes>> + Send + Unpin,
    {
        let up = self.get(id).await?;
        let busy = up.busy_guard();
        let op = up.op.read().await;
        let record = up.record();
        record.check_writable(UploadMode::Stream)?;
        let appender = up
            .writers
            .try_enter(u64::MAX, self.config.stall_takeover)
            .await
            .ok_or(Error::Locked)?;
        let slot = &appender.slot;
        let mut cursor = up.stream.lock().await;
        let start = up.chunks().contiguous_bytes(&record);
        if offset != start {
            return Err(Error::OffsetMismatch {
                expected: start,
                got: offset,
            });
        }
        // After a restart the hashes must first be rebuilt from what is stored. Where the
        // stored bytes cannot be read before assembly (S3) and the saved midstate is behind
        // them (its save failed), the whole-file hash is left to the completion, which
        // reads back what was not hashed in flight; the appends go on meanwhile.
        let readable = self.backend.info().reads_before_assembly;
        if up.prefix().hashed_bytes != start && readable {
            self.catch_up(&up).await?;
        }
        let chunk_start = |pos: u64| pos - pos % record.chunk_size;
        if cursor.is_none() {
            *cursor = Some(self.hash_stored(&record, chunk_start(start), start).await?);
        }
        let (mut prefix, mut chunk, in_flight) = {
            let p = up.prefix();
            let in_flight = p.hashed_bytes == start;
            if !in_flight && readable {
                return Err(Error::Corrupt(
                    "whole-file hash is behind the stored bytes".into(),
                ));
            }
            (
                p.hasher.clone(),
                cursor.clone().unwrap_or_default(),
                in_flight,
            )
        };
        let mut body_hash = checksum.as_ref().map(BodyChecksum::hasher);
        let mut receipts = Vec::new();
        let mut pos = start;
        let mut writer = self.backend.appender_at(&record, start, len).await?;
        let mut cut: Option<Error> = None;
        // Where the hashes stood at the start and at each chunk's end, should storage keep
        // fewer bytes than were written (see `ChunkWriter::kept`).
        let mut marks = vec![(start, prefix.clone(), chunk.clone(), 0)];
        let streamed: Result<()> = async {
            loop {
                let piece = tokio::select! {
                    b = body.next() => b,
                    _ = slot.abort.notified() => Some(Err(Error::Superseded)),
                };
                let Some(piece) = piece else { break };
                slot.progressed();
                let mut piece = match piece {
                    Ok(p) => p,
                    Err(e) => {
                        cut = Some(e);
                        break;
                    }
                };
                if pos + piece.len() as u64 > record.size && record.length_deferred {
                    return Err(Error::TooLarge {
                        size: pos + piece.len() as u64,
                        max: record.size,
                    });
                }
                if pos + piece.len() as u64 > record.size {
                    return Err(Error::Invalid(format!(
                        "the body goes past the upload's length of {} bytes",
                        record.size
                    )));
                }
                if let Some(h) = &mut body_hash {
                    h.update(&piece);
                }
                writer.write(piece.clone()).await?;
                while !piece.is_empty() {
                    let index = pos / record.chunk_size;
                    let room = (record.chunk_end(index) - pos) as usize;
                    let seg = piece.split_to(room.min(piece.len()));
                    chunk.update(&seg);
                    if in_flight {
                        prefix.update(&seg);
                    }
                    pos += seg.len() as u64;
                    if pos == record.chunk_end(index) {
                        let done = std::mem::take(&mut chunk);
                        receipts.push(Receipt::Chunk(StoredChunk {
                            index,
                            size: pos - record.chunk_offset(index),
                            sha256: Sha256Digest(done.finalize().into()),
                        }));
                        marks.push((pos, prefix.clone(), Sha256::new(), receipts.len()));
                    }
                }
            }
            if let (Some(c), Some(h)) = (&checksum, body_hash) {
                // All or nothing: a body cut short cannot be checked.
                if let Some(e) = cut.take() {
                    return Err(e);
                }
                if !c.matches(h) {
                    return Err(Error::BodyChecksumMismatch {
                        algorithm: c.algorithm(),
                    });
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = streamed {
            // Nothing of this append is kept: the writer lets go of what it holds now.
            writer.abandon().await;
            return Err(e);
        }
        let kept = writer.kept();
        writer.finish().await?;
        if let Some(end) = kept.filter(|end| *end < pos) {
            let (at, p, c, n) = marks
                .into_iter()
                .rev()
                .find(|m| m.0 == end)
                .ok_or_else(|| Error::Corrupt(format!("storage kept bytes up to {end}")))?;
            tracing::info!(%id, kept = at, cut = pos, "a body cut short: its last chunk's bytes must come again");
            (pos, prefix, chunk) = (at, p, c);
            receipts.truncate(n);
        }
        if pos > start {
            if pos % record.chunk_size != 0 && pos < record.size {
                receipts.push(Receipt::Partial {
                    index: pos / record.chunk_size,
                    len: pos - chunk_start(pos),
                });
            }
            self.backend.commit(&record, &receipts).await?;
            metrics::received(pos - start);
            if in_flight {
                metrics::hashed_in_flight(pos - start);
            }
            self.events.changed(id);
            {
                let mut t = up.chunks();
                for r in &receipts {
                    match *r {
                        Receipt::Chunk(c) => t.set(c.index, c.size, c.sha256),
                        Receipt::Partial { index, len } => t.set_partial(index, len),
                    }
                }
                if in_flight {
                    let mut p = up.prefix();
                    p.hashed_bytes = pos;
                    p.hasher = prefix;
                }
            }
            *cursor = Some(chunk);
            if in_flight {
                let saved = up.prefix().save_as(up.prefix_version());
                if let Err(e) = self.backend.save_prefix_hash(id, &saved).await {
                    tracing::warn!(%id, error = %e, "could not save the hash midstate");
                }
            }
        }
        if let Some(e) = cut {
            return Err(e);
        }
        drop(cursor);
        drop(appender);
        drop(op);
        drop(busy);
        let completed = if pos == record.size && !record.length_deferred {
            match self.complete(id, None).await? {
                Completion::Done(s) | Completion::Verifying(s) => Some(s),
            }
        } else {
            None
        };
        Ok(Appended {
            offset: pos,
            completed,
        })
    }

    /// Creates a part of a later concatenation (tus `Upload-Concat: partial`): an in-order
    /// upload of its own.
    pub async fn create_partial(&self, req: CreateUpload) -> Result<Created> {
        self.create_full(req, None, UploadMode::Stream, Some(Concat::Partial), false)
            .await
    }

    /// Makes a final upload of completed parts, in order (tus `Upload-Concat: final`): its
    /// bytes are the parts' bytes, hashed and verified like any upload, and it is
    /// completed before this returns. The parts are then removed: their bytes live on in
    /// the final upload.
    pub async fn concatenate(
        self: &Arc<Self>,
        parts: Vec<UploadId>,
        filename: Option<String>,
        metadata: std::collections::BTreeMap<String, String>,
    ) -> Result<UploadStatus> {
        if parts.is_empty() {
            return Err(Error::Invalid(
                "a final upload needs at least one part".into(),
            ));
        }
        let mut records = Vec::with_capacity(parts.len());
        for id in &parts {
            let r = self.get(*id).await?.record();
            if r.concat != Some(Concat::Partial) {
                return Err(Error::Invalid(format!("{id} is not a partial upload")));
            }
            if r.state != StoredState::Completed {
                return Err(Error::Invalid(format!("part {id} is not complete")));
            }
            records.push(r);
        }
        let size = records.iter().map(|r| r.size).sum();
        let req = CreateUpload {
            size,
            filename,
            metadata: Some(metadata),
            ..Default::default()
        };
        let created = self
            .create_full(
                req,
                None,
                UploadMode::Stream,
                Some(Concat::Final {
                    parts: parts.clone(),
                }),
                false,
            )
            .await?;
        let id = created.status.id;
        let mut offset = 0;
        let mut status = created.status;
        if size == 0 {
            let (Completion::Done(s) | Completion::Verifying(s)) = self.complete(id, None).await?;
            status = s;
        }
        for part in &records {
            if part.size == 0 {
                continue;
            }
            let mut bytes = self.backend.read_range(part, 0, part.size).await?;
            let appended = self
                .append(id, offset, Some(part.size), None, &mut bytes)
                .await?;
            offset = appended.offset;
            if let Some(s) = appended.completed {
                status = s;
            }
        }
        for part in &parts {
            if let Err(e) = self.cancel(*part).await {
                tracing::warn!(id = %part, error = %e, "could not remove a concatenated part");
            }
        }
        Ok(status)
    }

    /// Completes an upload: checks that every chunk is stored, finishes the whole-file
    /// SHA-256, compares it with the declared one and publishes the file. Repeating a
    /// successful complete answers the same status.
    pub async fn complete(
        self: &Arc<Self>,
        id: UploadId,
        declared: Option<Sha256Digest>,
    ) -> Result<Completion> {
        let mut up = self.get(id).await?;
        if !self.backend.info().reads_before_assembly
            && up.record().state == StoredState::Uploading
            && up.chunks().missing().is_empty()
        {
            // Chunks acknowledged here may still be continuing the whole-file hash.
            self.ordered.wait_idle(id, Duration::from_secs(30)).await;
            up = self.get(id).await?;
        }
        let _busy = up.busy_guard();
        let op = up.op.clone().write_owned().await;
        let record = up.record();
        let expected = match (record.declared_sha256, declared) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::Invalid(format!(
                    "sha256 {b} differs from the {a} declared at creation"
                )))
            }
            (a, b) => a.or(b),
        };
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
                return Ok(Completion::Done(self.status_of(&up)?));
            }
            StoredState::Completing => {
                // A verification that stopped (its server died, or the store failed) is
                // taken over once it has been silent for a while.
                let stale = OffsetDateTime::now_utc() - record.updated_at > STALE_VERIFICATION;
                if stale && self.transition(&up, |_| {}).await.is_ok() {
                    drop(op);
                    self.clone().spawn_verify(up.clone());
                }
                return Ok(Completion::Verifying(self.status_of(&up)?));
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
        let claimed = self
            .transition(&up, |r| {
                r.declared_sha256 = expected;
                r.state = StoredState::Completing;
            })
            .await;
        let record = match claimed {
            Ok(r) => r,
            // Another server process got there first: answer from what it did.
            Err(Error::Conflict) => {
                drop(op);
                let status = self.status(id).await?;
                return Ok(match status.state {
                    UploadState::Completed => Completion::Done(status),
                    _ => Completion::Verifying(status),
                });
            }
            Err(e) => return Err(e),
        };
        let unhashed = record.size.saturating_sub(up.prefix().hashed_bytes);
        if unhashed > self.config.inline_verify_limit {
            drop(op);
            self.clone().spawn_verify(up.clone());
            return Ok(Completion::Verifying(self.status_of(&up)?));
        }
        self.verify(&up).await?;
        drop(op);
        Ok(Completion::Done(self.status_of(&up)?))
    }

    fn spawn_verify(self: Arc<Self>, up: Arc<Upload>) {
        tokio::spawn(async move {
            let _op = up.op.clone().write_owned().await;
            if up.record().state != StoredState::Completing {
                return;
            }
            if let Err(e) = self.verify(&up).await {
                metrics::storage_error(&e);
                tracing::warn!(id = %up.id, error = %e, "background verification ended");
            }
        });
    }

    /// Finishes the hash and settles the upload as completed or failed. Caller holds `op`.
    async fn verify(&self, up: &Arc<Upload>) -> Result<()> {
        let started = Instant::now();
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
        match self.backend.assemble(&record, &chunks).await {
            Ok(()) => {}
            Err(e @ Error::MissingChunks(_)) => {
                // Acknowledged chunks without their bytes: the client resends them.
                self.transition(up, |r| r.state = StoredState::Uploading)
                    .await?;
                return Err(e);
            }
            Err(Error::Corrupt(why)) => {
                // The store holds other bytes than the acknowledged ones and cannot join
                // them: fail the upload rather than publish anything wrong.
                self.transition(up, |r| {
                    r.state = StoredState::Failed;
                    r.failure = Some(why.clone());
                })
                .await?;
                metrics::failed();
                self.backend.discard(up.id).await?;
                self.events.emit(EventKind::Failed, &up.record()).await;
                tracing::warn!(id = %up.id, reason = %why, "upload failed assembly");
                return Err(Error::Corrupt(why));
            }
            Err(e) => return Err(e),
        }
        let at_completion = self.catch_up(up).await?;
        let actual = up.prefix().digest();
        let expected = up.record().declared_sha256;
        let read_back = up.read_back.load(Ordering::Relaxed);
        if let Some(expected) = expected.filter(|e| *e != actual) {
            self.transition(up, |r| {
                r.state = StoredState::Failed;
                r.sha256 = Some(actual);
                r.failure = Some(format!("SHA-256 {actual} does not match {expected}"));
            })
            .await?;
            metrics::failed();
            self.backend.discard(up.id).await?;
            up.chunks().clear();
            self.events.emit(EventKind::Failed, &up.record()).await;
            tracing::warn!(id = %up.id, %expected, %actual, "upload failed verification");
            return Err(Error::Sha256Mismatch { expected, actual });
        }
        let record = self
            .transition(up, |r| {
                r.state = StoredState::Completed;
                r.sha256 = Some(actual);
            })
            .await?;
        self.backend.publish(&record).await?;
        self.events.emit(EventKind::Completed, &record).await;
        metrics::completed();
        metrics::verified(started.elapsed(), at_completion);
        tracing::info!(
            id = %up.id,
            sha256 = %actual,
            read_back_total = read_back,
            read_back_at_completion = at_completion,
            "upload completed"
        );
        Ok(())
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

    /// Runs a catch-up pass now; returns the bytes it read back.
    async fn catch_up(&self, up: &Arc<Upload>) -> Result<u64> {
        catch_up(&*self.backend, up, &self.read_back).await
    }

    /// Cancels an upload: its bytes are removed and later requests answer "gone".
    pub async fn cancel(&self, id: UploadId) -> Result<()> {
        let up = self.get(id).await?;
        let _op = up.op.write().await;
        let state = up.record().state;
        if state.is_tombstone() {
            return Err(Error::Gone(state.name()));
        }
        self.bury(&up, StoredState::Cancelled).await?;
        metrics::cancelled(state.is_open());
        self.events.emit(EventKind::Cancelled, &up.record()).await;
        tracing::info!(%id, "upload cancelled");
        Ok(())
    }

    /// Expires an idle upload, unless a chunk write began meanwhile. On shared storage
    /// another process's chunk request may have loaded the upload before this sweep
    /// stored "expired": its marks then differ from `marks` (taken before the idle check),
    /// and the expiry is undone before anything is discarded; a request that stores its
    /// chunk later finds "expired" when it checks again and acknowledges nothing (see
    /// [`Self::put_chunk`]). Returns whether the upload expired. Caller holds `op`.
    async fn expire(&self, up: &Upload, marks: &[String]) -> Result<bool> {
        self.transition(up, |r| r.state = StoredState::Expired)
            .await?;
        if self.backend.info().shared {
            let now = self.backend.write_marks(up.id).await?;
            if now.iter().any(|m| !marks.contains(m)) {
                tracing::info!(id = %up.id, "expiry undone: a chunk write began meanwhile");
                self.transition(up, |r| r.state = StoredState::Uploading)
                    .await?;
                return Ok(false);
            }
        }
        self.backend.discard(up.id).await?;
        up.chunks().clear();
        Ok(true)
    }

    /// Turns an upload into a tombstone. Caller holds `op` exclusively.
    async fn bury(&self, up: &Upload, state: StoredState) -> Result<()> {
        self.transition(up, |r| r.state = state).await?;
        self.backend.discard(up.id).await?;
        up.chunks().clear();
        Ok(())
    }

    /// Where the completed file is, with its record.
    pub async fn content(&self, id: UploadId) -> Result<(UploadRecord, Content)> {
        let up = self.get(id).await?;
        let record = up.record();
        match record.state {
            StoredState::Completed => {}
            s if s.is_tombstone() => return Err(Error::Gone(s.name())),
            s => return Err(Error::WrongState(s.name())),
        }
        let content = self.backend.content(&record).await?;
        Ok((record, content))
    }

    /// Reads `len` bytes at `offset` of a completed upload's content (for backends whose
    /// content is not a local file).
    pub async fn read_content(
        &self,
        record: &UploadRecord,
        offset: u64,
        len: u64,
    ) -> Result<crate::backend::ByteStream> {
        self.backend.read_range(record, offset, len).await
    }

    /// Expires idle unfinished uploads and purges old tombstones. Uploads with a request
    /// in flight are never expired.
    pub async fn sweep(&self) -> Result<SweepReport> {
        let now = OffsetDateTime::now_utc();
        let began = Instant::now();
        let mut open = Vec::new();
        let mut report = SweepReport::default();
        for id in self.backend.list().await? {
            let cached = self.lock_open().get(&id).cloned();
            let record = match &cached {
                Some(up) => up.record(),
                None => match self.backend.load_record(id).await {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(%id, error = %e, "sweep skipped an upload");
                        continue;
                    }
                },
            };
            let ended = record.state == StoredState::Failed || record.state.is_tombstone();
            if record.state.is_open() {
                open.push((record.owner.clone(), id, record.reserved_bytes()));
            }
            if record.state == StoredState::Uploading {
                // Before the idle check reads them: what chunk writes have left so far.
                let marks = self.backend.write_marks(id).await?;
                let up = match cached {
                    Some(up) => up,
                    None => self.get(id).await?,
                };
                if up.is_busy() || now - up.last_activity() <= self.config.upload_ttl {
                    continue;
                }
                let Ok(_op) = up.op.try_write() else { continue };
                if up.is_busy() || up.record().state != StoredState::Uploading {
                    continue;
                }
                match self.expire(&up, &marks).await {
                    Ok(true) => {}
                    // Another request changed it (a chunk began, a complete or a cancel).
                    Ok(false) | Err(Error::Conflict) => continue,
                    Err(e) => return Err(e),
                }
                metrics::expired();
                self.events.emit(EventKind::Expired, &up.record()).await;
                tracing::info!(%id, "upload expired");
                report.expired += 1;
            } else if ended && now - record.updated_at > self.config.tombstone_ttl {
                let up = match cached {
                    Some(up) => up,
                    None => self.get(id).await?,
                };
                let Ok(_op) = up.op.try_write() else { continue };
                self.backend.purge(id).await?;
                self.lock_open().remove(&id);
                report.purged += 1;
            }
        }
        match self.backend.sweep_leftovers().await {
            Ok(n) => report.leftovers = n,
            Err(e) => tracing::warn!(error = %e, "sweep of leftovers failed; it will be retried"),
        }
        // Expiries above released their uploads after the scan began, so the rebuild
        // does not count them again.
        self.ledger.rebuild(open, began);
        // Drop handles nobody uses whose upload no longer changes.
        self.lock_open().retain(|_, up| {
            Arc::strong_count(up) > 1
                || matches!(
                    up.record().state,
                    StoredState::Uploading | StoredState::Completing
                )
        });
        Ok(report)
    }

    /// A failing shared store is a passing condition for clients ("retry soon"), not a
    /// server fault.
    fn store_failure<T>(&self, r: Result<T>) -> Result<T> {
        match r {
            Err(Error::Io(e)) if self.backend.info().shared => {
                tracing::warn!(error = %e, "storage request failed");
                Err(Error::Unavailable {
                    retry_after: Duration::from_secs(1),
                })
            }
            other => other,
        }
    }

    /// Stores a changed record, then adopts it. On shared storage the write is conditional
    /// on the version read, so two processes never both make the same change.
    async fn transition(
        &self,
        up: &Upload,
        change: impl FnOnce(&mut UploadRecord),
    ) -> Result<UploadRecord> {
        let mut record = up.record();
        let was_open = record.state.is_open();
        change(&mut record);
        record.updated_at = OffsetDateTime::now_utc();
        record.version = self.backend.save_record(&record).await?;
        if !record.state.is_open() {
            self.ledger.release(record.id);
        } else if !was_open {
            // An expiry undone: the upload is open again.
            self.ledger
                .recount(record.owner.as_deref(), record.id, record.reserved_bytes());
        }
        up.set_record(record.clone());
        self.events.changed(up.id);
        Ok(record)
    }

    /// The handle of an upload, loading it from storage when it is not in memory. A
    /// tombstone is returned as a handle; callers turn it into "gone". On shared storage
    /// every call loads afresh: another process may have changed the upload.
    async fn get(&self, id: UploadId) -> Result<Arc<Upload>> {
        self.get_visible(id, false).await
    }

    /// [`Self::get`] for a chunk write: on shared storage the handle may lack the other
    /// chunks' receipts (see [`Backend::load_for_write`]).
    async fn get_for_write(&self, id: UploadId) -> Result<Arc<Upload>> {
        self.get_visible(id, true).await
    }

    async fn get_visible(&self, id: UploadId, for_write: bool) -> Result<Arc<Upload>> {
        let up = self.get_loaded(id, for_write).await?;
        // Another owner's upload does not exist, as far as this request can tell.
        if !principal::may_see(up.record().owner.as_deref()) {
            return Err(Error::NotFound);
        }
        Ok(up)
    }

    async fn get_loaded(&self, id: UploadId, for_write: bool) -> Result<Arc<Upload>> {
        if let Some(up) = self.lock_open().get(&id) {
            return Ok(up.clone());
        }
        // Every request starts here, and on shared storage it reads the store: the place
        // to notice a failing store and refuse at once while it stays down.
        self.breaker.check()?;
        let shared = self.backend.info().shared;
        let loaded = if shared && for_write {
            self.backend.load_for_write(id).await
        } else {
            self.backend.load(id).await
        };
        self.breaker.record(&loaded);
        let up = Arc::new(Upload::from_loaded(
            self.store_failure(loaded)?.ok_or(Error::NotFound)?,
        ));
        if shared {
            return Ok(up);
        }
        Ok(self.lock_open().entry(id).or_insert(up).clone())
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, HashMap<UploadId, Arc<Upload>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn check_digest(declared: Option<Sha256Digest>, actual: Sha256Digest) -> Result<()> {
    match declared {
        Some(declared) if declared != actual => {
            Err(Error::ChunkDigestMismatch { declared, actual })
        }
        _ => Ok(()),
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
                _ if t.get(index).is_some() => record.chunk_end(index),
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
