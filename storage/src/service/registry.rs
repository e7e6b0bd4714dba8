//! Where the service finds an upload's handle: the one place that knows whether this
//! process owns its storage or shares it with other server processes.
//!
//! On storage this process owns (local disk), handles stay in memory while in use and its
//! own locks order every request; idle ones are kept within a memory budget, the least
//! recently active dropped first (everything in a handle is in storage too, so a dropped
//! one is read again when next used). On shared storage (one S3 bucket, many servers) another
//! process may change an upload between two requests, so every request loads afresh,
//! relies on the backend's conditional writes, and a failing store is "retry soon" (503)
//! rather than a server fault.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::UploadId;

use crate::backend::{Backend, Loaded};
use crate::error::{Error, Result};
use crate::principal;
use crate::record::{StoredState, UploadRecord};
use crate::upload::Upload;
use crate::writers::Writers;

/// What a handle is loaded for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Reading or changing the whole upload: every chunk receipt is loaded.
    Whole,
    /// Writing one chunk: on shared storage the other chunks' receipts may be left out
    /// (see [`Backend::load_for_write`]).
    ChunkWrite,
}

/// The handles of uploads in use.
pub struct Registry {
    backend: Arc<dyn Backend>,
    shared: bool,
    /// See [`Registry::confirm_open`].
    quick: Duration,
    open: Mutex<HashMap<UploadId, Arc<Upload>>>,
    /// Memory idle handles may hold together.
    budget: u64,
    /// Handles adopted since the budget was last checked.
    adopted: AtomicU64,
    /// On shared storage, the chunk writers of this process by upload (see
    /// [`Registry::writers`]).
    writers: Mutex<HashMap<UploadId, std::sync::Weak<Writers>>>,
}

/// How many handles may be adopted between two checks of the budget.
const CHECK_EVERY: u64 = 64;

impl Registry {
    /// The registry over `backend`, keeping idle handles within `budget` bytes; a chunk
    /// request quicker than `quick` is acknowledged without a second look at the record
    /// (see [`Registry::confirm_open`]).
    pub fn new(backend: Arc<dyn Backend>, quick: Duration, budget: u64) -> Self {
        Self {
            quick,
            shared: backend.info().shared,
            backend,
            open: Mutex::new(HashMap::new()),
            budget,
            adopted: AtomicU64::new(0),
            writers: Mutex::new(HashMap::new()),
        }
    }

    /// Whether handles are kept between requests (storage this process owns): an upload
    /// whose handle is not kept is then idle.
    pub fn keeps_handles(&self) -> bool {
        !self.shared
    }

    /// The chunk writers in flight for `up` in this process: the handle's own where handles
    /// are kept; on shared storage, where each request loads a handle of its own, one set
    /// per upload for the whole process, so that two requests of this process for the same
    /// chunk still take turns (the second finds the chunk stored instead of sending its part
    /// again) and a stalled one is still taken over.
    pub fn writers(&self, up: &Upload) -> Arc<Writers> {
        if !self.shared {
            return up.writers.clone();
        }
        let mut all = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = all.get(&up.id).and_then(std::sync::Weak::upgrade) {
            return w;
        }
        all.retain(|_, w| w.strong_count() > 0);
        let w = Arc::new(Writers::default());
        all.insert(up.id, Arc::downgrade(&w));
        w
    }

    /// Whether a chunk write of this process is under way for the upload: on a shared
    /// backend each request has a handle of its own, so a sweep asks here, not the handle.
    pub fn writing(&self, id: UploadId) -> bool {
        let all = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        all.get(&id).is_some_and(|w| w.strong_count() > 0)
    }

    /// The handle of an upload the caller may see, loading it from storage when it is not
    /// in memory. A tombstone is returned as a handle; callers turn it into "gone".
    pub async fn get(&self, id: UploadId, purpose: Purpose) -> Result<Arc<Upload>> {
        let up = self.get_loaded(id, purpose).await?;
        // Another owner's upload does not exist, as far as this request can tell.
        if !principal::may_see(up.record().owner.as_deref()) {
            return Err(Error::NotFound);
        }
        Ok(up)
    }

