//! S3-compatible backend: every byte and every piece of state in one bucket, so that any
//! number of stateless servers share the same uploads with no lock service.
//!
//! # Layout (under the configured prefix)
//! ```text
//! uploads/{id}/record.json        {"record": UploadRecord, "multipart_id": ..}: created
//!                                 If-None-Match: *, replaced If-Match: <etag>
//! uploads/{id}/chunks/{i:05}      the chunk's claim (JSON): its size, SHA-256, part number
//!                                 and ETag, and the whole-file hash midstate after it, or
//!                                 "spilled"; created If-None-Match: * by the first write
//!                                 of the chunk to finish
//! uploads/{id}/chunks/{i:05}.{part}.{etag}.spill  the chunk's bytes, readable until
//!                                 completion (spilled)
//! uploads/{id}/chunks/{i:05}.pieces/{start:012}.{len}.{chunk midstate}.{file midstate}
//!                                 a short in-order append's bytes, held until the chunk is
//!                                 whole (see [`append`])
//! uploads/{id}/chunks/append-lease  which request appends (tus, IETF)
//! files/{id}                      the multipart upload's key: the file appears there only
//!                                 when its parts are joined, after verification
//! idempotency/{sha256(key)}.json  which upload an Idempotency-Key created
//! index/{owner}/{day}/{rank}.{id} the listing index: an empty object per upload (see
//!                                 [`crate::index`])
//! peers/key, peers/members/{hex}  how the servers on the bucket find each other, and the
//!                                 key their notes are signed with (see [`peers`])
//! ```
//!
//! # Words
//! - **part**: chunk `i` of an upload is part `i + 1` of the upload's multipart upload,
//!   which completes to `files/{id}`; every write of the chunk sends that part (a store may
//!   refuse to join parts beside the ones named, Ceph does), with `x-amz-checksum-sha256`
//!   when the client declared the chunk's SHA-256 (the store verifies it).
//! - **claim**: the first write of a chunk to finish creates its claim (`If-None-Match:
//!   *`); a later write with the same bytes is a retry (200), one with other bytes a
//!   conflict (409). The claim is the chunk's receipt: it names the part completion joins.
//! - **midstate**: the whole-file SHA-256's state after a chunk. A chunk is acknowledged
//!   only with the midstate after it in its claim, or its bytes **spilled** (kept readable),
//!   so the file can be verified after any crash although parts cannot be read before they
//!   are joined (see [`crate::ordered_hash`]).
//! - **piece**, **append lease**: how in-order appends of any size become parts (see
//!   [`append`]).
//!
//! # Requests
//! A chunk costs one UploadPart and one claim while it is sent (the record is read at most
//! once every few seconds per server and upload). Completion lists the upload's claims and
//! reads only those this process did not write, read, or hear of from the server that
//! wrote it ([`crate::peers`]; none when one server took every chunk, or when the servers
//! tell each other; each once on a server that heard nothing, or after a restart), then
//! joins the parts into `files/{id}` with no copy. Creation is a CreateMultipartUpload and
//! the record.
//!
//! # Expiry and cancel
//! A chunk request acknowledges without reading the record again when the record it used
//! was read less than a short while ago ([`crate::service::registry::Registry::confirm_open`]);
//! an expiry stores "expired", waits longer than that, and undoes itself when a claim
//! appeared meanwhile. A cancel aborts the multipart upload at once: a part sent after it
//! fails. Either removes the upload's objects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::upload::lock;
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use common::api::ChunkSizeBounds;
use common::{Sha256Digest, UploadId};
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    Backend, BackendInfo, ByteStream, ChunkWriter, Content, Coverage, IdempotencyClaim, Loaded,
    Receipt, StoredChunk, Written,
};
use crate::error::{Error, Result};
use crate::hash::SavedPrefixHash;
use crate::record::{StoredState, UploadMode, UploadRecord};

mod append;
pub mod aws;
mod chunks;
pub mod deadline;
mod lease;
pub mod memory;
pub mod peers;
pub mod store;

use store::{Joined, Put, Store};

const MIB: u64 = 1 << 20;

