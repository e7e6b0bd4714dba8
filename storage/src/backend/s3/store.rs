//! The S3 operations the backend uses, as a narrow trait: [`super::aws::AwsStore`] speaks
//! to a real S3-compatible server, [`super::memory::MemoryStore`] keeps a bucket in memory
//! with S3's semantics (conditional writes, multipart uploads with part numbers and
//! checksums), so the backend's logic runs in-process in tests and under the model check.
//!
//! Keys are relative to the bucket. Errors: [`Error::NotFound`] for a missing object or
//! multipart upload, [`Error::Conflict`] for a failed condition, [`Error::Io`] when the
//! store could not be asked or did not answer in time.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use common::Sha256Digest;
use futures_util::stream::BoxStream;
use time::OffsetDateTime;

use crate::backend::ByteStream;
use crate::error::{Error, Result};

/// An object as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key.
    pub key: String,
    /// Its ETag, unquoted.
    pub etag: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub last_modified: OffsetDateTime,
}

/// A small object read whole.
#[derive(Clone, Debug)]
pub struct Got {
    /// Its bytes.
    pub bytes: Bytes,
    /// Its ETag, unquoted, for a later conditional write.
    pub etag: String,
}

/// The condition of a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Put {
    /// Whatever is there.
    Overwrite,
    /// Only if nothing is there (`If-None-Match: *`).
    Create,
    /// Only if the object is still at this ETag (`If-Match`).
    Update(String),
}

/// A part of a multipart upload, as ListParts shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartInfo {
    /// Its number.
    pub number: u64,
    /// Its ETag, unquoted.
    pub etag: String,
    /// Its size in bytes.
    pub size: u64,
    /// The SHA-256 the store verified it against, if it was sent with one.
    pub sha256: Option<Sha256Digest>,
}

/// A multipart upload in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultipartInfo {
    /// The key it will complete to.
    pub key: String,
    /// Its id.
    pub upload_id: String,
    /// When it began, as the store says.
    pub initiated: OffsetDateTime,
}

/// A part's body, streamed.
pub type PartBody = BoxStream<'static, std::io::Result<Bytes>>;

/// What the store made of a CompleteMultipartUpload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Joined {
    /// The object exists at the key.
    Done,
    /// The store refused to join these parts (one missing, or with another ETag).
    Refused(String),
}

/// Operation names, for counting requests (`upload_store_requests_total{op}`).
pub mod op {
    /// GetObject of a small object.
    pub const GET: &str = "get";
    /// GetObject of a byte range.
    pub const GET_RANGE: &str = "get_range";
    /// HeadObject.
    pub const HEAD: &str = "head";
    /// PutObject.
    pub const PUT: &str = "put";
    /// DeleteObject.
    pub const DELETE: &str = "delete";
    /// DeleteObjects (up to a thousand keys).
    pub const DELETE_MANY: &str = "delete_many";
    /// ListObjectsV2.
    pub const LIST: &str = "list";
    /// CreateMultipartUpload.
    pub const CREATE_MULTIPART: &str = "create_multipart";
    /// UploadPart.
    pub const UPLOAD_PART: &str = "upload_part";
    /// ListParts.
    pub const LIST_PARTS: &str = "list_parts";
    /// CompleteMultipartUpload.
    pub const COMPLETE_MULTIPART: &str = "complete_multipart";
    /// AbortMultipartUpload.
    pub const ABORT_MULTIPART: &str = "abort_multipart";
    /// ListMultipartUploads.
    pub const LIST_MULTIPART: &str = "list_multipart_uploads";
}

/// See the module documentation.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads a small object whole; `None` when it does not exist.
    async fn get(&self, key: &str) -> Result<Option<Got>>;

    /// Reads bytes `range` of an object.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<ByteStream>;

    /// An object's listing entry, without its bytes.
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>>;

    /// Writes an object (its bytes in pieces, not copied together) under `condition`;
    /// answers its ETag.
    async fn put(&self, key: &str, body: Vec<Bytes>, condition: Put) -> Result<String>;

    /// Removes an object; removing a missing one is not an error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Removes objects, a thousand a request (DeleteObjects).
    async fn delete_many(&self, keys: Vec<String>) -> Result<()>;

    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    /// Up to `limit` objects under the "directory" `prefix` (a key prefix ending at a `/`,
    /// given without it), in key order, each after `after` when given: one listing request
    /// (ListObjectsV2 with `start-after`) for a page of the listing index.
    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectInfo>> {
        let dir = format!("{prefix}/");
        let mut found = self.list(&dir).await?;
        found.retain(|o| after.is_none_or(|a| o.key.as_str() > a));
        found.truncate(limit);
        Ok(found)
    }

    /// The next level of "directories" under `prefix` (which ends with `/`): the distinct
    /// key segments after it, without the trailing `/`.
    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>>;

    /// Begins a multipart upload that will complete to `key`; answers its id.
    async fn create_multipart(&self, key: &str) -> Result<String>;

    /// Uploads part `number` (`len` bytes of `body`); with `sha256`, the store checks the
    /// bytes against it and refuses them if they differ. Answers the part's ETag.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u64,
        len: u64,
        sha256: Option<Sha256Digest>,
        body: PartBody,
    ) -> Result<String>;

    /// Every part of a multipart upload, by number.
    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<PartInfo>>;

    /// Joins the parts named (number, ETag), in order, into the object at `key`.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u64, String)],
    ) -> Result<Joined>;

    /// Ends a multipart upload and frees its parts; a missing one is not an error.
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()>;

    /// The multipart uploads in progress under `prefix`.
    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<MultipartInfo>>;
}

/// An ETag without its quotes, lower-case, as stores spell it variously.
pub fn normalize_etag(etag: &str) -> String {
    etag.trim().trim_matches('"').to_ascii_lowercase()
}

/// A store that failed to answer.
pub fn io(e: impl std::fmt::Display) -> Error {
    Error::Io(std::io::Error::other(e.to_string()))
}