    async fn get_loaded(&self, id: UploadId, purpose: Purpose) -> Result<Arc<Upload>> {
        if let Some(up) = self.lock().get(&id) {
            return Ok(up.clone());
        }
        let loaded = if self.shared && purpose == Purpose::ChunkWrite {
            self.backend.load_for_write(id).await
        } else {
            self.backend.load(id).await
        };
        let up = Arc::new(Upload::from_loaded(
            self.store_failure(loaded)?.ok_or(Error::NotFound)?,
        ));
        Ok(self.adopt(up))
    }

    /// A handle read from storage and not kept (the caller may [`Self::adopt`] it): for
    /// a look at an upload that must not stay in memory, e.g. at start-up.
    pub async fn detached(&self, id: UploadId) -> Result<Option<Arc<Upload>>> {
        if let Some(up) = self.cached(id) {
            return Ok(Some(up));
        }
        let loaded = self.backend.load(id).await;
        Ok(self
            .store_failure(loaded)?
            .map(|l| Arc::new(Upload::from_loaded(l))))
    }

    /// Keeps a new upload's handle (where handles are kept) and returns it.
    pub fn adopt(&self, up: Arc<Upload>) -> Arc<Upload> {
        if self.shared {
            return up;
        }
        let kept = self.lock().entry(up.id).or_insert(up).clone();
        if self.adopted.fetch_add(1, Ordering::Relaxed) % CHECK_EVERY == CHECK_EVERY - 1 {
            self.keep_within_budget();
        }
        kept
    }

    /// The handle of a brand-new upload, stored as `record`.
    pub fn created(&self, record: UploadRecord) -> Arc<Upload> {
        self.adopt(Arc::new(Upload::from_loaded(Loaded {
            last_activity: record.updated_at,
            record,
            receipts: Vec::new(),
            prefix_hash: None,
            append_cursor: None,
        })))
    }

    /// The handle kept in memory for `id`, if any (a sweep reads its record from there).
    pub fn cached(&self, id: UploadId) -> Option<Arc<Upload>> {
        self.lock().get(&id).cloned()
    }

    /// Forgets the handle of a purged upload.
    pub fn forget(&self, id: UploadId) {
        self.lock().remove(&id);
    }

    /// Drops handles nobody uses whose upload no longer changes, and idle ones past the
    /// memory budget.
    pub fn trim(&self) {
        self.lock().retain(|_, up| {
            Arc::strong_count(up) > 1
                || matches!(
                    up.record().state,
                    StoredState::Uploading | StoredState::Completing
                )
        });
        self.keep_within_budget();
    }

    /// Drops idle handles, least recently active first, until those kept fit the budget
    /// (with room for the next ones). A handle in use (a request, a verification, a hash
    /// catch-up holds it) is never dropped, nor an in-order upload whose bytes are all
    /// stored (it is about to be completed).
    fn keep_within_budget(&self) {
        let mut open = self.lock();
        let sizes: Vec<(UploadId, usize)> = open
            .iter()
            .map(|(id, up)| (*id, up.approx_bytes()))
            .collect();
        let total: u64 = sizes.iter().map(|(_, b)| *b as u64).sum();
        if total <= self.budget {
            return;
        }
        let mut idle: Vec<_> = sizes
            .into_iter()
            .filter_map(|(id, bytes)| {
                let up = open.get(&id)?;
                (Arc::strong_count(up) == 1 && up.idle_droppable())
                    .then(|| (up.last_activity(), id, bytes as u64))
            })
            .collect();
        idle.sort_unstable_by_key(|(at, _, _)| *at);
        let target = self.budget / 4 * 3;
        let mut kept = total;
        let mut dropped = 0;
        for (_, id, bytes) in idle {
            if kept <= target {
                break;
            }
            open.remove(&id);
            kept -= bytes;
            dropped += 1;
        }
        tracing::debug!(
            dropped,
            kept,
            budget = self.budget,
            "idle upload handles dropped"
        );
    }

