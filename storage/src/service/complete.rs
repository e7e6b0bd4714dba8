//! Completion: every chunk is there, the whole-file SHA-256 is finished and compared with
//! the declared one, and only then is the file published. It happens once however many
//! requests (or servers) ask; a verification whose server died is taken over. Also the
//! late declaration of a length (uploads created without one), which may complete them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::{UploadState, UploadStatus};
use common::{Sha256Digest, UploadId};
use sha2::Digest;
use time::OffsetDateTime;

use super::{Completion, Uploads};
use crate::backend::{Coverage, Receipt, StoredChunk, Written};
use crate::error::{Error, Result};
use crate::lifecycle::Step;
use crate::metrics;
use crate::record::{StoredState, UploadMode, UploadRecord};
use crate::upload::{lock, Upload};

/// How long a verification may stay silent before another request takes it over.
const STALE_VERIFICATION: Duration = Duration::from_secs(60);

impl Uploads {
    /// Completes an upload: checks that every chunk is stored, finishes the whole-file
    /// SHA-256, compares it with the declared one and publishes the file. Repeating a
    /// successful complete answers the same status.
    pub async fn complete(
        self: &Arc<Self>,
        id: UploadId,
        declared: Option<Sha256Digest>,
    ) -> Result<Completion> {
        self.complete_sized(id, declared, None, None).await
    }

    /// [`Self::complete`], saying the upload's size: required for an upload of chunks whose
    /// length was deferred (it is declared here, checked against the chunks stored), and for
    /// any other it must be the size it has. With `chunks`, the SHA-256 of every chunk as
    /// the client read it: each must be the one stored (chunks sent without a digest of
    /// their own, as in a run, are so covered by the client's digests before anything is
    /// published); checked when the completion is first asked.
    pub async fn complete_sized(
        self: &Arc<Self>,
        id: UploadId,
        declared: Option<Sha256Digest>,
        size: Option<u64>,
        chunks: Option<&[Sha256Digest]>,
    ) -> Result<Completion> {
        let completed = self.complete_checked(id, declared, size, chunks).await;
        self.registry.settle(completed)
    }

