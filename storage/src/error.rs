//! The one error type of the domain core and its backends.

use common::ranges::IndexRanges;
use common::Sha256Digest;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an upload operation failed. The server maps each variant to one HTTP status in one
/// place; nothing here knows about HTTP.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No upload has this id (or it was purged long ago).
    #[error("no upload with this id")]
    NotFound,
    /// The upload existed but was cancelled or expired; its bytes are gone.
    #[error("the upload was {0}")]
    Gone(&'static str),
    /// The request is malformed or out of bounds (size, chunk size, index, length).
    #[error("{0}")]
    Invalid(String),
    /// The declared size is above the configured maximum.
    #[error("size {size} is above the maximum upload size of {max} bytes")]
    TooLarge {
        /// Declared size.
        size: u64,
        /// Configured maximum.
        max: u64,
    },
    /// A body larger than one request may carry (an upload sent in one request holds at
    /// most one chunk).
    #[error(
        "a body of {size} bytes is above the {max} bytes one request may carry; create the \
         upload and send it in chunks"
    )]
    BodyTooLarge {
        /// The body's length.
        size: u64,
        /// The most one request carries.
        max: u64,
    },
    /// Lengths that contradict each other: a length said that is not the upload's, a body
    /// longer than what remains, a length below the bytes stored.
    #[error("{0}")]
    InconsistentLength(String),
    /// A request said it carried an upload's last bytes, but they end before its length.
    #[error(
        "the request said it completes the upload, but it ended at {offset} of {length} bytes; \
         append the rest at that offset"
    )]
    EndedEarly {
        /// Where the stored bytes end.
        offset: u64,
        /// The upload's length.
        length: u64,
    },
    /// Bytes for an upload whose bytes are all there.
    #[error("the upload is complete: it takes no more bytes")]
    UploadComplete {
        /// The refused request carried bytes (rather than none).
        body: bool,
    },
    /// An append to a final upload of a concatenation, which is made of its parts.
    #[error("a final upload is made of its parts and takes no appends")]
    FinalUpload,
    /// The chunk's bytes do not match the digest the client sent with them.
    #[error("the chunk's SHA-256 is {actual}, but Content-Digest says {declared}")]
    ChunkDigestMismatch {
        /// What the client declared.
        declared: Sha256Digest,
        /// What the server computed.
        actual: Sha256Digest,
    },
    /// Other bytes are already stored for this chunk index.
    #[error("chunk {index} is already stored with other bytes (SHA-256 {stored})")]
    ChunkConflict {
        /// The chunk index.
        index: u64,
        /// Digest of what is stored.
        stored: Sha256Digest,
    },
    /// The body ended before the chunk's length.
    #[error("the body ended after {got} of {expected} bytes")]
    BodyTooShort {
        /// Bytes the chunk must have.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// The body carried more bytes than the chunk's length.
    #[error("the body is longer than the chunk's {expected} bytes")]
    BodyTooLong {
        /// Bytes the chunk must have.
        expected: u64,
    },
    /// The client stopped sending mid-body for longer than the body timeout.
    #[error("no body bytes arrived for {0:?}; the partial chunk was discarded")]
    BodyTimeout(std::time::Duration),
    /// Reading the request body failed (the client went away mid-chunk).
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    /// The operation does not fit the upload's state (e.g. a chunk after completion).
    #[error("the upload is {0}")]
    WrongState(&'static str),
    /// Completion was asked while chunks are still missing.
    #[error("{} chunk(s) are still missing", common::ranges::count(.0))]
    MissingChunks(IndexRanges),
    /// Stored chunks are not the bytes the client read, by the digests it gave at
    /// completion; nothing is published.
    #[error("{} chunk(s) stored differ from the digests given", common::ranges::count(.0))]
    ChunksDiffer(IndexRanges),
    /// The stored bytes cannot become the file (storage holds other bytes than the
    /// acknowledged ones, or parts it cannot join); the upload is failed, with this reason.
    #[error("the upload failed: {0}")]
    AssemblyFailed(String),
    /// The whole-file SHA-256 differs from the declared one; the upload is failed.
    #[error("the file's SHA-256 is {actual}, but {expected} was declared")]
    Sha256Mismatch {
        /// Declared digest.
        expected: Sha256Digest,
        /// Computed digest.
        actual: Sha256Digest,
    },
    /// An in-order append did not start at the upload's current offset.
    #[error("the upload's offset is {expected}, but the request starts at {got}")]
    OffsetMismatch {
        /// Where the next append must start.
        expected: u64,
        /// Where the request started.
        got: u64,
    },
    /// The storage keeps failing; requests are refused until it recovers.
    #[error("storage is unavailable; retry in {}s", retry_after.as_secs().max(1))]
    Unavailable {
        /// When to try again.
        retry_after: std::time::Duration,
    },
    /// Another server process changed the record first (shared storage); reload and
    /// decide again.
    #[error("the upload was changed by another request; retry")]
    Conflict,
    /// A newer request for the same bytes took over from this stalled one.
    #[error("a newer request for the same bytes took over from this stalled one")]
    Superseded,
    /// Another request is appending to this upload right now.
    #[error("another request is writing to this upload; retry when it has finished")]
    Locked,
    /// The upload does not take this kind of write (chunks vs in-order appends).
    #[error("{0}")]
    WrongMode(&'static str),
    /// An append's body does not match the checksum sent with it; nothing was appended.
    #[error("the body's {algorithm} checksum does not match; nothing was appended")]
    BodyChecksumMismatch {
        /// Algorithm name (`sha1`, `sha256`, `md5`).
        algorithm: &'static str,
    },
    /// The same idempotency key was used with another request body.
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyConflict,
    /// Another request stored this chunk while this one waited to write it (shared
    /// storage): the request is a retry of it, and the service compares the bytes.
    #[error("chunk {index} was stored by another request meanwhile")]
    StoredMeanwhile {
        /// Chunk index.
        index: u64,
        /// SHA-256 of the stored chunk.
        stored: Sha256Digest,
    },
    /// The owner's open uploads would reserve more bytes than their quota.
    #[error(
        "this upload of {size} bytes would bring your open uploads to {} bytes, above your quota of {quota} bytes; complete or cancel some first",
        .reserved + .size
    )]
    QuotaExceeded {
        /// Bytes already reserved by the owner's open uploads.
        reserved: u64,
        /// Size of the upload asked for.
        size: u64,
        /// The owner's quota.
        quota: u64,
    },
    /// The owner already has as many open uploads as allowed.
    #[error("you have {max} open uploads, the most allowed; complete or cancel some first")]
    TooManyOpenUploads {
        /// The limit.
        max: u64,
    },
    /// The body's length must be said up front (`Content-Length`) and was not: a body of
    /// unknown length cannot be told from one cut short.
    #[error("{0}")]
    LengthRequired(&'static str),
    /// The storage has no room left for these bytes.
    #[error("storage is full")]
    StorageFull,
    /// A stored record could not be understood.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The storage failed.
    #[error("storage I/O: {0}")]
    Io(#[source] std::io::Error),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        // ENOSPC and EDQUOT: the client can resume once space is freed.
        match e.raw_os_error() {
            Some(28) | Some(122) => Error::StorageFull,
            _ => Error::Io(e),
        }
    }
}
