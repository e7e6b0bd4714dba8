//! In-order appends (tus PATCH, IETF append) on S3, where every part but the last must be
//! at least 5 MiB while an append may be of any size.
//!
//! An append's bytes go to the chunk they fall in. Where the append (by its
//! `Content-Length`) reaches the end of its chunk, the chunk is streamed as its part: first
//! the chunk's pieces (below), read back from the bucket, then the request's bytes. Where it
//! does not (a short append, or the last bytes of a long one), its bytes of that chunk are
//! held in memory until the request ends, then stored as a *piece*, a small object of the
//! chunk, when the append is committed: held durably in the bucket, not in memory, until a
//! later append completes the chunk and its part is written; then the pieces go.
//!
//! A piece's name carries its offset in the chunk, its length, the chunk's SHA-256 midstate
//! after it and the whole file's, so one LIST of the upload gives where the next append
//! goes and lets any server continue both hashes without reading anything back; the pieces
//! are checked against the chunk's midstate chain whenever they are read.
//!
//! One appender per upload across servers: the upload's append lease.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use common::UploadId;
use futures_util::StreamExt;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::chunks::{answered, part_number, Claim, Listing, SentPart};
use super::lease::HeldLease;
use super::store::{PartBody, Put, Store};
use super::S3Backend;
use crate::backend::{ChunkWriter, Coverage, Receipt, StoredChunk, Written};
use crate::error::{Error, Result};
use crate::hash::SavedPrefixHash;
use crate::record::UploadRecord;

/// What an append hands to its commit: the parts it sent, the bytes of a partial chunk
/// to store as a piece, and the lease to release.
pub(super) struct Handoff {
    sent: HashMap<u64, SentPart>,
    /// The partial chunk, its bytes stored before this append, and its midstate after them.
    index: u64,
    within: u64,
    state: Option<String>,
    tail: Vec<Bytes>,
    tail_len: u64,
    lease: Option<HeldLease>,
}

/// One piece of a partly appended chunk (see the module documentation).
#[derive(Clone, Debug)]
pub(super) struct Piece {
    /// Offset in its chunk.
    start: u64,
    len: u64,
    /// The chunk's SHA-256 midstate after this piece, hex.
    state: String,
    /// The whole file's SHA-256 midstate after this piece, hex.
    whole: String,
    key: String,
}

fn parse_piece(index: u64, name: &str, key: String) -> Option<(u64, Piece)> {
    let mut it = name.split('.');
    let start = it.next()?.parse().ok()?;
    let len = it.next()?.parse().ok()?;
    let state = it.next()?.to_string();
    let whole = it.next()?.to_string();
    Some((
        index,
        Piece {
            start,
            len,
            state,
            whole,
            key,
        },
    ))
}

/// The pieces that run contiguously from the chunk's start, in order.
fn contiguous(mut pieces: Vec<Piece>) -> Vec<Piece> {
    pieces.sort_by_key(|p| p.start);
    let mut end = 0;
    pieces
        .into_iter()
        .take_while(|p| {
            let next = p.start == end;
            end += p.len;
            next
        })
        .collect()
}

fn hasher_of(state: Option<&str>) -> Result<Sha256> {
    let Some(state) = state else {
        return Ok(Sha256::new());
    };
    let bad = || Error::Corrupt(format!("bad chunk midstate {state:.16}…"));
    let bytes = hex::decode(state).map_err(|_| bad())?;
    let state = SerializedState::<Sha256>::try_from(bytes.as_slice()).map_err(|_| bad())?;
    Sha256::deserialize(&state).map_err(|_| bad())
}

fn state_of(h: &Sha256) -> String {
    hex::encode(h.serialize().as_slice())
}

