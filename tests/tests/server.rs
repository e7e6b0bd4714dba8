//! End-to-end tests of `upload-server` (issue 3) on local disk: each test starts the real
//! binary on a free loopback port with its own data directory and speaks HTTP to it.
//! `server_s3` runs the same modules on S3.
//!
//! Build the binaries first (`cargo build --workspace --bins`; `make test` does).

/// The storage these tests run on (see `support::start_server`).
const STORAGE: support::Storage = support::Storage::Local;

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
#[path = "server/local_disk.rs"]
mod local_disk;
#[path = "server/support.rs"]
mod support;
