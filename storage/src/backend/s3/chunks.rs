//! Whole chunks (the native API) on S3: each is streamed into a part, then claimed; the
//! claims are read back when the upload completes, to join exactly the acknowledged parts.

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use common::Sha256Digest;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::store::{normalize_etag, ObjectInfo, PartBody, Put};
use super::S3Backend;
use crate::backend::{ChunkWriter, Coverage, Receipt, StoredChunk, Written};
use crate::error::{Error, Result};
use crate::hash::SavedPrefixHash;
use crate::record::UploadRecord;

/// A chunk's claim, as stored (see the module documentation of [`super`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Claim {
    pub size: u64,
    pub sha256: Sha256Digest,
    pub part: u64,
    pub etag: String,
    /// The whole-file hash midstate right after the chunk, when it was hashed in order.
    #[serde(default)]
    pub whole: Option<SavedPrefixHash>,
    /// Its bytes are spilled (readable until completion) instead.
    #[serde(default)]
    pub spilled: bool,
}

/// A part as the store acknowledged it: what a chunk's writer hands to its commit.
#[derive(Clone, Debug)]
pub(super) struct SentPart {
    pub number: u64,
    pub etag: String,
}

/// The digest a receipt from a listing carries: a listing says which chunks are claimed,
/// not their digests (those are in the claims, read when the upload completes).
pub(super) const UNREAD: Sha256Digest = Sha256Digest([0; 32]);

/// The part of chunk `index`: one number per chunk, for every write of it. A store may
/// refuse to join a multipart upload that holds a part the join does not name (Ceph does),
/// so no write ever leaves a part of its own beside the chunk's: a retry of the same bytes
/// replaces the part with identical bytes, and a write of other bytes that replaces it is
/// found by its ETag when the upload completes (the chunk is then asked for again).
pub(super) fn part_number(index: u64) -> u64 {
    index + 1
}

/// What one listing of an upload's `chunks/` shows.
#[derive(Default)]
pub(super) struct Listing {
    /// Chunks with a claim.
    pub claimed: Vec<u64>,
    /// Piece objects of in-order appends: (chunk, name).
    pub pieces: Vec<(u64, String)>,
    /// Chunks whose claim a completion set aside (their part was replaced).
    pub set_aside: Vec<u64>,
}

/// Claims this process wrote or read. A claim never changes once created; it only goes
/// (set aside by a completion, or with its upload), so a copy seen here stays true unless
/// its part changed, which completion checks against the store's own list of parts.
#[derive(Default)]
pub(super) struct SeenClaims {
    by_upload: HashMap<common::UploadId, HashMap<u64, Claim>>,
    entries: usize,
}

impl SeenClaims {
    /// Bounded: the claims of uploads seen lately, a few hundred bytes each, not of every
    /// upload ever; past the bound everything is forgotten (then read from the store).
    const MAX_ENTRIES: usize = 100_000;

    fn insert(&mut self, id: common::UploadId, index: u64, claim: Claim) {
        if self.entries >= Self::MAX_ENTRIES {
            self.by_upload.clear();
            self.entries = 0;
        }
        if self
            .by_upload
            .entry(id)
            .or_default()
            .insert(index, claim)
            .is_none()
        {
            self.entries += 1;
        }
    }

    fn get(&self, id: common::UploadId, index: u64) -> Option<&Claim> {
        self.by_upload.get(&id)?.get(&index)
    }

    fn forget(&mut self, id: common::UploadId, index: u64) {
        if let Some(c) = self.by_upload.get_mut(&id) {
            if c.remove(&index).is_some() {
                self.entries -= 1;
            }
        }
    }

    /// Forgets every claim of upload `id`.
    pub fn remove(&mut self, id: &common::UploadId) {
        if let Some(c) = self.by_upload.remove(id) {
            self.entries -= c.len();
        }
    }
}

