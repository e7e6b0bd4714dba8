//! The end-to-end tests of `upload-server` in `tests/tests/server/` (one suite, two
//! backends), run on S3: each test's server uses a fresh bucket of one S3 test server
//! (moto behind `scripts/s3-server/launcher.py`) shared by this binary, with chunks of at
//! least S3's 5 MiB minimum part. Tests of the local disk layout only say so and return.
//!
//! Skipped (with a message) when the S3 test server is not installed, unless
//! `S3_REQUIRED=1`. Build the binaries first (`cargo build --workspace --bins`).

/// The storage these tests run on (see `support::start_server`).
const STORAGE: support::Storage = support::Storage::S3;

#[path = "server/api.rs"]
mod api;
#[path = "server/bad_input.rs"]
mod bad_input;
#[path = "server/chunks.rs"]
mod chunks;
#[path = "server/crash.rs"]
mod crash;
#[path = "server/lifecycle.rs"]
mod lifecycle;
#[path = "server/support.rs"]
mod support;
