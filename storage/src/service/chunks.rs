//! Whole chunks, in any order and in parallel (the native API): each is hashed as it
//! streams, checked against its digest and length, stored, and acknowledged only once
//! durable. A retry of a stored chunk stores nothing and tells the same bytes (200) from
//! other bytes (409).

use bytes::Bytes;
use common::api::ChunkReceipt;
use common::{Sha256Digest, UploadId};
use futures_util::{Stream, StreamExt};

use super::registry::Purpose;
use super::{ChunkStored, Uploads};
use crate::backend::{Receipt, StoredChunk};
use crate::error::{Error, Result};
use crate::hash::ChunkHasher;
use crate::lifecycle::Step;
use crate::metrics;
use crate::record::UploadMode;

impl Uploads {
    /// Stores chunk `index` from `body`. `declared_len` is the request's Content-Length when
    /// it had one; `digest` its `Content-Digest`. Answers only once the chunk is durable.
    pub async fn put_chunk<S>(
        &self,
        id: UploadId,
        index: u64,
        declared_len: Option<u64>,
        digest: Option<Sha256Digest>,
        body: S,
    ) -> Result<ChunkStored>
    where
        S: Stream<Item = Result<Bytes>> + Send + Unpin,
    {
        let stored = self
            .store_chunk(id, index, declared_len, digest, body)
            .await;
        self.registry.settle(stored)
    }

    async fn store_chunk<S>(
        &self,
        id: UploadId,
        index: u64,
        declared_len: Option<u64>,
        digest: Option<Sha256Digest>,
        mut body: S,
    ) -> Result<ChunkStored>
    where
        S: Stream<Item = Result<Bytes>> + Send + Unpin,
    {
        let began = tokio::time::Instant::now();
        let up = self.registry.get(id, Purpose::ChunkWrite).await?;
        let _busy = up.busy_guard();
        let _op = up.op.read().await;
        let record = up.record();
        self.step(&up, Step::StoreBytes(UploadMode::Chunks)).await?;
        let mut len = record.chunk_len(index)?;
        if record.length_deferred {
            // Until the length is declared, only the request can say where a shorter last
            // chunk ends: without it a short body could not be told from a cut one.
            let d = declared_len.ok_or(Error::LengthRequired(
                "a chunk of an upload whose size is not declared yet needs Content-Length",
            ))?;
            if d == 0 || d > len {
                return Err(Error::Invalid(format!(
                    "the body is {d} bytes, but chunk {index} holds 1 to {len} bytes"
                )));
            }
            up.chunks().check_deferred(index, d)?;
            len = d;
        } else if let Some(d) = declared_len.filter(|d| *d != len) {
            return Err(Error::Invalid(format!(
                "the body is {d} bytes, but chunk {index} must be exactly {len} bytes"
            )));
        }
        let writers = self.registry.writers(&up);
        let writer_slot = writers.enter(index, self.config.stall_takeover).await;
        let slot = &writer_slot.slot;
        // The next piece of the body, unless a newer request took over.
        macro_rules! next_piece {
            () => {
                tokio::select! {
                    b = body.next() => { slot.progressed(); b }
                    _ = slot.abort.notified() => return Err(Error::Superseded),
                }
            };
        }

        let mut already = up.chunks().get(index);
        let mut writer = None;
        if already.is_none() {
            // A shorter last chunk of an upload whose length is deferred: the writer sees
            // an upload that ends with it (on S3, a part of its own length).
            let mut ends_here = record.clone();
            if len < record.chunk_len(index)? {
                ends_here.size = record.chunk_offset(index) + len;
            }
            match self
                .backend
                .writer_at(&ends_here, record.chunk_offset(index), digest)
                .await
            {
                Ok(w) => writer = Some(w),
                Err(Error::StoredMeanwhile { stored, .. }) => already = Some(stored),
                Err(e) => return Err(e),
            }
        }
        let receipt = |sha256| ChunkReceipt {
            index,
            size: len,
            sha256,
        };
        if let Some(stored) = already {
            // A retry: read the body to tell "same bytes" from "other bytes", store nothing.
            let mut h = ChunkHasher::new(len, None);
            while let Some(b) = next_piece!() {
                h.update(&b?)?;
            }
            let (actual, _) = h.finish()?;
            check_digest(digest, actual)?;
            if actual != stored {
                return Err(Error::ChunkConflict { index, stored });
            }
            return Ok(ChunkStored {
                receipt: receipt(actual),
                new: false,
            });
        }

        let mut plan = self.hash.plan_chunk(&up, &record, index, len).await?;
        let mut h = ChunkHasher::new(len, plan.prefix.take());
        let mut writer = writer.ok_or_else(|| Error::Corrupt("no chunk writer".into()))?;
        while let Some(b) = next_piece!() {
            let b = b?;
            h.update(&b)?;
            plan.keep(&b);
            writer.write(b).await?;
        }
        // Length and digest are checked before the write is finished: a body that is
        // short or wrong is dropped unfinished (on S3 its part request is aborted), so
        // it is refused for what it is and stores nothing.
        let (actual, advanced) = h.finish()?;
        check_digest(digest, actual)?;
        let written = writer.finish().await?;
        let chunk = StoredChunk {
            index,
            size: len,
            sha256: actual,
        };
        let (coverage, after) = self
            .hash
            .cover(&record, &chunk, advanced, plan.kept)
            .await?;
        let stored_first = self
            .backend
            .commit(&record, written, &[Receipt::Chunk(chunk)], coverage)
            .await?;
        self.registry.confirm_open(id, began).await?;
        if stored_first == 0 {
            metrics::received(len);
            self.hash.chunk_stored(&up, &record, &chunk, after);
        }
        self.events.changed(id);
        Ok(ChunkStored {
            receipt: receipt(actual),
            new: stored_first == 0,
        })
    }
}

fn check_digest(declared: Option<Sha256Digest>, actual: Sha256Digest) -> Result<()> {
    match declared {
        Some(declared) if declared != actual => {
            Err(Error::ChunkDigestMismatch { declared, actual })
        }
        _ => Ok(()),
    }
}
