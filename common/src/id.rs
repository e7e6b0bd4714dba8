//! The upload id: a random UUID chosen by the server.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Identifies one upload. Always a canonical lowercase hyphenated UUID, so it is safe to
/// use as a file name or an object key; any other text is rejected before it reaches
/// storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UploadId(uuid::Uuid);

/// The text was not a canonical upload id.
#[derive(Debug, thiserror::Error)]
#[error("not an upload id: expected a lowercase hyphenated UUID")]
pub struct InvalidId;

impl UploadId {
    /// A fresh random (v4) id: 122 random bits, unguessable.
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl FromStr for UploadId {
    type Err = InvalidId;

    fn from_str(s: &str) -> Result<Self, InvalidId> {
        // Only the canonical form: braces, URNs, upper case or missing hyphens would give
        // one upload several names.
        if s.len() != 36 {
            return Err(InvalidId);
        }
        let uuid = uuid::Uuid::try_parse(s).map_err(|_| InvalidId)?;
        let id = Self(uuid);
        if id.to_string() == s {
            Ok(id)
        } else {
            Err(InvalidId)
        }
    }
}

impl TryFrom<String> for UploadId {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, InvalidId> {
        s.parse()
    }
}

impl From<UploadId> for String {
    fn from(id: UploadId) -> String {
        id.to_string()
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_canonical_uuids() {
        let id = UploadId::new_random();
        assert_eq!(id.to_string().parse::<UploadId>().unwrap(), id);
        for bad in [
            "../../etc/passwd",
            "",
            "abc",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67E55044-10B1-426F-9247-BB680E5FE0C8",
            "67e5504410b1426f9247bb680e5fe0c8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "67e55044-10b1-426f-9247-bb680e5fe0c/",
        ] {
            assert!(bad.parse::<UploadId>().is_err(), "{bad}");
        }
    }
}