    /// After a chunk's receipt was stored by a request that loaded the upload at `began`:
    /// whether the upload is still open. On shared storage another process may have
    /// expired it while the chunk was sent, and a chunk of an ended upload is not
    /// acknowledged. A request that took less than [`Registry::quick`] needs no second
    /// look: an expiry waits longer than that after storing "expired" before it looks for
    /// new chunks, and undoes itself when it finds one. Here (storage this process owns),
    /// its own locks already keep the two apart.
    pub async fn confirm_open(&self, id: UploadId, began: tokio::time::Instant) -> Result<()> {
        if !self.shared || began.elapsed() < self.quick {
            return Ok(());
        }
        match self.backend.load_record(id).await? {
            Some(now) if now.state.is_tombstone() => Err(Error::Gone(now.state.name())),
            _ => Ok(()),
        }
    }

    /// Whether other processes share the storage.
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// What an operation that used the store came to: on shared storage a failure of the
    /// store is "retry soon" for the client (see [`Registry::store_failure`]).
    pub fn settle<T>(&self, r: Result<T>) -> Result<T> {
        if !self.shared {
            return r;
        }
        self.store_failure(r)
    }

    /// A failing shared store is a passing condition for clients ("retry soon"), not a
    /// server fault.
    pub fn store_failure<T>(&self, r: Result<T>) -> Result<T> {
        match r {
            Err(Error::Io(e)) if self.shared => {
                tracing::warn!(error = %e, "storage request failed");
                Err(Error::Unavailable {
                    retry_after: Duration::from_secs(1),
                })
            }
            other => other,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<UploadId, Arc<Upload>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use common::api::CreateUpload;

    use super::*;
    use crate::record::{Limits, UploadMode};
    use crate::LocalBackend;

    fn record(n: usize) -> UploadRecord {
        let limits = Limits {
            max_upload_size: 1 << 40,
            chunk_size: common::api::ChunkSizeBounds {
                min: 65536,
                max: 1 << 30,
                default: 65536,
            },
            max_chunks: 100_000,
        };
        let req = CreateUpload {
            size: Some(100_000 * 65536),
            chunk_size: Some(65536),
            ..Default::default()
        };
        let chunk_size = limits.validate(&req).unwrap();
        let now = time::OffsetDateTime::now_utc();
        UploadRecord {
            id: UploadId::new_random(),
            size: req.size.unwrap_or_default(),
            chunk_size,
            mode: UploadMode::Chunks,
            declared_sha256: None,
            sha256: None,
            filename: Some(format!("file-{n}")),
            metadata: [("k".to_string(), "v".repeat(4000))].into(),
            state: StoredState::Uploading,
            failure: None,
            concat: None,
            length_deferred: false,
            owner: None,
            created_at: now,
            updated_at: now,
            version: None,
        }
    }

    /// Idle handles are kept within the budget, the least recently active dropped first;
    /// a handle in use is never dropped.
    #[tokio::test]
    async fn idle_handles_are_kept_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(LocalBackend::open(dir.path()).unwrap());
        let registry = Registry::new(backend, Duration::from_secs(1), 100 << 10);
        let held = registry.created(record(0));
        let mut last = None;
        for n in 1..200 {
            last = Some(registry.created(record(n)).id);
        }
        registry.trim();
        let kept: Vec<_> = registry.lock().values().cloned().collect();
        let bytes: usize = kept.iter().map(|u| u.approx_bytes()).sum();
        assert!(bytes as u64 <= 100 << 10, "{bytes} bytes kept");
        assert!(kept.len() > 5, "only {} kept", kept.len());
        assert!(registry.cached(held.id).is_some(), "a handle in use stays");
        assert!(
            registry.cached(last.unwrap()).is_some(),
            "the most recently active stays"
        );
    }
}
