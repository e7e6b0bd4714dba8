//! Small files in one request (`POST /v1/uploads` with the file as its body) on both
//! backends: [`local`] on local disk, [`s3`] on S3 (a fresh bucket of the S3 test store per
//! test); `cases.rs` holds the tests.

// Each backend's module includes the same test file with its own `STORAGE`: one suite,
// compiled once per backend.
#[allow(clippy::duplicate_mod)]
mod local;
#[allow(clippy::duplicate_mod)]
mod s3;