impl Listing {
    /// Reads the keys under `prefix` (the upload's `chunks/`).
    pub fn of(_record: &UploadRecord, prefix: &str, listed: &[ObjectInfo]) -> Self {
        let mut found = Listing::default();
        for o in listed {
            let Some(rest) = o.key.strip_prefix(prefix) else {
                continue;
            };
            if rest.len() >= 5 && rest.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(index) = rest.parse::<u64>() {
                    found.claimed.push(index);
                }
            } else if let Some((head, name)) = rest.split_once(".pieces/") {
                if let Ok(index) = head.parse() {
                    found.pieces.push((index, name.to_string()));
                }
            } else if let Some(index) = rest
                .strip_suffix(".resend")
                .and_then(|i| i.parse::<u64>().ok())
            {
                found.set_aside.push(index);
            }
        }
        found.claimed.sort_unstable();
        found
    }

    /// The receipts of the claimed chunks.
    pub fn receipts(&self, record: &UploadRecord) -> Vec<Receipt> {
        self.claimed
            .iter()
            .filter_map(|&index| {
                Some(Receipt::Chunk(StoredChunk {
                    index,
                    size: record.chunk_len(index).ok()?,
                    sha256: UNREAD,
                }))
            })
            .collect()
    }
}

impl S3Backend {
    /// Reads chunk `index`'s claim.
    pub(super) async fn read_claim(
        &self,
        id: common::UploadId,
        index: u64,
    ) -> Result<Option<Claim>> {
        let Some(got) = self.store.get(&self.claim_key(id, index)).await? else {
            return Ok(None);
        };
        let claim: Claim = serde_json::from_slice(&got.bytes)
            .map_err(|e| Error::Corrupt(format!("claim of chunk {index}: {e}")))?;
        self.remember_claim(id, index, &claim);
        Ok(Some(claim))
    }

    /// Chunk `index`'s claim as this process saw it, else as the store has it.
    pub(super) async fn seen_or_read_claim(
        &self,
        id: common::UploadId,
        index: u64,
    ) -> Result<Option<Claim>> {
        let seen = super::lock(&self.claimed).get(id, index).cloned();
        match seen {
            Some(claim) => Ok(Some(claim)),
            None => self.read_claim(id, index).await,
        }
    }

    /// Where a spilled chunk's bytes are: one object per part and content (its ETag), so
    /// that a write that lost the claim never replaces the bytes of the one that won it,
    /// even when both picked the same part number.
    pub(super) fn spill_of(
        &self,
        id: common::UploadId,
        index: u64,
        part: u64,
        etag: &str,
    ) -> String {
        let etag = normalize_etag(etag);
        format!("{}{index:05}.{part}.{etag}.spill", self.chunks_prefix(id))
    }

    /// A writer of the chunk at `offset`, streaming into its part.
    pub(super) async fn chunk_writer(
        &self,
        record: &UploadRecord,
        offset: u64,
        digest: Option<Sha256Digest>,
    ) -> Result<Box<dyn ChunkWriter>> {
        if !offset.is_multiple_of(record.chunk_size) {
            return Err(Error::WrongMode("S3 storage writes whole chunks only"));
        }
        let index = offset / record.chunk_size;
        let len = record.chunk_len(index)?;
        // A chunk this process saw claimed: bytes that may differ from the claimed ones
        // are not sent (the caller reads them, and refuses other bytes, or a digest that
        // does not match them, before they replace its part); bytes declared to be the
        // claimed ones are sent again, which restores a part that a write of other bytes
        // replaced (completion then asks for the chunk again).
        let known = super::lock(&self.claimed)
            .get(record.id, index)
            .map(|c| c.sha256);
        if let Some(stored) = known {
            // Unless a completion set it aside meanwhile (its part was replaced): then it is
            // sent again. One small request, on retries only.
            if self
                .store
                .head(&self.claim_key(record.id, index))
                .await?
                .is_some()
            {
                return Err(Error::StoredMeanwhile { index, stored });
            }
            self.forget_claim(record.id, index);
        }
        let multipart_id = self.multipart_id(record.id).await?;
        let number = part_number(index);
        let (tx, rx) = mpsc::channel(4);
        let store = self.store.clone();
        let key = self.file_key(record.id);
        let body: PartBody =
            futures_util::stream::unfold(rx, |mut rx: mpsc::Receiver<Bytes>| async {
                rx.recv().await.map(|b| (Ok(b), rx))
            })
            .boxed();
        let response = tokio::spawn(async move {
            store
                .upload_part(&key, &multipart_id, number, len, digest, body)
                .await
        });
        Ok(Box::new(PartWriter {
            tx: Some(tx),
            response: Some(response),
            number,
        }))
    }

