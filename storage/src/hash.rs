//! SHA-256 while bytes stream through, and the whole-file hash's resumable midstate.
//!
//! Every chunk is hashed once as it arrives (to verify `Content-Digest` and to recognise a
//! retry). The whole-file hash advances over the contiguous prefix of stored chunks: a chunk
//! that arrives exactly at the prefix is hashed in flight, others are read back later (from
//! the page cache on local disk, usually while the upload is still running). The midstate
//! is saved so that a restart, or another instance, continues where it stopped.

use serde::{Deserialize, Serialize};
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest, Sha256};

use common::Sha256Digest;

use crate::error::{Error, Result};

/// How far the whole-file hash has got: the first `hashed_bytes` bytes of the file are
/// hashed into `hasher`.
#[derive(Clone)]
pub struct PrefixHash {
    /// Bytes hashed, from the start of the file.
    pub hashed_bytes: u64,
    /// Running hash of chunks `0..next_index`.
    pub hasher: Sha256,
}

impl Default for PrefixHash {
    fn default() -> Self {
        Self {
            hashed_bytes: 0,
            hasher: Sha256::new(),
        }
    }
}

/// The serialized form of a [`PrefixHash`], as backends store it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPrefixHash {
    /// Bytes hashed, from the start of the file.
    pub hashed_bytes: u64,
    /// SHA-256 midstate, hex.
    pub state: String,
    /// The stored version this was read as (shared backends), for conditional writes.
    #[serde(skip)]
    pub version: Option<String>,
}

impl PrefixHash {
    /// The form to store.
    pub fn save(&self) -> SavedPrefixHash {
        SavedPrefixHash {
            hashed_bytes: self.hashed_bytes,
            state: hex::encode(self.hasher.serialize().as_slice()),
            version: None,
        }
    }

    /// The form to store, conditional on the stored `version` it continues (shared backends).
    pub fn save_as(&self, version: Option<String>) -> SavedPrefixHash {
        SavedPrefixHash {
            version,
            ..self.save()
        }
    }

    /// Restores a stored midstate; `None` if it does not parse (the caller starts over).
    pub fn restore(saved: &SavedPrefixHash) -> Option<Self> {
        let bytes = hex::decode(&saved.state).ok()?;
        let state = SerializedState::<Sha256>::try_from(bytes.as_slice()).ok()?;
        let hasher = Sha256::deserialize(&state).ok()?;
        Some(Self {
            hashed_bytes: saved.hashed_bytes,
            hasher,
        })
    }

    /// The digest of everything hashed so far.
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest(self.hasher.clone().finalize().into())
    }
}

/// Hashes one chunk's body as it streams and holds it to its exact length.
pub struct ChunkHasher {
    expected_len: u64,
    received: u64,
    chunk: Sha256,
    prefix: Option<Sha256>,
}

impl ChunkHasher {
    /// Starts a chunk of `expected_len` bytes; `prefix` continues the whole-file hash when
    /// this chunk sits right at the hashed prefix.
    pub fn new(expected_len: u64, prefix: Option<Sha256>) -> Self {
        Self {
            expected_len,
            received: 0,
            chunk: Sha256::new(),
            prefix,
        }
    }

    /// Feeds bytes; fails once more than the chunk's length has arrived.
    pub fn update(&mut self, bytes: &[u8]) -> Result<()> {
        self.received += bytes.len() as u64;
        if self.received > self.expected_len {
            return Err(Error::BodyTooLong {
                expected: self.expected_len,
            });
        }
        self.chunk.update(bytes);
        if let Some(p) = &mut self.prefix {
            p.update(bytes);
        }
        Ok(())
    }

    /// Ends the chunk: its digest, and the advanced prefix hasher if there was one.
    pub fn finish(self) -> Result<(Sha256Digest, Option<Sha256>)> {
        if self.received < self.expected_len {
            return Err(Error::BodyTooShort {
                expected: self.expected_len,
                got: self.received,
            });
        }
        Ok((Sha256Digest(self.chunk.finalize().into()), self.prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midstate_round_trip_continues_exactly() {
        let mut p = PrefixHash::default();
        p.hasher.update(b"hello ");
        p.hashed_bytes = 6;
        let saved = p.save();
        let mut back = PrefixHash::restore(&saved).unwrap();
        assert_eq!(back.hashed_bytes, 6);
        back.hasher.update(b"world");
        let expect = Sha256::digest(b"hello world");
        assert_eq!(back.digest().0, <[u8; 32]>::from(expect));
        assert!(PrefixHash::restore(&SavedPrefixHash {
            hashed_bytes: 0,
            state: "zz".into(),
            version: None,
        })
        .is_none());
    }

    #[test]
    fn chunk_length_is_enforced() {
        let mut h = ChunkHasher::new(4, None);
        h.update(b"ab").unwrap();
        assert!(matches!(
            h.finish(),
            Err(Error::BodyTooShort {
                expected: 4,
                got: 2
            })
        ));
        let mut h = ChunkHasher::new(4, None);
        assert!(matches!(h.update(b"abcde"), Err(Error::BodyTooLong { .. })));
        let mut h = ChunkHasher::new(3, Some(Sha256::new()));
        h.update(b"abc").unwrap();
        let (d, p) = h.finish().unwrap();
        assert_eq!(d.0, <[u8; 32]>::from(Sha256::digest(b"abc")));
        assert_eq!(p.unwrap().finalize(), Sha256::digest(b"abc"));
    }
}
