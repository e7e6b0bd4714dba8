//! Whole-file hashing of chunks that arrive ahead of the hashed prefix, on storage that
//! cannot read an unfinished upload back (S3 multipart parts).
//!
//! With several chunks in flight, only the one right at the prefix can be hashed as it
//! streams; the others would have to be read back from the store at completion. Instead, a
//! chunk that arrives ahead keeps its bytes (once, in memory, for a bounded number of
//! chunks) after it is acknowledged, waits until the stored midstate reaches its offset,
//! and continues it. So an upload sent in order over several connections needs no
//! read-back at all. The midstate is saved with conditional writes, so this is only ever an
//! optimisation: when a chunk cannot be kept (too many buffered) or its turn does not come
//! in time, completion reads it back instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::UploadId;
use sha2::Digest;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::backend::Backend;
use crate::error::Result;
use crate::hash::PrefixHash;
use crate::record::StoredState;

/// How long a kept chunk waits for its turn.
const WAIT_FOR_TURN: Duration = Duration::from_secs(30);

/// How long a completion waits for kept chunks while none of them makes progress.
const QUIET: Duration = Duration::from_secs(2);

/// See the module documentation.
pub struct OrderedHashing {
    backend: Arc<dyn Backend>,
    permits: Arc<Semaphore>,
    /// Wakes kept chunks of an upload when its midstate was saved here.
    events: Mutex<HashMap<UploadId, Arc<Notify>>>,
    /// Kept chunks still waiting, per upload.
    pending: Mutex<HashMap<UploadId, usize>>,
}

/// A chunk's bytes kept for hashing later.
pub struct Kept {
    pieces: Vec<Bytes>,
    _permit: OwnedSemaphorePermit,
}

impl Kept {
    /// Keeps one more piece of the chunk (a reference, not a copy).
    pub fn push(&mut self, piece: Bytes) {
        self.pieces.push(piece);
    }
}

impl OrderedHashing {
    /// Keeps at most `max_mib` MiB of chunks at once.
    pub fn new(backend: Arc<dyn Backend>, max_mib: usize) -> Self {
        Self {
            backend,
            permits: Arc::new(Semaphore::new(max_mib)),
            events: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Room to keep a chunk of `len` bytes, if the memory bound allows.
    pub fn keep(&self, len: u64) -> Option<Kept> {
        let mib = u32::try_from(len.div_ceil(1 << 20)).ok()?;
        let permit = self.permits.clone().try_acquire_many_owned(mib).ok()?;
        Some(Kept {
            pieces: Vec::new(),
            _permit: permit,
        })
    }

    fn event(&self, id: UploadId) -> Arc<Notify> {
        lock(&self.events).entry(id).or_default().clone()
    }

    /// Says that the midstate of `id` was saved (here), waking chunks waiting for it.
    pub fn saved(&self, id: UploadId) {
        if let Some(n) = lock(&self.events).get(&id) {
            n.notify_waiters();
        }
    }

    /// Continues the stored midstate of `id` with `kept` once it reaches `offset`, in the
    /// background.
    pub fn continue_later(self: &Arc<Self>, id: UploadId, offset: u64, kept: Kept) {
        *lock(&self.pending).entry(id).or_default() += 1;
        let this = self.clone();
        tokio::spawn(async move {
            match this.continue_at(id, offset, &kept.pieces).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(%id, offset, "kept chunk not hashed; completion reads it back")
                }
                Err(e) => tracing::warn!(%id, offset, error = %e, "kept chunk not hashed"),
            }
            drop(kept);
            let mut pending = lock(&this.pending);
            if let Some(n) = pending.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    pending.remove(&id);
                    lock(&this.events).remove(&id);
                }
            }
            drop(pending);
            this.saved(id);
        });
    }

    async fn continue_at(&self, id: UploadId, offset: u64, pieces: &[Bytes]) -> Result<bool> {
        let deadline = Instant::now() + WAIT_FOR_TURN;
        let event = self.event(id);
        loop {
            let notified = event.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let saved = self.backend.load_prefix_hash(id).await?;
            let hashed = saved.as_ref().map_or(0, |s| s.hashed_bytes);
            if hashed > offset {
                return Ok(false);
            }
            if hashed == offset {
                let mut p = match &saved {
                    Some(s) => match PrefixHash::restore(s) {
                        Some(p) => p,
                        None => return Ok(false),
                    },
                    None => PrefixHash::default(),
                };
                for b in pieces {
                    p.hasher.update(b);
                    p.hashed_bytes += b.len() as u64;
                }
                let out = p.save_as(saved.and_then(|s| s.version));
                self.backend.save_prefix_hash(id, &out).await?;
                self.saved(id);
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            if tokio::time::timeout(Duration::from_millis(500), notified)
                .await
                .is_err()
            {
                // A quiet while: a cancelled or expired upload has no turn to wait for.
                match self.backend.load_record(id).await? {
                    Some(r)
                        if r.state == StoredState::Uploading
                            || r.state == StoredState::Completing => {}
                    _ => return Ok(false),
                }
            }
        }
    }

    /// Waits (at most `limit`) until no kept chunk of `id` is waiting here, so that a
    /// completion finds as much hashed as possible. Gives up as soon as nothing moved for
    /// [`QUIET`]: a kept chunk can also wait for a gap whose bytes no process holds any
    /// more (the server that received them was restarted), and then completion reads the
    /// gap back instead.
    pub async fn wait_idle(&self, id: UploadId, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut moved = Instant::now();
        while lock(&self.pending).contains_key(&id)
            && Instant::now() < deadline
            && moved.elapsed() < QUIET
        {
            let event = self.event(id);
            let notified = event.notified();
            if !lock(&self.pending).contains_key(&id) {
                break;
            }
            if tokio::time::timeout(Duration::from_millis(100), notified)
                .await
                .is_ok()
            {
                moved = Instant::now();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
