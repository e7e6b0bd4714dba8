//! The chunk journal of the local backend: an append-only file of fixed-size receipts.
//!
//! Each entry is `magic u32 | index u64 | size u64 | sha256 [32] | crc32 u32`,
//! little-endian, 56 bytes. The magic says which kind: `UPJ1` a whole chunk stored (with its
//! digest), `UPP1` the first `size` bytes of a chunk stored by an in-order append (tus), a
//! later entry for the same chunk superseding it. An entry is appended with one `write` on an
//! `O_APPEND` file and made durable with `fdatasync` before the chunk is acknowledged, so
//! a crash can leave at most one torn entry at the end; [`replay`] drops it and truncates
//! the file so later appends stay aligned.

use std::fs::File;
use std::io::{Read, Write};

use common::Sha256Digest;

use crate::backend::{Receipt, StoredChunk};
use crate::error::Result;

const MAGIC: u32 = 0x314a_5055; // "UPJ1"
const MAGIC_PARTIAL: u32 = 0x3150_5055; // "UPP1"
/// Bytes per journal entry.
pub const ENTRY_LEN: usize = 56;

/// Encodes one receipt.
pub fn encode(r: &Receipt) -> [u8; ENTRY_LEN] {
    let (magic, index, size, sha) = match r {
        Receipt::Chunk(c) => (MAGIC, c.index, c.size, c.sha256.0),
        Receipt::Partial { index, len } => (MAGIC_PARTIAL, *index, *len, [0; 32]),
    };
    let mut e = [0u8; ENTRY_LEN];
    e[0..4].copy_from_slice(&magic.to_le_bytes());
    e[4..12].copy_from_slice(&index.to_le_bytes());
    e[12..20].copy_from_slice(&size.to_le_bytes());
    e[20..52].copy_from_slice(&sha);
    let crc = crc32fast::hash(&e[..52]);
    e[52..56].copy_from_slice(&crc.to_le_bytes());
    e
}

/// Decodes one receipt; `None` for a torn or foreign entry.
pub fn decode(e: &[u8]) -> Option<Receipt> {
    if e.len() != ENTRY_LEN {
        return None;
    }
    fn word<const N: usize>(e: &[u8], at: usize) -> Option<[u8; N]> {
        e.get(at..at + N)?.try_into().ok()
    }
    let magic = u32::from_le_bytes(word(e, 0)?);
    let crc = u32::from_le_bytes(word(e, 52)?);
    if crc != crc32fast::hash(&e[..52]) {
        return None;
    }
    let index = u64::from_le_bytes(word(e, 4)?);
    let size = u64::from_le_bytes(word(e, 12)?);
    match magic {
        MAGIC => Some(Receipt::Chunk(StoredChunk {
            index,
            size,
            sha256: Sha256Digest(word(e, 20)?),
        })),
        MAGIC_PARTIAL => Some(Receipt::Partial { index, len: size }),
        _ => None,
    }
}

/// Appends receipts (in one write) and makes them durable.
pub fn append(file: &mut File, receipts: &[Receipt]) -> Result<()> {
    let buf: Vec<u8> = receipts.iter().flat_map(encode).collect();
    file.write_all(&buf)?;
    crate::faults::check("journal-fsync")?;
    file.sync_data()?;
    Ok(())
}

/// Reads every valid receipt; cuts a torn tail so that later appends stay aligned.
pub fn replay(file: &mut File) -> Result<Vec<Receipt>> {
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

    fn chunk(i: u64) -> Receipt {
        Receipt::Chunk(StoredChunk {
            index: i,
            size: 100 + i,
            sha256: Sha256Digest([i as u8; 32]),
        })
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
        append(&mut f, &[chunk(0)]).unwrap();
        append(&mut f, &[chunk(5), Receipt::Partial { index: 6, len: 9 }]).unwrap();
        f.write_all(&encode(&chunk(9))[..20]).unwrap();
        drop(f);
        let mut f = open();
        let partial = Receipt::Partial { index: 6, len: 9 };
        assert_eq!(replay(&mut f).unwrap(), vec![chunk(0), chunk(5), partial]);
        append(&mut f, &[chunk(7)]).unwrap();
        drop(f);
        let mut f = open();
        assert_eq!(
            replay(&mut f).unwrap(),
            vec![chunk(0), chunk(5), partial, chunk(7)]
        );
    }

    #[test]
    fn corrupt_entry_is_rejected() {
        let mut e = encode(&chunk(3));
        assert_eq!(decode(&e), Some(chunk(3)));
        e[30] ^= 1;
        assert_eq!(decode(&e), None);
    }
}
