//! What servers sharing one bucket tell each other, so that a chunk's claim written by one
//! need not be read from the store by another.
//!
//! When one upload's chunks are spread over several servers, each chunk continues the
//! whole-file hash from the midstate in its predecessor's claim, usually written by another
//! server moments before; asking the store for it is a request per chunk, and more when it
//! is not there yet. Instead, a server that writes a claim sends it to the others at once
//! ([`Announce`]), and they keep it as if they had read it. Nothing depends on a note
//! arriving: a server that hears nothing reads the claim from the store, as before, so a
//! lost note costs one request and a little time. The servers find each other, and the key
//! their notes are signed with, in the bucket itself ([`Directory`]): whoever can forge a
//! note can already write the claims.

use std::sync::Arc;

use async_trait::async_trait;
use common::UploadId;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// One claim, as the server that wrote it tells the others.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimNote {
    /// The upload.
    pub upload: UploadId,
    /// The chunk.
    pub index: u64,
    /// The claim as stored (its form belongs to the backend that wrote it).
    pub claim: serde_json::Value,
}

/// Takes the claims this server writes, to tell the others; must not block.
pub trait Announce: Send + Sync {
    /// Chunk `note.index` of `note.upload` was just claimed here.
    fn claimed(&self, note: ClaimNote);
}

/// Where the servers of one bucket find each other: each registers the address the others
/// reach it at, again now and then; an address not renewed for a few minutes is a server
/// gone.
#[async_trait]
pub trait Directory: Send + Sync {
    /// The key every server signs its notes with, made once per bucket.
    async fn key(&self) -> Result<Vec<u8>>;
    /// Says (again) that a server is reachable at `url`.
    async fn register(&self, url: &str) -> Result<()>;
    /// The servers registered lately, by address.
    async fn members(&self) -> Result<Vec<String>>;
    /// Says that the server at `url` is gone.
    async fn leave(&self, url: &str) -> Result<()>;
}

/// A shared [`Directory`].
pub type SharedDirectory = Arc<dyn Directory>;
