//! `Uploads`: the domain service every protocol calls. It owns the rules (states, lengths,
//! digests, idempotency, expiry) and the locks; backends only persist.
//!
//! One file per operation: [`create`] (new uploads, idempotency keys), [`chunks`] (whole
//! chunks in any order), [`run`] (consecutive chunks in one body), [`append`] (in-order appends of any length), [`stream`] (the
//! rules tus and the IETF draft give appends and creations: offsets, lengths, completion,
//! digests, concatenation), [`complete`] (verification and publication), [`sweep`]
//! (cancel, expiry, purge), [`peers`] (what servers sharing storage tell each other). Every state change goes through [`crate::lifecycle`];
//! storage differences reach the service only through [`registry`] (whether other
//! processes share the storage) and [`crate::whole_hash`] (whether stored bytes can be
//! read back before assembly).

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::{Capabilities, ChunkReceipt, ChunkSizeBounds, UploadState, UploadStatus};
use common::UploadId;
use time::OffsetDateTime;

use crate::backend::{Backend, ByteStream, Content};
use crate::error::{Error, Result};
use crate::events::{EventKind, Events};
use crate::lifecycle::{self, Effect, Step};
use crate::metrics;
use crate::quota::{Ledger, QuotaLimits, Scanned};
use crate::record::{Limits, StoredState, UploadMode, UploadRecord};
use crate::upload::Upload;
use crate::whole_hash::WholeHash;

mod append;
mod chunks;
mod complete;
mod create;
pub mod list;
mod peers;
pub mod registry;
mod run;
pub mod stream;
mod sweep;
mod whole;

use registry::{Purpose, Registry};

/// Most chunks of an upload whose length is deferred, at the largest size allowed.
pub const DEFERRED_CHUNKS: u64 = 4096;

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
    /// Memory for the state of idle open uploads kept between requests (records and chunk
    /// tables); past it the least recently active are read from storage again when used.
    pub idle_upload_memory: u64,
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
            idle_upload_memory: 64 << 20,
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

/// The outcome of a complete.
#[derive(Debug)]
pub enum Completion {
    /// Verified and published.
    Done(UploadStatus),
    /// Verification continues in the background; poll the status.
    Verifying(UploadStatus),
}

impl Completion {
    /// The status, whichever it is.
    pub fn status(self) -> UploadStatus {
        match self {
            Completion::Done(s) | Completion::Verifying(s) => s,
        }
    }
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
    registry: Registry,
    key_locks: create::KeyLocks,
    hash: WholeHash,
    ledger: Ledger,
    events: Events,
    /// Uploads whose verification in this process stopped on an error (the store failed)
    /// and was not taken up again: the next completion request does so at once instead of
    /// waiting for the verification to look abandoned.
    verifications_stopped: std::sync::Mutex<std::collections::HashSet<UploadId>>,
}

impl Uploads {
    /// Starts the service over a backend and resumes verifications a crash interrupted.
    pub async fn open(backend: Arc<dyn Backend>, config: UploadsConfig) -> Result<Arc<Self>> {
        Self::open_with_events(backend, config, Events::default()).await
    }

