//! The end-to-end tests: one binary, one module per area. Each test starts the real
//! binaries (`upload-server`, `uploader`) and real clients, stores and browsers on free
//! loopback ports, and stops them by PID; the shared harness is the `tests` library
//! (`tests/src/`).
//!
//! Build the binaries first (`cargo build --workspace --bins`; `make test` does). A test
//! that needs a tool the project installs (`make test-deps`) says so and returns when it
//! is missing, unless the tool's `*_REQUIRED=1` variable is set (as `make test` does).

mod attacks;
mod auth;
mod cli;
mod crash_loop;
mod events;
mod ietf;
mod limits;
mod listing;
mod observability;
mod page;
mod power_cut;
mod proxy_nginx;
mod s3;
mod s3_server;
mod server;
mod slots;
mod small_files;
mod soak;
mod tls;
mod tus;
mod tus_clients;
