//! A bucket in memory with S3's semantics, for the backend's unit tests and the model
//! check: conditional writes are atomic, a multipart upload keeps parts by number (a part
//! sent again replaces the earlier one), checks a part's SHA-256 when one is given,
//! completes only with the ETags its parts have, and is gone once completed or aborted.
//! Every request is counted, and faults can be injected: a store that refuses every
//! request, or one that never answers. For the model check, its whole content can be
//! copied out at any moment ([`MemoryStore::snapshot`]), and the passing of wall-clock time
//! stood for ([`MemoryStore::backdate`], [`MemoryStore::edit_in_place`]); multipart
//! uploads are kept in id order, so that listing them is deterministic.

use std::collections::BTreeMap;
use std::ops::{Bound, Range};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use common::Sha256Digest;
use futures_util::StreamExt;
use md5::Md5;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::store::{op, Got, Joined, MultipartInfo, ObjectInfo, PartBody, PartInfo, Put, Store};
use crate::backend::ByteStream;
use crate::error::{Error, Result};

#[derive(Clone)]
struct Object {
    bytes: Bytes,
    etag: String,
    modified: OffsetDateTime,
}

#[derive(Clone)]
struct Part {
    bytes: Bytes,
    etag: String,
    sha256: Option<Sha256Digest>,
}

struct Multipart {
    key: String,
    initiated: OffsetDateTime,
    parts: BTreeMap<u64, Part>,
}

#[derive(Default)]
struct Bucket {
    objects: BTreeMap<String, Object>,
    uploads: BTreeMap<String, Multipart>,
    next: u64,
}

/// See the module documentation.
#[derive(Default)]
pub struct MemoryStore {
    bucket: Mutex<Bucket>,
    requests: Mutex<BTreeMap<&'static str, u64>>,
    failing: AtomicBool,
    hanging: AtomicBool,
    bytes_written: AtomicU64,
}

fn etag_of(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

impl MemoryStore {
    /// An empty bucket.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Requests made so far, by operation.
    pub fn requests(&self) -> BTreeMap<&'static str, u64> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests made so far, all operations.
    pub fn total_requests(&self) -> u64 {
        self.requests().values().sum()
    }

    /// Bytes written by PutObject (not parts): what spilling and copying cost.
    pub fn object_bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// From now on every request fails (a store that is down), until set back.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// From now on every request waits forever (a store that hangs), until set back.
    pub fn set_hanging(&self, hanging: bool) {
        self.hanging.store(hanging, Ordering::SeqCst);
    }

    /// Every key stored, for tests.
    pub fn keys(&self) -> Vec<String> {
        self.bucket
            .lock()
            .unwrap()
            .objects
            .keys()
            .cloned()
            .collect()
    }

    /// Multipart uploads in progress, for tests.
    pub fn multipart_count(&self) -> usize {
        self.bucket.lock().unwrap().uploads.len()
    }

    /// A copy of every object and every multipart upload in progress (a few small objects
    /// in tests: nothing is copied but reference counts).
    pub fn snapshot(&self) -> Snapshot {
        let b = self.bucket.lock().unwrap();
        Snapshot {
            objects: b
                .objects
                .iter()
                .map(|(k, o)| {
                    let seen = SnapshotObject {
                        bytes: o.bytes.clone(),
                        etag: o.etag.clone(),
                        modified: o.modified,
                    };
                    (k.clone(), seen)
                })
                .collect(),
            uploads: b
                .uploads
                .iter()
                .map(|(id, u)| {
                    let parts = u
                        .parts
                        .iter()
                        .map(|(n, p)| (*n, (p.bytes.clone(), p.etag.clone())))
                        .collect();
                    let seen = SnapshotUpload {
                        key: u.key.clone(),
                        parts,
                    };
                    (id.clone(), seen)
                })
                .collect(),
        }
    }

    /// Makes the objects under `prefix` look written `by` earlier (their `LastModified`):
    /// the wall clock does not move under a test's paused time.
    pub fn backdate(&self, prefix: &str, by: std::time::Duration) {
        let mut b = self.bucket.lock().unwrap();
        for (_, o) in b.objects.iter_mut().filter(|(k, _)| k.starts_with(prefix)) {
            o.modified -= by;
        }
    }

    /// Rewrites the object at `key` in place, keeping its ETag: for a test that stands for
    /// time passing (a record's own timestamps aged), not for a write anyone made. Answers
    /// whether the object exists.
    pub fn edit_in_place(&self, key: &str, edit: impl FnOnce(&[u8]) -> Vec<u8>) -> bool {
        let mut b = self.bucket.lock().unwrap();
        let Some(o) = b.objects.get_mut(key) else {
            return false;
        };
        o.bytes = Bytes::from(edit(&o.bytes));
        true
    }

    async fn enter(&self, what: &'static str) -> Result<()> {
        *self.requests.lock().unwrap().entry(what).or_default() += 1;
        while self.hanging.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::Io(std::io::Error::other("the store is down")));
        }
        Ok(())
    }

    fn info(key: &str, o: &Object) -> ObjectInfo {
        ObjectInfo {
            key: key.to_string(),
            etag: o.etag.clone(),
            size: o.bytes.len() as u64,
            last_modified: o.modified,
        }
    }
}