    /// Claims chunk `c`, written as `part`, with its coverage (see the module
    /// documentation of [`super`]). Answers 1 when another request had claimed it first
    /// with the same bytes.
    pub(super) async fn claim(
        &self,
        record: &UploadRecord,
        c: &StoredChunk,
        part: SentPart,
        coverage: Coverage,
    ) -> Result<u64> {
        let id = record.id;
        let mut claim = Claim {
            size: c.size,
            sha256: c.sha256,
            part: part.number,
            etag: part.etag,
            whole: None,
            spilled: false,
        };
        match coverage {
            Coverage::Midstate(m) => claim.whole = Some(m),
            Coverage::Spill(bytes) => {
                self.store
                    .put(
                        &self.spill_of(id, c.index, claim.part, &claim.etag),
                        bytes,
                        Put::Overwrite,
                    )
                    .await?;
                claim.spilled = true;
            }
            Coverage::Readable => {
                return Err(Error::Corrupt(
                    "a chunk on S3 needs its midstate or its bytes kept".into(),
                ))
            }
        }
        let body = serde_json::to_vec(&claim).map_err(|e| Error::Corrupt(e.to_string()))?;
        match self
            .store
            .put(
                &self.claim_key(id, c.index),
                vec![Bytes::from(body)],
                Put::Create,
            )
            .await
        {
            Ok(_) => {
                self.remember_claim(id, c.index, &claim);
                if let (Some(to), Ok(claim)) = (self.announcer.get(), serde_json::to_value(&claim))
                {
                    to.claimed(crate::peers::ClaimNote {
                        upload: id,
                        index: c.index,
                        claim,
                    });
                }
                Ok(0)
            }
            Err(Error::Conflict) => {
                let first = self.read_claim(id, c.index).await?.ok_or_else(|| {
                    Error::Corrupt(format!("the claim of chunk {} vanished", c.index))
                })?;
                if first.sha256 != c.sha256 {
                    tracing::warn!(%id, index = c.index, "a write of other bytes replaced a claimed part: completion will ask for the chunk again");
                    return Err(Error::ChunkConflict {
                        index: c.index,
                        stored: first.sha256,
                    });
                }
                Ok(1)
            }
            Err(e) => Err(e),
        }
    }

    /// Keeps a claim another server told of (see [`crate::peers`]) as if read here;
    /// answers where its chunk begins and the midstate after it, if it has one.
    pub(super) fn learn_claim(
        &self,
        note: &crate::peers::ClaimNote,
    ) -> Option<(u64, SavedPrefixHash)> {
        let claim: Claim = serde_json::from_value(note.claim.clone()).ok()?;
        self.remember_claim(note.upload, note.index, &claim);
        let whole = claim.whole?;
        Some((whole.hashed_bytes.checked_sub(claim.size)?, whole))
    }

    fn remember_claim(&self, id: common::UploadId, index: u64, claim: &Claim) {
        super::lock(&self.claimed).insert(id, index, claim.clone());
    }

    /// Every chunk's claim, `None` where a chunk has none: which chunks have one from
    /// `found` (a listing), the claims this process saw from memory, the others read in
    /// parallel.
    async fn claims(&self, record: &UploadRecord, found: &Listing) -> Result<Vec<Option<Claim>>> {
        let id = record.id;
        let reads = futures_util::stream::iter(0..record.chunk_count())
            .map(|i| async move {
                if found.claimed.binary_search(&i).is_ok() {
                    self.seen_or_read_claim(id, i).await
                } else {
                    Ok(None)
                }
            })
            .buffered(16);
        reads.collect::<Vec<_>>().await.into_iter().collect()
    }

