//! In-order appends (tus PATCH, IETF append) on S3, where every part but the last must be
//! at least 5 MiB while an append may be of any size.
//!
//! An append's bytes go to the chunk they fall in. Where the append (by its
//! `Content-Length`) reaches the end of its chunk, the chunk is streamed as its part: first
//! the chunk's pieces (below), read back from the bucket, then the request's bytes. Where it
//! does not (a short append, or the last bytes of a long one), its bytes of that chunk are
//! held in memory until the request ends, then stored as a *piece*, a small object of the
//! chunk, when the append is committed: held durably in the bucket, not in memory, until a
//! later append completes the chunk and its part is written; then the pieces are removed.
//! A body with no `Content-Length` is held the same way, up to one chunk.
//!
//! A piece's name carries its offset in the chunk, its length, and the chunk's SHA-256
//! midstate after it, so one LIST of the upload gives the partial chunk's length and lets
//! any server continue the chunk's hash without reading anything back; the pieces are
//! checked against that chain whenever they are read.
//!
//! One appender per upload across servers: the upload's `chunks/append-lease` (taken and
//! renewed as a chunk's lease is, and released when the append is committed), whose
//! generation also fences the part numbers of appended chunks. A concurrent append is told
//! the upload is locked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use common::UploadId;
use futures_util::StreamExt;
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::lease::HeldLease;
use super::{lock, part, part_number, store_err, Pending, S3Backend};
use crate::backend::{ChunkWriter, Receipt, StoredChunk};
use crate::error::{Error, Result};
use crate::hash::SavedPrefixHash;
use crate::record::UploadRecord;

/// A chunk's bytes on their way into its part, as a request body.
type BodyTx = mpsc::Sender<std::result::Result<Bytes, std::io::Error>>;

/// What an append hands to its commit, by upload: the bytes of a partial chunk to store as
/// a piece, and the lease to release.
pub(super) type Handoffs = Arc<Mutex<HashMap<UploadId, Handoff>>>;

/// See [`Handoffs`].
pub(super) struct Handoff {
    index: u64,
    /// Bytes of the chunk stored before this append.
    within: u64,
    /// The chunk's hash midstate after them (hex), if any.
    state: Option<String>,
    tail: Vec<Bytes>,
    tail_len: u64,
    lease: HeldLease,
}

/// One piece of a partly appended chunk (see the module documentation).
#[derive(Clone, Debug)]
pub(super) struct Piece {
    /// Offset in its chunk.
    start: u64,
    len: u64,
    /// The chunk's SHA-256 midstate after this piece, hex.
    state: String,
    key: Path,
}

/// `{start:012}.{len}.{state}`: a piece's name in `chunks/{index:05}/pieces/`.
fn piece_name(start: u64, len: u64, state: &str) -> String {
    format!("{start:012}.{len}.{state}")
}

