//! S3-compatible backend: every byte and every piece of state in one bucket, so that any
//! number of stateless servers share the same uploads with no lock service.
//!
//! # Layout (under the configured prefix)
//! ```text
//! uploads/{id}/record.json                      {"record": UploadRecord, "multipart_id": ..}
//!                                               created If-None-Match: *, replaced If-Match: <etag>
//! uploads/{id}/chunks/{index:05}/lease         "{process}-{write} {unix expiry} {generation}":
//!                                               which write is sending the part
//! uploads/{id}/chunks/{index:05}/claim         the name of the chunk's receipt, written once
//! uploads/{id}/chunks/{index:05}/{size}.{sha256}.{etag hex}.{part number}
//!                                               empty receipt of one part; the name is the receipt,
//!                                               so one LIST loads every receipt
//! uploads/{id}/chunks/{index:05}/pieces/{start:012}.{len}.{midstate hex}
//!                                               a short in-order append's bytes, held until
//!                                               the chunk is whole (see [`append`])
//! uploads/{id}/chunks/append-lease              "{process}-{write} {unix expiry} {generation}":
//!                                               which request appends (tus, IETF); beside the
//!                                               chunk objects, so its renewals count as activity
//! uploads/{id}/hash.json                        whole-file SHA-256 midstate, conditional writes
//! uploads/{id}/staging                          the multipart upload's target: parts joined, not
//!                                               yet verified
//! files/{id}                                    the verified file (copied from staging)
//! idempotency/{sha256(key)}.json                which upload an Idempotency-Key created (If-None-Match: *)
//! index/{owner}/{day}/{rank}.{id}               the listing index: an empty object per upload
//!                                               (see `crate::index`)
//! ```
//! Each chunk is one part of one multipart upload per upload, streamed from the request
//! body with the request's length (through a presigned UploadPart URL, so no chunk is held
//! in memory); it is acknowledged once the store acknowledged the part and its receipt.
//! Two requests racing on one chunk: before sending a part, a writer takes the chunk's
//! `lease` (If-None-Match: *, or an If-Match takeover of an expired or released one), so a
//! part is only ever written by one request at a time; another server's request meanwhile
//! is told to retry soon (503). After the part, the first to create the chunk's `claim`
//! object wins; a later writer with the same bytes is a harmless retry, one with other
//! bytes gets a conflict.
//!
//! Part numbers are fenced by the lease: each takeover raises the lease's generation, and
//! chunk `i` written under generation `g` is part `i * slots + g % slots + 1`, where
//! `slots = 10,000 / chunk count` (S3 joins parts in part-number order, so each chunk has
//! a range of numbers of its own, in order). A writer that outlived its lease (its
//! UploadPart answered after another server took the chunk over and was acknowledged)
//! thus lands on a part number no receipt names, and the join drops it. Only an upload of
//! more than 5,000 chunks has a single slot per chunk; there, or should a part differ from
//! its receipt for any other reason, its ETag no longer matches and the store refuses to
//! join the parts: completion then lists the parts (ListParts), forgets each chunk whose
//! part changed and reports it missing, so the client sends it again; nothing wrong is
//! ever published.
//!
//! Completion is claimed by one conditional write of the record; the parts' ETags named by
//! the receipts must match what the store holds, or CompleteMultipartUpload fails and
//! nothing is published. The file appears at `files/{id}` only after its SHA-256 matched;
//! a failed verification, a cancel or an expiry aborts the multipart upload and removes
//! every object of the upload. A file larger than one CopyObject may copy (5 GiB) is
//! published by a multipart upload of UploadPartCopy requests.
//!
//! In-order appends (tus, the IETF draft) of any size are mapped onto the same parts:
//! see [`append`] for how short appends are held durably until a part can be written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::api::ChunkSizeBounds;
use common::{Sha256Digest, UploadId};
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::HttpRequestBody;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{
    GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    UpdateVersion,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::{
    Backend, BackendInfo, ByteStream, ChunkWriter, Content, IdempotencyClaim, Loaded, Receipt,
    StoredChunk,
};

mod append;
mod lease;
mod part;
use crate::error::{Error, Result};
use crate::hash::SavedPrefixHash;
use crate::record::UploadRecord;

const MIB: u64 = 1 << 20;

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
    /// The largest object published with one CopyObject (0: S3's limit, 5 GiB); a larger
    /// file is copied in parts of this size (UploadPartCopy).
    pub max_copy_size: u64,
    /// How old a multipart upload that no upload names must be before a sweep aborts it
    /// (`None`: [`LEFTOVER_GRACE`]).
    pub leftover_grace: Option<Duration>,
}

/// How old, by default, a multipart upload that no upload names must be before a sweep
/// aborts it: long enough for any publishing copy still running.
pub const LEFTOVER_GRACE: Duration = Duration::from_secs(24 * 3600);

impl S3Config {
    /// A client of the bucket; credentials come from the standard `AWS_*` environment
    /// variables. Store requests are retried briefly (a few seconds), so that a store
    /// that is down is reported instead of waited on.
    pub fn connect(&self) -> Result<AmazonS3> {
        self.builder()
            .build()
            .map_err(|e| Error::Io(std::io::Error::other(e)))
    }

    /// The region requests are signed for, as the client reads it (flag or `AWS_*`).
    fn signing_region(&self) -> String {
        self.builder()
            .get_config_value(&AmazonS3ConfigKey::Region)
            .unwrap_or_else(|| "us-east-1".into())
    }

    fn builder(&self) -> AmazonS3Builder {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&self.bucket)
            .with_allow_http(self.allow_http)
            .with_retry(object_store::RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(10),
                ..Default::default()
            });
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &self.region {
            b = b.with_region(r);
        }
        b
    }
}

/// The record object: the upload record and the multipart upload behind it.
#[derive(Serialize, Deserialize)]
struct RecordObject {
    record: UploadRecord,
    multipart_id: String,
}

