//! IETF Resumable Uploads for HTTP (draft-ietf-httpbis-resumable-upload) at `/uploads/`,
//! against the real `upload-server` process, one file a part of the draft: [`creation`]
//! (creation and appends), [`offsets`] (offset retrieval, mismatches, a restart
//! mid-upload), [`lengths`] (consistency, and lengths unknown at creation),
//! [`cancellation`], [`problems`] (the draft's problem types, interop versions and media
//! types), [`digests`] (`Repr-Digest`), [`interim`] (`104 Upload Resumption Supported`);
//! then [`tusjs`], tus-js-client's `ietf-draft-05` and `ietf-draft-03` protocols. Every
//! upload is checked again through the native API (`GET /v1/uploads/{id}` and its content).

/// The storage these tests run on, named by the including backend module.
use super::STORAGE;

/// Starts a server on this suite's storage (local disk or S3).
macro_rules! start {
    ($args:expr) => {
        tests::start_or_skip!(super::STORAGE, $args)
    };
}

const MIB: usize = 1 << 20;

mod cancellation;
mod creation;
mod digests;
mod interim;
mod lengths;
mod offsets;
mod problems;
mod tusjs;
