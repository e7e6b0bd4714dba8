//! Ends that free bytes: a client's cancel, the expiry of idle uploads, and the purge of
//! old tombstones, run by the periodic sweep (which also finishes in-order uploads whose
//! bytes are all stored and removes storage leftovers no upload names).

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::UploadId;
use time::OffsetDateTime;

use super::registry::Purpose;
use super::{Stepped, SweepReport, Uploads};
use crate::error::{Error, Result};
use crate::lifecycle::Step;
use crate::quota::Scanned;
use crate::record::{StoredState, UploadMode};
use crate::upload::Upload;

/// An upload the sweep stored as "expired", until it looks again.
struct Expiring {
    _op: tokio::sync::OwnedRwLockWriteGuard<()>,
    up: Arc<Upload>,
    marks: Vec<String>,
    stepped: Stepped,
}

impl Uploads {
    /// Cancels an upload: its bytes are removed and later requests answer "gone".
    pub async fn cancel(&self, id: UploadId) -> Result<()> {
        let up = self.get(id).await?;
        let _op = up.op.write().await;
        let cancelled = self.step_and_carry_out(&up, Step::Cancel).await;
        self.registry.settle(cancelled)?;
        tracing::info!(%id, "upload cancelled");
        Ok(())
    }

    /// Ends an expiry begun by the sweep (the upload is stored as "expired"), unless a
    /// chunk write began meanwhile. On shared storage another process's chunk request may
    /// have loaded the upload before "expired" was stored: what it stores then differs from
    /// `marks` (taken before the idle check), and the expiry is undone before anything is
    /// discarded. The sweep waits [`Uploads::expiry_grace`] before this look, longer than a
    /// chunk request may take without looking at the record again before it answers (see
    /// [`super::registry::Registry::confirm_open`]), so such a request is either seen here
    /// or finds "expired" itself and acknowledges nothing. Where one process owns the
    /// storage, chunk writes leave no marks and its own locks keep the two apart. Returns
    /// whether the upload expired. Caller holds `op`.
    async fn finish_expiry(
        &self,
        up: &Upload,
        marks: &[String],
        stepped: &Stepped,
    ) -> Result<bool> {
        let now = self.backend.write_marks(up.id).await?;
        if now.iter().any(|m| !marks.contains(m)) {
            tracing::info!(id = %up.id, "expiry undone: a chunk write began meanwhile");
            self.step(up, Step::UndoExpiry).await?;
            return Ok(false);
        }
        self.carry_out(up, stepped).await?;
        Ok(true)
    }

    /// How long an expiry waits, on shared storage, between storing "expired" and looking
    /// for chunk writes that began meanwhile.
    pub(super) fn expiry_grace(&self) -> Duration {
        super::expiry_grace(self.config.upload_ttl)
    }

    /// Expires idle unfinished uploads and purges old tombstones. Uploads with a request
    /// in flight are never expired. One upload that cannot be handled is skipped (and
    /// logged), not the end of the sweep.
    pub async fn sweep(self: &Arc<Self>) -> Result<SweepReport> {
        let began = Instant::now();
        let mut open = Vec::new();
        let mut report = SweepReport::default();
        let mut expiring = Vec::new();
        for id in self.backend.list().await? {
            if let Err(e) = self
                .sweep_one(id, &mut open, &mut report, &mut expiring)
                .await
            {
                tracing::warn!(%id, error = %e, "sweep skipped an upload");
            }
        }
        if !expiring.is_empty() && self.registry.shared() {
            tokio::time::sleep(self.expiry_grace()).await;
        }
        for e in expiring {
            match self.finish_expiry(&e.up, &e.marks, &e.stepped).await {
                Ok(true) => {
                    tracing::info!(id = %e.up.id, "upload expired");
                    report.expired += 1;
                }
                Ok(false) | Err(Error::Conflict) => {}
                Err(err) => tracing::warn!(id = %e.up.id, error = %err, "expiry failed"),
            }
        }
        match self.backend.sweep_leftovers().await {
            Ok(n) => report.leftovers = n,
            Err(e) => tracing::warn!(error = %e, "sweep of leftovers failed; it will be retried"),
        }
        // Expiries above released their uploads after the scan began, so the rebuild
        // does not count them again.
        self.ledger.rebuild(open, began);
        self.registry.trim();
        Ok(report)
    }

    async fn sweep_one(
        self: &Arc<Self>,
        id: UploadId,
        open: &mut Vec<Scanned>,
        report: &mut SweepReport,
        expiring: &mut Vec<Expiring>,
    ) -> Result<()> {
        let now = OffsetDateTime::now_utc();
        let cached = self.registry.cached(id);
        let record = match &cached {
            Some(up) => up.record(),
            None => match self.backend.load_record(id).await? {
                Some(r) => r,
                None => return Ok(()),
            },
        };
        let ended = record.state == StoredState::Failed || record.state.is_tombstone();
        if record.state.is_open() {
            open.push(Scanned {
                owner: record.owner.clone(),
                id,
                bytes: record.reserved_bytes(),
                growing: record.length_deferred,
            });
        }
        let handle = |cached: Option<Arc<Upload>>| async move {
            match cached {
                Some(up) => Ok(up),
                None => self.registry.get(id, Purpose::Whole).await,
            }
        };
        if record.state == StoredState::Uploading {
            // An upload whose handle is not kept is idle: whether long enough is read from
            // storage, without loading its chunks.
            if cached.is_none() && self.registry.keeps_handles() {
                let last = self.backend.last_write(&record).await?;
                if now - last <= self.config.upload_ttl {
                    return Ok(());
                }
            }
            // Before the idle check reads them: what chunk writes have left so far.
            let marks = self.backend.write_marks(id).await?;
            let up = handle(cached).await?;
            if record.mode == UploadMode::Stream {
                self.finish_if_stored(&up);
            }
            let busy = || up.is_busy() || self.registry.writing(id);
            if busy() || now - up.last_activity() <= self.config.upload_ttl {
                return Ok(());
            }
            let Ok(op) = up.op.clone().try_write_owned() else {
                return Ok(());
            };
            if busy() || up.record().state != StoredState::Uploading {
                return Ok(());
            }
            match self.step(&up, Step::Expire).await {
                Ok(stepped) => expiring.push(Expiring {
                    _op: op,
                    up,
                    marks,
                    stepped,
                }),
                // Another request changed it (a chunk began, a complete or a cancel).
                Err(Error::Conflict) => {}
                Err(e) => return Err(e),
            }
        } else if ended && now - record.updated_at > self.config.tombstone_ttl {
            let up = handle(cached).await?;
            let Ok(_op) = up.op.try_write() else {
                return Ok(());
            };
            self.backend.purge(id).await?;
            // After the record: an entry left by a crash in between is removed by a listing.
            self.backend
                .index_delete(&crate::index::key(&record))
                .await?;
            self.registry.forget(id);
            report.purged += 1;
        }
        Ok(())
    }
}