/// Stores uploads in an S3-compatible bucket.
pub struct S3Backend {
    store: Arc<AmazonS3>,
    prefix: String,
    http: reqwest::Client,
    /// Part ETags between a writer's end and its commit, by (upload, chunk).
    pending: Pending,
    /// This process's name in chunk leases.
    process: String,
    /// Multipart upload ids already read, by upload.
    multipart_ids: Mutex<HashMap<UploadId, String>>,
    /// The bucket (named in UploadPartCopy's source).
    bucket: String,
    /// The region requests are signed for.
    region: String,
    /// The largest object one CopyObject publishes; the part size of larger copies.
    max_copy_size: u64,
    /// See [`S3Config::leftover_grace`].
    leftover_grace: Duration,
    /// When multipart uploads were last looked through for leftovers.
    leftovers_swept: Mutex<Option<std::time::Instant>>,
    /// When this process first saw each multipart upload in progress, by upload id.
    leftovers_seen: Mutex<HashMap<String, std::time::Instant>>,
    /// What appends hand to their commits, by upload.
    handoffs: append::Handoffs,
}

/// What a key escapes in UploadPartCopy's source (all but unreserved characters and `/`).
const KEY_ENCODE_SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The largest object S3 copies in one request, and the largest part.
const S3_MAX_COPY: u64 = 5 << 30;

/// How long a chunk lease holds off other writers; a live writer renews it
/// every [`LEASE_RENEW`], so a crashed server's chunk is free again within this time.
const LEASE_SECS: i64 = 15;
/// How often a writer renews its lease.
const LEASE_RENEW: Duration = Duration::from_secs(5);

/// Part ETags and numbers between a writer's end and its commit.
type Pending = Arc<Mutex<HashMap<(UploadId, u64), (String, u64)>>>;

/// The most parts one multipart upload may have (S3's limit).
const MAX_PARTS: u64 = 10_000;

/// The part number of chunk `index` written under lease generation `generation`: each
/// chunk has `MAX_PARTS / chunk count` numbers of its own, in chunk order, so that a
/// writer that outlived its lease never writes the part a later generation wrote.
fn part_number(record: &UploadRecord, index: u64, generation: u64) -> u64 {
    let slots = (MAX_PARTS / record.chunk_count().max(1)).max(1);
    index * slots + generation % slots + 1
}

/// A chunk lease as stored: `{holder} {unix expiry} {generation}`.
struct Lease {
    holder: String,
    until: i64,
    generation: u64,
}

impl Lease {
    fn parse(text: &str) -> Self {
        let mut it = text.split_whitespace();
        Self {
            holder: it.next().unwrap_or_default().to_string(),
            until: it.next().and_then(|u| u.parse().ok()).unwrap_or(0),
            generation: it.next().and_then(|g| g.parse().ok()).unwrap_or(0),
        }
    }

    fn body(&self) -> PutPayload {
        PutPayload::from(format!("{} {} {}", self.holder, self.until, self.generation).into_bytes())
    }
}

fn store_err(e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::NotFound,
        object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. } => {
            Error::Conflict
        }
        other => Error::Io(std::io::Error::other(other)),
    }
}

/// A conditional write of a lease that failed: a lease deleted meanwhile (released by a
/// writer that took it over and finished) is lost like one taken over, and the request is
/// told to retry soon, not that the upload is gone.
fn lease_err(e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::Conflict,
        other => store_err(other),
    }
}

impl S3Backend {
    /// The chunk whose claim is in `dir` (a chunk's folder), if it was claimed.
    async fn read_claim(&self, dir: &Path, index: u64) -> Result<Option<StoredChunk>> {
        let Some((chunk, name)) = self.read_claim_named(dir, index).await? else {
            return Ok(None);
        };
        // The request that claimed the chunk may have failed (the store went away) before
        // it wrote the receipt: write it, so that the chunk a retry is told is stored
        // also counts as stored.
        self.put_receipt(dir, &name).await?;
        Ok(Some(chunk))
    }

    /// Writes the receipt `name` into a chunk's directory, once.
    async fn put_receipt(&self, dir: &Path, name: &str) -> Result<()> {
        match self
            .store
            .put_opts(
                &dir.clone().join(name),
                PutPayload::new(),
                PutOptions::from(PutMode::Create),
            )
            .await
        {
            Ok(_)
            | Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }

    /// [`Self::read_claim`], with the name of the receipt the claim holds.
    async fn read_claim_named(
        &self,
        dir: &Path,
        index: u64,
    ) -> Result<Option<(StoredChunk, String)>> {
        let held = match self.store.get(&dir.clone().join("claim")).await {
            Ok(r) => r.bytes().await.map_err(store_err)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_err(e)),
        };
        let held = String::from_utf8_lossy(&held).into_owned();
        let (first, _) = parse_receipt(&dir.clone().join(held.as_str()))
            .ok_or_else(|| Error::Corrupt(format!("bad claim of chunk {index}")))?;
        Ok(Some((first, held)))
    }

    /// Connects to the bucket (see [`S3Config::connect`]).
    pub fn new(config: &S3Config) -> Result<Self> {
        let store = config.connect()?;
        Ok(Self {
            store: Arc::new(store),
            prefix: config.prefix.trim_matches('/').to_string(),
            http: reqwest::Client::new(),
            pending: Arc::new(Mutex::new(HashMap::new())),
            process: UploadId::new_random().to_string(),
            multipart_ids: Mutex::new(HashMap::new()),
            bucket: config.bucket.clone(),
            region: config.signing_region(),
            max_copy_size: match config.max_copy_size {
                0 => S3_MAX_COPY,
                n => n.min(S3_MAX_COPY),
            },
            leftover_grace: config.leftover_grace.unwrap_or(LEFTOVER_GRACE),
            leftovers_swept: Mutex::new(None),
            leftovers_seen: Mutex::new(HashMap::new()),
            handoffs: Default::default(),
        })
    }