/// What [`MemoryStore::snapshot`] copies out.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every object, by key.
    pub objects: BTreeMap<String, SnapshotObject>,
    /// Every multipart upload in progress, by id.
    pub uploads: BTreeMap<String, SnapshotUpload>,
}

/// An object in a [`Snapshot`].
#[derive(Clone, Debug)]
pub struct SnapshotObject {
    /// Its bytes.
    pub bytes: Bytes,
    /// Its ETag, unquoted.
    pub etag: String,
    /// When it was last written.
    pub modified: OffsetDateTime,
}

/// A multipart upload in a [`Snapshot`].
#[derive(Clone, Debug)]
pub struct SnapshotUpload {
    /// The key it completes to.
    pub key: String,
    /// Its parts by number: bytes and ETag.
    pub parts: BTreeMap<u64, (Bytes, String)>,
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Got>> {
        self.enter(op::GET).await?;
        let b = self.bucket.lock().unwrap();
        Ok(b.objects.get(key).map(|o| Got {
            bytes: o.bytes.clone(),
            etag: o.etag.clone(),
        }))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<ByteStream> {
        self.enter(op::GET_RANGE).await?;
        let b = self.bucket.lock().unwrap();
        let o = b.objects.get(key).ok_or(Error::NotFound)?;
        let end = (range.end as usize).min(o.bytes.len());
        let start = (range.start as usize).min(end);
        let bytes = o.bytes.slice(start..end);
        Ok(futures_util::stream::iter([Ok(bytes)]).boxed())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.enter(op::HEAD).await?;
        let b = self.bucket.lock().unwrap();
        Ok(b.objects.get(key).map(|o| Self::info(key, o)))
    }

    async fn put(&self, key: &str, body: Vec<Bytes>, condition: Put) -> Result<String> {
        let body: Bytes = body.concat().into();
        self.enter(op::PUT).await?;
        let mut b = self.bucket.lock().unwrap();
        match (&condition, b.objects.get(key)) {
            (Put::Create, Some(_)) => return Err(Error::Conflict),
            (Put::Update(_), None) => return Err(Error::NotFound),
            (Put::Update(want), Some(o)) if *want != o.etag => return Err(Error::Conflict),
            _ => {}
        }
        self.bytes_written
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        let etag = etag_of(&body);
        b.objects.insert(
            key.to_string(),
            Object {
                bytes: body,
                etag: etag.clone(),
                modified: OffsetDateTime::now_utc(),
            },
        );
        Ok(etag)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.enter(op::DELETE).await?;
        self.bucket.lock().unwrap().objects.remove(key);
        Ok(())
    }

    async fn delete_many(&self, keys: Vec<String>) -> Result<()> {
        for batch in keys.chunks(1000) {
            self.enter(op::DELETE_MANY).await?;
            let mut b = self.bucket.lock().unwrap();
            for k in batch {
                b.objects.remove(k);
            }
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.enter(op::LIST).await?;
        let b = self.bucket.lock().unwrap();
        Ok(b.objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| Self::info(k, o))
            .collect())
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectInfo>> {
        self.enter(op::LIST).await?;
        let dir = format!("{prefix}/");
        let b = self.bucket.lock().unwrap();
        let from = match after {
            Some(a) if a >= dir.as_str() => Bound::Excluded(a.to_string()),
            _ => Bound::Included(dir.clone()),
        };
        Ok(b.objects
            .range((from, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&dir))
            .take(limit)
            .map(|(k, o)| Self::info(k, o))
            .collect())
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        self.enter(op::LIST).await?;
        let b = self.bucket.lock().unwrap();
        let mut dirs: Vec<String> = b
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, _)| {
                let rest = &k[prefix.len()..];
                rest.split_once('/').map(|(d, _)| d.to_string())
            })
            .collect();
        dirs.dedup();
        Ok(dirs)
    }

