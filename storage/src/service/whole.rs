//! Uploads sent whole in their creating request (a small file: one chunk at most):
//! created, stored, verified and published in one round trip.
//!
//! The bytes are hashed as they are written and held to the request's length; only when
//! every byte is there and the SHA-256 matches the declared one (if any) is the upload
//! stored, at once as completed. Where the backend can (local disk, see
//! [`crate::Backend::whole_writer`]), the bytes go straight to their published place and
//! one durable write of the record finishes the upload; elsewhere the upload is created,
//! its one chunk stored and completed as any other. A failed request leaves nothing behind
//! and gives its idempotency key up, so that the client can try again under it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::api::CreateUpload;
use common::UploadId;
use futures_util::{Stream, StreamExt};
use time::OffsetDateTime;

use super::create::{fingerprint, key_digest, KeyClaim};
use super::{Created, Uploads};
use crate::backend::{ChunkWriter, IdempotencyClaim};
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::hash::ChunkHasher;
use crate::lifecycle::{self, Step};
use crate::quota::Holder;
use crate::record::{StoredState, UploadMode, UploadRecord};
use crate::{index, metrics, principal};

/// Tells an idempotency key's use by a one-request upload from its use by a create alone.
const KIND: &str = "whole\0";

impl Uploads {
    /// Creates an upload of `req.size` bytes (at most one chunk of the largest size) from
    /// `body`, and completes it. With an idempotency key, a repeat of the same request
    /// answers the upload the first one stored, without storing the body again.
    pub async fn create_whole<S>(
        self: &Arc<Self>,
        mut req: CreateUpload,
        idempotency_key: Option<&str>,
        body: S,
    ) -> Result<Created>
    where
        S: Stream<Item = Result<Bytes>> + Send + Unpin,
    {
        let size = req.size.ok_or(Error::LengthRequired(
            "an upload sent in one request needs its Content-Length",
        ))?;
        let max = self.limits.chunk_size.max.min(self.limits.max_upload_size);
        if size > max {
            return Err(if size > self.limits.max_upload_size {
                Error::TooLarge {
                    size,
                    max: self.limits.max_upload_size,
                }
            } else {
                Error::BodyTooLarge { size, max }
            });
        }
        req.defer_length = false;
        req.chunk_size = Some(self.limits.chunk_size.default.max(size));
        let chunk_size = self.limits.validate(&req)?;
        let now = OffsetDateTime::now_utc();
        let mut record = UploadRecord {
            id: UploadId::new_random(),
            size,
            chunk_size,
            mode: UploadMode::Chunks,
            declared_sha256: req.sha256,
            sha256: None,
            filename: req.filename.clone(),
            metadata: req.metadata.clone().unwrap_or_default(),
            state: StoredState::Uploading,
            failure: None,
            concat: None,
            length_deferred: false,
            owner: principal::current().and_then(|p| p.owner().map(str::to_string)),
            created_at: now,
            updated_at: now,
            version: None,
        };
        let Some(key) = idempotency_key else {
            return self.store_whole(record, body).await;
        };
        let mut claim = IdempotencyClaim {
            id: record.id,
            fingerprint: fingerprint(KIND, &req)?,
        };
        let digest = key_digest(record.owner.as_deref(), key);
        // Requests under one key run one at a time here, as creates do.
        let _same_key = self.key_locks.lock(digest).await;
        let mut claimed = false;
        if let Some(existing) = self.backend.claim_idempotency_key(&digest, &claim).await? {
            if existing.fingerprint != claim.fingerprint {
                return Err(Error::IdempotencyConflict);
            }
            match self.status(existing.id).await {
                Ok(status) => return Ok(Created { status, new: false }),
                // The request that claimed the key did not store the upload (it failed, or
                // is storing it on another server right now): this one stores it.
                Err(Error::NotFound) => {
                    record.id = existing.id;
                    claim = existing;
                    claimed = true;
                }
                Err(e) => return Err(e),
            }
        }
        match self.store_whole(record.clone(), body).await {
            Err(Error::Conflict) if claimed => self.stored_meanwhile(record.id).await,
            Err(e) => {
                // Refused (a digest that differs, no room, a body cut short): nothing was
                // stored, so the key is free again for the client's next try, which may
                // differ (the right digest, a smaller file).
                self.give_up_key(&KeyClaim { digest, claim }).await;
                Err(e)
            }
            ok => ok,
        }
    }