    fn key(&self, rest: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rest)
        } else {
            Path::from(format!("{}/{rest}", self.prefix))
        }
    }

    fn record_key(&self, id: UploadId) -> Path {
        self.key(&format!("uploads/{id}/record.json"))
    }

    fn staging_key(&self, id: UploadId) -> Path {
        self.key(&format!("uploads/{id}/staging"))
    }

    fn file_key(&self, id: UploadId) -> Path {
        self.key(&format!("files/{id}"))
    }

    fn chunks_prefix(&self, id: UploadId) -> Path {
        self.key(&format!("uploads/{id}/chunks"))
    }

    /// Where one chunk's lease, claim and receipt live.
    fn chunk_dir(&self, id: UploadId, index: u64) -> Path {
        self.key(&format!("uploads/{id}/chunks/{index:05}"))
    }

    async fn get_record(&self, id: UploadId) -> Result<Option<RecordObject>> {
        match self.store.get(&self.record_key(id)).await {
            Ok(got) => {
                let e_tag = got.meta.e_tag.clone();
                let bytes = got.bytes().await.map_err(store_err)?;
                let mut obj: RecordObject = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Corrupt(format!("record of {id}: {e}")))?;
                obj.record.version = e_tag;
                Ok(Some(obj))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(e)),
        }
    }

    /// The multipart upload id of an upload (it never changes: remembered once read).
    async fn multipart_id(&self, id: UploadId) -> Result<String> {
        if let Some(m) = lock(&self.multipart_ids).get(&id) {
            return Ok(m.clone());
        }
        let obj = self.get_record(id).await?.ok_or(Error::NotFound)?;
        lock(&self.multipart_ids).insert(id, obj.multipart_id.clone());
        Ok(obj.multipart_id)
    }

    /// The ETag of every part the store holds for the upload, by part number (ListParts;
    /// `object_store` has no call for it, so through a presigned request).
    async fn part_etags(&self, id: UploadId) -> Result<HashMap<u64, String>> {
        let multipart_id = self.multipart_id(id).await?;
        let mut etags = HashMap::new();
        let mut marker = 0u64;
        loop {
            let mut query = vec![("uploadId".to_string(), multipart_id.clone())];
            if marker > 0 {
                query.push(("part-number-marker".to_string(), marker.to_string()));
            }
            let xml = self
                .signed_get(&self.staging_key(id), query, "ListParts")
                .await?;
            for part in xml.split("<Part>").skip(1) {
                let number = xml_value(part, "PartNumber").and_then(|n| n.parse().ok());
                if let (Some(n), Some(e)) = (number, xml_value(part, "ETag")) {
                    etags.insert(n, normalize_etag(&e));
                    marker = marker.max(n);
                }
            }
            if xml_value(&xml, "IsTruncated").as_deref() != Some("true") {
                return Ok(etags);
            }
        }
    }

    /// The text of a GET of `key` with `query` that `object_store` has no call for
    /// (`what`, through a presigned request).
    async fn signed_get(
        &self,
        key: &Path,
        query: Vec<(String, String)>,
        what: &str,
    ) -> Result<String> {
        let url = self
            .store
            .signed_url_opts(
                http::Method::GET,
                key,
                Duration::from_secs(600),
                &SignedUrlOptions::new().with_query(query),
            )
            .await
            .map_err(store_err)?;
        let resp = self.http.get(url).send().await.map_err(io_err)?;
        if !resp.status().is_success() {
            return Err(Error::Io(std::io::Error::other(format!(
                "{what} answered {}",
                resp.status()
            ))));
        }
        resp.text().await.map_err(io_err)
    }

    /// CompleteMultipartUpload of the parts named, by their own numbers (`object_store`
    /// numbers parts 1..n, which fenced part numbers are not; so through a presigned
    /// request). Answers `Ok(Err(why))` when the store refused the join (a part missing or
    /// with another ETag), and `Err` when it could not be asked; transient failures are
    /// tried again a few times.
    async fn complete_parts(
        &self,
        key: &Path,
        multipart_id: &str,
        parts: &[SentPart],
    ) -> Result<std::result::Result<(), String>> {
        let mut body = String::from(
            r#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">"#,
        );
        for p in parts {
            body.push_str(&format!(
                "<Part><ETag>\"{}\"</ETag><PartNumber>{}</PartNumber></Part>",
                normalize_etag(&p.etag),
                p.number
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let url = self
            .store
            .signed_url_opts(
                http::Method::POST,
                key,
                Duration::from_secs(600),
                &SignedUrlOptions::new()
                    .with_query([("uploadId".to_string(), multipart_id.to_string())]),
            )
            .await
            .map_err(store_err)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self.http.post(url.clone()).body(body.clone()).send().await;
            let failure = match sent {
                Ok(resp) if resp.status().is_server_error() => {
                    format!("CompleteMultipartUpload answered {}", resp.status())
                }
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.map_err(io_err)?;
                    // S3 may answer 200 with an error in the body, transient or not.
                    match xml_value(&text, "Code") {
                        None if status.is_success() => return Ok(Ok(())),
                        Some(code)
                            if matches!(
                                code.as_str(),
                                "InternalError" | "ServiceUnavailable" | "SlowDown"
                            ) =>
                        {
                            format!("CompleteMultipartUpload answered {code}")
                        }
                        code => {
                            return Ok(Err(format!("{status}: {}", code.unwrap_or_default())));
                        }
                    }
                }
                Err(e) => e.to_string(),
            };
            if attempt >= 3 {
                return Err(Error::Io(std::io::Error::other(failure)));
            }
            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
        }
    }

    /// Copies `from` to `to` in parts of [`S3Backend::max_copy_size`] (a multipart upload
    /// of UploadPartCopy requests), for objects larger than one CopyObject may copy. The
    /// copy appears at `to` whole, when its parts are joined, or not at all.
    async fn copy_in_parts(&self, from: &Path, to: &Path, size: u64) -> Result<()> {
        let multipart_id = self.store.create_multipart(to).await.map_err(store_err)?;
        let copied = async {
            let mut parts = Vec::new();
            for (n, start) in (0..size).step_by(self.max_copy_size as usize).enumerate() {
                let end = (start + self.max_copy_size).min(size);
                let part = self
                    .upload_part_copy(to, &multipart_id, n as u64 + 1, from, start..end)
                    .await?;
                parts.push(part);
            }
            self.complete_parts(to, &multipart_id, &parts)
                .await?
                .map_err(|why| {
                    Error::Io(std::io::Error::other(format!(
                        "the store refused to join the copied parts: {why}"
                    )))
                })
        }
        .await;
        if copied.is_err() {
            if let Err(e) = self.store.abort_multipart(to, &multipart_id).await {
                tracing::debug!(error = %e, "abort of a failed multipart copy");
            }
        }
        copied
    }

    /// UploadPartCopy: bytes `range` of `from` become part `number` of `to`'s multipart
    /// upload. Signed with its copy headers (`object_store` has no call for it).
    async fn upload_part_copy(
        &self,
        to: &Path,
        multipart_id: &str,
        number: u64,
        from: &Path,
        range: std::ops::Range<u64>,
    ) -> Result<SentPart> {
        // The object's URL as the client builds it, with this request's query.
        let mut url = self
            .store
            .signed_url(http::Method::PUT, to, Duration::from_secs(60))
            .await
            .map_err(store_err)?;
        url.set_query(None);
        url.query_pairs_mut()
            .append_pair("partNumber", &number.to_string())
            .append_pair("uploadId", multipart_id);
        let source = format!(
            "/{}/{}",
            self.bucket,
            percent_encoding::utf8_percent_encode(from.as_ref(), KEY_ENCODE_SET)
        );
        let mut request = http::Request::builder()
            .method(http::Method::PUT)
            .uri(url.as_str())
            .header("x-amz-copy-source", source)
            .header(
                "x-amz-copy-source-range",
                format!("bytes={}-{}", range.start, range.end - 1),
            )
            .body(HttpRequestBody::from(Vec::new()))
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let credential = self
            .store
            .credentials()
            .get_credential()
            .await
            .map_err(store_err)?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(store_err)?;
        // An empty body with its Content-Length: RGW refuses a PUT without one (411).
        let mut sent = self.http.put(url).header(http::header::CONTENT_LENGTH, 0);
        for (name, value) in request.headers() {
            sent = sent.header(name, value);
        }
        let resp = sent.send().await.map_err(io_err)?;
        let status = resp.status();
        let text = resp.text().await.map_err(io_err)?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(Error::NotFound);
        }
        match (status.is_success(), xml_value(&text, "ETag")) {
            (true, Some(etag)) if !text.contains("<Error>") => Ok(SentPart { number, etag }),
            _ => Err(Error::Io(std::io::Error::other(format!(
                "UploadPartCopy answered {status}: {}",
                xml_value(&text, "Code").unwrap_or_default()
            )))),
        }
    }

    /// Every object under an upload's `chunks/` (receipts, claims, leases).
    async fn chunk_objects(&self, id: UploadId) -> Result<Vec<ObjectMeta>> {
        self.store
            .list(Some(&self.chunks_prefix(id)))
            .try_collect()
            .await
            .map_err(store_err)
    }

    /// Becomes the one writer of a chunk across all servers and requests: a lease object
    /// naming this write (`holder_id`), an expiry and a generation. A live lease of another
    /// write means the chunk is being written elsewhere ([`Error::Conflict`]: retry soon);
    /// an expired or released one is taken over, one generation up, so that this write
    /// sends a part number its predecessor never does. Answers the lease's version and
    /// generation.
    async fn take_lease(&self, lease: &Path, holder_id: &str) -> Result<(Option<String>, u64)> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut mine = Lease {
            holder: holder_id.to_string(),
            until: now + LEASE_SECS,
            generation: 0,
        };
        let create = self
            .store
            .put_opts(lease, mine.body(), PutOptions::from(PutMode::Create))
            .await;
        match create {
            Ok(put) => return Ok((put.e_tag, 0)),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {}
            Err(e) => return Err(store_err(e)),
        }
        let held = match self.store.get(lease).await {
            Ok(h) => h,
            // Released meanwhile: the caller's retry will take it.
            Err(object_store::Error::NotFound { .. }) => return Err(Error::Conflict),
            Err(e) => return Err(store_err(e)),
        };
        let e_tag = held.meta.e_tag.clone();
        let text = held.bytes().await.map_err(store_err)?;
        let held = Lease::parse(&String::from_utf8_lossy(&text));
        if held.holder != holder_id && held.until > now {
            return Err(Error::Conflict);
        }
        mine.generation = held.generation + 1;
        let put = self
            .store
            .put_opts(
                lease,
                mine.body(),
                PutOptions::from(PutMode::Update(UpdateVersion {
                    e_tag,
                    version: None,
                })),
            )
            .await
            .map_err(lease_err)?;
        Ok((put.e_tag, mine.generation))
    }

    async fn delete_prefix(&self, prefix: &Path) -> Result<()> {
        let locations = self.store.list(Some(prefix)).map_ok(|m| m.location).boxed();
        self.store
            .delete_stream(locations)
            .try_collect::<Vec<_>>()
            .await
            .map_err(store_err)?;
        Ok(())
    }

    /// Every multipart upload in progress under `under` (ListMultipartUploads, through a
    /// presigned request: `object_store` has no call for it): key, upload id, and when it
    /// began.
    async fn multipart_uploads(
        &self,
        under: &Path,
    ) -> Result<Vec<(String, String, OffsetDateTime)>> {
        let mut found = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = vec![
                ("uploads".to_string(), String::new()),
                ("prefix".to_string(), format!("{under}/")),
            ];
            if let Some((key, upload)) = &markers {
                query.push(("key-marker".to_string(), key.clone()));
                query.push(("upload-id-marker".to_string(), upload.clone()));
            }
            let xml = self
                .signed_get(&Path::from(""), query, "ListMultipartUploads")
                .await?;
            for upload in xml.split("<Upload>").skip(1) {
                let began = xml_value(upload, "Initiated").and_then(|t| {
                    OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
                });
                if let (Some(key), Some(id), Some(began)) = (
                    xml_value(upload, "Key"),
                    xml_value(upload, "UploadId"),
                    began,
                ) {
                    found.push((key, id, began));
                }
            }
            if xml_value(&xml, "IsTruncated").as_deref() != Some("true") {
                return Ok(found);
            }
            match (
                xml_value(&xml, "NextKeyMarker"),
                xml_value(&xml, "NextUploadIdMarker"),
            ) {
                (Some(key), Some(upload)) => markers = Some((key, upload)),
                _ => return Ok(found),
            }
        }
    }

    /// Whether the multipart upload `multipart_id` at `key` is a leftover that nothing
    /// will finish.
    async fn is_leftover(&self, key: &str, multipart_id: &str) -> Result<bool> {
        let rest = match self.prefix.is_empty() {
            true => key,
            false => key
                .strip_prefix(&self.prefix)
                .and_then(|k| k.strip_prefix('/'))
                .unwrap_or(key),
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            // Begun by a create whose record was never written, or by one that lost a
            // race for the record: no record names it.
            ["uploads", id, "staging"] => {
                let Ok(id) = id.parse::<UploadId>() else {
                    return Ok(false);
                };
                Ok(self
                    .get_record(id)
                    .await?
                    .is_none_or(|obj| obj.multipart_id != multipart_id))
            }
            // A publishing copy in parts that stopped (its server died mid-copy).
            ["files", _] => Ok(true),
            _ => Ok(false),
        }
    }

    /// Claims chunk `c` for the part `number` with `etag` (create-once; another claim with
    /// the same bytes makes this a harmless retry, one with other bytes a conflict) and
    /// writes its receipt. Answers 1 when another request had claimed it first.
    async fn claim(&self, id: UploadId, c: &StoredChunk, etag: String, number: u64) -> Result<u64> {
        let dir = self.chunk_dir(id, c.index);
        let name = receipt_name(c, &SentPart { number, etag });
        let mut stored_first = 0;
        // The first writer of a chunk claims it; the claim says which bytes it holds.
        let claim = dir.clone().join("claim");
        let claimed = match self
            .store
            .put_opts(
                &claim,
                PutPayload::from(name.clone().into_bytes()),
                PutOptions::from(PutMode::Create),
            )
            .await
        {
            Ok(_) => name,
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                let Some((first, held)) = self.read_claim_named(&dir, c.index).await? else {
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
                stored_first = 1;
                held
            }
            Err(e) => return Err(store_err(e)),
        };
        // The receipt proper, named so that one LIST reads every chunk's state.
        self.put_receipt(&dir, &claimed).await?;
        Ok(stored_first)
    }

    async fn exists(&self, key: &Path) -> Result<bool> {
        match self.store.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn delete_if_exists(&self, key: &Path) -> Result<()> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }
}

