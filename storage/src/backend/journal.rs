//! The chunk journal of the local backend: an append-only file of fixed-size receipts.
//!
//! One entry per acknowledged chunk: `magic u32 | index u64 | size u64 | sha256 [32] |
//! crc32 u32`, little-endian, 56 bytes. An entry is appended with one `write` on an
//! `O_APPEND` file and made durable with `fdatasync` before the chunk is acknowledged, so
//! a crash can leave at most one torn entry at the end; [`replay`] drops it and truncates
//! the file so later appends stay aligned.

use std::fs::File;
use std::io::{Read, Write};

use common::Sha256Digest;

use crate::backend::StoredChunk;
use crate::error::Result;

const MAGIC: u32 = 0x314a_5055; // "UPJ1"
/// Bytes per journal entry.
pub const ENTRY_LEN: usize = 56;

/// Encodes one receipt.
pub fn encode(c: &StoredChunk) -> [u8; ENTRY_LEN] {
    let mut e = [0u8; ENTRY_LEN];
    e[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    e[4..12].copy_from_slice(&c.index.to_le_bytes());
    e[12..20].copy_from_slice(&c.size.to_le_bytes());
    e[20..52].copy_from_slice(&c.sha256.0);
    let crc = crc32fast::hash(&e[..52]);
    e[52..56].copy_from_slice(&crc.to_le_bytes());
    e
}

/// Decodes one receipt; `None` for a torn or foreign entry.
pub fn decode(e: &[u8]) -> Option<StoredChunk> {
    if e.len() != ENTRY_LEN {
        return None;
    }
    fn word<const N: usize>(e: &[u8], at: usize) -> Option<[u8; N]> {
        e.get(at..at + N)?.try_into().ok()
    }
    let magic = u32::from_le_bytes(word(e, 0)?);
    let crc = u32::from_le_bytes(word(e, 52)?);
    if magic != MAGIC || crc != crc32fast::hash(&e[..52]) {
        return None;
    }
    Some(StoredChunk {
        index: u64::from_le_bytes(word(e, 4)?),
        size: u64::from_le_bytes(word(e, 12)?),
        sha256: Sha256Digest(word(e, 20)?),
    })
}

/// Appends one receipt and makes it durable.
pub fn append(file: &mut File, c: &StoredChunk) -> Result<()> {
    file.write_all(&encode(c))?;
    file.sync_data()?;
    Ok(())
}

/// Reads every valid receipt; cuts a torn tail so that later appends stay aligned.
pub fn replay(file: &mut File) -> Result<Vec<StoredChunk>> {
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let mut out = Vec::with_capacity(buf.len() / ENTRY_LEN);
    let mut valid = 0;
    for e in buf.chunks(ENTRY_LEN) {
        match decode(e) {
            Some(c) => {
                out.push(c);
                valid += ENTRY_LEN;
            }
            None => break,
        }
    }
    if valid != buf.len() {
        tracing::warn!(
            kept = valid,
            dropped = buf.len() - valid,
            "chunk journal had a torn tail; cut it"
        );
        file.set_len(valid as u64)?;
        file.sync_data()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn chunk(i: u64) -> StoredChunk {
        StoredChunk {
            index: i,
            size: 100 + i,
            sha256: Sha256Digest([i as u8; 32]),
        }
    }

    #[test]
    fn torn_tail_is_cut_and_appends_stay_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let open = || {
            OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(&path)
                .unwrap()
        };
        let mut f = open();
        append(&mut f, &chunk(0)).unwrap();
        append(&mut f, &chunk(5)).unwrap();
        f.write_all(&encode(&chunk(9))[..20]).unwrap();
        drop(f);
        let mut f = open();
        assert_eq!(replay(&mut f).unwrap(), vec![chunk(0), chunk(5)]);
        append(&mut f, &chunk(7)).unwrap();
        drop(f);
        let mut f = open();
        assert_eq!(replay(&mut f).unwrap(), vec![chunk(0), chunk(5), chunk(7)]);
    }

    #[test]
    fn corrupt_entry_is_rejected() {
        let mut e = encode(&chunk(3));
        assert_eq!(decode(&e), Some(chunk(3)));
        e[30] ^= 1;
        assert_eq!(decode(&e), None);
    }
}