/// The partly appended chunks of a listing (chunks with pieces and no claim): their
/// receipts, the chunk midstate of the last (the append cursor), and the whole file's.
pub(super) fn partials(
    record: &UploadRecord,
    found: &Listing,
) -> (
    Vec<Receipt>,
    Option<SavedPrefixHash>,
    Option<SavedPrefixHash>,
) {
    let mut by_index: HashMap<u64, Vec<Piece>> = HashMap::new();
    for (index, name) in &found.pieces {
        if found.claimed.contains(index) {
            continue;
        }
        if let Some((i, p)) = parse_piece(*index, name, String::new()) {
            by_index.entry(i).or_default().push(p);
        }
    }
    let mut receipts = Vec::new();
    let (mut cursor, mut whole) = (None, None);
    let mut indexes: Vec<u64> = by_index.keys().copied().collect();
    indexes.sort_unstable();
    for index in indexes {
        let run = contiguous(by_index.remove(&index).unwrap_or_default());
        let Some(last) = run.last() else { continue };
        let len = last.start + last.len;
        let at = record.chunk_offset(index) + len;
        receipts.push(Receipt::Partial { index, len });
        cursor = Some(SavedPrefixHash {
            hashed_bytes: at,
            state: last.state.clone(),
            version: None,
        });
        whole = Some(SavedPrefixHash {
            hashed_bytes: at,
            state: last.whole.clone(),
            version: None,
        });
    }
    (receipts, cursor, whole)
}

/// The bytes of `pieces`, read back and checked against their midstate chain (and
/// against `digest` at the end, when given), for the start of a part's body.
fn piece_stream(
    store: Arc<dyn Store>,
    pieces: Vec<Piece>,
    digest: Option<common::Sha256Digest>,
) -> PartBody {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        let fail = |why: String| Err(std::io::Error::other(why));
        let mut h = Sha256::new();
        for p in pieces {
            let got = match store.get(&p.key).await {
                Ok(Some(g)) => g.bytes,
                Ok(None) => {
                    let _ = tx.send(fail(format!("piece {} is gone", p.key))).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(fail(format!("piece {}: {e}", p.key))).await;
                    return;
                }
            };
            h.update(&got);
            if got.len() as u64 != p.len || state_of(&h) != p.state {
                let why = format!("piece {} does not hold the bytes it was stored with", p.key);
                let _ = tx.send(fail(why)).await;
                return;
            }
            if tx.send(Ok(got)).await.is_err() {
                return;
            }
        }
        if let Some(want) = digest {
            if common::Sha256Digest(h.clone().finalize().into()) != want {
                let _ = tx
                    .send(fail("the pieces do not hash to the chunk".into()))
                    .await;
            }
        }
    });
    channel_body(rx)
}

fn channel_body(rx: mpsc::Receiver<std::io::Result<Bytes>>) -> PartBody {
    futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|b| (b, rx)) }).boxed()
}

impl S3Backend {
    fn pieces_dir(&self, id: UploadId, index: u64) -> String {
        format!("{}{index:05}.pieces/", self.chunks_prefix(id))
    }

    /// The pieces of chunk `index` that run contiguously from its start.
    async fn pieces(&self, id: UploadId, index: u64) -> Result<Vec<Piece>> {
        let dir = self.pieces_dir(id, index);
        let listed = self.store.list(&dir).await?;
        Ok(contiguous(
            listed
                .into_iter()
                .filter_map(|o| {
                    let name = o.key.strip_prefix(&dir)?.to_string();
                    parse_piece(index, &name, o.key)
                })
                .map(|(_, p)| p)
                .collect(),
        ))
    }

    async fn take_append_lease(&self, id: UploadId) -> Result<HeldLease> {
        let key = format!("{}append-lease", self.chunks_prefix(id));
        let holder = format!("{}-{}", self.process, uuid::Uuid::new_v4().simple());
        HeldLease::take(self.store.clone(), key, holder).await
    }

    /// The pieces of the chunk at `offset` and the upload's multipart upload, once it is
    /// checked that no other server appended before this one took the lease.
    async fn appendable(&self, record: &UploadRecord, offset: u64) -> Result<(Vec<Piece>, String)> {
        let id = record.id;
        let index = offset / record.chunk_size;
        let within = offset - record.chunk_offset(index);
        let pieces = self.pieces(id, index).await?;
        let end = pieces.last().map_or(0, |p| p.start + p.len);
        let claimed = self.store.head(&self.claim_key(id, index)).await?.is_some();
        if claimed || end != within {
            let expected = if claimed {
                record.chunk_end(index)
            } else {
                record.chunk_offset(index) + end
            };
            return Err(Error::OffsetMismatch {
                expected,
                got: offset,
            });
        }
        Ok((pieces, self.multipart_id(id).await?))
    }

