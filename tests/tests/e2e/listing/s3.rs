//! The listing suite on S3.

/// The storage these tests run on.
const STORAGE: tests::fixture::Storage = tests::fixture::Storage::S3;

#[path = "cases.rs"]
mod cases;
