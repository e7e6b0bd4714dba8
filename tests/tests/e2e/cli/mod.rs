//! End-to-end tests of the `uploader` CLI: each test starts the real
//! `upload-server` on a free loopback port, runs the real `uploader` binary against it
//! (directly or through the fault-injecting proxy in `tests::proxy`), and checks exit
//! codes, output, JSON events and the bytes the server ends up with.
//!
//! Build the binaries first (`cargo build --workspace --bins`; `make test` does). The
//! terminal tests need tmux.

mod dirs;
mod errors;
mod faults;
mod habits;
mod install;
mod outage;
mod resume;
mod safe_resume;
mod stdin;
pub(crate) mod support;
mod terminal;
mod upload;
