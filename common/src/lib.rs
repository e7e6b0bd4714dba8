//! Wire types of the native upload API v1, shared by `upload-server` and `uploader`.
//!
//! Nothing here does I/O: these are the shapes both sides agree on, and the parsers of
//! the small textual formats they exchange.
//!
//! # Layout
//! - [`api`]: JSON bodies (capabilities, create, status, chunk receipt, complete, problem).
//! - [`id`]: the upload id, a canonical UUID, safe as a path segment or object key.
//! - [`digest`]: SHA-256 values as hex and as RFC 9530 `Content-Digest` headers.
//! - [`geometry`]: chunk count, offsets and lengths, and the chunk size rules.
//! - [`ranges`]: sets of chunk indexes written as inclusive ranges.
//! - [`relpath`]: the `relative_path` of an upload from a directory, checked as data.
//! - [`units`]: human sizes (`8MiB`) and durations (`90m`) for flags.
//! - `openapi` (feature `openapi`): OpenAPI schemas of the types serialized as strings.

pub mod api;
pub mod digest;
pub mod geometry;
pub mod id;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod ranges;
pub mod relpath;
pub mod units;

#[cfg(test)]
mod fuzz;

pub use digest::Sha256Digest;
pub use id::UploadId;

/// Header names the API uses beyond the standard ones.
pub mod headers {
    /// RFC 9530 digest of the request or response body.
    pub const CONTENT_DIGEST: &str = "content-digest";
    /// Makes `POST /v1/uploads` safe to retry: the same key and body give the same upload.
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
    /// Correlates a request with its log line; echoed, or generated when absent.
    pub const REQUEST_ID: &str = "x-request-id";
}

/// Media type of every error body (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";