    /// The upload another request under the same key is storing right now, once it is.
    async fn stored_meanwhile(&self, id: UploadId) -> Result<Created> {
        for _ in 0..20 {
            if let Ok(status) = self.status(id).await {
                return Ok(Created { status, new: false });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Conflict)
    }

    async fn store_whole<S>(self: &Arc<Self>, record: UploadRecord, body: S) -> Result<Created>
    where
        S: Stream<Item = Result<Bytes>> + Send + Unpin,
    {
        let started = Instant::now();
        let key = index::key(&record);
        let opened = match self.backend.index_put(&key).await {
            Ok(()) => self.backend.whole_writer(&record).await,
            Err(e) => Err(e),
        };
        let Some(writer) = self.registry.store_failure(opened)? else {
            return self.whole_in_chunks(record, body).await;
        };
        let id = record.id;
        if let Err(e) =
            self.ledger
                .reserve(Holder::current(record.owner.as_deref()), id, record.size)
        {
            writer.abandon().await;
            self.forget_whole(id, &key).await;
            return Err(e);
        }
        let stored = self.write_whole(&record, writer, body).await;
        self.ledger.release(id);
        let done = match stored {
            Ok(done) => done,
            Err(e) => {
                self.forget_whole(id, &key).await;
                return Err(e);
            }
        };
        metrics::created();
        metrics::received(done.size);
        metrics::verified(started.elapsed(), 0);
        metrics::completed();
        tracing::info!(%id, size = done.size, sha256 = ?done.sha256, "upload completed in one request");
        let up = self.registry.created(done);
        let record = up.record();
        self.events.emit(EventKind::Created, &record).await;
        self.events.emit(EventKind::Completed, &record).await;
        Ok(Created {
            status: self.status_of(&up)?,
            new: true,
        })
    }

    /// Streams the body to `writer`, checks its length and SHA-256, and stores the upload
    /// as completed. Returns the stored record.
    async fn write_whole<S>(
        &self,
        record: &UploadRecord,
        mut writer: Box<dyn ChunkWriter>,
        mut body: S,
    ) -> Result<UploadRecord>
    where
        S: Stream<Item = Result<Bytes>> + Send + Unpin,
    {
        let mut h = ChunkHasher::new(record.size, None);
        let streamed = async {
            while let Some(piece) = body.next().await {
                let piece = piece?;
                h.update(&piece)?;
                writer.write(piece).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = streamed {
            writer.abandon().await;
            return Err(e);
        }
        let (sha256, _) = match h.finish() {
            Ok(done) => done,
            Err(e) => {
                writer.abandon().await;
                return Err(e);
            }
        };
        let step = lifecycle::apply(
            record,
            Step::StoredWhole { sha256 },
            OffsetDateTime::now_utc(),
        );
        let mut done = match step {
            Ok(t) => t.record,
            Err(e) => {
                writer.abandon().await;
                return Err(e);
            }
        };
        writer.finish().await?;
        let committed = self.backend.commit_whole(&done).await;
        done.version = self.registry.store_failure(committed)?;
        Ok(done)
    }

    /// Removes what a failed one-request upload left.
    async fn forget_whole(&self, id: UploadId, key: &str) {
        if let Err(e) = self.backend.purge(id).await {
            tracing::warn!(%id, error = %e, "could not remove a failed one-request upload");
        }
        if let Err(e) = self.backend.index_delete(key).await {
            tracing::warn!(%id, error = %e, "could not remove a listing entry");
        }
    }

    /// The same on a backend without a shortcut: create, store the one chunk, complete.
    async fn whole_in_chunks<S>(self: &Arc<Self>, record: UploadRecord, body: S) -> Result<Created>
    where
        S: Stream<Item = Result<Bytes>> + Send + Unpin,
    {
        let id = record.id;
        let (size, declared) = (record.size, record.declared_sha256);
        self.insert_new(record).await?;
        if size > 0 {
            let stored = self.put_chunk(id, 0, Some(size), declared, body).await;
            if let Err(e) = stored {
                if let Err(c) = self.cancel(id).await {
                    tracing::warn!(%id, error = %c, "could not cancel a failed one-request upload");
                }
                return Err(match e {
                    Error::ChunkDigestMismatch { declared, actual } => Error::Sha256Mismatch {
                        expected: declared,
                        actual,
                    },
                    e => e,
                });
            }
        }
        let status = self.complete(id, None).await?.status();
        Ok(Created { status, new: true })
    }
}
