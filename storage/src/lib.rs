//! The upload domain core and the storage backends behind it.
//!
//! Every protocol (the native API, tus, the IETF draft) calls one [`Uploads`] service; it
//! owns the rules (states, lengths, digests, idempotency, expiry) and the locks, and a
//! [`Backend`] persists records, chunk receipts and bytes. Nothing here knows HTTP.
//!
//! # Layout
//! - [`error`]: the crate's one error enum.
//! - [`record`]: the durable upload record and pure rules (geometry, limits).
//! - [`lifecycle`]: the state machine every state change goes through.
//! - [`hash`]: hashing while streaming; the whole-file hash midstate.
//! - [`whole_hash`]: every path by which the whole-file hash advances, behind one type.
//! - [`ordered_hash`]: the whole-file hash in file order on storage that cannot read an
//!   unfinished upload back (S3): chunks kept until their turn, or spilled.
//! - [`peers`]: what servers sharing a bucket tell each other (the claims they write),
//!   so that one need not read another's from the store.
//! - [`checksum`]: per-request body checksums (tus `Upload-Checksum`).
//! - [`principal`]: who a request acts for; owners see only their own uploads.
//! - [`index`]: the per-owner listing index, newest first, read a page at a time.
//! - [`quota`]: per-owner (per-address when anonymous) limits on open uploads and
//!   reserved bytes, uploads of unknown length counted as they grow.
//! - [`upload`]: the in-memory handle of one upload, with its locks.
//! - [`writers`]: one writer per chunk, and takeover of stalled ones.
//! - [`service`]: the [`Uploads`] service, a file per operation; [`service::stream`] holds
//!   the rules of tus and the IETF draft, [`service::list`] the listing of an owner's
//!   uploads.
//! - [`breaker`]: the circuit breaker in front of a shared store.
//! - [`faults`]: injected storage faults, for tests only.
//! - [`events`]: upload events, their durable outbox (webhooks) and live announcements.
//! - [`metrics`]: the service's metrics (the `metrics` facade; exported by the server).
//! - [`backend`]: the [`Backend`] trait; [`backend::local`] stores on local disk (with its
//!   receipts [`backend::journal`]); [`backend::s3`] in an S3-compatible bucket, written
//!   against the narrow [`backend::s3::store::Store`] trait, with a real implementation
//!   ([`backend::s3::aws`], every request under [`backend::s3::deadline`]) and one in
//!   memory ([`backend::s3::memory`]); its chunks, appends and append lease are in
//!   `chunks`, `append` and `lease`.

pub mod backend;
pub mod breaker;
pub mod checksum;
pub mod error;
pub mod events;
pub mod faults;
pub mod hash;
pub mod index;
pub mod lifecycle;
pub mod metrics;
pub mod ordered_hash;
pub mod peers;
pub mod principal;
pub mod quota;
pub mod record;
pub mod service;
pub mod upload;
pub mod whole_hash;
pub mod writers;

pub use backend::local::LocalBackend;
pub use backend::{Backend, Content};
pub use checksum::BodyChecksum;
pub use error::{Error, Result};
pub use record::{Concat, UploadMode};
pub use service::list::{ListQuery, Page};
pub use service::stream::{Append, Appended, Dialect, NewStream};
pub use service::{
    ChunkStored, Completion, Created, Position, Stats, SweepReport, Uploads, UploadsConfig,
};