    async fn complete_checked(
        self: &Arc<Self>,
        id: UploadId,
        declared: Option<Sha256Digest>,
        size: Option<u64>,
        chunks: Option<&[Sha256Digest]>,
    ) -> Result<Completion> {
        let mut up = self.get(id).await?;
        if self.hash.needs_settling()
            && up.record().state == StoredState::Uploading
            && up.chunks().missing().is_empty()
        {
            // Chunks acknowledged here may still be continuing the whole-file hash.
            self.hash.settle(id).await;
            up = self.get(id).await?;
        }
        let _busy = up.busy_guard();
        let op = up.op.clone().write_owned().await;
        let mut record = up.record();
        let undeclared = record.length_deferred
            && record.mode == UploadMode::Chunks
            && record.state == StoredState::Uploading;
        match size {
            Some(size) if undeclared => {
                self.declare_chunked_length(&up, &record, size).await?;
                record = up.record();
            }
            Some(size) if !record.length_deferred => record.same_length(size)?,
            None if undeclared => {
                return Err(Error::InconsistentLength(
                    "the upload's size is not declared yet: say it as `size` in the completion"
                        .into(),
                ))
            }
            _ => {}
        }
        let expected = match (record.declared_sha256, declared) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::Invalid(format!(
                    "sha256 {b} differs from the {a} declared at creation"
                )))
            }
            (a, b) => a.or(b),
        };
        match record.state {
            StoredState::Completed => {
                let actual = record
                    .sha256
                    .ok_or_else(|| Error::Corrupt("completed without sha256".into()))?;
                if let Some(e) = expected.filter(|e| *e != actual) {
                    return Err(Error::Sha256Mismatch {
                        expected: e,
                        actual,
                    });
                }
                return Ok(Completion::Done(self.status_of(&up)?));
            }
            StoredState::Completing => {
                // A verification that stopped (its server died, or the store failed) is
                // taken over once it has been silent for a while; one of this process
                // that stopped on an error, at once.
                let stale = OffsetDateTime::now_utc() - record.updated_at > STALE_VERIFICATION;
                let stopped_here = lock(&self.verifications_stopped).remove(&id);
                if (stale || stopped_here)
                    && self.step(&up, Step::TakeOverVerification).await.is_ok()
                {
                    drop(op);
                    self.clone().spawn_verify(up.clone());
                }
                return Ok(Completion::Verifying(self.status_of(&up)?));
            }
            StoredState::Failed => {
                return Err(match (record.declared_sha256, record.sha256) {
                    (Some(expected), Some(actual)) => Error::Sha256Mismatch { expected, actual },
                    _ => Error::WrongState("failed"),
                })
            }
            _ => {}
        }
        if record.state == StoredState::Uploading {
            let missing = up.chunks().missing();
            if !missing.is_empty() {
                return Err(Error::MissingChunks(missing));
            }
            if let Some(chunks) = chunks {
                self.check_chunk_digests(&up, &record, chunks).await?;
            }
        }
        match self
            .step(&up, Step::AskCompletion { sha256: expected })
            .await
        {
            Ok(_) => {}
            // Another server process got there first: answer from what it did.
            Err(Error::Conflict) => {
                drop(op);
                let status = self.status(id).await?;
                return Ok(match status.state {
                    UploadState::Completed => Completion::Done(status),
                    _ => Completion::Verifying(status),
                });
            }
            Err(e) => return Err(e),
        }
        let unhashed = record.size.saturating_sub(up.prefix().hashed_bytes);
        if unhashed > self.config.inline_verify_limit {
            drop(op);
            self.clone().spawn_verify(up.clone());
            return Ok(Completion::Verifying(self.status_of(&up)?));
        }
        self.verify(&up).await?;
        drop(op);
        Ok(Completion::Done(self.status_of(&up)?))
    }

    /// Compares the client's digest of every chunk with the stored one.
    async fn check_chunk_digests(
        &self,
        up: &Upload,
        record: &UploadRecord,
        declared: &[Sha256Digest],
    ) -> Result<()> {
        if record.mode != UploadMode::Chunks {
            return Err(Error::Invalid(
                "chunk digests are for uploads of chunks, not in-order appends".into(),
            ));
        }
        if declared.len() as u64 != record.chunk_count() {
            return Err(Error::Invalid(format!(
                "{} chunk digests, but the upload has {} chunks",
                declared.len(),
                record.chunk_count()
            )));
        }
        let stored = self
            .backend
            .chunk_digests(record, stored_chunks(up, record))
            .await?;
        let differ: Vec<u64> = stored
            .iter()
            .filter(|c| declared.get(c.index as usize) != Some(&c.sha256))
            .map(|c| c.index)
            .collect();
        if differ.is_empty() {
            Ok(())
        } else {
            Err(Error::ChunksDiffer(common::ranges::to_ranges(differ)))
        }
    }

    pub(super) fn spawn_verify(self: Arc<Self>, up: Arc<Upload>) {
        tokio::spawn(async move {
            let _op = up.op.clone().write_owned().await;
            if up.record().state != StoredState::Completing {
                return;
            }
            if let Err(e) = self.verify(&up).await {
                metrics::storage_error(&e);
                tracing::warn!(id = %up.id, error = %e, "background verification ended");
            }
        });
    }

    /// Finishes the hash and settles the upload as completed or failed. Caller holds `op`.
    async fn verify(&self, up: &Arc<Upload>) -> Result<()> {
        let verified = self.verify_once(up).await;
        if verified.is_err() && up.record().state == StoredState::Completing {
            lock(&self.verifications_stopped).insert(up.id);
        }
        verified
    }

    async fn verify_once(&self, up: &Arc<Upload>) -> Result<()> {
        let started = Instant::now();
        let record = up.record();
        let chunks = stored_chunks(up, &record);
        match self.backend.assemble(&record, &chunks).await {
            Ok(()) => {}
            Err(e @ Error::MissingChunks(_)) => {
                // Acknowledged chunks without their bytes: the client resends them.
                self.step(up, Step::AssemblyMissing).await?;
                return Err(e);
            }
            Err(Error::Corrupt(why)) => {
                // The store holds other bytes than the acknowledged ones and cannot join
                // them: fail the upload rather than publish anything wrong.
                let step = Step::AssemblyCorrupt {
                    reason: why.clone(),
                };
                self.step_and_carry_out(up, step).await?;
                tracing::warn!(id = %up.id, reason = %why, "upload failed assembly");
                return Err(Error::AssemblyFailed(why));
            }
            Err(e) => return Err(e),
        }
        self.hash.adopt_progress(up);
        let at_completion = self.hash.catch_up(up).await?;
        let actual = up.prefix().digest();
        let read_back = up.read_back.load(Ordering::Relaxed);
        if let Some(expected) = up.record().declared_sha256.filter(|e| *e != actual) {
            self.step_and_carry_out(up, Step::Mismatched { actual })
                .await?;
            tracing::warn!(id = %up.id, %expected, %actual, "upload failed verification");
            return Err(Error::Sha256Mismatch { expected, actual });
        }
        self.step_and_carry_out(up, Step::Verified { sha256: actual })
            .await?;
        metrics::verified(started.elapsed(), at_completion);
        tracing::info!(
            id = %up.id,
            sha256 = %actual,
            read_back_total = read_back,
            read_back_at_completion = at_completion,
            "upload completed"
        );
        Ok(())
    }

    /// Declares the length of an upload created without one (tus `Upload-Length` on a
    /// PATCH; IETF `Upload-Length`, or the end of its last append). A known length never
    /// changes: another one is refused, the same one accepted. An upload whose bytes are
    /// all there is then completed (verified and published), and its status returned.
    pub async fn declare_length(
        self: &Arc<Self>,
        id: UploadId,
        length: u64,
    ) -> Result<Option<UploadStatus>> {
        let up = self.get(id).await?;
        let said = |record: &UploadRecord| {
            (!record.length_deferred).then(|| record.same_length(length).map(|()| None))
        };
        // A known length: nothing to change, so no lock to take (an append may be running).
        if let Some(answer) = said(&up.record()) {
            return answer;
        }
        let offset = {
            let _op = up.op.try_write().map_err(|_| Error::Locked)?;
            let record = up.record();
            // Said by another request meanwhile.
            if let Some(answer) = said(&record) {
                return answer;
            }
            self.step(&up, Step::StoreBytes(UploadMode::Stream)).await?;
            let offset = up.chunks().contiguous_bytes(&record);
            // The length counts against the owner's quota from now on: checked first.
            let counted = self.ledger.counted(id);
            self.ledger.resize(id, length.min(record.size))?;
            let declared = self
                .step(
                    &up,
                    Step::DeclareLength {
                        length,
                        stored: offset,
                    },
                )
                .await;
            if let Err(e) = declared {
                let _ = self.ledger.resize(id, counted);
                return Err(e);
            }
            let record = up.record();
            up.chunks().truncate(record.chunk_count());
            tracing::info!(%id, size = length, "upload length declared");
            // The last chunk, partly appended, is whole now; unless the bytes filled it
            // already (the length said is the ceiling the upload was sized to).
            let last = record.chunk_count().saturating_sub(1);
            if offset == length && length > 0 && up.chunks().get(last).is_none() {
                self.close_last_chunk(&up, &record, offset).await?;
            }
            offset
        };
        if offset < length {
            return Ok(None);
        }
        Ok(Some(self.complete(id, None).await?.status()))
    }

    /// Declares the length of an upload of chunks created without one, at its completion:
    /// the chunks stored must fit it (none past its end, the last one exactly as long as
    /// the length leaves it, the others whole). Caller holds `op` exclusively.
    async fn declare_chunked_length(
        &self,
        up: &Upload,
        record: &UploadRecord,
        size: u64,
    ) -> Result<()> {
        let cs = record.chunk_size;
        let count = common::geometry::chunk_count(size, cs);
        let last_len = size - count.saturating_sub(1) * cs;
        let stored = {
            let t = up.chunks();
            let inconsistent = |why: String| {
                Err(Error::InconsistentLength(format!(
                    "a size of {size} bytes does not fit the chunks stored: {why}"
                )))
            };
            if let Some(h) = t.highest().filter(|h| *h >= count) {
                return inconsistent(format!("chunk {h} is stored past its end"));
            }
            match t.short() {
                Some((i, len)) if i + 1 != count || len != last_len => {
                    return inconsistent(format!("chunk {i} holds {len} bytes"));
                }
                None if count > 0 && last_len < cs && t.get(count - 1).is_some() => {
                    return inconsistent(format!(
                        "chunk {} holds {cs} bytes, not {last_len}",
                        count - 1
                    ));
                }
                _ => {}
            }
            t.highest()
                .and_then(|h| t.stored_end(record, h))
                .unwrap_or(0)
        };
        self.step(
            up,
            Step::DeclareLength {
                length: size,
                stored,
            },
        )
        .await?;
        let record = up.record();
        up.chunks().truncate(record.chunk_count());
        self.ledger
            .recount(record.owner.as_deref(), record.id, record.size);
        tracing::info!(id = %record.id, size, "upload length declared at completion");
        Ok(())
    }

    /// The partly appended chunk at `end`, now known to be the last one, becomes a whole
    /// chunk with its digest (from the append cursor, or read back after a restart).
    async fn close_last_chunk(&self, up: &Upload, record: &UploadRecord, end: u64) -> Result<()> {
        let index = end / record.chunk_size;
        let from = record.chunk_offset(index);
        let mut cursor = up.stream.lock().await;
        let hasher = match cursor.take() {
            Some(h) => h,
            None => self.hash.hash_stored(record, from, end).await?,
        };
        let chunk = StoredChunk {
            index,
            size: end - from,
            sha256: Sha256Digest(hasher.finalize().into()),
        };
        // The whole-file hash at the chunk's end, where storage keeps it with the chunk.
        let coverage = {
            let p = up.prefix();
            match p.hashed_bytes == end {
                true => self.hash.append_coverage(end, &p.hasher),
                false => Coverage::Readable,
            }
        };
        self.backend
            .commit(
                record,
                Written::nothing(),
                &[Receipt::Chunk(chunk)],
                coverage,
            )
            .await?;
        up.chunks().set(index, chunk.size, chunk.sha256);
        Ok(())
    }
}

/// The chunks `up`'s table says are stored.
fn stored_chunks(up: &Upload, record: &UploadRecord) -> Vec<StoredChunk> {
    let t = up.chunks();
    (0..record.chunk_count())
        .filter_map(|index| {
            Some(StoredChunk {
                index,
                size: record.chunk_len(index).ok()?,
                sha256: t.get(index)?,
            })
        })
        .collect()
}
