//! The durable upload record and the pure rules about an upload's shape: chunk geometry,
//! size limits and life-cycle states. No I/O here, so the rules are unit-tested directly.

use std::collections::BTreeMap;

use common::api::{ChunkSizeBounds, CreateUpload, UploadState};
use common::geometry::Geometry;
use common::{Sha256Digest, UploadId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// Longest file name accepted, in bytes.
pub const MAX_FILENAME_LEN: usize = 1024;
/// Most metadata pairs accepted.
pub const MAX_METADATA_PAIRS: usize = 64;
/// Longest metadata key or value, in bytes.
pub const MAX_METADATA_LEN: usize = 4096;

/// Life-cycle state as stored. `Cancelled` and `Expired` are tombstones: the bytes are
/// gone and requests answer "gone" until the tombstone is purged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredState {
    /// Accepting chunks.
    Uploading,
    /// Verifying the whole-file SHA-256; resumed after a restart.
    Completing,
    /// Verified and published.
    Completed,
    /// Verification failed; bytes discarded.
    Failed,
    /// Cancelled by a client; bytes discarded.
    Cancelled,
    /// Idle past the TTL; bytes discarded.
    Expired,
}

impl StoredState {
    /// Whether the upload still takes bytes or is being verified: it holds its owner's
    /// quota.
    pub fn is_open(self) -> bool {
        matches!(self, StoredState::Uploading | StoredState::Completing)
    }

    /// The state shown to clients, or the reason the upload is gone.
    pub fn visible(self) -> Result<UploadState> {
        match self {
            StoredState::Uploading => Ok(UploadState::Uploading),
            StoredState::Completing => Ok(UploadState::Completing),
            StoredState::Completed => Ok(UploadState::Completed),
            StoredState::Failed => Ok(UploadState::Failed),
            StoredState::Cancelled => Err(Error::Gone("cancelled")),
            StoredState::Expired => Err(Error::Gone("expired")),
        }
    }

    /// Name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            StoredState::Uploading => "uploading",
            StoredState::Completing => "completing",
            StoredState::Completed => "completed",
            StoredState::Failed => "failed",
            StoredState::Cancelled => "cancelled",
            StoredState::Expired => "expired",
        }
    }

    /// Whether the bytes have been discarded and only a tombstone is left.
    pub fn is_tombstone(self) -> bool {
        matches!(self, StoredState::Cancelled | StoredState::Expired)
    }
}

/// How an upload's bytes arrive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadMode {
    /// Whole chunks, in any order and in parallel (the native API).
    #[default]
    Chunks,
    /// Appends at the current offset, in order, of any length (tus, the IETF draft).
    Stream,
}

/// An upload's part in a concatenation: parts are uploaded separately (in parallel), then
/// a final upload is made of them, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "role")]
pub enum Concat {
    /// A part of a later final upload.
    Partial,
    /// Made of these parts, in this order.
    Final {
        /// The parts.
        parts: Vec<UploadId>,
        /// The parts as the creating request named them (absolute URLs or paths), to say
        /// them back the same way.
        #[serde(default)]
        urls: Vec<String>,
    },
}

/// Everything the server keeps about one upload besides its bytes and chunk receipts.
/// Rewritten whole (atomically) on every state change; chunk receipts live apart so that a
/// chunk's acknowledgement never rewrites this record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// The upload's id.
    pub id: UploadId,
    /// Total size in bytes.
    pub size: u64,
    /// Bytes per chunk.
    pub chunk_size: u64,
    /// How bytes arrive.
    #[serde(default)]
    pub mode: UploadMode,
    /// SHA-256 the client declared (at creation or completion).
    #[serde(default)]
    pub declared_sha256: Option<Sha256Digest>,
    /// SHA-256 computed at completion.
    #[serde(default)]
    pub sha256: Option<Sha256Digest>,
    /// Original file name, as data.
    #[serde(default)]
    pub filename: Option<String>,
    /// Client metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Life-cycle state.
    pub state: StoredState,
    /// Why the upload failed, when it did.
    #[serde(default)]
    pub failure: Option<String>,
    /// Its part in a concatenation (tus's concatenation extension), if any.
    #[serde(default)]
    pub concat: Option<Concat>,
    /// The length is not known yet (tus creation-defer-length, an IETF upload created
    /// without one): `size` is then the most it may grow to, until the client declares it.
    #[serde(default)]
    pub length_deferred: bool,
    /// Who created it (an authenticated owner); only they see it.
    #[serde(default)]
    pub owner: Option<String>,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change of the record.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The stored version this copy was read as (an ETag on S3), for conditional writes.
    #[serde(skip)]
    pub version: Option<String>,
}

