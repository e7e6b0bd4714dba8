//! End-to-end tests of `upload-server` (issue 3): each test starts the real binary on a
//! free loopback port with its own data directory and speaks HTTP to it.
//!
//! Build the binaries first (`cargo build --workspace --bins`; `make test` does).

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