    async fn create_multipart(&self, key: &str) -> Result<String> {
        self.enter(op::CREATE_MULTIPART).await?;
        let mut b = self.bucket.lock().unwrap();
        b.next += 1;
        let id = format!("mp-{:06}", b.next);
        b.uploads.insert(
            id.clone(),
            Multipart {
                key: key.to_string(),
                initiated: OffsetDateTime::now_utc(),
                parts: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u64,
        len: u64,
        sha256: Option<Sha256Digest>,
        mut body: PartBody,
    ) -> Result<String> {
        self.enter(op::UPLOAD_PART).await?;
        if !(1..=10_000).contains(&number) {
            return Err(Error::Io(std::io::Error::other("InvalidPartNumber")));
        }
        let mut bytes = BytesMut::new();
        while let Some(piece) = body.next().await {
            bytes.extend_from_slice(&piece.map_err(Error::Io)?);
            if bytes.len() as u64 > len {
                return Err(Error::Io(std::io::Error::other("the body is too long")));
            }
        }
        if bytes.len() as u64 != len {
            return Err(Error::Io(std::io::Error::other("IncompleteBody")));
        }
        let actual = Sha256Digest(Sha256::digest(&bytes).into());
        if sha256.is_some_and(|want| want != actual) {
            return Err(Error::Io(std::io::Error::other("BadDigest")));
        }
        let mut b = self.bucket.lock().unwrap();
        let upload = b
            .uploads
            .get_mut(upload_id)
            .filter(|u| u.key == key)
            .ok_or(Error::NotFound)?;
        let etag = etag_of(&bytes);
        upload.parts.insert(
            number,
            Part {
                bytes: bytes.freeze(),
                etag: etag.clone(),
                sha256: sha256.map(|_| actual),
            },
        );
        Ok(etag)
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<PartInfo>> {
        self.enter(op::LIST_PARTS).await?;
        let b = self.bucket.lock().unwrap();
        let upload = b
            .uploads
            .get(upload_id)
            .filter(|u| u.key == key)
            .ok_or(Error::NotFound)?;
        Ok(upload
            .parts
            .iter()
            .map(|(n, p)| PartInfo {
                number: *n,
                etag: p.etag.clone(),
                size: p.bytes.len() as u64,
                sha256: p.sha256,
            })
            .collect())
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u64, String)],
    ) -> Result<Joined> {
        self.enter(op::COMPLETE_MULTIPART).await?;
        let mut b = self.bucket.lock().unwrap();
        let Some(upload) = b.uploads.get(upload_id).filter(|u| u.key == key) else {
            return Err(Error::NotFound);
        };
        let mut joined = BytesMut::new();
        let mut last = 0;
        for (number, etag) in parts {
            if *number <= last {
                return Ok(Joined::Refused("InvalidPartOrder".into()));
            }
            last = *number;
            match upload.parts.get(number) {
                Some(p) if p.etag == *etag => joined.extend_from_slice(&p.bytes),
                _ => return Ok(Joined::Refused(format!("InvalidPart {number}"))),
            }
        }
        b.uploads.remove(upload_id);
        let bytes = joined.freeze();
        b.objects.insert(
            key.to_string(),
            Object {
                etag: format!("{}-{}", etag_of(&bytes), parts.len()),
                bytes,
                modified: OffsetDateTime::now_utc(),
            },
        );
        Ok(Joined::Done)
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.enter(op::ABORT_MULTIPART).await?;
        let mut b = self.bucket.lock().unwrap();
        if b.uploads.get(upload_id).is_some_and(|u| u.key == key) {
            b.uploads.remove(upload_id);
        }
        Ok(())
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<MultipartInfo>> {
        self.enter(op::LIST_MULTIPART).await?;
        let b = self.bucket.lock().unwrap();
        Ok(b.uploads
            .iter()
            .filter(|(_, u)| u.key.starts_with(prefix))
            .map(|(id, u)| MultipartInfo {
                key: u.key.clone(),
                upload_id: id.clone(),
                initiated: u.initiated,
            })
            .collect())
    }
}