/// The most parts one multipart upload may have (S3's limit): one per chunk.
const MAX_CHUNKS: u64 = 10_000;

/// Where and how to reach the bucket.
#[derive(Clone, Debug, Default)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket (may be empty).
    pub prefix: String,
    /// Endpoint for non-AWS stores (MinIO, Garage, Ceph, R2...).
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Allow plain http endpoints.
    pub allow_http: bool,
    /// How old a multipart upload that no upload names must be before a sweep aborts it
    /// (`None`: [`LEFTOVER_GRACE`]).
    pub leftover_grace: Option<Duration>,
    /// Request deadlines (`None`: the defaults).
    pub deadlines: Option<deadline::Deadlines>,
}

/// How old, by default, a multipart upload that no upload names must be before a sweep
/// aborts it.
pub const LEFTOVER_GRACE: Duration = Duration::from_secs(24 * 3600);

impl S3Config {
    fn endpoint(&self) -> aws::Endpoint {
        aws::Endpoint {
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            allow_http: self.allow_http,
            deadlines: self.deadlines.unwrap_or_default(),
        }
    }

    /// The bucket as a [`Store`], every request under its deadline.
    pub fn store(&self) -> Result<deadline::Deadlined<aws::AwsStore>> {
        let endpoint = self.endpoint();
        Ok(deadline::Deadlined::new(
            Arc::new(aws::AwsStore::connect(&endpoint)?),
            endpoint.deadlines,
        ))
    }

    /// The bucket as an `object_store` client (for the events outbox); credentials come
    /// from the standard `AWS_*` environment variables.
    pub fn connect(&self) -> Result<object_store::aws::AmazonS3> {
        aws::client(&self.endpoint())
    }
}

/// The record object: the upload record and the multipart upload behind it.
#[derive(Clone, Serialize, Deserialize)]
struct RecordObject {
    record: UploadRecord,
    multipart_id: String,
}

/// A record object as last read by this process, and when.
#[derive(Clone)]
struct Cached {
    object: RecordObject,
    read: Instant,
}

/// How long a record read for a chunk write is reused by later chunk writes here.
const RECORD_REUSE: Duration = Duration::from_secs(2);

/// Stores uploads in an S3-compatible bucket.
pub struct S3Backend {
    store: Arc<dyn Store>,
    prefix: String,
    /// This process's name in leases.
    process: String,
    /// Records read for chunk writes, by upload.
    records: Mutex<HashMap<UploadId, Cached>>,
    /// See [`S3Config::leftover_grace`].
    leftover_grace: Duration,
    /// When multipart uploads were last looked through for leftovers.
    leftovers_swept: Mutex<Option<Instant>>,
    /// When this process first saw each multipart upload in progress, by upload id.
    leftovers_seen: Mutex<HashMap<String, Instant>>,
    /// The parts a verification checked, for its publication, by upload.
    checked: Mutex<HashMap<UploadId, Vec<(u64, String)>>>,
    /// Claims this process wrote or read, by upload: a later write of one of their chunks
    /// is answered without sending its part again, and a completion reads from the store
    /// only the claims it has not seen (see [`chunks`]).
    claimed: Mutex<chunks::SeenClaims>,
    /// Told about every claim written here (see [`crate::peers`]).
    announcer: std::sync::OnceLock<Arc<dyn crate::peers::Announce>>,
}

impl S3Backend {
    /// Connects to the bucket (see [`S3Config::store`]).
    pub fn new(config: &S3Config) -> Result<Self> {
        Ok(Self::over(Arc::new(config.store()?), config))
    }

    /// The backend over any [`Store`] (an in-memory one in tests).
    pub fn over(store: Arc<dyn Store>, config: &S3Config) -> Self {
        Self {
            store,
            prefix: config.prefix.trim_matches('/').to_string(),
            process: UploadId::new_random().to_string(),
            records: Mutex::new(HashMap::new()),
            leftover_grace: config.leftover_grace.unwrap_or(LEFTOVER_GRACE),
            leftovers_swept: Mutex::new(None),
            leftovers_seen: Mutex::new(HashMap::new()),
            checked: Mutex::new(HashMap::new()),
            claimed: Mutex::new(chunks::SeenClaims::default()),
            announcer: std::sync::OnceLock::new(),
        }
    }