    /// The parts to join, checked against their claims: each claimed part must be in the
    /// store with the ETag its claim names. A chunk without a claim is missing; so is one
    /// whose part changed after it was acknowledged (a write of other bytes replaced it):
    /// its claim is moved aside to `{i:05}.resend`, so the status asks for the chunk again,
    /// and only the acknowledged bytes are taken again (other bytes fail the upload), so
    /// that the whole-file midstates kept after it stay true.
    pub(super) async fn checked_parts(&self, record: &UploadRecord) -> Result<Vec<(u64, String)>> {
        let id = record.id;
        let prefix = self.chunks_prefix(id);
        let found = Listing::of(record, &prefix, &self.store.list(&prefix).await?);
        // A chunk set aside and claimed again: its new claim is read from the store.
        for &index in &found.set_aside {
            super::lock(&self.claimed).forget(id, index);
        }
        let mut claims = self.claims(record, &found).await?;
        for (index, expected) in self.resends(record, &found).await? {
            let Some(claim) = &claims[index as usize] else {
                continue;
            };
            if claim.sha256 != expected {
                // The acknowledged bytes are gone from the store (their part was replaced)
                // and other bytes came back: the file cannot be the one acknowledged.
                return Err(Error::Corrupt(format!(
                    "chunk {index} was sent again with other bytes than the ones acknowledged"
                )));
            }
        }
        let missing: Vec<u64> = claims
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_none())
            .map(|(i, _)| i as u64)
            .collect();
        if !missing.is_empty() {
            return Err(Error::MissingChunks(common::ranges::to_ranges(missing)));
        }
        let multipart_id = self.multipart_id(id).await?;
        let stored: HashMap<u64, String> = self
            .store
            .list_parts(&self.file_key(id), &multipart_id)
            .await?
            .into_iter()
            .map(|p| (p.number, p.etag))
            .collect();
        // A claim seen here whose part differs is read again: the part may have been
        // replaced and the chunk claimed anew (after a completion elsewhere set it aside).
        for (index, claim) in claims.iter_mut().enumerate() {
            let Some(c) = claim else { continue };
            if stored.get(&c.part) != Some(&normalize_etag(&c.etag)) {
                self.forget_claim(id, index as u64);
                *claim = self.read_claim(id, index as u64).await?;
            }
        }
        let mut parts = Vec::with_capacity(claims.len());
        let mut changed = Vec::new();
        for (index, claim) in claims.into_iter().enumerate() {
            let Some(claim) = claim else {
                changed.push(index as u64);
                continue;
            };
            match stored.get(&claim.part) {
                Some(etag) if *etag == normalize_etag(&claim.etag) => {
                    parts.push((claim.part, claim.etag))
                }
                _ => {
                    tracing::warn!(%id, index, "a chunk's part is not the one acknowledged: it must be sent again");
                    changed.push(index as u64);
                }
            }
        }
        if !changed.is_empty() {
            // Sent again, they must reach the store: this process forgets it saw them.
            for &index in &changed {
                self.forget_claim(id, index);
            }
            // An in-order upload's position is its claimed prefix: it cannot step back.
            if record.mode == crate::record::UploadMode::Chunks {
                for &index in &changed {
                    self.set_aside(id, index).await?;
                }
            }
            return Err(Error::MissingChunks(common::ranges::to_ranges(changed)));
        }
        // Parts past the file's end: an append of unknown length that stored whole chunks
        // and was then refused (past the size limit, or a checksum that did not match),
        // before the length was said to end sooner. A part cannot be removed, and a store
        // may refuse to join a multipart upload that holds parts the join leaves out (Ceph
        // does): the upload fails here, with that reason, rather than being verified and
        // then found impossible to publish.
        let mut past_end: Vec<u64> = stored
            .keys()
            .filter(|n| parts.binary_search_by_key(*n, |(p, _)| *p).is_err())
            .copied()
            .collect();
        if !past_end.is_empty() {
            past_end.sort_unstable();
            return Err(Error::Corrupt(format!(
                "the store holds parts past the end of the file (parts {past_end:?}), left by \
                 an append that was refused after storing them; it cannot join the file \
                 without them: send the file again as a new upload"
            )));
        }
        Ok(parts)
    }

    fn resend_key(&self, id: common::UploadId, index: u64) -> String {
        format!("{}{index:05}.resend", self.chunks_prefix(id))
    }

    /// Moves chunk `index`'s claim aside (its part was replaced): the chunk is missing
    /// again, and must come back with the bytes the claim names.
    async fn set_aside(&self, id: common::UploadId, index: u64) -> Result<()> {
        if let Some(got) = self.store.get(&self.claim_key(id, index)).await? {
            self.store
                .put(&self.resend_key(id, index), vec![got.bytes], Put::Overwrite)
                .await?;
            self.store.delete(&self.claim_key(id, index)).await?;
        }
        self.forget_claim(id, index);
        Ok(())
    }

    /// The chunks set aside (in `listed`), with the SHA-256 they must come back with.
    async fn resends(
        &self,
        record: &UploadRecord,
        listed: &Listing,
    ) -> Result<Vec<(u64, Sha256Digest)>> {
        let mut found = Vec::new();
        for &index in &listed.set_aside {
            if index >= record.chunk_count() {
                continue;
            }
            if let Some(got) = self.store.get(&self.resend_key(record.id, index)).await? {
                let claim: Claim = serde_json::from_slice(&got.bytes).map_err(|e| {
                    Error::Corrupt(format!("set-aside claim of chunk {index}: {e}"))
                })?;
                found.push((index, claim.sha256));
            }
        }
        Ok(found)
    }

    fn forget_claim(&self, id: common::UploadId, index: u64) {
        super::lock(&self.claimed).forget(id, index);
    }

    /// The whole-file midstate covering the most bytes, from the claims: read from the
    /// last claimed chunk down, past spilled ones, to the first that has one.
    pub(super) async fn furthest_midstate(
        &self,
        record: &UploadRecord,
        found: &Listing,
    ) -> Result<Option<SavedPrefixHash>> {
        for &index in found.claimed.iter().rev() {
            match self.seen_or_read_claim(record.id, index).await? {
                Some(Claim { whole: Some(w), .. }) => return Ok(Some(w)),
                Some(Claim { spilled: true, .. }) => continue,
                _ => return Ok(None),
            }
        }
        Ok(None)
    }
}

