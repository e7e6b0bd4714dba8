//! Ends that free bytes: a client's cancel, the expiry of idle uploads, and the purge of
//! old tombstones, run by the periodic sweep (which also finishes in-order uploads whose
//! bytes are all stored and removes storage leftovers no upload names).

use std::sync::Arc;
use std::time::Instant;

use common::UploadId;
use time::OffsetDateTime;

use super::registry::Purpose;
use super::{SweepReport, Uploads};
use crate::error::{Error, Result};
use crate::lifecycle::Step;
use crate::record::{StoredState, UploadMode};
use crate::upload::Upload;

impl Uploads {
    /// Cancels an upload: its bytes are removed and later requests answer "gone".
    pub async fn cancel(&self, id: UploadId) -> Result<()> {
        let up = self.get(id).await?;
        let _op = up.op.write().await;
        self.step_and_carry_out(&up, Step::Cancel).await?;
        tracing::info!(%id, "upload cancelled");
        Ok(())
    }

    /// Expires an idle upload, unless a chunk write began meanwhile. On shared storage
    /// another process's chunk request may have loaded the upload before this sweep
    /// stored "expired": its marks then differ from `marks` (taken before the idle check),
    /// and the expiry is undone before anything is discarded; a request that stores its
    /// chunk later finds "expired" when it checks again and acknowledges nothing (see
    /// [`super::registry::Registry::confirm_open`]). Where one process owns the storage,
    /// chunk writes leave no marks and its own locks keep the two apart. Returns whether
    /// the upload expired. Caller holds `op`.
    async fn expire(&self, up: &Upload, marks: &[String]) -> Result<bool> {
        let stepped = self.step(up, Step::Expire).await?;
        let now = self.backend.write_marks(up.id).await?;
        if now.iter().any(|m| !marks.contains(m)) {
            tracing::info!(id = %up.id, "expiry undone: a chunk write began meanwhile");
            self.step(up, Step::UndoExpiry).await?;
            return Ok(false);
        }
        self.carry_out(up, &stepped).await?;
        Ok(true)
    }

    /// Expires idle unfinished uploads and purges old tombstones. Uploads with a request
    /// in flight are never expired. One upload that cannot be handled is skipped (and
    /// logged), not the end of the sweep.
    pub async fn sweep(self: &Arc<Self>) -> Result<SweepReport> {
        let began = Instant::now();
        let mut open = Vec::new();
        let mut report = SweepReport::default();
        for id in self.backend.list().await? {
            if let Err(e) = self.sweep_one(id, &mut open, &mut report).await {
                tracing::warn!(%id, error = %e, "sweep skipped an upload");
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
        open: &mut Vec<(Option<String>, UploadId, u64)>,
        report: &mut SweepReport,
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
            open.push((record.owner.clone(), id, record.reserved_bytes()));
        }
        let handle = |cached: Option<Arc<Upload>>| async move {
            match cached {
                Some(up) => Ok(up),
                None => self.registry.get(id, Purpose::Whole).await,
            }
        };
        if record.state == StoredState::Uploading {
            // Before the idle check reads them: what chunk writes have left so far.
            let marks = self.backend.write_marks(id).await?;
            let up = handle(cached).await?;
            if record.mode == UploadMode::Stream {
                self.finish_if_stored(&up);
            }
            if up.is_busy() || now - up.last_activity() <= self.config.upload_ttl {
                return Ok(());
            }
            let Ok(_op) = up.op.try_write() else {
                return Ok(());
            };
            if up.is_busy() || up.record().state != StoredState::Uploading {
                return Ok(());
            }
            match self.expire(&up, &marks).await {
                Ok(true) => {}
                // Another request changed it (a chunk began, a complete or a cancel).
                Ok(false) | Err(Error::Conflict) => return Ok(()),
                Err(e) => return Err(e),
            }
            tracing::info!(%id, "upload expired");
            report.expired += 1;
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
