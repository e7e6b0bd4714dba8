//! New uploads: their record, their owner, their place in the quota, and idempotency keys
//! (the same request under the same key returns the same upload).
//!
//! Requests under one key wait for each other, and for nobody else: a client retrying
//! refused creates never delays another's. A create that is refused (a limit, a full
//! disk) gives its key up again, so the key is free for the client's next try.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::api::CreateUpload;
use common::{Sha256Digest, UploadId};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{Created, Uploads, DEFERRED_CHUNKS};
use crate::backend::IdempotencyClaim;
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::index;
use crate::metrics;
use crate::principal;
use crate::quota::Holder;
use crate::record::{Concat, StoredState, UploadMode, UploadRecord};

/// How a new upload's bytes and length come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Chunks in any order, or in-order appends.
    pub mode: UploadMode,
    /// Its part in a concatenation, if any.
    pub concat: Option<Concat>,
    /// The length is not known yet (`req.size` is then ignored).
    pub length_deferred: bool,
}

impl Shape {
    /// Chunks in any order (the native API).
    pub fn chunks() -> Self {
        Self {
            mode: UploadMode::Chunks,
            concat: None,
            length_deferred: false,
        }
    }

    /// In-order appends (tus, IETF).
    pub fn stream() -> Self {
        Self {
            mode: UploadMode::Stream,
            ..Self::chunks()
        }
    }
}

impl Uploads {
    /// Creates an upload of chunks (the native API). With an idempotency key, a repeat of
    /// the same request returns the upload the first one created, and another request under
    /// the same key is refused.
    /// Without a size (`defer_length`), the size is declared at completion.
    pub async fn create(
        &self,
        req: CreateUpload,
        idempotency_key: Option<&str>,
    ) -> Result<Created> {
        let shape = match (req.size, req.defer_length) {
            (Some(_), false) => Shape::chunks(),
            (None, true) => Shape {
                length_deferred: true,
                ..Shape::chunks()
            },
            (Some(_), true) => {
                return Err(Error::InconsistentLength(
                    "give size, or defer_length: true, not both".into(),
                ))
            }
            (None, false) => {
                return Err(Error::Invalid(
                    "size is required (or defer_length: true, to declare it at completion)".into(),
                ))
            }
        };
        self.create_shaped(req, idempotency_key, shape).await
    }

    /// Creates an upload of the given shape. An upload whose length is deferred may grow to
    /// the largest upload allowed and completes once its length is said and its bytes are
    /// there; its chunks are large (a ceiling of 1 TiB has at most [`DEFERRED_CHUNKS`]), so
    /// that its chunk table stays small while its length is unknown.
    pub(crate) async fn create_shaped(
        &self,
        mut req: CreateUpload,
        idempotency_key: Option<&str>,
        shape: Shape,
    ) -> Result<Created> {
        const MIB: u64 = 1 << 20;
        if shape.length_deferred && shape.mode == UploadMode::Chunks {
            // The client's chunk size (it holds the chunks in flight), and room for as
            // many chunks of it as an upload may have.
            let chunk_size = req.chunk_size.unwrap_or(self.limits.chunk_size.default);
            req.size = Some(
                self.limits
                    .max_upload_size
                    .min(chunk_size.saturating_mul(self.limits.max_chunks)),
            );
            req.chunk_size = Some(chunk_size);
        } else if shape.length_deferred {
            let size = self.limits.max_upload_size;
            req.size = Some(size);
            req.chunk_size = Some(
                size.div_ceil(DEFERRED_CHUNKS)
                    .div_ceil(MIB)
                    .saturating_mul(MIB)
                    .clamp(self.limits.chunk_size.default, self.limits.chunk_size.max),
            );
        }
        let chunk_size = self.limits.validate(&req)?;
        let now = OffsetDateTime::now_utc();
        let record = UploadRecord {
            id: UploadId::new_random(),
            size: req.size.unwrap_or(0),
            chunk_size,
            mode: shape.mode,
            declared_sha256: req.sha256,
            sha256: None,
            filename: req.filename.clone(),
            metadata: req.metadata.clone().unwrap_or_default(),
            state: StoredState::Uploading,
            failure: None,
            concat: shape.concat,
            length_deferred: shape.length_deferred,
            owner: principal::current().and_then(|p| p.owner().map(str::to_string)),
            created_at: now,
            updated_at: now,
            version: None,
        };
        let Some(key) = idempotency_key else {
            return self.insert_new(record).await;
        };
        let key = KeyClaim::new(&record, key, &req)?;
        let _same_key = self.key_locks.lock(key.digest).await;
        if let Some(created) = self.claim_key(&key, &record).await? {
            return Ok(created);
        }
        let created = self.insert_new(record).await;
        if created.is_err() {
            self.give_up_key(&key).await;
        }
        created
    }