/// Streams one chunk into its part (an UploadPart request fed piece by piece).
struct PartWriter {
    tx: Option<mpsc::Sender<Bytes>>,
    response: Option<tokio::task::JoinHandle<Result<String>>>,
    number: u64,
}

#[async_trait]
impl ChunkWriter for PartWriter {
    async fn write(&mut self, bytes: Bytes) -> Result<()> {
        let tx = self
            .tx
            .as_ref()
            .ok_or(Error::Corrupt("writer finished".into()))?;
        if tx.send(bytes).await.is_err() {
            // The request ended early: its outcome says why.
            self.tx = None;
            let response = self.response.take();
            return Err(match response {
                Some(r) => answered(r).await.err().unwrap_or_else(|| {
                    Error::Io(std::io::Error::other("the store stopped reading the part"))
                }),
                None => Error::Io(std::io::Error::other("the store stopped reading the part")),
            });
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<Written> {
        drop(self.tx.take());
        let response = self
            .response
            .take()
            .ok_or(Error::Corrupt("writer finished".into()))?;
        let etag = answered(response).await?;
        Ok(Written::of(SentPart {
            number: self.number,
            etag,
        }))
    }
}

impl Drop for PartWriter {
    fn drop(&mut self) {
        if let Some(response) = &self.response {
            // Abandoned mid-chunk: stop the request so the part is not half-sent.
            response.abort();
        }
    }
}

/// The answer of a part's request.
pub(super) async fn answered(response: tokio::task::JoinHandle<Result<String>>) -> Result<String> {
    response
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
}
