//! Checksums of a whole request body, as tus's checksum extension sends them
//! (`Upload-Checksum: <algorithm> <base64>`).

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// A checksum a client declared for a request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyChecksum {
    /// SHA-1.
    Sha1([u8; 20]),
    /// SHA-256.
    Sha256([u8; 32]),
    /// MD5.
    Md5([u8; 16]),
}

/// Algorithms accepted, by their tus names.
pub const ALGORITHMS: [&str; 3] = ["sha1", "sha256", "md5"];

impl BodyChecksum {
    /// Builds a checksum from an algorithm name and raw digest bytes; `None` when the
    /// algorithm is unknown or the length is wrong.
    pub fn new(algorithm: &str, digest: &[u8]) -> Option<Self> {
        match algorithm {
            "sha1" => digest.try_into().ok().map(Self::Sha1),
            "sha256" => digest.try_into().ok().map(Self::Sha256),
            "md5" => digest.try_into().ok().map(Self::Md5),
            _ => None,
        }
    }

    /// The algorithm's name.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::Sha1(_) => "sha1",
            Self::Sha256(_) => "sha256",
            Self::Md5(_) => "md5",
        }
    }

    /// A hasher to feed the body into.
    pub fn hasher(&self) -> BodyHasher {
        match self {
            Self::Sha1(_) => BodyHasher::Sha1(Sha1::new()),
            Self::Sha256(_) => BodyHasher::Sha256(Sha256::new()),
            Self::Md5(_) => BodyHasher::Md5(Md5::new()),
        }
    }

    /// Whether the fed body matches.
    pub fn matches(&self, hasher: BodyHasher) -> bool {
        match (self, hasher) {
            (Self::Sha1(d), BodyHasher::Sha1(h)) => h.finalize().as_slice() == d,
            (Self::Sha256(d), BodyHasher::Sha256(h)) => h.finalize().as_slice() == d,
            (Self::Md5(d), BodyHasher::Md5(h)) => h.finalize().as_slice() == d,
            _ => false,
        }
    }
}

/// A running checksum of a body.
pub enum BodyHasher {
    /// SHA-1.
    Sha1(Sha1),
    /// SHA-256.
    Sha256(Sha256),
    /// MD5.
    Md5(Md5),
}

impl BodyHasher {
    /// Feeds bytes.
    pub fn update(&mut self, b: &[u8]) {
        match self {
            Self::Sha1(h) => h.update(b),
            Self::Sha256(h) => h.update(b),
            Self::Md5(h) => h.update(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_each_algorithm() {
        for (alg, digest) in [
            ("sha1", Sha1::digest(b"abc").to_vec()),
            ("sha256", Sha256::digest(b"abc").to_vec()),
            ("md5", Md5::digest(b"abc").to_vec()),
        ] {
            let c = BodyChecksum::new(alg, &digest).unwrap();
            assert_eq!(c.algorithm(), alg);
            let mut h = c.hasher();
            h.update(b"ab");
            h.update(b"c");
            assert!(c.matches(h));
            let mut h = c.hasher();
            h.update(b"abd");
            assert!(!c.matches(h));
        }
        assert!(BodyChecksum::new("sha256", &[0; 20]).is_none());
        assert!(BodyChecksum::new("crc32", &[0; 4]).is_none());
    }
}
