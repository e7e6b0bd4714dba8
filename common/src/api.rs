//! JSON bodies of the native API v1.
//!
//! The routes (see the README for the full contract):
//! `GET /v1` → [`ServerCapabilities`]; `POST /v1/uploads` [`CreateUpload`] → [`UploadStatus`];
//! `GET /v1/uploads/{id}` → [`UploadStatus`]; `PUT /v1/uploads/{id}/chunks/{index}` →
//! [`ChunkReceipt`]; `POST /v1/uploads/{id}/complete` [`CompleteUpload`] → [`UploadStatus`];
//! `GET /v1/uploads` → [`UploadList`]; errors → [`Problem`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ranges::IndexRanges;
use crate::{Sha256Digest, UploadId};

/// What this server accepts; clients size their chunks from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Capabilities {
    /// API version, `"1"`.
    pub version: String,
    /// Largest upload accepted, in bytes.
    pub max_upload_size: u64,
    /// Chunk size bounds and the default choice.
    pub chunk_size: ChunkSizeBounds,
    /// Most chunks one upload may have.
    pub max_chunks: u64,
    /// Storage backend: `"local"` or `"s3"`.
    pub storage: String,
    /// Digest algorithms verified, as RFC 9530 names.
    pub checksums: Vec<String>,
    /// Largest file `POST /v1/uploads` takes as its body (`application/octet-stream`):
    /// created, stored, verified and completed in that one request. Absent: the server
    /// takes no bytes in its create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_request_max: Option<u64>,
}

/// `GET /v1`: [`Capabilities`] (the storage's), flattened, plus what the HTTP layer asks of
/// clients, which the storage knows nothing of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerCapabilities {
    /// What uploads may be.
    #[serde(flatten)]
    pub capabilities: Capabilities,
    /// Whether requests need `Authorization: Bearer <token>` (the built-in page then asks
    /// for a token).
    pub token_required: bool,
}

/// Chunk size bounds in bytes. Every chunk but the last has exactly the upload's chunk size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChunkSizeBounds {
    /// Smallest chunk size an upload may choose.
    pub min: u64,
    /// Largest chunk size an upload may choose.
    pub max: u64,
    /// Chosen when the client names none (grown when the upload would need too many chunks).
    pub default: u64,
}

/// Body of `POST /v1/uploads`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateUpload {
    /// Total size in bytes; 0 is a valid upload. Required unless `defer_length` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The size is not known yet (a stream): it is declared at completion, as `size` in
    /// `POST /v1/uploads/{id}/complete` (tus's `Upload-Defer-Length`). Every chunk but
    /// the last is then exactly `chunk_size` bytes and is sent with `Content-Length`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub defer_length: bool,
    /// Bytes per chunk; the server chooses when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u64>,
    /// Expected SHA-256 of the whole file, checked at completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256Digest>,
    /// Original file name; kept as data, never used as a path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// Free-form string pairs kept with the upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Where an upload is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum UploadState {
    /// Accepting chunks.
    Uploading,
    /// Every chunk is in; the whole-file SHA-256 is being verified.
    Completing,
    /// Verified and published: the content can be downloaded.
    Completed,
    /// Verification failed; the content is never served.
    Failed,
}

/// The status document of one upload: enough for any client to resume it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadStatus {
    /// The upload's id.
    pub id: UploadId,
    /// Life-cycle state.
    pub state: UploadState,
    /// Total size in bytes.
    pub size: u64,
    /// Bytes per chunk (the last chunk may be shorter).
    pub chunk_size: u64,
    /// Number of chunks.
    pub chunk_count: u64,
    /// Bytes durably stored so far.
    pub received_bytes: u64,
    /// Chunk indexes not yet stored, as inclusive ranges.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::IndexRangesSchema))]
    pub missing: IndexRanges,
    /// SHA-256 of the whole file: the declared one until completion, then the verified one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256Digest>,
    /// Original file name, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// Metadata given at creation.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// When the upload was created.
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: OffsetDateTime,
    /// When an idle unfinished upload will be removed (absent once completed).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub expires_at: Option<OffsetDateTime>,
    /// The length is not known yet (tus creation-defer-length, an IETF upload created
    /// without one): `size` is the most it may grow to until the client declares it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub length_deferred: bool,
}

/// Answer to a stored chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChunkReceipt {
    /// Chunk index.
    pub index: u64,
    /// Bytes stored.
    pub size: u64,
    /// SHA-256 of the chunk's bytes.
    pub sha256: Sha256Digest,
}

/// Body of `POST /v1/uploads/{id}/complete` (may be empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CompleteUpload {
    /// Expected SHA-256 of the whole file, if not declared at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256Digest>,
    /// The size, for an upload created with `defer_length` (required there); for any
    /// other upload it must be the size it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The SHA-256 of every chunk, in order, as the client read it: each must be the
    /// stored chunk's, or nothing is published (422, `mismatched`). For chunks sent
    /// without a digest of their own, as in a run (`POST /v1/uploads/{id}/chunks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_sha256: Option<Vec<Sha256Digest>>,
}

/// `GET /v1/uploads`: one page of the caller's uploads, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadList {
    /// The uploads of this page, each as its status document. A page may hold fewer than
    /// `limit` (even none) while `next` says more follow: a filtered page stops after a
    /// bounded number of uploads examined.
    pub uploads: Vec<UploadStatus>,
    /// Opaque cursor of the next page (pass it as `?cursor=`); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// An RFC 9457 problem document: every error answer of the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// URI reference naming the kind of problem; stable, for programs.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong with this request, for people.
    pub detail: String,
    /// Chunks still missing, on a premature complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<crate::openapi::IndexRangesSchema>)
    )]
    pub missing: Option<IndexRanges>,
    /// Chunks whose stored bytes are not the ones the client read, by the digests it
    /// gave at completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<crate::openapi::IndexRangesSchema>)
    )]
    pub mismatched: Option<IndexRanges>,
    /// The SHA-256 that was expected, on a verification failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_sha256: Option<Sha256Digest>,
    /// The SHA-256 that was computed, on a verification failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_sha256: Option<Sha256Digest>,
    /// The upload's offset, on an append that started elsewhere (the IETF draft's
    /// `mismatching-upload-offset`).
    #[serde(
        default,
        rename = "expected-offset",
        skip_serializing_if = "Option::is_none"
    )]
    pub expected_offset: Option<u64>,
    /// Where the refused append started.
    #[serde(
        default,
        rename = "provided-offset",
        skip_serializing_if = "Option::is_none"
    )]
    pub provided_offset: Option<u64>,
}

/// The longest a signed download URL stays valid, in seconds (seven days): a leaked URL
/// stops working within a week whatever was asked.
pub const MAX_CONTENT_URL_TTL_S: u64 = 7 * 24 * 3600;

/// Body of `POST /v1/uploads/{id}/content-url` (may be empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateContentUrl {
    /// Seconds the URL stays valid: from 1 to seven days (604,800); default one hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 604800))]
    pub ttl_s: Option<u64>,
}

/// A signed, expiring download URL of a completed upload: it needs no token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContentUrl {
    /// Path and query to GET (relative to the server).
    pub url: String,
    /// When it stops working.
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: OffsetDateTime,
}