/// `{size}.{sha256}.{etag hex}.{part number}`: a receipt's name in its chunk's directory.
fn receipt_name(c: &StoredChunk, part: &SentPart) -> String {
    format!(
        "{}.{}.{}.{}",
        c.size,
        c.sha256.to_hex(),
        hex::encode(&part.etag),
        part.number
    )
}

/// A part as the store acknowledged it: its number and its ETag.
#[derive(Clone, Debug)]
struct SentPart {
    number: u64,
    etag: String,
}

/// The text of the first `<tag>` element in `xml` (ListParts answers are flat enough).
fn xml_value(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(
        xml[start..end]
            .replace("&quot;", "\"")
            .replace("&#34;", "\""),
    )
}

/// An ETag without its quotes, as receipts and ListParts may spell it differently.
fn normalize_etag(etag: &str) -> String {
    etag.trim().trim_matches('"').to_ascii_lowercase()
}

/// A request to the store that failed before it had an answer.
fn io_err(e: reqwest::Error) -> Error {
    Error::Io(std::io::Error::other(e))
}

/// Reads a receipt back from its key `.../chunks/{index:05}/{name}`; a receipt written
/// before part numbers were fenced names none, and is part `index + 1`.
fn parse_receipt(location: &Path) -> Option<(StoredChunk, SentPart)> {
    let mut parts: Vec<_> = location.parts().collect();
    let name = parts.pop()?;
    let index: u64 = parts.pop()?.as_ref().parse().ok()?;
    let mut it = name.as_ref().split('.');
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
            max_chunks: MAX_PARTS,
            shared: true,
            reads_before_assembly: false,
        }
    }

    async fn create(&self, record: &UploadRecord) -> Result<Option<String>> {
        let multipart_id = self
            .store
            .create_multipart(&self.staging_key(record.id))
            .await
            .map_err(store_err)?;
        let body = serde_json::to_vec(&RecordObject {
            record: record.clone(),
            multipart_id: multipart_id.clone(),
        })
        .map_err(|e| Error::Corrupt(e.to_string()))?;
        match self
            .store
            .put_opts(
                &self.record_key(record.id),
                PutPayload::from(body),
                PutOptions::from(PutMode::Create),
            )
            .await
        {
            Ok(put) => Ok(put.e_tag),
            Err(e) => {
                // The record exists already (a racing idempotent create) or could not be
                // written: the multipart upload made for it is not needed.
                let staging = self.staging_key(record.id);
                if let Err(abort) = self.store.abort_multipart(&staging, &multipart_id).await {
                    tracing::debug!(error = %abort, "abort of an unused multipart upload");
                }
                Err(store_err(e))
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
        let mut append_cursor = None;
        if !record.state.is_tombstone() {
            // One listing gives both the receipts and the latest activity (leases are
            // renewed while a chunk is being sent).
            let metas = self.chunk_objects(id).await?;
            if let Some(newest) = metas.iter().map(|m| m.last_modified).max() {
                let t = OffsetDateTime::from_unix_timestamp(newest.timestamp())
                    .unwrap_or(record.updated_at);
                last_activity = last_activity.max(t);
            }
            receipts.extend(
                metas
                    .iter()
                    .filter_map(|m| parse_receipt(&m.location))
                    .map(|(c, _)| Receipt::Chunk(c)),
            );
            if record.mode == crate::record::UploadMode::Stream {
                let whole: Vec<u64> = receipts
                    .iter()
                    .filter_map(|r| match r {
                        Receipt::Chunk(c) => Some(c.index),
                        Receipt::Partial { .. } => None,
                    })
                    .collect();
                let (partial, cursor) = append::partials(&record, &metas, &whole);
                receipts.extend(partial);
                append_cursor = cursor;
            }
        }
        let prefix_hash = self.load_prefix_hash(id).await.unwrap_or(None);
        Ok(Some(Loaded {
            record,
            receipts,
            prefix_hash,
            last_activity,
            append_cursor,
        }))
    }

    async fn load_for_write(&self, id: UploadId) -> Result<Option<Loaded>> {
        let Some(obj) = self.get_record(id).await? else {
            return Ok(None);
        };
        let record = obj.record;
        let prefix_hash = if record.state.is_tombstone() {
            None
        } else {
            self.load_prefix_hash(id).await.unwrap_or(None)
        };
        Ok(Some(Loaded {
            last_activity: record.updated_at,
            record,
            receipts: Vec::new(),
            prefix_hash,
            append_cursor: None,
        }))
    }

    async fn write_marks(&self, id: UploadId) -> Result<Vec<String>> {
        Ok(self
            .chunk_objects(id)
            .await?
            .into_iter()
            .map(|m| format!("{} {}", m.location, m.e_tag.unwrap_or_default()))
            .collect())
    }

    async fn load_record(&self, id: UploadId) -> Result<Option<UploadRecord>> {
        Ok(self.get_record(id).await?.map(|o| o.record))
    }

    async fn save_record(&self, record: &UploadRecord) -> Result<Option<String>> {
        let Some(current) = self.get_record(record.id).await? else {
            return Err(Error::NotFound);
        };
        let body = serde_json::to_vec(&RecordObject {
            record: record.clone(),
            multipart_id: current.multipart_id,
        })
        .map_err(|e| Error::Corrupt(e.to_string()))?;
        let mode = PutMode::Update(UpdateVersion {
            e_tag: record.version.clone(),
            version: None,
        });
        let put = self
            .store
            .put_opts(
                &self.record_key(record.id),
                PutPayload::from(body),
                PutOptions::from(mode),
            )
            .await
            .map_err(store_err)?;
        Ok(put.e_tag)
    }

    async fn writer_at(&self, record: &UploadRecord, offset: u64) -> Result<Box<dyn ChunkWriter>> {
        if !offset.is_multiple_of(record.chunk_size) {
            return Err(Error::WrongMode("S3 storage writes whole chunks only"));
        }
        let index = offset / record.chunk_size;
        let len = record.chunk_len(index)?;
        let multipart_id = self.multipart_id(record.id).await?;
        let dir = self.chunk_dir(record.id, index);
        let lease = dir.clone().join("lease");
        // A retry of a stored chunk needs no lease (whose holder may have died after
        // claiming the chunk, leaving it to expire): the claim answers it at once.
        if let Some(stored) = self.read_claim(&dir, index).await? {
            return Err(Error::StoredMeanwhile {
                index,
                stored: stored.sha256,
            });
        }
        // Each write holds the lease under a name of its own: two requests of this same
        // process (which share no state on S3) must not both send the part.
        let holder_id = format!("{}-{}", self.process, uuid::Uuid::new_v4().simple());
        let (lease_tag, generation) = self.take_lease(&lease, &holder_id).await?;
        // A writer that finished while this request waited for the lease has claimed the
        // chunk: its part must not be overwritten, so this request becomes a retry.
        if let Some(stored) = self.read_claim(&dir, index).await? {
            self.delete_if_exists(&lease).await?;
            return Err(Error::StoredMeanwhile {
                index,
                stored: stored.sha256,
            });
        }
        let number = part_number(record, index, generation);
        let (tx, rx) = mpsc::channel(4);
        let response = part::send_part(
            &self.http,
            &self.store,
            &self.staging_key(record.id),
            &multipart_id,
            number,
            len,
            part::body_of(rx),
        )
        .await;
        Ok(Box::new(S3ChunkWriter {
            tx: Some(tx),
            response: Some(response),
            key: (record.id, index),
            number,
            pending: self.pending.clone(),
            lease: Some(lease::HeldLease::new(
                self.store.clone(),
                lease,
                holder_id,
                lease_tag,
                generation,
            )),
        }))
    }

    async fn appender_at(
        &self,
        record: &UploadRecord,
        offset: u64,
        len: Option<u64>,
    ) -> Result<Box<dyn ChunkWriter>> {
        self.append_writer(record, offset, len).await
    }

    async fn commit(&self, record: &UploadRecord, receipts: &[Receipt]) -> Result<u64> {
        if record.mode == crate::record::UploadMode::Stream {
            return self.commit_appends(record, receipts).await;
        }
        let id = record.id;
        let mut stored_first = 0;
        for r in receipts {
            let Receipt::Chunk(c) = r else {
                return Err(Error::WrongMode("chunk uploads store whole chunks only"));
            };
            let (etag, number) = lock(&self.pending)
                .remove(&(id, c.index))
                .ok_or_else(|| Error::Corrupt(format!("no stored part for chunk {}", c.index)))?;
            stored_first += self.claim(id, c, etag, number).await?;
            self.delete_if_exists(&self.chunk_dir(id, c.index).join("lease"))
                .await?;
        }
        Ok(stored_first)
    }

    async fn assemble(&self, record: &UploadRecord, chunks: &[StoredChunk]) -> Result<()> {
        let id = record.id;
        let staging = self.staging_key(id);
        if self.exists(&staging).await? {
            return Ok(());
        }
        let obj = self.get_record(id).await?.ok_or(Error::NotFound)?;
        if record.size == 0 {
            // S3 completes no multipart upload without parts: an empty object instead.
            let _ = self
                .store
                .abort_multipart(&staging, &obj.multipart_id)
                .await;
            self.store
                .put(&staging, PutPayload::new())
                .await
                .map_err(store_err)?;
            return Ok(());
        }
        let mut first_by_index: HashMap<u64, (StoredChunk, SentPart)> = HashMap::new();
        for (c, part) in self
            .chunk_objects(id)
            .await?
            .iter()
            .filter_map(|m| parse_receipt(&m.location))
        {
            first_by_index.entry(c.index).or_insert((c, part));
        }
        let mut parts = Vec::with_capacity(chunks.len());
        for c in chunks {
            match first_by_index.get(&c.index) {
                Some((r, part)) if r.sha256 == c.sha256 => parts.push(part.clone()),
                _ => {
                    return Err(Error::MissingChunks(common::ranges::to_ranges([c.index])));
                }
            }
        }
        let joined = self
            .complete_parts(&staging, &obj.multipart_id, &parts)
            .await;
        if matches!(joined, Ok(Ok(()))) {
            return Ok(());
        }
        // Another verifier of the same upload joined them first.
        if self.exists(&staging).await? {
            return Ok(());
        }
        let Err(refused) = joined? else {
            return Ok(());
        };
        // A part that no longer holds the bytes its receipt names (rewritten from outside,
        // or by a writer that outlived its lease where a chunk has a single part number):
        // that chunk is forgotten, so the client sends it again, instead of the whole
        // upload failing.
        let stored = self.part_etags(id).await?;
        let changed: Vec<u64> = chunks
            .iter()
            .filter(|c| {
                first_by_index.get(&c.index).is_some_and(|(_, part)| {
                    stored.get(&part.number) != Some(&normalize_etag(&part.etag))
                })
            })
            .map(|c| c.index)
            .collect();
        if changed.is_empty() {
            return Err(Error::Corrupt(format!(
                "the store refused to join the parts: {refused}"
            )));
        }
        for index in &changed {
            tracing::warn!(%id, index, "a part changed after its receipt: the chunk must be sent again");
            self.delete_prefix(&self.chunk_dir(id, *index)).await?;
        }
        Err(Error::MissingChunks(common::ranges::to_ranges(changed)))
    }

    async fn read_range(&self, record: &UploadRecord, offset: u64, len: u64) -> Result<ByteStream> {
        let key = if record.state == crate::record::StoredState::Completed {
            self.file_key(record.id)
        } else {
            self.staging_key(record.id)
        };
        let got = self
            .store
            .get_opts(
                &key,
                GetOptions {
                    range: Some(GetRange::Bounded(offset..offset + len)),
                    ..Default::default()
                },
            )
            .await
            .map_err(store_err)?;
        Ok(got.into_stream().map_err(store_err).boxed())
    }

    async fn load_prefix_hash(&self, id: UploadId) -> Result<Option<SavedPrefixHash>> {
        match self
            .store
            .get(&self.key(&format!("uploads/{id}/hash.json")))
            .await
        {
            Ok(got) => {
                let e_tag = got.meta.e_tag.clone();
                let bytes = got.bytes().await.map_err(store_err)?;
                Ok(serde_json::from_slice::<SavedPrefixHash>(&bytes)
                    .ok()
                    .map(|mut s| {
                        s.version = e_tag;
                        s
                    }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn save_prefix_hash(&self, id: UploadId, saved: &SavedPrefixHash) -> Result<()> {
        let body = serde_json::to_vec(saved).map_err(|e| Error::Corrupt(e.to_string()))?;
        let mode = match &saved.version {
            None => PutMode::Create,
            Some(v) => PutMode::Update(UpdateVersion {
                e_tag: Some(v.clone()),
                version: None,
            }),
        };
        match self
            .store
            .put_opts(
                &self.key(&format!("uploads/{id}/hash.json")),
                PutPayload::from(body),
                PutOptions::from(mode),
            )
            .await
        {
            Ok(_)
            | Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn publish(&self, record: &UploadRecord) -> Result<()> {
        let staging = self.staging_key(record.id);
        let file = self.file_key(record.id);
        let copied = if record.size > self.max_copy_size {
            self.copy_in_parts(&staging, &file, record.size).await
        } else {
            self.store.copy(&staging, &file).await.map_err(store_err)
        };
        match copied {
            Ok(()) => {}
            // Published already (a retry after a crash between copy and delete, or
            // another publisher that finished first).
            Err(Error::NotFound) => return Ok(()),
            Err(e) => return Err(e),
        }
        self.delete_if_exists(&staging).await
    }

    async fn content(&self, record: &UploadRecord) -> Result<Content> {
        let file = self.file_key(record.id);
        if self.exists(&file).await? {
            return Ok(Content::Object);
        }
        // The record says completed, but the file is not there yet: the process that
        // verified it is still copying, or stopped (a crash, a store failure) between
        // storing "completed" and publishing. Publishing is idempotent: finish it here.
        self.publish(record).await?;
        if self.exists(&file).await? {
            return Ok(Content::Object);
        }
        Err(Error::Corrupt(format!(
            "upload {} is completed but neither its file nor its staging object exists",
            record.id
        )))
    }

    async fn discard(&self, id: UploadId) -> Result<()> {
        if let Some(obj) = self.get_record(id).await? {
            match self
                .store
                .abort_multipart(&self.staging_key(id), &obj.multipart_id)
                .await
            {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!(%id, error = %e, "abort multipart failed"),
            }
        }
        self.delete_prefix(&self.chunks_prefix(id)).await?;
        for key in [
            self.staging_key(id),
            self.file_key(id),
            self.key(&format!("uploads/{id}/hash.json")),
        ] {
            self.delete_if_exists(&key).await?;
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
            *last = Some(std::time::Instant::now());
        }
        let now = OffsetDateTime::now_utc();
        let mut listed = Vec::new();
        for under in [self.key("uploads"), self.key("files")] {
            listed.extend(self.multipart_uploads(&under).await?);
        }
        // A multipart upload's age is the lesser of what the store says and how long this
        // process has seen it: a store may misreport `Initiated` (moto answers the same
        // date in 2010 for every upload), and a create whose record is being written right
        // now must never look like a leftover.
        let aged: Vec<(String, String)> = {
            let mut seen = lock(&self.leftovers_seen);
            seen.retain(|id, _| listed.iter().any(|(_, m, _)| m == id));
            listed
                .into_iter()
                .filter(|(_, multipart_id, began)| {
                    let first = *seen
                        .entry(multipart_id.clone())
                        .or_insert_with(std::time::Instant::now);
                    let by_store = (now - *began).try_into().unwrap_or(Duration::ZERO);
                    by_store.min(first.elapsed()) >= self.leftover_grace
                })
                .map(|(key, multipart_id, _)| (key, multipart_id))
                .collect()
        };
        let mut aborted = 0;
        for (key, multipart_id) in aged {
            if !self.is_leftover(&key, &multipart_id).await? {
                continue;
            }
            match self
                .store
                .abort_multipart(&Path::from(key.as_str()), &multipart_id)
                .await
            {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(e)),
            }
            tracing::info!(
                key,
                multipart_id,
                "aborted a multipart upload nothing names"
            );
            aborted += 1;
        }
        Ok(aborted)
    }

    async fn purge(&self, id: UploadId) -> Result<()> {
        self.discard(id).await?;
        self.delete_prefix(&self.key(&format!("uploads/{id}")))
            .await
    }

    async fn list(&self) -> Result<Vec<UploadId>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.key("uploads")))
            .await
            .map_err(store_err)?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename()?.parse().ok())
            .collect())
    }

    async fn index_put(&self, key: &str) -> Result<()> {
        self.store
            .put(&self.key(&format!("index/{key}")), PutPayload::default())
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn index_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let root = format!("{}/", self.key("index"));
        let base = self.key(&format!("index/{prefix}"));
        let mut listed = match after {
            Some(a) => self
                .store
                .list_with_offset(Some(&base), &self.key(&format!("index/{a}"))),
            None => self.store.list(Some(&base)),
        };
        let mut keys = Vec::new();
        while keys.len() < limit {
            let Some(meta) = listed.next().await else {
                break;
            };
            let location = meta.map_err(store_err)?.location.to_string();
            if let Some(key) = location.strip_prefix(&root) {
                keys.push(key.to_string());
            }
        }
        Ok(keys)
    }

    async fn index_delete(&self, key: &str) -> Result<()> {
        self.delete_if_exists(&self.key(&format!("index/{key}")))
            .await
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
            .put_opts(
                &path,
                PutPayload::from(body),
                PutOptions::from(PutMode::Create),
            )
            .await
        {
            Ok(_) => Ok(None),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                let bytes = self
                    .store
                    .get(&path)
                    .await
                    .map_err(store_err)?
                    .bytes()
                    .await
                    .map_err(store_err)?;
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| Error::Corrupt(e.to_string()))
            }
            Err(e) => Err(store_err(e)),
        }
    }

    async fn health(&self) -> Result<()> {
        match self.store.head(&self.key(".health")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }
}

/// Streams one chunk into an UploadPart request through a presigned URL.
struct S3ChunkWriter {
    tx: Option<mpsc::Sender<std::result::Result<Bytes, std::io::Error>>>,
    /// The UploadPart being sent; answers the part's ETag.
    response: Option<tokio::task::JoinHandle<Result<String>>>,
    key: (UploadId, u64),
    /// The part number this write sends.
    number: u64,
    pending: Pending,
    /// The chunk's lease, released if the write is abandoned (commit removes it otherwise).
    lease: Option<lease::HeldLease>,
}

#[async_trait]
impl ChunkWriter for S3ChunkWriter {
    async fn write(&mut self, bytes: Bytes) -> Result<()> {
        if let Some(lease) = &mut self.lease {
            lease.renew_if_due().await?;
        }
        let tx = self
            .tx
            .as_ref()
            .ok_or(Error::Corrupt("writer finished".into()))?;
        if tx.send(Ok(bytes)).await.is_err() {
            // The request ended early: its outcome says why.
            self.tx = None;
            return Err(Error::Io(std::io::Error::other(
                "the store stopped reading the part",
            )));
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        drop(self.tx.take());
        let response = self
            .response
            .take()
            .ok_or(Error::Corrupt("writer finished".into()))?;
        let etag = part::answered(response).await?;
        lock(&self.pending).insert(self.key, (etag, self.number));
        // From here the lease is the commit's to remove.
        if let Some(lease) = self.lease.take() {
            lease.disarm();
        }
        Ok(())
    }
}

impl Drop for S3ChunkWriter {
    fn drop(&mut self) {
        if let (Some(_), Some(response)) = (&self.tx, &self.response) {
            // Abandoned mid-chunk: stop the request so the part is not half-sent.
            response.abort();
        }
        // The lease, if still held, is released as it drops.
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