impl UploadRecord {
    /// Bytes counted against the owner's quota: the size, or nothing while the length is
    /// deferred (the size is then only a ceiling).
    pub fn reserved_bytes(&self) -> u64 {
        if self.length_deferred {
            0
        } else {
            self.size
        }
    }

    /// A length said again for an upload whose length is known: the same one, or
    /// [`Error::InconsistentLength`] (a known length never changes).
    pub fn same_length(&self, length: u64) -> Result<()> {
        if self.size == length {
            Ok(())
        } else {
            Err(Error::InconsistentLength(format!(
                "the upload's length is {} bytes and cannot change to {length}",
                self.size
            )))
        }
    }

    /// The upload's chunk geometry (shared with the CLI: `common::geometry`).
    pub fn geometry(&self) -> Geometry {
        Geometry::new(self.size, self.chunk_size)
    }

    /// Number of chunks: `ceil(size / chunk_size)`; 0 for an empty upload.
    pub fn chunk_count(&self) -> u64 {
        self.geometry().count()
    }

    /// Byte offset where chunk `index` starts.
    pub fn chunk_offset(&self, index: u64) -> u64 {
        self.geometry().offset(index)
    }

    /// Length of chunk `index`, or an error when the index is out of range.
    pub fn chunk_len(&self, index: u64) -> Result<u64> {
        self.geometry().len(index).ok_or_else(|| {
            Error::Invalid(format!(
                "chunk index {index} is out of range: this upload has {} chunk(s)",
                self.chunk_count()
            ))
        })
    }

    /// Where chunk `index` ends (exclusive), for any index below the chunk count.
    pub fn chunk_end(&self, index: u64) -> u64 {
        self.geometry().end(index)
    }
}

pub use common::geometry::chunk_count;

/// Size rules: what a backend can store and what the operator allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest upload accepted.
    pub max_upload_size: u64,
    /// Chunk size bounds and default.
    pub chunk_size: ChunkSizeBounds,
    /// Most chunks one upload may have.
    pub max_chunks: u64,
}

impl Limits {
    /// The chunk size for an upload of `size` bytes when the client names none: the
    /// default, grown (in whole MiB) until the chunk count fits `max_chunks`.
    pub fn default_chunk_size(&self, size: u64) -> u64 {
        common::geometry::default_chunk_size(&self.chunk_size, self.max_chunks, size)
    }

    /// Checks a create request and settles its chunk size.
    pub fn validate(&self, req: &CreateUpload) -> Result<u64> {
        let size = req.size.unwrap_or(0);
        if size > self.max_upload_size {
            return Err(Error::TooLarge {
                size,
                max: self.max_upload_size,
            });
        }
        let chunk_size = match req.chunk_size {
            None => self.default_chunk_size(size),
            Some(c) if c < self.chunk_size.min || c > self.chunk_size.max => {
                return Err(Error::Invalid(format!(
                    "chunk_size {c} is outside the accepted range {}..={}",
                    self.chunk_size.min, self.chunk_size.max
                )))
            }
            Some(c) => c,
        };
        let count = chunk_count(size, chunk_size);
        if count > self.max_chunks {
            return Err(Error::Invalid(format!(
                "{count} chunks of {chunk_size} bytes are more than the maximum of {}; choose a larger chunk_size",
                self.max_chunks
            )));
        }
        if let Some(name) = &req.filename {
            check_text("filename", name, MAX_FILENAME_LEN)?;
        }
        if let Some(meta) = &req.metadata {
            common::relpath::check_metadata(meta).map_err(|e| Error::Invalid(e.to_string()))?;
            if meta.len() > MAX_METADATA_PAIRS {
                return Err(Error::Invalid(format!(
                    "at most {MAX_METADATA_PAIRS} metadata pairs are accepted"
                )));
            }
            for (k, v) in meta {
                if k.is_empty() {
                    return Err(Error::Invalid("metadata keys must not be empty".into()));
                }
                check_text("metadata key", k, MAX_METADATA_LEN)?;
                // tus carries keys bare in `Upload-Metadata` (`key base64,key base64`): a
                // key that every protocol can show is visible ASCII without space or comma.
                if !k.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                    return Err(Error::Invalid(format!(
                        "metadata key {k:?} must be visible ASCII without spaces or commas"
                    )));
                }
                check_text("metadata value", v, MAX_METADATA_LEN)?;
            }
        }
        Ok(chunk_size)
    }
}