    /// Claims `key` for `record`; when an earlier request holds it, answers with the
    /// upload that request created. Caller holds the key's lock.
    async fn claim_key(&self, key: &KeyClaim, record: &UploadRecord) -> Result<Option<Created>> {
        let Some(existing) = self
            .backend
            .claim_idempotency_key(&key.digest, &key.claim)
            .await?
        else {
            return Ok(None);
        };
        if existing.fingerprint != key.claim.fingerprint {
            return Err(Error::IdempotencyConflict);
        }
        match self.status(existing.id).await {
            Ok(status) => Ok(Some(Created { status, new: false })),
            // The claim was written but the upload was not (a crash between the two, or a
            // refusal whose claim could not be given up): create it now under the claimed
            // id.
            Err(Error::NotFound) => {
                // On shared storage the request that made the claim may be creating the
                // upload on another server right now: give it a moment. Here, the key's
                // lock says no request of this process is.
                if !self.registry.keeps_handles() {
                    for _ in 0..20 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if let Ok(status) = self.status(existing.id).await {
                            return Ok(Some(Created { status, new: false }));
                        }
                    }
                }
                let record = UploadRecord {
                    id: existing.id,
                    ..record.clone()
                };
                let key = KeyClaim {
                    claim: existing.clone(),
                    ..key.clone()
                };
                match self.insert_new(record).await {
                    Err(Error::Conflict) => Ok(Some(Created {
                        status: self.status(existing.id).await?,
                        new: false,
                    })),
                    Err(e) => {
                        self.give_up_key(&key).await;
                        Err(e)
                    }
                    Ok(created) => Ok(Some(created)),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Gives a key up after its create was refused (best effort: a claim left behind is
    /// taken as a crashed create by the next request under the key).
    pub(super) async fn give_up_key(&self, key: &KeyClaim) {
        if let Err(e) = self
            .backend
            .release_idempotency_key(&key.digest, &key.claim)
            .await
        {
            tracing::warn!(error = %e, "could not give up the idempotency key of a refused create");
        }
    }

    pub(super) async fn insert_new(&self, mut record: UploadRecord) -> Result<Created> {
        let holder = Holder::current(record.owner.as_deref());
        self.ledger
            .reserve(holder, record.id, record.reserved_bytes())?;
        // The listing entry first: one without its upload is skipped (see `crate::index`).
        let created = match self.backend.index_put(&index::key(&record)).await {
            Ok(()) => self.backend.create(&record).await,
            Err(e) => Err(e),
        };
        if created.is_err() {
            self.ledger.release(record.id);
        } else {
            self.ledger.stored(record.id);
        }
        record.version = self.registry.store_failure(created)?;
        let up = self.registry.created(record);
        tracing::info!(id = %up.id, size = up.record().size, "upload created");
        metrics::created();
        self.events.emit(EventKind::Created, &up.record()).await;
        Ok(Created {
            status: self.status_of(&up)?,
            new: true,
        })
    }
}

/// An idempotency key as stored: its digest (per owner) and the claim of one request.
#[derive(Clone)]
pub(super) struct KeyClaim {
    pub(super) digest: Sha256Digest,
    pub(super) claim: IdempotencyClaim,
}

impl KeyClaim {
    fn new(record: &UploadRecord, key: &str, req: &CreateUpload) -> Result<Self> {
        Ok(Self {
            digest: key_digest(record.owner.as_deref(), key),
            claim: IdempotencyClaim {
                id: record.id,
                fingerprint: fingerprint("", req)?,
            },
        })
    }
}

/// One lock per idempotency key in use, so that requests under the same key run one at a
/// time and requests under other keys do not wait.
#[derive(Default)]
pub(super) struct KeyLocks(Mutex<HashMap<Sha256Digest, Arc<tokio::sync::Mutex<()>>>>);

/// Held while a request works under a key.
pub(super) struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: Sha256Digest,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl KeyLocks {
    pub(super) async fn lock(&self, key: Sha256Digest) -> KeyGuard<'_> {
        let lock = self.map().entry(key).or_default().clone();
        KeyGuard {
            locks: self,
            key,
            _held: lock.lock_owned().await,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Sha256Digest, Arc<tokio::sync::Mutex<()>>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.map();
        // The map's and this guard's: nobody else waits for the key.
        if map
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) <= 2)
        {
            map.remove(&self.key);
        }
    }
}

/// An idempotency key's digest: keys are per owner, so two owners may pick the same key.
pub(super) fn key_digest(owner: Option<&str>, key: &str) -> Sha256Digest {
    let mut h = Sha256::new();
    h.update(owner.unwrap_or("").as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    Sha256Digest(h.finalize().into())
}

/// The fingerprint of a creating request, told apart by `kind` (`""` for a create alone).
/// The same request written differently (an empty metadata object or none) is the same
/// request.
pub(super) fn fingerprint(kind: &str, req: &CreateUpload) -> Result<Sha256Digest> {
    let mut canonical = req.clone();
    canonical.metadata = canonical.metadata.filter(|m| !m.is_empty());
    let body = serde_json::to_vec(&canonical).map_err(|e| Error::Corrupt(e.to_string()))?;
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update(&body);
    Ok(Sha256Digest(h.finalize().into()))
}