    /// A writer of an in-order append at `offset`, of `len` bytes when known.
    pub(super) async fn append_writer(
        &self,
        record: &UploadRecord,
        offset: u64,
        len: Option<u64>,
    ) -> Result<Box<dyn ChunkWriter>> {
        let id = record.id;
        let lease = self.take_append_lease(id).await?;
        let index = offset / record.chunk_size;
        let within = offset - record.chunk_offset(index);
        let (pieces, multipart_id) = match self.appendable(record, offset).await {
            Ok(found) => found,
            Err(e) => {
                // Refused: the client's next request is not to find the upload locked.
                lease.release().await;
                return Err(e);
            }
        };
        Ok(Box::new(AppendWriter {
            store: self.store.clone(),
            record: record.clone(),
            file: self.file_key(id),
            multipart_id,
            index,
            within,
            pieces,
            remaining: len,
            held: 0,
            current: None,
            tail: Vec::new(),
            start: offset,
            kept: offset,
            sent: HashMap::new(),
            lease: Some(lease),
        }))
    }

    /// Makes an append durable: each whole chunk's part is claimed (its pieces then go),
    /// and the bytes of a partial chunk are stored as a piece, named with both midstates.
    pub(super) async fn commit_appends(
        &self,
        record: &UploadRecord,
        written: Written,
        receipts: &[Receipt],
        coverage: Coverage,
    ) -> Result<u64> {
        let mut handoff = written.take::<Handoff>();
        let committed = self
            .commit_held(record, handoff.as_mut(), receipts, coverage)
            .await;
        if let Some(lease) = handoff.and_then(|mut h| h.lease.take()) {
            lease.release().await;
        }
        committed
    }

