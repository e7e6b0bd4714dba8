//! The listing index: per owner, one empty entry per upload, named so that storage's own
//! ordering lists an owner's uploads newest first. `GET /v1/uploads` reads one page of
//! entries with one listing (S3: one ListObjectsV2) and loads only the uploads on it,
//! never every upload in storage.
//!
//! # Layout (under the backend's `index/`)
//! ```text
//! {owner}/{day}/{rank}.{id}
//!   owner  `anonymous` (no authentication), or `o` + 32 hex digits of SHA-256("owner:" + name)
//!   day    99999 − days since 1970 of the creation, 5 digits: a directory per day on local
//!          disk, so that a page reads the entries of a day or two, not all of them
//!   rank   u64::MAX − nanoseconds since 1970 of the creation, 20 digits
//!   id     the upload id
//! ```
//! Every component below the owner has a fixed width, so ascending byte order of whole
//! keys (S3's listing order) is the order of a walk through sorted directories (local
//! disk), and both are newest first.
//!
//! An entry is written when its upload is created, before its record: a crash in between
//! leaves an entry without an upload, which a listing skips and removes once it is older
//! than [`ORPHAN_GRACE`] (younger, it may be a creation still under way). The purge of an
//! upload removes its entry. Where one process owns the storage (local disk), entries are
//! not made durable one by one: start-up, which reads every record anyway, writes any entry
//! a crash lost. On shared storage each entry is durable when written, and uploads created
//! before the index existed are entered once, by the first server that starts
//! ([`BACKFILLED`] marks it done).

use std::time::Duration;

use common::UploadId;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::record::UploadRecord;

/// How old an entry without an upload must be before a listing removes it.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(600);

/// The key marking that every upload stored before the index existed has its entry.
pub const BACKFILLED: &str = "_meta/backfilled-v1";

/// Where the entries of uploads owned by `owner` (`None`: anonymous) live.
pub fn owner_prefix(owner: Option<&str>) -> String {
    match owner {
        None => "anonymous".into(),
        Some(o) => {
            let mut h = Sha256::new();
            h.update(b"owner:");
            h.update(o.as_bytes());
            format!("o{}", &hex::encode(h.finalize())[..32])
        }
    }
}

/// The entry of an upload: under its owner, ranked by creation time, newest first.
pub fn key(record: &UploadRecord) -> String {
    key_of(record.owner.as_deref(), record.created_at, record.id)
}

fn key_of(owner: Option<&str>, created_at: OffsetDateTime, id: UploadId) -> String {
    let nanos = u64::try_from(created_at.unix_timestamp_nanos()).unwrap_or(0);
    let days = u64::try_from(created_at.unix_timestamp().div_euclid(86_400)).unwrap_or(0);
    format!(
        "{}/{:05}/{:020}.{id}",
        owner_prefix(owner),
        99_999u64.saturating_sub(days),
        u64::MAX - nanos
    )
}

/// What an entry says: the upload and when it was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The upload.
    pub id: UploadId,
    /// Its creation time.
    pub created_at: OffsetDateTime,
}

/// Reads an entry's key (with or without its owner prefix); `None` for anything else.
pub fn parse(key: &str) -> Option<Entry> {
    let mut parts = key.rsplit('/');
    let leaf = parts.next()?;
    let day = parts.next()?;
    if day.len() != 5 || !day.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (rank, id) = leaf.split_once('.')?;
    if rank.len() != 20 || !rank.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = u64::MAX - rank.parse::<u64>().ok()?;
    let created_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).ok()?;
    Some(Entry {
        id: id.parse().ok()?,
        created_at,
    })
}

/// The cursor a page hands out: where the next page starts, past `key` (the last entry
/// the page examined), without its owner.
pub fn cursor(key: &str) -> String {
    let rest = key.split_once('/').map_or(key, |(_, rest)| rest);
    hex::encode(rest)
}

/// The key a cursor stands for, under `prefix` (the caller's owner): a cursor names a
/// place in the caller's own entries only.
pub fn after(prefix: &str, cursor: &str) -> Result<String> {
    let bad = || Error::Invalid("the cursor is not one this server gave".into());
    let raw = hex::decode(cursor).map_err(|_| bad())?;
    let rest = String::from_utf8(raw).map_err(|_| bad())?;
    parse(&rest).ok_or_else(bad)?;
    if rest.split('/').count() != 2 {
        return Err(bad());
    }
    Ok(format!("{prefix}/{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(nanos: i128) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap()
    }

    #[test]
    fn newer_sorts_first_across_days_and_within_one() {
        let id = UploadId::new_random();
        let day = 86_400 * 1_000_000_000i128;
        let keys = [
            key_of(Some("a"), at(20_000 * day + 5), id),
            key_of(Some("a"), at(20_000 * day + 4), id),
            key_of(Some("a"), at(19_999 * day + 9), id),
            key_of(Some("a"), at(3 * day), id),
        ];
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        let e = parse(&keys[1]).unwrap();
        assert_eq!((e.id, e.created_at), (id, at(20_000 * day + 4)));
        // Every component has a fixed width.
        assert!(keys.iter().all(|k| k.len() == keys[0].len()));
    }

    #[test]
    fn owners_are_apart_and_cursors_stay_under_the_callers_own() {
        let id = UploadId::new_random();
        let a = key_of(Some("a"), at(1_000), id);
        let b = key_of(Some("b"), at(1_000), id);
        assert_ne!(owner_prefix(Some("a")), owner_prefix(Some("b")));
        assert_ne!(owner_prefix(None), owner_prefix(Some("anonymous")));
        let c = cursor(&a);
        assert_eq!(after(&owner_prefix(Some("a")), &c).unwrap(), a);
        // The same cursor presented by another owner names a place in that owner's own.
        let for_b = after(&owner_prefix(Some("b")), &c).unwrap();
        assert_eq!(for_b, b);
        for junk in ["", "x", "%%%", &cursor("../../etc/passwd")] {
            assert!(after("anonymous", junk).is_err(), "{junk:?}");
        }
    }
}
