//! The narrow seam between the domain core and where bytes and records live.
//!
//! A backend stores three things per upload: the [`UploadRecord`] (rewritten on state
//! changes), chunk receipts (write-once, one per acknowledged chunk) and the bytes. It
//! knows nothing of hashing rules, states or HTTP; the [`crate::Uploads`] service decides,
//! the backend persists. Every method that returns `Ok` after a write has made it durable
//! unless its doc says otherwise.

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use common::api::ChunkSizeBounds;
use common::{Sha256Digest, UploadId};
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::Result;
use crate::hash::SavedPrefixHash;
use crate::record::UploadRecord;

mod group_sync;
pub mod journal;
pub mod local;
mod local_index;
pub mod s3;

/// A stream of bytes read back from storage.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// What a backend can hold, reported in `GET /v1`.
#[derive(Clone, Copy, Debug)]
pub struct BackendInfo {
    /// `"local"` or `"s3"`.
    pub name: &'static str,
    /// Chunk size bounds the backend accepts, and its preferred default.
    pub chunk_size: ChunkSizeBounds,
    /// Most chunks per upload.
    pub max_chunks: u64,
    /// Several server processes may use this storage at once: the service then keeps no
    /// upload state between requests and relies on the backend's conditional writes.
    pub shared: bool,
    /// Stored bytes of an unfinished upload can be read back (local disk), so the
    /// whole-file hash can catch up while the upload goes on; otherwise (S3 multipart
    /// parts) only after [`Backend::assemble`].
    pub reads_before_assembly: bool,
}

/// The acknowledgement of one stored chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChunk {
    /// Chunk index.
    pub index: u64,
    /// Bytes in the chunk.
    pub size: u64,
    /// SHA-256 of the chunk.
    pub sha256: Sha256Digest,
}

/// A durable fact about an upload's bytes, recorded when bytes are acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receipt {
    /// A whole chunk is stored.
    Chunk(StoredChunk),
    /// The first `len` bytes of chunk `index` are stored (in-order appends, e.g. tus).
    Partial {
        /// Chunk index.
        index: u64,
        /// Bytes of the chunk stored, from its start.
        len: u64,
    },
}

/// One upload as found in storage.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The record.
    pub record: UploadRecord,
    /// Receipts of every acknowledged chunk, in the order they were made.
    pub receipts: Vec<Receipt>,
    /// Whole-file hash progress, if any was saved.
    pub prefix_hash: Option<SavedPrefixHash>,
    /// Last time bytes or state changed, for idle expiry.
    pub last_activity: OffsetDateTime,
    /// The hash of the partly appended chunk, from its start to `hashed_bytes` (an offset
    /// in the upload), where storage keeps it (S3); otherwise it is read back.
    pub append_cursor: Option<SavedPrefixHash>,
}

/// Where a completed upload's bytes can be read from.
#[derive(Clone, Debug)]
pub enum Content {
    /// A local file, served directly (with ranges) by the HTTP layer.
    File(PathBuf),
    /// An object read through [`Backend::read_range`].
    Object,
}

/// A claimed idempotency key: which upload it created, for which request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyClaim {
    /// The upload created under the key.
    pub id: UploadId,
    /// SHA-256 of the canonical request body.
    pub fingerprint: Sha256Digest,
}

/// What a finished writer hands to [`Backend::commit`]: whatever the backend needs to
/// record the bytes it put in place (on S3, the part numbers and ETags it sent), so that no
/// backend-wide table carries it from one call to the other.
#[derive(Default)]
pub struct Written(pub Option<Box<dyn std::any::Any + Send + Sync>>);

impl Written {
    /// Nothing to hand over (a backend that needs nothing, or a receipt with no writer).
    pub fn nothing() -> Self {
        Self(None)
    }

    /// Hands `value` over.
    pub fn of<T: std::any::Any + Send + Sync>(value: T) -> Self {
        Self(Some(Box::new(value)))
    }

    /// Takes the value back, if it is a `T`.
    pub fn take<T: std::any::Any>(self) -> Option<T> {
        self.0?.downcast::<T>().ok().map(|b| *b)
    }
}

/// How the whole-file hash covers bytes being committed. Storage that cannot read an
/// unfinished upload back (S3, whose parts are joined only once verified) keeps it with
/// them, so that whatever is acknowledged can still be verified after a crash.
#[derive(Clone, Debug, Default)]
pub enum Coverage {
    /// Nothing to keep: storage reads the bytes back when the hash needs them (local disk).
    #[default]
    Readable,
    /// The whole-file hash midstate right after the committed bytes.
    Midstate(SavedPrefixHash),
    /// The committed chunk's bytes, kept readable until the upload completes (they arrived
    /// where the whole-file hash could not reach them in time).
    Spill(Vec<Bytes>),
}

