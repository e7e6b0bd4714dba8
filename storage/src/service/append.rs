//! In-order appends of any length (what tus PATCH and IETF appends carry), mapped onto
//! the upload's chunks: each chunk an append fills is receipted with its own SHA-256, the
//! bytes of a chunk it does not fill are receipted as the chunk's stored prefix, and the
//! whole-file hash advances in flight. The rules of the protocols (offsets, lengths,
//! completion) are in [`super::stream`]; this is the mechanism under them.

use bytes::Bytes;
use common::Sha256Digest;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::{MutexGuard, RwLockReadGuard};

use super::Uploads;
use crate::backend::{Coverage, Receipt, StoredChunk};
use crate::checksum::BodyChecksum;
use crate::error::{Error, Result};
use crate::metrics;
use crate::record::UploadRecord;
use crate::upload::{BusyGuard, Upload};
use crate::writers::WriterGuard;

/// The slot that makes a request the one appender of an upload.
const APPENDER: u64 = u64::MAX;

/// What an appending request holds: the upload kept busy (never expired meanwhile), no
/// state change underway, the appender slot, and the hash of the partly appended chunk.
pub(super) struct Appender<'a> {
    _busy: BusyGuard,
    _op: RwLockReadGuard<'a, ()>,
    slot: WriterGuard<'a>,
    cursor: MutexGuard<'a, Option<Sha256>>,
}

/// What an append may write.
pub(super) struct Bounds {
    /// Where it starts: the upload's offset.
    pub start: u64,
    /// The body's length, when the request said it.
    pub len: Option<u64>,
    /// A checksum of the whole body: the append is then all or nothing.
    pub checksum: Option<BodyChecksum>,
    /// A length the request says the upload has (while the record does not know it yet):
    /// the body must not go past it.
    pub declared: Option<u64>,
}