/// Reads a piece back from its key: `(chunk index, piece)`.
fn parse_piece(location: &Path) -> Option<(u64, Piece)> {
    let parts: Vec<_> = location.parts().collect();
    let [.., index, dir, name] = parts.as_slice() else {
        return None;
    };
    if dir.as_ref() != "pieces" {
        return None;
    }
    let index = index.as_ref().parse().ok()?;
    let mut it = name.as_ref().split('.');
    let start = it.next()?.parse().ok()?;
    let len = it.next()?.parse().ok()?;
    let state = it.next()?.to_string();
    Some((
        index,
        Piece {
            start,
            len,
            state,
            key: location.clone(),
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

/// The partly appended chunks found in one listing of an upload's chunk objects (chunks
/// with pieces and no receipt), and the hash midstate of the last of them.
pub(super) fn partials(
    record: &UploadRecord,
    metas: &[ObjectMeta],
    whole: &[u64],
) -> (Vec<Receipt>, Option<SavedPrefixHash>) {
    let mut by_index: HashMap<u64, Vec<Piece>> = HashMap::new();
    for (index, piece) in metas.iter().filter_map(|m| parse_piece(&m.location)) {
        if !whole.contains(&index) {
            by_index.entry(index).or_default().push(piece);
        }
    }
    let mut receipts = Vec::new();
    let mut cursor: Option<SavedPrefixHash> = None;
    let mut indexes: Vec<u64> = by_index.keys().copied().collect();
    indexes.sort_unstable();
    for index in indexes {
        let run = contiguous(by_index.remove(&index).unwrap_or_default());
        let Some(last) = run.last() else { continue };
        let len = last.start + last.len;
        receipts.push(Receipt::Partial { index, len });
        cursor = Some(SavedPrefixHash {
            hashed_bytes: record.chunk_offset(index) + len,
            state: last.state.clone(),
            version: None,
        });
    }
    (receipts, cursor)
}

/// The bytes of `pieces`, read back and checked against their midstate chain (and
/// against `digest` at the end, when given), for the start of a part's body.
fn piece_stream(
    store: Arc<AmazonS3>,
    pieces: Vec<Piece>,
    digest: Option<common::Sha256Digest>,
) -> impl futures_util::Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let fail = |why: String| Err(std::io::Error::other(why));
        let mut h = Sha256::new();
        for p in pieces {
            let mut got = match store.get(&p.key).await {
                Ok(g) => g.into_stream(),
                Err(e) => {
                    let _ = tx.send(fail(format!("piece {}: {e}", p.key))).await;
                    return;
                }
            };
            let mut read = 0u64;
            while let Some(b) = got.next().await {
                let b = match b {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(fail(format!("piece {}: {e}", p.key))).await;
                        return;
                    }
                };
                read += b.len() as u64;
                h.update(&b);
                if tx.send(Ok(b)).await.is_err() {
                    return;
                }
            }
            if read != p.len || state_of(&h) != p.state {
                let why = format!("piece {} does not hold the bytes it was stored with", p.key);
                let _ = tx.send(fail(why)).await;
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
    part::body_of(rx)
}

impl S3Backend {
    fn pieces_dir(&self, id: UploadId, index: u64) -> Path {
        self.chunk_dir(id, index).join("pieces")
    }

    /// The pieces of chunk `index` that run contiguously from its start.
    async fn pieces(&self, id: UploadId, index: u64) -> Result<Vec<Piece>> {
        let metas: Vec<ObjectMeta> = futures_util::TryStreamExt::try_collect(
            self.store.list(Some(&self.pieces_dir(id, index))),
        )
        .await
        .map_err(store_err)?;
        Ok(contiguous(
            metas
                .iter()
                .filter_map(|m| parse_piece(&m.location))
                .map(|(_, p)| p)
                .collect(),
        ))
    }

    async fn take_append_lease(&self, id: UploadId) -> Result<HeldLease> {
        let key = self.key(&format!("uploads/{id}/chunks/append-lease"));
        let holder = format!("{}-{}", self.process, uuid::Uuid::new_v4().simple());
        let (tag, generation) = match self.take_lease(&key, &holder).await {
            Err(Error::Conflict) => return Err(Error::Locked),
            other => other?,
        };
        Ok(HeldLease::new(
            self.store.clone(),
            key,
            holder,
            tag,
            generation,
        ))
    }

    /// The pieces of the chunk at `offset` and the upload's multipart upload, once it is
    /// checked that no other server appended before this one took the lease.
    async fn appendable(&self, record: &UploadRecord, offset: u64) -> Result<(Vec<Piece>, String)> {
        let id = record.id;
        let index = offset / record.chunk_size;
        let within = offset - record.chunk_offset(index);
        let pieces = self.pieces(id, index).await?;
        let end = pieces.last().map_or(0, |p| p.start + p.len);
        let claimed = self
            .read_claim(&self.chunk_dir(id, index), index)
            .await?
            .is_some();
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
        // Holding the lease, what an earlier append of this process left here is stale
        // (its commit never came): it goes (its lease's release, of an older version,
        // changes nothing).
        drop(lock(&self.handoffs).remove(&id));
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
        Ok(Box::new(S3AppendWriter {
            store: self.store.clone(),
            http: self.http.clone(),
            record: record.clone(),
            staging: self.staging_key(id),
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
            pending: self.pending.clone(),
            handoffs: self.handoffs.clone(),
            lease: Some(lease),
        }))
    }

    /// Makes an append durable: each whole chunk's part is claimed and receipted (its
    /// pieces then go), and the bytes of a partial chunk are stored as a piece.
    pub(super) async fn commit_appends(
        &self,
        record: &UploadRecord,
        receipts: &[Receipt],
    ) -> Result<u64> {
        let handoff = lock(&self.handoffs).remove(&record.id);
        let committed = self.commit_held(record, receipts, handoff.as_ref()).await;
        if let Some(h) = handoff {
            h.lease.release().await;
        }
        committed
    }

    async fn commit_held(
        &self,
        record: &UploadRecord,
        receipts: &[Receipt],
        handoff: Option<&Handoff>,
    ) -> Result<u64> {
        let id = record.id;
        if receipts
            .iter()
            .any(|r| matches!(r, Receipt::Partial { .. }))
            && handoff.is_none()
        {
            return Err(Error::Corrupt("no bytes held for a partial chunk".into()));
        }
        let mut stored_first = 0;
        for r in receipts {
            match *r {
                Receipt::Chunk(c) => {
                    let sent = lock(&self.pending).remove(&(id, c.index));
                    let (etag, number) = match sent {
                        Some(s) => s,
                        None => self.part_from_pieces(record, &c).await?,
                    };
                    stored_first += self.claim(id, &c, etag, number).await?;
                    self.delete_prefix(&self.pieces_dir(id, c.index)).await?;
                }
                Receipt::Partial { index, len } => {
                    let h = handoff
                        .filter(|h| h.index == index && h.within + h.tail_len == len)
                        .ok_or_else(|| {
                            Error::Corrupt(format!("no bytes held for chunk {index}'s append"))
                        })?;
                    if h.tail_len == 0 {
                        continue;
                    }
                    let mut hasher = hasher_of(h.state.as_deref())?;
                    for b in &h.tail {
                        hasher.update(b);
                    }
                    let name = piece_name(h.within, h.tail_len, &state_of(&hasher));
                    let payload: PutPayload = h.tail.iter().cloned().collect();
                    match self
                        .store
                        .put_opts(
                            &self.pieces_dir(id, index).join(name.as_str()),
                            payload,
                            PutOptions::from(PutMode::Create),
                        )
                        .await
                    {
                        Ok(_) => {}
                        Err(object_store::Error::AlreadyExists { .. })
                        | Err(object_store::Error::Precondition { .. }) => {
                            return Err(Error::Conflict)
                        }
                        Err(e) => return Err(store_err(e)),
                    }
                }
            }
        }
        Ok(stored_first)
    }

    /// Writes chunk `c`'s part from its pieces alone (the last chunk of an upload whose
    /// length was declared after its bytes were stored).
    async fn part_from_pieces(
        &self,
        record: &UploadRecord,
        c: &StoredChunk,
    ) -> Result<(String, u64)> {
        let lease = self.take_append_lease(record.id).await?;
        let number = part_number(record, c.index, lease.generation());
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
            let sending = part::send_part(
                &self.http,
                &self.store,
                &self.staging_key(record.id),
                &self.multipart_id(record.id).await?,
                number,
                len,
                body,
            )
            .await;
            part::answered(sending).await
        }
        .await;
        lease.release().await;
        Ok((sent?, number))
    }
}

/// Where an append's bytes of the chunk at hand are going.
enum Current {
    /// Streamed into the chunk's part (the append reaches the chunk's end).
    Streaming {
        tx: BodyTx,
        response: tokio::task::JoinHandle<Result<String>>,
        number: u64,
    },
    /// Held until the request ends, or until they fill the chunk.
    Holding,
}

/// See the module documentation.
struct S3AppendWriter {
    store: Arc<AmazonS3>,
    http: reqwest::Client,
    record: UploadRecord,
    staging: Path,
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
    pending: Pending,
    handoffs: Handoffs,
    lease: Option<HeldLease>,
}

impl S3AppendWriter {
    /// Starts sending the chunk at hand's part: `body`, of `len` bytes.
    async fn send<B>(&self, len: u64, body: B) -> (tokio::task::JoinHandle<Result<String>>, u64)
    where
        B: futures_util::Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let generation = self.lease.as_ref().map_or(0, HeldLease::generation);
        let number = part_number(&self.record, self.index, generation);
        let sending = part::send_part(
            &self.http,
            &self.store,
            &self.staging,
            &self.multipart_id,
            number,
            len,
            body,
        )
        .await;
        (sending, number)
    }

    async fn begin_chunk(&mut self) -> Result<()> {
        let len = self.record.chunk_len(self.index)?;
        let room = len - self.within;
        if self.remaining.is_some_and(|r| r >= room) {
            // The pieces first, then the request's bytes.
            let pieces = std::mem::take(&mut self.pieces);
            let (tx, rx) = mpsc::channel(4);
            let body = piece_stream(self.store.clone(), pieces, None).chain(part::body_of(rx));
            let (response, number) = self.send(len, body).await;
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
                    .chain(futures_util::stream::iter(tail));
                self.send(len, body).await
            }
        };
        let etag = part::answered(response).await?;
        lock(&self.pending).insert((self.record.id, self.index), (etag, number));
        self.kept = self.record.chunk_end(self.index);
        self.index += 1;
        self.within = 0;
        self.held = 0;
        self.pieces.clear();
        Ok(())
    }
}

#[async_trait]
impl ChunkWriter for S3AppendWriter {
    async fn write(&mut self, mut bytes: Bytes) -> Result<()> {
        if let Some(lease) = &mut self.lease {
            lease.renew_if_due().await?;
        }
        while !bytes.is_empty() {
            if self.current.is_none() {
                self.begin_chunk().await?;
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

    async fn finish(mut self: Box<Self>) -> Result<()> {
        let (tail_len, tail) = match self.current.take() {
            Some(Current::Streaming { response, .. }) => {
                response.abort();
                (0, Vec::new())
            }
            _ => (self.held, std::mem::take(&mut self.tail)),
        };
        let Some(lease) = self.lease.take() else {
            return Ok(());
        };
        if self.kept + tail_len == self.start {
            // Nothing to commit (an empty body, or a part cut short at once).
            lease.release().await;
            return Ok(());
        }
        let state = self.pieces.last().map(|p| p.state.clone());
        lock(&self.handoffs).insert(
            self.record.id,
            Handoff {
                index: self.index,
                within: self.within,
                state,
                tail,
                tail_len,
                lease,
            },
        );
        Ok(())
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

impl Drop for S3AppendWriter {
    fn drop(&mut self) {
        if let Some(Current::Streaming { response, .. }) = &self.current {
            response.abort();
        }
    }
}
