//! Where the service finds an upload's handle: the one place that knows whether this
//! process owns its storage or shares it with other server processes.
//!
//! On storage this process owns (local disk), handles stay in memory while in use and its
//! own locks order every request. On shared storage (one S3 bucket, many servers) another
//! process may change an upload between two requests, so every request loads afresh,
//! relies on the backend's conditional writes, and a failing store is "retry soon" (503)
//! rather than a server fault.

use std::collections::HashMap;
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
    /// On shared storage, the chunk writers of this process by upload (see
    /// [`Registry::writers`]).
    writers: Mutex<HashMap<UploadId, std::sync::Weak<Writers>>>,
}

impl Registry {
    /// The registry over `backend`; a chunk request quicker than `quick` is acknowledged
    /// without a second look at the record (see [`Registry::confirm_open`]).
    pub fn new(backend: Arc<dyn Backend>, quick: Duration) -> Self {
        Self {
            quick,
            shared: backend.info().shared,
            backend,
            open: Mutex::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
        }
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

    /// Keeps a new upload's handle (where handles are kept) and returns it.
    pub fn adopt(&self, up: Arc<Upload>) -> Arc<Upload> {
        if self.shared {
            return up;
        }
        self.lock().entry(up.id).or_insert(up).clone()
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

    /// Drops handles nobody uses whose upload no longer changes.
    pub fn trim(&self) {
        self.lock().retain(|_, up| {
            Arc::strong_count(up) > 1
                || matches!(
                    up.record().state,
                    StoredState::Uploading | StoredState::Completing
                )
        });
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