/// Receives one chunk's bytes, in order, and puts them in place.
#[async_trait]
pub trait ChunkWriter: Send {
    /// Stores the next bytes of the chunk (not yet durable).
    async fn write(&mut self, bytes: Bytes) -> Result<()>;
    /// Every byte has been handed to storage; [`Backend::commit`] makes it durable, given
    /// what this returns.
    async fn finish(self: Box<Self>) -> Result<Written>;
    /// Where the bytes written end that storage keeps, when a body that ended early left
    /// some of them unstorable (on S3, a part cut short): those must be sent again.
    /// `None`: every byte written is kept. Asked before [`ChunkWriter::finish`].
    fn kept(&self) -> Option<u64> {
        None
    }
    /// Nothing written will be committed (the request failed): lets go at once of what
    /// the writer holds (on S3, the lease that keeps other writers out).
    async fn abandon(self: Box<Self>) {}
}

/// Storage of upload records, chunk receipts and bytes.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Capabilities of this backend.
    fn info(&self) -> BackendInfo;

    /// Stores a new upload's record and prepares room for its bytes. Fails if the id exists.
    /// Returns the record's stored version.
    async fn create(&self, record: &UploadRecord) -> Result<Option<String>>;

    /// Reads an upload back; `None` when the id is unknown.
    async fn load(&self, id: UploadId) -> Result<Option<Loaded>>;

    /// Reads an upload back for a chunk write, which needs the record and the hash
    /// progress but not every receipt (a chunk write finds out itself whether its own
    /// chunk is stored). On S3 this spares one LIST per chunk, which grows with the
    /// upload's chunks. Receipts may be left out.
    async fn load_for_write(&self, id: UploadId) -> Result<Option<Loaded>> {
        self.load(id).await
    }

    /// Marks that chunk writes leave in storage (on S3, each lease, claim and receipt
    /// object with its ETag). On shared storage no lock keeps another process's chunk
    /// request out of an expiry, so the expiry compares these before and after it stores
    /// "expired": a new mark is a write that began meanwhile. Empty where one process owns
    /// the storage and its own locks order the two.
    async fn write_marks(&self, _id: UploadId) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// When bytes or state of the upload stored as `record` last changed, for idle expiry,
    /// without reading its chunk receipts where storage can tell otherwise.
    async fn last_write(&self, record: &UploadRecord) -> Result<OffsetDateTime> {
        Ok(self
            .load(record.id)
            .await?
            .map_or(record.updated_at, |l| l.last_activity))
    }

    /// Reads only the record, without chunk receipts: cheap, for sweeps and start-up.
    async fn load_record(&self, id: UploadId) -> Result<Option<UploadRecord>>;

    /// Replaces the record (a state change), durably. On a shared backend the write is
    /// conditional on `record.version` (the version it was loaded with) and fails with
    /// [`crate::Error::Conflict`] when another process changed it first. Returns the new
    /// version.
    async fn save_record(&self, record: &UploadRecord) -> Result<Option<String>>;

    /// Opens a writer of the chunk at `offset`, whose SHA-256 the client declared as
    /// `digest` when it did (storage may check the bytes against it). The caller guarantees
    /// one writer per chunk in this process and never rewrites acknowledged bytes.
    async fn writer_at(
        &self,
        record: &UploadRecord,
        offset: u64,
        digest: Option<Sha256Digest>,
    ) -> Result<Box<dyn ChunkWriter>>;

    /// Opens a writer of an in-order append (tus, IETF) at `offset`, of `len` bytes when
    /// the request said. The caller guarantees one appender per upload in this process.
    async fn appender_at(
        &self,
        record: &UploadRecord,
        offset: u64,
        _len: Option<u64>,
    ) -> Result<Box<dyn ChunkWriter>> {
        self.writer_at(record, offset, None).await
    }

    /// Makes written bytes durable and records their receipts, with how the whole-file
    /// hash covers them. After `Ok` they may be acknowledged: they survive a crash. A chunk
    /// receipt is write-once: when another request stored the same chunk first, `Ok` if it
    /// has the same digest, else [`crate::Error::ChunkConflict`]. Returns how many of the
    /// chunk receipts another request (on shared storage, maybe another server) had
    /// stored first with the same bytes, so that exactly one of racing identical writes
    /// reports a new chunk.
    async fn commit(
        &self,
        record: &UploadRecord,
        written: Written,
        receipts: &[Receipt],
        coverage: Coverage,
    ) -> Result<u64>;

    /// The whole-file hash midstate at exactly `offset`, where storage keeps one with the
    /// bytes before it (see [`Coverage`]); `None` where it keeps none there (yet). What this
    /// process already saw or heard of is answered without asking storage.
    async fn midstate_at(
        &self,
        _record: &UploadRecord,
        _offset: u64,
    ) -> Result<Option<SavedPrefixHash>> {
        Ok(None)
    }

    /// Where the servers sharing this storage find each other ([`crate::peers`]); `None`
    /// where storage is not shared.
    fn peer_directory(&self) -> Option<crate::peers::SharedDirectory> {
        None
    }

    /// From now on, tells `to` about every claim this process writes.
    fn announce_to(&self, _to: std::sync::Arc<dyn crate::peers::Announce>) {}

    /// Keeps a claim another server wrote as if it had been read from storage; answers
    /// where the chunk begins and the whole-file midstate after it, when it has one.
    fn learn(&self, _note: &crate::peers::ClaimNote) -> Option<(u64, SavedPrefixHash)> {
        None
    }

    /// `chunks` with the SHA-256 each has in storage where the receipt given could not say
    /// it: on S3 a listing tells which chunks are stored, not their digests (those are in
    /// their claims). Elsewhere the receipts already say, and come back unchanged.
    async fn chunk_digests(
        &self,
        _record: &UploadRecord,
        chunks: Vec<StoredChunk>,
    ) -> Result<Vec<StoredChunk>> {
        Ok(chunks)
    }

    /// Before verification: joins the stored chunks into one readable whole. Nothing to do
    /// on local disk; on S3, checks each part against its receipt and completes the
    /// multipart upload into a staging object. Idempotent. A chunk whose stored bytes turn
    /// out not to be the ones its receipt names is forgotten and reported missing.
    async fn assemble(&self, record: &UploadRecord, chunks: &[StoredChunk]) -> Result<()>;

    /// Reads `len` bytes at `offset` of the upload's bytes (stored chunks only).
    async fn read_range(&self, record: &UploadRecord, offset: u64, len: u64) -> Result<ByteStream>;

    /// Reads the saved whole-file hash progress, with its stored version.
    async fn load_prefix_hash(&self, id: UploadId) -> Result<Option<SavedPrefixHash>>;

    /// Saves whole-file hash progress. Advisory: losing it costs a re-hash, never
    /// correctness, so it need not be durable. On a shared backend it is conditional on
    /// `saved.version` and quietly does nothing when another process saved first.
    async fn save_prefix_hash(&self, id: UploadId, saved: &SavedPrefixHash) -> Result<()>;

    /// Makes verified bytes the upload's content. Called after the record says completed.
    async fn publish(&self, record: &UploadRecord) -> Result<()>;

    /// Where the completed content is.
    async fn content(&self, record: &UploadRecord) -> Result<Content>;

    /// Frees the upload's bytes and receipts, keeping the record (a tombstone).
    async fn discard(&self, id: UploadId) -> Result<()>;

    /// Removes every trace of the upload.
    async fn purge(&self, id: UploadId) -> Result<()>;

    /// Ids of every upload stored, tombstones included.
    async fn list(&self) -> Result<Vec<UploadId>>;

    /// Writes `key` into the listing index (see [`crate::index`] for the keys): an empty
    /// entry; writing an existing one changes nothing. Durable once `Ok` on shared storage;
    /// where one process owns the storage it need not be (start-up writes the entry of
    /// every upload again).
    async fn index_put(&self, key: &str) -> Result<()>;

    /// Up to `limit` index keys under `prefix` (a whole first component of the keys), in
    /// ascending byte order, each greater than `after` when given: one listing.
    async fn index_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>>;

    /// Removes an index entry; an absent one is not an error.
    async fn index_delete(&self, key: &str) -> Result<()>;

    /// Opens the writer of an upload whose bytes all come in one request, before its record
    /// exists: the bytes stay out of sight until [`Backend::commit_whole`], and
    /// [`Backend::purge`] removes them when the request fails. Fails with
    /// [`crate::Error::Conflict`] when the id exists. `None`: this backend has no such
    /// shortcut, and the service creates the upload, stores its one chunk and completes it
    /// as for any other.
    async fn whole_writer(&self, _record: &UploadRecord) -> Result<Option<Box<dyn ChunkWriter>>> {
        Ok(None)
    }

    /// Makes the bytes [`Backend::whole_writer`] wrote durable and stores `record` (which
    /// says completed) with them, in as few durable writes as a crash allows: once `Ok`,
    /// the upload is complete and its content published. Returns the record's version.
    async fn commit_whole(&self, _record: &UploadRecord) -> Result<Option<String>> {
        Err(crate::Error::Corrupt(
            "this backend stores no upload in one write".into(),
        ))
    }

    /// Claims an idempotency key (by its digest) for `claim`. Returns the existing claim
    /// when the key was already taken, or `None` when this call took it.
    async fn claim_idempotency_key(
        &self,
        key: &Sha256Digest,
        claim: &IdempotencyClaim,
    ) -> Result<Option<IdempotencyClaim>>;

    /// Gives up a key this process claimed for `claim` whose create was then refused (a
    /// limit, a full disk), unless the key names another upload by now. Without it a
    /// refused create's key stays claimed and the next request under it is taken for the
    /// retry of a crashed create.
    async fn release_idempotency_key(
        &self,
        _key: &Sha256Digest,
        _claim: &IdempotencyClaim,
    ) -> Result<()> {
        Ok(())
    }

    /// Removes what a crash can leave in storage that no upload names, so that it is not
    /// kept (and paid for) forever: on S3, multipart uploads begun by a create whose
    /// record was never written, or by a publishing copy that stopped, once older than
    /// their grace. Returns how many it removed.
    async fn sweep_leftovers(&self) -> Result<u64> {
        Ok(0)
    }

    /// Checks that storage can be read and written.
    async fn health(&self) -> Result<()>;
}
