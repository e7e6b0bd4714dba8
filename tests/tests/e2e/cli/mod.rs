//! End-to-end tests of the `uploader` CLI: each test starts the real
//! `upload-server` on a free loopback port, runs the real `uploader` binary against it
//! (directly or through the fault-injecting proxy in `tests::proxy`), and checks exit
//! codes, output, JSON events and the bytes the server ends up with.
//!
//! Build the binaries first (`cargo build --workspace --bins`; `make test` does). The
//! terminal test needs tmux.

mod errors;
mod faults;
mod resume;
pub(crate) mod support;
mod terminal;
mod upload;
