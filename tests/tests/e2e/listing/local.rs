//! The listing suite on local disk.

/// The storage these tests run on.
const STORAGE: tests::fixture::Storage = tests::fixture::Storage::Local;

#[path = "cases.rs"]
mod cases;