    fn key(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    fn record_key(&self, id: UploadId) -> String {
        self.key(&format!("uploads/{id}/record.json"))
    }

    fn file_key(&self, id: UploadId) -> String {
        self.key(&format!("files/{id}"))
    }

    /// Where every object a write of the upload leaves lives (`.../chunks/`).
    fn chunks_prefix(&self, id: UploadId) -> String {
        self.key(&format!("uploads/{id}/chunks/"))
    }

    fn claim_key(&self, id: UploadId, index: u64) -> String {
        format!("{}{index:05}", self.chunks_prefix(id))
    }

    async fn get_record(&self, id: UploadId) -> Result<Option<RecordObject>> {
        let Some(got) = self.store.get(&self.record_key(id)).await? else {
            lock(&self.records).remove(&id);
            return Ok(None);
        };
        let mut obj: RecordObject = serde_json::from_slice(&got.bytes)
            .map_err(|e| Error::Corrupt(format!("record of {id}: {e}")))?;
        obj.record.version = Some(got.etag);
        lock(&self.records).insert(
            id,
            Cached {
                object: obj.clone(),
                read: Instant::now(),
            },
        );
        Ok(Some(obj))
    }

    /// The record object for a chunk write: as read here a moment ago, or read now.
    async fn record_for_write(&self, id: UploadId) -> Result<Option<(RecordObject, Instant)>> {
        if let Some(c) = lock(&self.records)
            .get(&id)
            .filter(|c| c.read.elapsed() < RECORD_REUSE)
        {
            return Ok(Some((c.object.clone(), c.read)));
        }
        let read = Instant::now();
        Ok(self.get_record(id).await?.map(|o| (o, read)))
    }

    /// The multipart upload id of an upload (it never changes).
    async fn multipart_id(&self, id: UploadId) -> Result<String> {
        if let Some(c) = lock(&self.records).get(&id) {
            return Ok(c.object.multipart_id.clone());
        }
        Ok(self
            .get_record(id)
            .await?
            .ok_or(Error::NotFound)?
            .multipart_id)
    }

    /// Writes a record object under `condition`. A write whose answer was lost is sent
    /// again by the store client, and that retry is refused (the version it was
    /// conditioned on is gone: the first write changed it); when the object holds exactly
    /// `body` then, the write took effect.
    async fn put_record(&self, key: &str, body: Vec<u8>, condition: Put) -> Result<String> {
        let body = Bytes::from(body);
        match self.store.put(key, vec![body.clone()], condition).await {
            Err(Error::Conflict) => match self.store.get(key).await? {
                Some(got) if got.bytes == body => Ok(got.etag),
                _ => Err(Error::Conflict),
            },
            written => written,
        }
    }

    /// Removes every object whose key starts with `prefix`.
    async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let listed = self.store.list(prefix).await?;
        if listed.is_empty() {
            return Ok(());
        }
        self.store
            .delete_many(listed.into_iter().map(|o| o.key).collect())
            .await
    }