/// Text kept as data must be bounded and free of control characters, so that it is safe
/// in logs, headers and file listings.
fn check_text(what: &str, s: &str, max: usize) -> Result<()> {
    if s.len() > max {
        return Err(Error::Invalid(format!("{what} is longer than {max} bytes")));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{what} must not contain control characters"
        )));
    }
    if s.chars().any(is_bidi_control) {
        return Err(Error::Invalid(format!(
            "{what} must not contain bidirectional text controls (they make a name display as \
             another)"
        )));
    }
    Ok(())
}

/// Unicode's explicit direction marks, embeddings, overrides and isolates: invisible,
/// and able to make a name display as another.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn limits() -> Limits {
        Limits {
            max_upload_size: 1 << 40,
            chunk_size: ChunkSizeBounds {
                min: 256 * 1024,
                max: 1 << 30,
                default: 8 * MIB,
            },
            max_chunks: 100_000,
        }
    }

    fn req(size: u64, chunk_size: Option<u64>) -> CreateUpload {
        CreateUpload {
            size: Some(size),
            chunk_size,
            ..Default::default()
        }
    }

    #[test]
    fn geometry() {
        let r = UploadRecord {
            id: UploadId::new_random(),
            size: 10,
            chunk_size: 4,
            mode: UploadMode::Chunks,
            declared_sha256: None,
            sha256: None,
            filename: None,
            metadata: BTreeMap::new(),
            state: StoredState::Uploading,
            failure: None,
            concat: None,
            length_deferred: false,
            owner: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
            version: None,
        };
        assert_eq!(r.chunk_count(), 3);
        assert_eq!(r.chunk_len(0).unwrap(), 4);
        assert_eq!(r.chunk_len(2).unwrap(), 2);
        assert!(r.chunk_len(3).is_err());
        assert_eq!(r.chunk_offset(2), 8);
        assert_eq!(chunk_count(0, 4), 0);
        assert_eq!(chunk_count(8, 4), 2);
    }

    #[test]
    fn default_chunk_size_grows_to_fit_max_chunks() {
        let l = limits();
        assert_eq!(l.validate(&req(1 << 30, None)).unwrap(), 8 * MIB);
        assert_eq!(l.validate(&req(0, None)).unwrap(), 8 * MIB);
        let big = l.validate(&req(1 << 40, None)).unwrap();
        assert!(chunk_count(1 << 40, big) <= l.max_chunks);
        assert_eq!(big % MIB, 0);
    }

    #[test]
    fn rejects_out_of_bounds() {
        let l = limits();
        assert!(matches!(
            l.validate(&req((1 << 40) + 1, None)),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            l.validate(&req(10, Some(1))),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            l.validate(&req(1 << 40, Some(256 * 1024))),
            Err(Error::Invalid(_))
        ));
        let mut r = req(10, None);
        r.filename = Some("a\nb".into());
        assert!(matches!(l.validate(&r), Err(Error::Invalid(_))));
        r.filename = Some("x".repeat(MAX_FILENAME_LEN + 1));
        assert!(matches!(l.validate(&r), Err(Error::Invalid(_))));
        r.filename = Some("invoice\u{202e}fdp.exe".into());
        assert!(l.validate(&r).is_err(), "a right-to-left override");
        r.filename = Some("résumé — 履歴書.pdf".into());
        assert!(l.validate(&r).is_ok(), "non-ASCII names are fine");
        r.filename = Some("../../etc/passwd".into());
        assert!(l.validate(&r).is_ok(), "a filename is data, never a path");
    }
}
