//! End-to-end tests of `upload-server`'s native API: each test starts the real binary on a
//! free loopback port with its own storage and speaks HTTP to it. One suite, two backends:
//! [`local`] runs it on local disk, [`s3`] on S3 (each test's server with a fresh bucket of
//! the S3 test server, chunks of at least S3's 5 MiB minimum part; tests of the local disk
//! layout only say so and return there).
//!
//! The S3 run is skipped (with a message) when the S3 test server is not installed, unless
//! `S3_REQUIRED=1`.

// Each backend's module includes the same test files with its own `STORAGE`: one suite,
// compiled once per backend.
#[allow(clippy::duplicate_mod)]
mod local;
#[allow(clippy::duplicate_mod)]
mod s3;
