//! The chunk journal of the local backend: an append-only file of fixed-size receipts.
//!
//! Each entry is `magic u32 | index u64 | size u64 | sha256 [32] | crc32 u32`,
//! little-endian, 56 bytes. The magic says which kind: `UPJ1` a whole chunk stored (with its
//! digest), `UPP1` the first `size` bytes of a chunk stored by an in-order append (tus), a
//! later entry for the same chunk superseding it. An entry is appended with one `write` on an
//! `O_APPEND` file and made durable with `fdatasync` before the chunk is acknowledged.
//!
//! A write can stop part-way: a crash, or a full disk (`ENOSPC` after a few bytes). The
//! fragment it leaves is never followed by an acknowledged receipt: a failed append cuts
//! its own bytes off again, and [`append`] cuts any fragment still at the end (its cut
//! failed too) before it writes. [`replay`] drops a torn tail and truncates the file;
//! should it meet unreadable bytes between entries (a journal written before these rules),
//! it skips them to the next whole entry instead of dropping every receipt after them.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

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
    if magic != MAGIC && magic != MAGIC_PARTIAL {
        return None;
    }
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

/// Appends receipts (in one write) and makes them durable. Cuts a fragment left at the
/// end first, and on failure cuts off what this write left, so that a receipt is never
/// written behind bytes [`replay`] cannot read.
pub fn append(file: &mut File, receipts: &[Receipt]) -> Result<()> {
    let end = sound_end(file)?;
    let buf: Vec<u8> = receipts.iter().flat_map(encode).collect();
    let written = file
        .write_all(&buf)
        .and_then(|()| crate::faults::check("journal-fsync"))
        .and_then(|()| file.sync_data());
    if let Err(e) = written {
        // Best effort (cutting frees space, so it works on a full disk): if it fails too,
        // the next append cuts the fragment before writing.
        if let Err(cut) = file.set_len(end).and_then(|()| file.sync_data()) {
            tracing::warn!(error = %cut, "could not cut a failed journal write; the next append will");
        }
        return Err(e.into());
    }
    Ok(())
}

/// Where the journal's last whole entry ends, cutting whatever follows it (a fragment of
/// a write that failed and could not be cut at once). Reads only the last entry unless
/// there is a fragment.
fn sound_end(file: &File) -> Result<u64> {
    let len = file.metadata()?.len();
    let mut e = [0u8; ENTRY_LEN];
    if len == 0
        || (len >= ENTRY_LEN as u64 && {
            file.read_exact_at(&mut e, len - ENTRY_LEN as u64)?;
            decode(&e).is_some()
        })
    {
        return Ok(len);
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0)?;
    let end = (ENTRY_LEN..=buf.len())
        .rev()
        .find(|&end| decode(&buf[end - ENTRY_LEN..end]).is_some())
        .unwrap_or(0) as u64;
    tracing::warn!(
        kept = end,
        dropped = len - end,
        "chunk journal ended in a fragment of a failed write; cut it"
    );
    file.set_len(end)?;
    file.sync_data()?;
    Ok(end)
}

/// Reads every valid receipt; cuts a torn tail so that later appends stay aligned. Bytes
/// that are no entry between two entries are skipped (and logged), not taken for the end.
pub fn replay(file: &mut File) -> Result<Vec<Receipt>> {
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let mut out = Vec::with_capacity(buf.len() / ENTRY_LEN);
    let (mut at, mut valid_end, mut skipped) = (0, 0, 0);
    while at + ENTRY_LEN <= buf.len() {
        match decode(&buf[at..at + ENTRY_LEN]) {
            Some(c) => {
                out.push(c);
                skipped += at - valid_end;
                at += ENTRY_LEN;
                valid_end = at;
            }
            None => at += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "chunk journal had unreadable bytes between entries; skipped them"
        );
    }
    if valid_end != buf.len() {
        tracing::warn!(
            kept = valid_end,
            dropped = buf.len() - valid_end,
            "chunk journal had a torn tail; cut it"
        );
        file.set_len(valid_end as u64)?;
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

    fn open(path: &std::path::Path) -> File {
        OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .unwrap()
    }

    /// A write that a full disk stopped part-way, whose cut failed too, leaves a fragment:
    /// the next append cuts it first, so that its receipt is read back after a restart.
    #[test]
    fn an_append_after_a_fragment_cuts_it_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut f = open(&path);
        append(&mut f, &[chunk(0), chunk(1)]).unwrap();
        // 8 bytes of a receipt: what ENOSPC left at a page boundary.
        f.write_all(&encode(&chunk(2))[..8]).unwrap();
        append(&mut f, &[chunk(2)]).unwrap();
        append(&mut f, &[chunk(3)]).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 4 * ENTRY_LEN as u64);
        drop(f);
        let mut f = open(&path);
        assert_eq!(
            replay(&mut f).unwrap(),
            vec![chunk(0), chunk(1), chunk(2), chunk(3)]
        );
        // A whole-sized tail that is no entry is cut as well.
        f.write_all(&[0xAB; ENTRY_LEN]).unwrap();
        append(&mut f, &[chunk(4)]).unwrap();
        drop(f);
        let mut f = open(&path);
        assert_eq!(replay(&mut f).unwrap().last(), Some(&chunk(4)));
        assert_eq!(f.metadata().unwrap().len(), 5 * ENTRY_LEN as u64);
    }

    /// A journal written before fragments were cut: receipts acknowledged behind a
    /// fragment are still read back.
    #[test]
    fn receipts_behind_a_fragment_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut f = open(&path);
        let mut bytes: Vec<u8> = [chunk(0), chunk(1)].iter().flat_map(encode).collect();
        bytes.extend_from_slice(&encode(&chunk(2))[..8]);
        for i in 2..5 {
            bytes.extend_from_slice(&encode(&chunk(i)));
        }
        bytes.extend_from_slice(&encode(&chunk(5))[..30]);
        f.write_all(&bytes).unwrap();
        drop(f);
        let mut f = open(&path);
        let got = replay(&mut f).unwrap();
        assert_eq!(got, (0..5).map(chunk).collect::<Vec<_>>());
        // The torn tail is cut; the fragment in the middle is skipped again next time.
        assert_eq!(
            f.metadata().unwrap().len(),
            (5 * ENTRY_LEN + 8) as u64,
            "only the torn tail is cut"
        );
        append(&mut f, &[chunk(6)]).unwrap();
        drop(f);
        let mut f = open(&path);
        assert_eq!(replay(&mut f).unwrap().len(), 6);
    }

    #[test]
    fn corrupt_entry_is_rejected() {
        let mut e = encode(&chunk(3));
        assert_eq!(decode(&e), Some(chunk(3)));
        e[30] ^= 1;
        assert_eq!(decode(&e), None);
    }
}