impl Uploads {
    /// Becomes the one appender of `up`, or [`Error::Locked`] while another request is
    /// appending (a stalled one is stopped and replaced).
    pub(super) async fn lock_appender<'a>(
        &self,
        up: &'a std::sync::Arc<Upload>,
    ) -> Result<Appender<'a>> {
        let busy = up.busy_guard();
        let op = up.op.read().await;
        let slot = up
            .writers
            .try_enter(APPENDER, self.config.stall_takeover)
            .await
            .ok_or(Error::Locked)?;
        let cursor = up.stream.lock().await;
        Ok(Appender {
            _busy: busy,
            _op: op,
            slot,
            cursor,
        })
    }

    /// Appends `body` at `bounds.start` (the upload's offset, checked by the caller under
    /// `app`) and returns where the stored bytes now end. Without a checksum, a body cut
    /// short keeps what arrived, as tus expects; with one, nothing is kept unless it all
    /// matched. The bytes are durable when this returns.
    pub(super) async fn append_bytes<S>(
        &self,
        up: &Upload,
        app: &mut Appender<'_>,
        record: &UploadRecord,
        bounds: Bounds,
        mut body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = Result<Bytes>> + Send + Unpin,
    {
        let Bounds {
            start,
            len,
            checksum,
            declared,
        } = bounds;
        let id = record.id;
        let in_flight = self.hash.before_append(up, start).await?;
        let chunk_start = |pos: u64| pos - pos % record.chunk_size;
        if start == record.size {
            // Nothing fits after the last byte (an empty append saying the length of an
            // upload already full): there is nothing to write, and only an empty body.
            while let Some(piece) = body.next().await {
                let len = piece?.len() as u64;
                if len > 0 {
                    return Err(past_end(record, start.saturating_add(len)));
                }
            }
            return Ok(start);
        }
        if app.cursor.is_none() {
            *app.cursor = Some(
                self.hash
                    .hash_stored(record, chunk_start(start), start)
                    .await?,
            );
        }
        let mut prefix = up.prefix().hasher.clone();
        let mut chunk = app.cursor.clone().unwrap_or_default();
        let mut body_hash = checksum.as_ref().map(BodyChecksum::hasher);
        let mut receipts = Vec::new();
        let mut pos = start;
        let mut writer = self.backend.appender_at(record, start, len).await?;
        let mut cut: Option<Error> = None;
        // Where the hashes stood at the start and at each chunk's end, should storage keep
        // fewer bytes than were written (see `ChunkWriter::kept`).
        let mut marks = vec![(start, prefix.clone(), chunk.clone(), 0)];
        let slot = &app.slot.slot;
        let streamed: Result<()> = async {
            loop {
                let piece = tokio::select! {
                    b = body.next() => b,
                    _ = slot.abort.notified() => Some(Err(Error::Superseded)),
                };
                let Some(piece) = piece else { break };
                slot.progressed();
                let mut piece = match piece {
                    Ok(p) => p,
                    Err(e) => {
                        cut = Some(e);
                        break;
                    }
                };
                let end = pos.saturating_add(piece.len() as u64);
                if let Some(l) = declared.filter(|l| end > *l) {
                    return Err(Error::InconsistentLength(format!(
                        "the body goes past the length of {l} bytes the request says"
                    )));
                }
                if end > record.size {
                    return Err(past_end(record, end));
                }
                if let Some(h) = &mut body_hash {
                    h.update(&piece);
                }
                writer.write(piece.clone()).await?;
                while !piece.is_empty() {
                    let index = pos / record.chunk_size;
                    let room = (record.chunk_end(index) - pos) as usize;
                    let seg = piece.split_to(room.min(piece.len()));
                    chunk.update(&seg);
                    if in_flight {
                        prefix.update(&seg);
                    }
                    pos += seg.len() as u64;
                    if pos == record.chunk_end(index) {
                        let done = std::mem::take(&mut chunk);
                        receipts.push(Receipt::Chunk(StoredChunk {
                            index,
                            size: pos - record.chunk_offset(index),
                            sha256: Sha256Digest(done.finalize().into()),
                        }));
                        marks.push((pos, prefix.clone(), Sha256::new(), receipts.len()));
                    }
                }
            }
            if let (Some(c), Some(h)) = (&checksum, body_hash) {
                // All or nothing: a body cut short cannot be checked.
                if let Some(e) = cut.take() {
                    return Err(e);
                }
                if !c.matches(h) {
                    return Err(Error::BodyChecksumMismatch {
                        algorithm: c.algorithm(),
                    });
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = streamed {
            // Nothing of this append is kept: the writer lets go of what it holds now.
            writer.abandon().await;
            return Err(e);
        }
        let kept = writer.kept();
        let written = writer.finish().await?;
        if let Some(end) = kept.filter(|end| *end < pos) {
            let (at, p, c, n) = marks
                .into_iter()
                .rev()
                .find(|m| m.0 == end)
                .ok_or_else(|| Error::Corrupt(format!("storage kept bytes up to {end}")))?;
            tracing::info!(%id, kept = at, cut = pos, "a body cut short: its last chunk's bytes must come again");
            (pos, prefix, chunk) = (at, p, c);
            receipts.truncate(n);
        }
        if pos > start {
            if pos % record.chunk_size != 0 && pos < record.size {
                receipts.push(Receipt::Partial {
                    index: pos / record.chunk_size,
                    len: pos - chunk_start(pos),
                });
            }
            let coverage = if in_flight {
                self.hash.append_coverage(pos, &prefix)
            } else {
                Coverage::Readable
            };
            self.backend
                .commit(record, written, &receipts, coverage)
                .await?;
            metrics::received(pos - start);
            if in_flight {
                metrics::hashed_in_flight(pos - start);
            }
            self.events.changed(id);
            {
                let mut t = up.chunks();
                for r in &receipts {
                    match *r {
                        Receipt::Chunk(c) => t.set(c.index, c.size, c.sha256),
                        Receipt::Partial { index, len } => t.set_partial(index, len),
                    }
                }
            }
            *app.cursor = Some(chunk);
            if in_flight {
                self.hash.append_stored(up, start, pos, prefix).await;
            }
        }
        match cut {
            Some(e) => Err(e),
            None => Ok(pos),
        }
    }
}

/// A body that would end at `end`, past the upload's last byte: past the ceiling of an
/// upload whose length is not known yet, or past the length said.
fn past_end(record: &UploadRecord, end: u64) -> Error {
    if record.length_deferred {
        return Error::TooLarge {
            size: end,
            max: record.size,
        };
    }
    Error::InconsistentLength(format!(
        "the body goes past the upload's length of {} bytes",
        record.size
    ))
}