    /// Whether the multipart upload `multipart_id` at `key` is a leftover that nothing
    /// will finish: begun by a create whose record was never written (or lost a race).
    async fn is_leftover(&self, key: &str, multipart_id: &str) -> Result<bool> {
        let rest = key
            .strip_prefix(&self.key(""))
            .unwrap_or(key)
            .trim_start_matches('/');
        let Some(id) = rest
            .strip_prefix("files/")
            .and_then(|id| id.parse::<UploadId>().ok())
        else {
            return Ok(false);
        };
        Ok(self
            .get_record(id)
            .await?
            .is_none_or(|obj| obj.multipart_id != multipart_id))
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "s3",
            chunk_size: ChunkSizeBounds {
                min: 5 * MIB,
                max: 5 << 30,
                default: 8 * MIB,
            },
            max_chunks: MAX_CHUNKS,
            shared: true,
            reads_before_assembly: false,
        }
    }

    async fn create(&self, record: &UploadRecord) -> Result<Option<String>> {
        let file = self.file_key(record.id);
        let multipart_id = self.store.create_multipart(&file).await?;
        let object = RecordObject {
            record: record.clone(),
            multipart_id: multipart_id.clone(),
        };
        let body = serde_json::to_vec(&object).map_err(|e| Error::Corrupt(e.to_string()))?;
        match self
            .put_record(&self.record_key(record.id), body, Put::Create)
            .await
        {
            Ok(etag) => {
                let mut object = object;
                object.record.version = Some(etag.clone());
                lock(&self.records).insert(
                    record.id,
                    Cached {
                        object,
                        read: Instant::now(),
                    },
                );
                Ok(Some(etag))
            }
            Err(e) => {
                // The record exists already (a racing idempotent create) or could not be
                // written: the multipart upload made for it is not needed.
                if let Err(abort) = self.store.abort_multipart(&file, &multipart_id).await {
                    tracing::debug!(error = %abort, "abort of an unused multipart upload");
                }
                Err(e)
            }
        }
    }

    async fn load(&self, id: UploadId) -> Result<Option<Loaded>> {
        let Some(obj) = self.get_record(id).await? else {
            return Ok(None);
        };
        let record = obj.record;
        let mut last_activity = record.updated_at;
        let mut receipts = Vec::new();
        let mut prefix_hash = None;
        let mut append_cursor = None;
        if record.state == StoredState::Completed {
            // Every chunk of a completed upload is stored (its claims are gone: the parts
            // are joined).
            receipts.extend((0..record.chunk_count()).filter_map(|index| {
                Some(Receipt::Chunk(StoredChunk {
                    index,
                    size: record.chunk_len(index).ok()?,
                    sha256: chunks::UNREAD,
                }))
            }));
        } else if !record.state.is_tombstone() {
            // One listing gives which chunks are stored and the latest activity.
            let listed = self.store.list(&self.chunks_prefix(id)).await?;
            if let Some(newest) = listed.iter().map(|o| o.last_modified).max() {
                last_activity = last_activity.max(newest);
            }
            let found = chunks::Listing::of(&record, &self.chunks_prefix(id), &listed);
            receipts.extend(found.receipts(&record));
            if record.length_deferred && record.mode == UploadMode::Chunks {
                // While the length is deferred, the geometry cannot say how long the last
                // chunk stored is (a shorter one ends the upload): its claim does.
                if let Some(&last) = found.claimed.last() {
                    if let Some(claim) = self.read_claim(id, last).await? {
                        for r in &mut receipts {
                            match r {
                                Receipt::Chunk(c) if c.index == last => c.size = claim.size,
                                _ => {}
                            }
                        }
                    }
                }
            }
            if record.mode == UploadMode::Stream {
                let (partial, cursor, whole) = append::partials(&record, &found);
                receipts.extend(partial);
                append_cursor = cursor;
                prefix_hash = whole;
            }
            if prefix_hash.is_none() {
                prefix_hash = self.furthest_midstate(&record, &found).await?;
            }
        }
        Ok(Some(Loaded {
            record,
            receipts,
            prefix_hash,
            last_activity,
            append_cursor,
        }))
    }

    async fn load_for_write(&self, id: UploadId) -> Result<Option<Loaded>> {
        let Some((obj, _read)) = self.record_for_write(id).await? else {
            return Ok(None);
        };
        let record = obj.record;
        Ok(Some(Loaded {
            last_activity: record.updated_at,
            record,
            receipts: Vec::new(),
            prefix_hash: None,
            append_cursor: None,
        }))
    }

    async fn write_marks(&self, id: UploadId) -> Result<Vec<String>> {
        Ok(self
            .store
            .list(&self.chunks_prefix(id))
            .await?
            .into_iter()
            .map(|o| format!("{} {}", o.key, o.etag))
            .collect())
    }

    async fn load_record(&self, id: UploadId) -> Result<Option<UploadRecord>> {
        Ok(self.get_record(id).await?.map(|o| o.record))
    }

    async fn save_record(&self, record: &UploadRecord) -> Result<Option<String>> {
        let multipart_id = self.multipart_id(record.id).await?;
        let object = RecordObject {
            record: record.clone(),
            multipart_id,
        };
        let body = serde_json::to_vec(&object).map_err(|e| Error::Corrupt(e.to_string()))?;
        let condition = match &record.version {
            Some(v) => Put::Update(v.clone()),
            None => Put::Overwrite,
        };
        let written = self
            .put_record(&self.record_key(record.id), body, condition)
            .await;
        if written.is_err() {
            lock(&self.records).remove(&record.id);
        }
        let etag = written?;
        let mut object = object;
        object.record.version = Some(etag.clone());
        lock(&self.records).insert(
            record.id,
            Cached {
                object,
                read: Instant::now(),
            },
        );
        Ok(Some(etag))
    }

    async fn writer_at(
        &self,
        record: &UploadRecord,
        offset: u64,
        digest: Option<Sha256Digest>,
    ) -> Result<Box<dyn ChunkWriter>> {
        self.chunk_writer(record, offset, digest).await
    }

    async fn appender_at(
        &self,
        record: &UploadRecord,
        offset: u64,
        len: Option<u64>,
    ) -> Result<Box<dyn ChunkWriter>> {
        self.append_writer(record, offset, len).await
    }

    async fn commit(
        &self,
        record: &UploadRecord,
        written: Written,
        receipts: &[Receipt],
        coverage: Coverage,
    ) -> Result<u64> {
        if record.mode == UploadMode::Stream {
            return self
                .commit_appends(record, written, receipts, coverage)
                .await;
        }
        let [Receipt::Chunk(chunk)] = receipts else {
            return Err(Error::WrongMode(
                "chunk uploads store one whole chunk at a time",
            ));
        };
        let part = written
            .take::<chunks::SentPart>()
            .ok_or_else(|| Error::Corrupt(format!("no part was sent for chunk {}", chunk.index)))?;
        self.claim(record, chunk, part, coverage).await
    }

    async fn midstate_at(
        &self,
        record: &UploadRecord,
        offset: u64,
    ) -> Result<Option<SavedPrefixHash>> {
        if offset == 0 || !offset.is_multiple_of(record.chunk_size) {
            return Ok(None);
        }
        let before = offset / record.chunk_size - 1;
        Ok(self
            .seen_or_read_claim(record.id, before)
            .await?
            .and_then(|c| c.whole)
            .filter(|w| w.hashed_bytes == offset))
    }

    fn peer_directory(&self) -> Option<crate::peers::SharedDirectory> {
        Some(Arc::new(peers::BucketDirectory::new(
            self.store.clone(),
            self.key("peers/"),
        )))
    }

    fn announce_to(&self, to: Arc<dyn crate::peers::Announce>) {
        let _ = self.announcer.set(to);
    }

    fn learn(&self, note: &crate::peers::ClaimNote) -> Option<(u64, SavedPrefixHash)> {
        self.learn_claim(note)
    }

    async fn chunk_digests(
        &self,
        record: &UploadRecord,
        mut chunks: Vec<StoredChunk>,
    ) -> Result<Vec<StoredChunk>> {
        for chunk in chunks.iter_mut().filter(|c| c.sha256 == chunks::UNREAD) {
            if let Some(claim) = self.seen_or_read_claim(record.id, chunk.index).await? {
                chunk.sha256 = claim.sha256;
            }
        }
        Ok(chunks)
    }

    async fn assemble(&self, record: &UploadRecord, _chunks: &[StoredChunk]) -> Result<()> {
        // The parts are joined by publishing, after verification: here they are checked
        // against their claims, so that nothing but the acknowledged bytes is joined.
        if record.size == 0 {
            return Ok(());
        }
        let parts = self.checked_parts(record).await?;
        lock(&self.checked).insert(record.id, parts);
        Ok(())
    }

    async fn read_range(&self, record: &UploadRecord, offset: u64, len: u64) -> Result<ByteStream> {
        if record.state == StoredState::Completed {
            return self
                .store
                .get_range(&self.file_key(record.id), offset..offset + len)
                .await;
        }
        self.read_spilled(record, offset, len).await
    }

    async fn load_prefix_hash(&self, id: UploadId) -> Result<Option<SavedPrefixHash>> {
        Ok(self.load(id).await?.and_then(|l| l.prefix_hash))
    }

    async fn save_prefix_hash(&self, _id: UploadId, _saved: &SavedPrefixHash) -> Result<()> {
        // Midstates are kept with the chunks they follow (see `Coverage`).
        Ok(())
    }

    async fn publish(&self, record: &UploadRecord) -> Result<()> {
        let id = record.id;
        let file = self.file_key(id);
        if self.store.head(&file).await?.is_some() {
            return Ok(());
        }
        let multipart_id = self.multipart_id(id).await?;
        if record.size == 0 {
            // S3 completes no multipart upload without parts: an empty object instead.
            self.store.put(&file, Vec::new(), Put::Overwrite).await?;
            self.store.abort_multipart(&file, &multipart_id).await?;
        } else {
            let checked = lock(&self.checked).remove(&id);
            let parts = match checked {
                Some(parts) => parts,
                None => self.checked_parts(record).await?,
            };
            match self
                .store
                .complete_multipart(&file, &multipart_id, &parts)
                .await
            {
                Ok(Joined::Done) => {}
                // Joined by another publisher meanwhile.
                Err(Error::NotFound) if self.store.head(&file).await?.is_some() => {}
                Ok(Joined::Refused(why)) => {
                    return Err(Error::Corrupt(format!(
                        "the store refused to join the verified parts: {why}"
                    )))
                }
                Err(e) => return Err(e),
            }
        }
        // The chunks' claims and spills are not needed any more.
        self.delete_prefix(&self.chunks_prefix(id)).await?;
        lock(&self.claimed).remove(&id);
        Ok(())
    }

    async fn content(&self, record: &UploadRecord) -> Result<Content> {
        if self.store.head(&self.file_key(record.id)).await?.is_some() {
            return Ok(Content::Object);
        }
        // The record says completed, but the parts are not joined yet: the process that
        // verified the upload is still joining them, or stopped (a crash, a store failure)
        // between storing "completed" and joining. Joining is idempotent: finish it here.
        self.publish(record).await?;
        Ok(Content::Object)
    }

    async fn discard(&self, id: UploadId) -> Result<()> {
        let file = self.file_key(id);
        if let Some(obj) = self.get_record(id).await? {
            self.store.abort_multipart(&file, &obj.multipart_id).await?;
        }
        self.delete_prefix(&self.chunks_prefix(id)).await?;
        self.store.delete(&file).await
    }

    async fn purge(&self, id: UploadId) -> Result<()> {
        self.discard(id).await?;
        self.delete_prefix(&self.key(&format!("uploads/{id}/")))
            .await?;
        lock(&self.records).remove(&id);
        lock(&self.claimed).remove(&id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<UploadId>> {
        Ok(self
            .store
            .list_dirs(&self.key("uploads/"))
            .await?
            .iter()
            .filter_map(|d| d.parse().ok())
            .collect())
    }

    async fn index_put(&self, key: &str) -> Result<()> {
        self.store
            .put(
                &self.key(&format!("index/{key}")),
                Vec::new(),
                Put::Overwrite,
            )
            .await
            .map(drop)
    }

    async fn index_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let root = self.key("index/");
        let after = after.map(|a| format!("{root}{a}"));
        let listed = self
            .store
            .list_page(&format!("{root}{prefix}"), after.as_deref(), limit)
            .await?;
        Ok(listed
            .into_iter()
            .filter_map(|o| o.key.strip_prefix(&root).map(str::to_string))
            .collect())
    }

    async fn index_delete(&self, key: &str) -> Result<()> {
        self.store.delete(&self.key(&format!("index/{key}"))).await
    }

    async fn claim_idempotency_key(
        &self,
        key: &Sha256Digest,
        claim: &IdempotencyClaim,
    ) -> Result<Option<IdempotencyClaim>> {
        let path = self.key(&format!("idempotency/{}.json", key.to_hex()));
        let body = serde_json::to_vec(claim).map_err(|e| Error::Corrupt(e.to_string()))?;
        match self
            .store
            .put(&path, vec![Bytes::from(body)], Put::Create)
            .await
        {
            Ok(_) => Ok(None),
            Err(Error::Conflict) => {
                let got = self.store.get(&path).await?.ok_or(Error::Conflict)?;
                serde_json::from_slice(&got.bytes)
                    .map(Some)
                    .map_err(|e| Error::Corrupt(e.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    async fn release_idempotency_key(
        &self,
        key: &Sha256Digest,
        claim: &IdempotencyClaim,
    ) -> Result<()> {
        // Read, then delete: the store has no conditional delete. A claim is only ever
        // replaced by its removal, so the one read is the one deleted.
        let path = self.key(&format!("idempotency/{}.json", key.to_hex()));
        let Some(got) = self.store.get(&path).await? else {
            return Ok(());
        };
        if serde_json::from_slice::<IdempotencyClaim>(&got.bytes)
            .ok()
            .as_ref()
            == Some(claim)
        {
            self.store.delete(&path).await?;
        }
        Ok(())
    }

    async fn sweep_leftovers(&self) -> Result<u64> {
        {
            let mut last = lock(&self.leftovers_swept);
            let every = (self.leftover_grace / 4)
                .clamp(Duration::from_millis(200), Duration::from_secs(600));
            if last.is_some_and(|t| t.elapsed() < every) {
                return Ok(0);
            }
            *last = Some(Instant::now());
        }
        let now = OffsetDateTime::now_utc();
        let listed = self
            .store
            .list_multipart_uploads(&self.key("files/"))
            .await?;
        // A multipart upload's age is the lesser of what the store says and how long this
        // process has seen it: a store may misreport `Initiated`, and a create whose record
        // is being written right now must never look like a leftover.
        let aged: Vec<(String, String)> = {
            let mut seen = lock(&self.leftovers_seen);
            seen.retain(|id, _| listed.iter().any(|m| &m.upload_id == id));
            listed
                .into_iter()
                .filter(|m| {
                    let first = *seen.entry(m.upload_id.clone()).or_insert_with(Instant::now);
                    let by_store = (now - m.initiated).try_into().unwrap_or(Duration::ZERO);
                    by_store.min(first.elapsed()) >= self.leftover_grace
                })
                .map(|m| (m.key, m.upload_id))
                .collect()
        };
        let mut aborted = 0;
        for (key, multipart_id) in aged {
            if !self.is_leftover(&key, &multipart_id).await? {
                continue;
            }
            self.store.abort_multipart(&key, &multipart_id).await?;
            tracing::info!(
                key,
                multipart_id,
                "aborted a multipart upload nothing names"
            );
            aborted += 1;
        }
        Ok(aborted)
    }

    async fn health(&self) -> Result<()> {
        self.store.head(&self.key(".health")).await.map(|_| ())
    }
}

/// Reads the stored bytes `offset..offset + len` of an unfinished upload from the spills
/// of its chunks (the bytes the whole-file hash did not reach as they passed).
impl S3Backend {
    async fn read_spilled(
        &self,
        record: &UploadRecord,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream> {
        let mut ranges = Vec::new();
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let index = at / record.chunk_size;
            let within = at - record.chunk_offset(index);
            let take = (record.chunk_end(index) - at).min(end - at);
            ranges.push((index, within..within + take));
            at += take;
        }
        let (store, id) = (self.store.clone(), record.id);
        let claims: Vec<Option<chunks::Claim>> = futures_util::future::try_join_all(
            ranges.iter().map(|(index, _)| self.read_claim(id, *index)),
        )
        .await?;
        let mut keys = Vec::with_capacity(ranges.len());
        for ((index, range), claim) in ranges.into_iter().zip(claims) {
            match claim {
                Some(c) if c.spilled => {
                    keys.push((self.spill_of(id, index, c.part, &c.etag), range))
                }
                _ => {
                    return Err(Error::Corrupt(format!(
                        "chunk {index} of {id} is neither hashed nor spilled: the whole-file \
                         hash cannot be finished"
                    )))
                }
            }
        }
        Ok(futures_util::stream::iter(keys)
            .then(move |(key, range)| {
                let store = store.clone();
                async move { store.get_range(&key, range).await }
            })
            .try_flatten()
            .boxed())
    }
}
