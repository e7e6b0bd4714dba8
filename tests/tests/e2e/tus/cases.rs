//! tus 1.0 conformance over raw HTTP, against the real `upload-server` process, one file a
//! part of the protocol: [`core`] (OPTIONS, HEAD and PATCH, offsets across chunks, the
//! errors), [`creation`] (creation-with-upload, empty uploads, termination),
//! [`checksum`], [`deferred`] (creation-defer-length), [`concatenation`], and
//! [`interrupted`] (one writer at a time, a stalled PATCH, a restart mid-upload). Every
//! upload is checked again through the native API.

/// The storage these tests run on, named by the including backend module.
use super::STORAGE;

/// Starts a server on this suite's storage (local disk or S3).
macro_rules! start {
    ($args:expr) => {
        tests::start_or_skip!(super::STORAGE, $args)
    };
}

const MIB: usize = 1 << 20;

mod checksum;
mod concatenation;
mod core;
mod creation;
mod deferred;
mod interrupted;
