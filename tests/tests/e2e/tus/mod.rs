//! The tus suite on both backends: [`local`] runs it on local disk, [`s3`] on S3 (a
//! fresh bucket of the S3 test store per test); `cases.rs` lists the tests' files, one a
//! feature, and the raw client they share is `tests::tus`.

// Each backend's module includes the same test file with its own `STORAGE`: one suite,
// compiled once per backend.
#[allow(clippy::duplicate_mod)]
mod local;
#[allow(clippy::duplicate_mod)]
mod s3;