    /// [`Self::open`] with an events hub: state changes are recorded in its outbox (when it
    /// has one) and announced to its subscribers. Recent changes whose event a crash may
    /// have lost are reconciled into the outbox first. Verifications a crash interrupted
    /// are resumed, and in-order uploads whose every byte was stored before the crash are
    /// completed.
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
        let this = Arc::new(Self {
            hash: WholeHash::new(backend.clone(), config.hash_ahead_memory),
            registry: Registry::new(
                backend.clone(),
                expiry_grace(config.upload_ttl) / 2,
                config.idle_upload_memory,
            ),
            ledger: Ledger::new(config.quota),
            backend,
            config,
            limits,
            key_locks: create::KeyLocks::default(),
            events,
            verifications_stopped: Default::default(),
        });
        let now = OffsetDateTime::now_utc();
        let began = Instant::now();
        let mut open = Vec::new();
        let enter_all = this.enter_in_index_at_start().await?;
        for id in this.backend.list().await? {
            match this.backend.load_record(id).await {
                Ok(Some(r)) => {
                    if enter_all {
                        if let Err(e) = this.backend.index_put(&crate::index::key(&r)).await {
                            tracing::warn!(%id, error = %e, "could not enter the upload in the listing index");
                        }
                    }
                    if let Err(e) = this.events.reconcile(&r, now).await {
                        tracing::warn!(%id, error = %e, "could not reconcile the upload's events");
                    }
                    if r.state.is_open() {
                        let mut bytes = r.reserved_bytes();
                        if r.length_deferred {
                            // What it has stored counts until its length is said.
                            match this.registry.detached(id).await {
                                Ok(Some(up)) => bytes = up.chunks().received_bytes(),
                                Ok(None) => {}
                                Err(e) => {
                                    tracing::warn!(%id, error = %e, "could not count the upload's stored bytes")
                                }
                            }
                        }
                        open.push(Scanned {
                            owner: r.owner.clone(),
                            id,
                            bytes,
                            growing: r.length_deferred,
                        });
                    }
                    if r.state == StoredState::Completing {
                        tracing::info!(%id, "resuming an interrupted verification");
                        let up = this.registry.get(id, Purpose::Whole).await?;
                        this.clone().spawn_verify(up);
                    } else if r.state == StoredState::Uploading
                        && r.mode == UploadMode::Stream
                        && !r.length_deferred
                    {
                        // Looked at, not kept: open uploads are read when next used.
                        if let Some(up) = this.registry.detached(id).await? {
                            if up.chunks().contiguous_bytes(&r) == r.size {
                                this.finish_if_stored(&this.registry.adopt(up));
                            }
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(%id, error = %e, "skipping an unreadable upload"),
            }
        }
        metrics::set_active(open.len() as u64);
        this.ledger.rebuild(open, began);
        if enter_all && this.backend.info().shared {
            this.backend.index_put(crate::index::BACKFILLED).await?;
        }
        Ok(this)
    }

    /// Whether start-up enters every upload in the listing index: always where one process
    /// owns the storage (entries are not made durable one by one there, so a crash may
    /// have lost some); on shared storage, once, for uploads stored before the index
    /// existed.
    async fn enter_in_index_at_start(&self) -> Result<bool> {
        if !self.backend.info().shared {
            return Ok(true);
        }
        let (dir, _) = crate::index::BACKFILLED
            .split_once('/')
            .unwrap_or((crate::index::BACKFILLED, ""));
        let marks = self.backend.index_list(dir, None, 10).await?;
        Ok(!marks.iter().any(|k| k == crate::index::BACKFILLED))
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
            one_request_max: Some(l.chunk_size.max.min(l.max_upload_size)),
        }
    }

    /// The events hub: the outbox of webhook events and announcements of changes.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        Stats {
            bytes_read_back: self.hash.bytes_read_back(),
        }
    }

    /// Checks the storage.
    pub async fn health(&self) -> Result<()> {
        self.registry.settle(self.backend.health().await)
    }

    /// The status document of an upload.
    pub async fn status(&self, id: UploadId) -> Result<UploadStatus> {
        let up = self.get(id).await?;
        self.status_of(&up)
    }

    /// Where an in-order upload stands: the bytes stored contiguously from the start (where
    /// the next append goes), with its record and status. A read: it changes nothing.
    pub async fn position(&self, id: UploadId) -> Result<Position> {
        let up = self.get(id).await?;
        let status = self.status_of(&up)?;
        let record = up.record();
        // A completed upload holds every byte; on shared storage its chunk receipts are
        // not loaded any more (they are gone once its parts are joined).
        let offset = match record.state {
            StoredState::Completed => record.size,
            _ => up.chunks().contiguous_bytes(&record),
        };
        Ok(Position {
            record,
            offset,
            status,
        })
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
        let completed = state == UploadState::Completed;
        Ok(UploadStatus {
            id: r.id,
            state,
            size: r.size,
            chunk_size: r.chunk_size,
            chunk_count: r.chunk_count(),
            received_bytes: if completed { r.size } else { received_bytes },
            missing: if completed { Vec::new() } else { missing },
            sha256: r.sha256.or(r.declared_sha256),
            filename: r.filename,
            metadata: r.metadata,
            created_at: r.created_at,
            expires_at,
            length_deferred: r.length_deferred,
        })
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
        let content = self.registry.settle(self.backend.content(&record).await)?;
        Ok((record, content))
    }

    /// Reads `len` bytes at `offset` of a completed upload's content (for backends whose
    /// content is not a local file).
    pub async fn read_content(
        &self,
        record: &UploadRecord,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream> {
        self.registry
            .settle(self.backend.read_range(record, offset, len).await)
    }

    /// Applies a life-cycle step: the new record is stored (on shared storage conditionally
    /// on the version read, so two processes never both make the same change) and adopted.
    /// Returns the effects left to carry out, and whether the upload was open before.
    async fn step(&self, up: &Upload, step: Step) -> Result<Stepped> {
        let before = up.record();
        let mut t = lifecycle::apply(&before, step, OffsetDateTime::now_utc())?;
        if !t.changed {
            return Ok(Stepped {
                effects: t.effects,
                was_open: before.state.is_open(),
            });
        }
        t.record.version = match self.backend.save_record(&t.record).await {
            // A full disk: a step that frees the upload's bytes frees them first, so that
            // clearing a full disk never needs room.
            Err(Error::StorageFull) if t.effects.contains(&Effect::Discard) => {
                tracing::warn!(id = %up.id, "storage full: freeing the bytes before the record");
                self.backend.discard(up.id).await?;
                up.chunks().clear();
                self.backend.save_record(&t.record).await?
            }
            saved => saved?,
        };
        let record = &t.record;
        if !record.state.is_open() {
            self.ledger.release(record.id);
        } else if !before.state.is_open() {
            // An expiry undone: the upload is open again.
            self.ledger
                .recount(record.owner.as_deref(), record.id, record.reserved_bytes());
        }
        up.set_record(t.record);
        self.events.changed(up.id);
        Ok(Stepped {
            effects: t.effects,
            was_open: before.state.is_open(),
        })
    }

    /// Carries out what a stored step set off, in order (all but [`Effect::Verify`], which
    /// the caller runs inline or in the background).
    async fn carry_out(&self, up: &Upload, stepped: &Stepped) -> Result<()> {
        for effect in &stepped.effects {
            match *effect {
                Effect::Verify => {}
                Effect::Discard => {
                    self.backend.discard(up.id).await?;
                    up.chunks().clear();
                }
                Effect::Publish => self.backend.publish(&up.record()).await?,
                Effect::Emit(kind) => {
                    match kind {
                        EventKind::Completed => metrics::completed(),
                        EventKind::Failed => metrics::failed(),
                        EventKind::Cancelled => metrics::cancelled(stepped.was_open),
                        EventKind::Expired => metrics::expired(),
                        EventKind::Created => metrics::created(),
                    }
                    self.events.emit(kind, &up.record()).await;
                }
            }
        }
        Ok(())
    }

    /// [`Self::step`], then [`Self::carry_out`].
    async fn step_and_carry_out(&self, up: &Upload, step: Step) -> Result<Stepped> {
        let stepped = self.step(up, step).await?;
        self.carry_out(up, &stepped).await?;
        Ok(stepped)
    }

    /// The handle of an upload the caller may see.
    async fn get(&self, id: UploadId) -> Result<Arc<Upload>> {
        self.registry.get(id, Purpose::Whole).await
    }
}

/// See [`Uploads::expiry_grace`].
fn expiry_grace(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// What [`Uploads::step`] left to do.
struct Stepped {
    effects: Vec<Effect>,
    was_open: bool,
}
