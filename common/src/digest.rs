//! SHA-256 values: lowercase hex in JSON bodies, RFC 9530 `Content-Digest` in headers.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// A SHA-256 digest. Serialized as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Digest(pub [u8; 32]);

/// A digest could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// Not 64 hex characters.
    #[error("a SHA-256 must be 64 hexadecimal characters")]
    BadHex,
    /// The header is not an RFC 9530 dictionary with a `sha-256` member.
    #[error("Content-Digest must look like sha-256=:<base64 of 32 bytes>:")]
    BadHeader,
}

impl Sha256Digest {
    /// The digest as lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The digest as standard base64 (S3's `x-amz-checksum-sha256`).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Reads a digest in standard base64.
    pub fn from_base64(value: &str) -> Result<Self, DigestError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| DigestError::BadHex)?;
        bytes.try_into().map(Self).map_err(|_| DigestError::BadHex)
    }

    /// The value of a `Content-Digest` (or `Repr-Digest`) header carrying this digest.
    pub fn to_header(&self) -> String {
        format!(
            "sha-256=:{}:",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }

    /// Reads the `sha-256` member of an RFC 9530 digest header.
    ///
    /// Returns `Ok(None)` when the header names only other algorithms, which the server
    /// does not verify; a malformed header or a malformed `sha-256` value is an error.
    pub fn from_header(value: &str) -> Result<Option<Self>, DigestError> {
        let mut found = None;
        for member in value.split(',') {
            let member = member.trim();
            if member.is_empty() {
                return Err(DigestError::BadHeader);
            }
            let (key, val) = member.split_once('=').ok_or(DigestError::BadHeader)?;
            let key = key.trim();
            if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.*".contains(&b))
            {
                return Err(DigestError::BadHeader);
            }
            if key != "sha-256" {
                continue;
            }
            let val = val.trim();
            let b64 = val
                .strip_prefix(':')
                .and_then(|v| v.strip_suffix(':'))
                .ok_or(DigestError::BadHeader)?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| DigestError::BadHeader)?;
            let arr: [u8; 32] = bytes.try_into().map_err(|_| DigestError::BadHeader)?;
            if found
                .replace(Self(arr))
                .is_some_and(|prev| prev != Self(arr))
            {
                return Err(DigestError::BadHeader);
            }
        }
        Ok(found)
    }
}

impl FromStr for Sha256Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, DigestError> {
        if s.len() != 64 {
            return Err(DigestError::BadHex);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.to_ascii_lowercase(), &mut out).map_err(|_| DigestError::BadHex)?;
        Ok(Self(out))
    }
}

impl TryFrom<String> for Sha256Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, DigestError> {
        s.parse()
    }
}

impl From<Sha256Digest> for String {
    fn from(d: Sha256Digest) -> String {
        d.to_hex()
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn hex_round_trip() {
        let d: Sha256Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_hex(), EMPTY);
        assert_eq!(EMPTY.to_uppercase().parse::<Sha256Digest>().unwrap(), d);
        assert_eq!("abc".parse::<Sha256Digest>(), Err(DigestError::BadHex));
        assert_eq!(
            EMPTY.replace('e', "g").parse::<Sha256Digest>(),
            Err(DigestError::BadHex)
        );
    }

    #[test]
    fn header_round_trip_and_rejects() {
        let d: Sha256Digest = EMPTY.parse().unwrap();
        let h = d.to_header();
        assert_eq!(h, "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:");
        assert_eq!(Sha256Digest::from_header(&h), Ok(Some(d)));
        assert_eq!(
            Sha256Digest::from_header(&format!("md5=:AAAA:, {h}")),
            Ok(Some(d))
        );
        assert_eq!(Sha256Digest::from_header("md5=:AAAA:"), Ok(None));
        for bad in [
            "",
            "sha-256",
            "sha-256=abc",
            "sha-256=:abc:",
            "sha-256=:AAAA:",
            "SHA 256=:x:",
            ",,",
        ] {
            assert!(Sha256Digest::from_header(bad).is_err(), "{bad}");
        }
    }
}
