//! The native API suite on local disk.

/// The storage these tests run on (see `support::start_server`).
const STORAGE: support::Storage = support::Storage::Local;

#[path = "api.rs"]
mod api;
#[path = "bad_input.rs"]
mod bad_input;
#[path = "chunks.rs"]
mod chunks;
#[path = "crash.rs"]
mod crash;
#[path = "lifecycle.rs"]
mod lifecycle;
#[path = "local_disk.rs"]
mod local_disk;
#[path = "runs.rs"]
mod runs;
#[path = "support.rs"]
mod support;
