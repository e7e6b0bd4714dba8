//! End-to-end tests of the `uploader` CLI (issue 4): each test starts the real
//! `upload-server` on a free loopback port, runs the real `uploader` binary against it
//! (directly or through the fault-injecting proxy in `tests::proxy`), and checks exit
//! codes, output, JSON events and the bytes the server ends up with.
//!
//! Build the binaries first (`cargo build --workspace --bins`; `make test` does). The
//! terminal test needs tmux.

#[path = "cli/errors.rs"]
mod errors;
#[path = "cli/faults.rs"]
mod faults;
#[path = "cli/resume.rs"]
mod resume;
#[path = "cli/support.rs"]
mod support;
#[path = "cli/terminal.rs"]
mod terminal;
#[path = "cli/upload.rs"]
mod upload;