    async fn commit_held(
        &self,
        record: &UploadRecord,
        mut handoff: Option<&mut Handoff>,
        receipts: &[Receipt],
        coverage: Coverage,
    ) -> Result<u64> {
        let id = record.id;
        let whole = match coverage {
            Coverage::Midstate(m) => Some(m),
            _ => None,
        };
        let mut stored_first = 0;
        for r in receipts {
            match *r {
                Receipt::Chunk(c) => {
                    let sent = handoff.as_mut().and_then(|h| h.sent.remove(&c.index));
                    let part = match sent {
                        Some(s) => s,
                        None => self.part_from_pieces(record, &c).await?,
                    };
                    // Only the append's last chunk has the file's midstate: before it, the
                    // midstate after the append is stored with what follows.
                    let end = record.chunk_offset(c.index) + c.size;
                    let after = whole.clone().filter(|w| w.hashed_bytes == end);
                    stored_first += self.claim_appended(record, &c, part, after).await?;
                    self.delete_prefix(&self.pieces_dir(id, c.index)).await?;
                }
                Receipt::Partial { index, len } => {
                    let h = handoff
                        .as_deref()
                        .filter(|h| h.index == index && h.within + h.tail_len == len)
                        .ok_or_else(|| {
                            Error::Corrupt(format!("no bytes held for chunk {index}'s append"))
                        })?;
                    if h.tail_len == 0 {
                        continue;
                    }
                    let whole = whole
                        .as_ref()
                        .filter(|w| w.hashed_bytes == record.chunk_offset(index) + len)
                        .ok_or_else(|| {
                            Error::Corrupt("an append on S3 needs the file's midstate".into())
                        })?;
                    let mut hasher = hasher_of(h.state.as_deref())?;
                    for b in &h.tail {
                        hasher.update(b);
                    }
                    let name = format!(
                        "{:012}.{}.{}.{}",
                        h.within,
                        h.tail_len,
                        state_of(&hasher),
                        whole.state
                    );
                    let key = format!("{}{name}", self.pieces_dir(id, index));
                    match self.store.put(&key, h.tail.clone(), Put::Create).await {
                        Ok(_) => {}
                        Err(Error::Conflict) => return Err(Error::Conflict),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(stored_first)
    }

    /// Claims an appended chunk, with the file's midstate after it when the append ended
    /// there.
    async fn claim_appended(
        &self,
        record: &UploadRecord,
        c: &StoredChunk,
        part: SentPart,
        whole: Option<SavedPrefixHash>,
    ) -> Result<u64> {
        let claim = Claim {
            size: c.size,
            sha256: c.sha256,
            part: part.number,
            etag: part.etag,
            whole,
            spilled: false,
        };
        let body = serde_json::to_vec(&claim).map_err(|e| Error::Corrupt(e.to_string()))?;
        match self
            .store
            .put(
                &self.claim_key(record.id, c.index),
                vec![Bytes::from(body)],
                Put::Create,
            )
            .await
        {
            Ok(_) => Ok(0),
            // A claim already there is this same chunk written by an append whose answer
            // was lost, unless this append outlived its lease and another appender
            // claimed other bytes meanwhile: those must not be acknowledged as these.
            Err(Error::Conflict) => {
                let first = self.read_claim(record.id, c.index).await?.ok_or_else(|| {
                    Error::Corrupt(format!("the claim of chunk {} vanished", c.index))
                })?;
                if first.sha256 != c.sha256 {
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

    /// Writes chunk `c`'s part from its pieces alone (the last chunk of an upload whose
    /// length was declared after its bytes were stored).
    async fn part_from_pieces(&self, record: &UploadRecord, c: &StoredChunk) -> Result<SentPart> {
        let lease = self.take_append_lease(record.id).await?;
        let number = part_number(c.index);
        let sent = async {
            let pieces = self.pieces(record.id, c.index).await?;
            let len = pieces.last().map_or(0, |p| p.start + p.len);
            if len != c.size {
                return Err(Error::Corrupt(format!(
                    "chunk {} has {len} bytes in pieces, not {}",
                    c.index, c.size
                )));
            }
            let body = piece_stream(self.store.clone(), pieces, Some(c.sha256));
            self.store
                .upload_part(
                    &self.file_key(record.id),
                    &self.multipart_id(record.id).await?,
                    number,
                    len,
                    Some(c.sha256),
                    body,
                )
                .await
        }
        .await;
        lease.release().await;
        Ok(SentPart {
            number,
            etag: sent?,
        })
    }
}

/// Where an append's bytes of the chunk at hand are going.
enum Current {
    /// Streamed into the chunk's part (the append reaches the chunk's end).
    Streaming {
        tx: mpsc::Sender<std::io::Result<Bytes>>,
        response: tokio::task::JoinHandle<Result<String>>,
        number: u64,
    },
    /// Held until the request ends, or until they fill the chunk.
    Holding,
}

/// See the module documentation.
struct AppendWriter {
    store: Arc<dyn Store>,
    record: UploadRecord,
    file: String,
    multipart_id: String,
    /// The chunk at hand, its bytes stored before this append, and their pieces.
    index: u64,
    within: u64,
    pieces: Vec<Piece>,
    /// Bytes of this append still to come, when the request said.
    remaining: Option<u64>,
    /// Bytes of the chunk at hand this append has sent or holds.
    held: u64,
    current: Option<Current>,
    tail: Vec<Bytes>,
    /// Where this append began.
    start: u64,
    /// Where the bytes this append has stored (or holds for its commit) end.
    kept: u64,
    sent: HashMap<u64, SentPart>,
    lease: Option<HeldLease>,
}

impl AppendWriter {
    /// Starts sending the chunk at hand's part: `body`, of `len` bytes.
    fn send(&self, len: u64, body: PartBody) -> (tokio::task::JoinHandle<Result<String>>, u64) {
        let number = part_number(self.index);
        let store = self.store.clone();
        let (file, multipart_id) = (self.file.clone(), self.multipart_id.clone());
        let response = tokio::spawn(async move {
            store
                .upload_part(&file, &multipart_id, number, len, None, body)
                .await
        });
        (response, number)
    }

    fn begin_chunk(&mut self) -> Result<()> {
        let len = self.record.chunk_len(self.index)?;
        let room = len - self.within;
        if self.remaining.is_some_and(|r| r >= room) {
            // The pieces first, then the request's bytes.
            let pieces = std::mem::take(&mut self.pieces);
            let (tx, rx) = mpsc::channel(4);
            let body = piece_stream(self.store.clone(), pieces, None)
                .chain(channel_body(rx))
                .boxed();
            let (response, number) = self.send(len, body);
            self.current = Some(Current::Streaming {
                tx,
                response,
                number,
            });
        } else {
            self.current = Some(Current::Holding);
        }
        Ok(())
    }

    async fn end_chunk(&mut self) -> Result<()> {
        let len = self.record.chunk_len(self.index)?;
        let (response, number) = match self.current.take() {
            Some(Current::Streaming {
                tx,
                response,
                number,
            }) => {
                drop(tx);
                (response, number)
            }
            _ => {
                let pieces = std::mem::take(&mut self.pieces);
                let tail = std::mem::take(&mut self.tail).into_iter().map(Ok);
                let body = piece_stream(self.store.clone(), pieces, None)
                    .chain(futures_util::stream::iter(tail))
                    .boxed();
                self.send(len, body)
            }
        };
        let etag = answered(response).await?;
        self.sent.insert(self.index, SentPart { number, etag });
        self.kept = self.record.chunk_end(self.index);
        self.index += 1;
        self.within = 0;
        self.held = 0;
        self.pieces.clear();
        Ok(())
    }
}

#[async_trait]
impl ChunkWriter for AppendWriter {
    async fn write(&mut self, mut bytes: Bytes) -> Result<()> {
        if let Some(lease) = &mut self.lease {
            lease.renew_if_due().await?;
        }
        while !bytes.is_empty() {
            if self.current.is_none() {
                self.begin_chunk()?;
            }
            let room = self.record.chunk_len(self.index)? - self.within - self.held;
            let seg = bytes.split_to((room as usize).min(bytes.len()));
            let n = seg.len() as u64;
            if let Some(r) = &mut self.remaining {
                *r = r.saturating_sub(n);
            }
            self.held += n;
            match &self.current {
                Some(Current::Streaming { tx, .. }) => {
                    if tx.send(Ok(seg)).await.is_err() {
                        return Err(Error::Io(std::io::Error::other(
                            "the store stopped reading the part",
                        )));
                    }
                }
                _ => self.tail.push(seg),
            }
            if self.within + self.held == self.record.chunk_len(self.index)? {
                self.end_chunk().await?;
            }
        }
        Ok(())
    }

    fn kept(&self) -> Option<u64> {
        match self.current {
            // A part cut short is not stored: its bytes of this append must come again.
            Some(Current::Streaming { .. }) => Some(self.kept),
            _ => None,
        }
    }

    async fn finish(mut self: Box<Self>) -> Result<Written> {
        let (tail_len, tail) = match self.current.take() {
            Some(Current::Streaming { response, .. }) => {
                response.abort();
                (0, Vec::new())
            }
            _ => (self.held, std::mem::take(&mut self.tail)),
        };
        let lease = self.lease.take();
        if self.kept + tail_len == self.start {
            // Nothing to commit (an empty body, or a part cut short at once).
            if let Some(lease) = lease {
                lease.release().await;
            }
            return Ok(Written::nothing());
        }
        let state = self.pieces.last().map(|p| p.state.clone());
        Ok(Written::of(Handoff {
            sent: std::mem::take(&mut self.sent),
            index: self.index,
            within: self.within,
            state,
            tail,
            tail_len,
            lease,
        }))
    }

    async fn abandon(mut self: Box<Self>) {
        if let Some(Current::Streaming { response, .. }) = self.current.take() {
            response.abort();
        }
        if let Some(lease) = self.lease.take() {
            lease.release().await;
        }
    }
}

impl Drop for AppendWriter {
    fn drop(&mut self) {
        if let Some(Current::Streaming { response, .. }) = &self.current {
            response.abort();
        }
    }
}
