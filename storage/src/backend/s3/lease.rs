//! A lease held by one write (a chunk's part, or an upload's append): renewed while the
//! write goes on, and released when it is abandoned, so that the next writer takes it
//! over one generation up instead of waiting for it to expire.

use std::sync::Arc;
use std::time::Instant;

use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};
use time::OffsetDateTime;

use super::{lease_err, Lease, LEASE_RENEW, LEASE_SECS};
use crate::error::Result;

/// See the module documentation.
pub(super) struct HeldLease {
    store: Arc<AmazonS3>,
    key: Path,
    /// Version of the lease as last written, for renewals and the release.
    tag: Option<String>,
    held: Lease,
    renewed: Instant,
    /// Released on drop.
    armed: bool,
}

impl HeldLease {
    /// The lease at `key`, just taken by `holder` (see `S3Backend::take_lease`).
    pub(super) fn new(
        store: Arc<AmazonS3>,
        key: Path,
        holder: String,
        tag: Option<String>,
        generation: u64,
    ) -> Self {
        Self {
            store,
            key,
            tag,
            held: Lease {
                holder,
                until: 0,
                generation,
            },
            renewed: Instant::now(),
            armed: true,
        }
    }

    /// Each takeover raises it: part numbers are fenced by it.
    pub(super) fn generation(&self) -> u64 {
        self.held.generation
    }

    /// Extends the lease when a renewal is due; fails if another server took it.
    pub(super) async fn renew_if_due(&mut self) -> Result<()> {
        if self.renewed.elapsed() < LEASE_RENEW {
            return Ok(());
        }
        self.held.until = OffsetDateTime::now_utc().unix_timestamp() + LEASE_SECS;
        let put = self
            .store
            .put_opts(&self.key, self.held.body(), self.replacing())
            .await
            .map_err(lease_err)?;
        self.tag = put.e_tag;
        self.renewed = Instant::now();
        Ok(())
    }

    /// Releases the lease now, so that the client's next request is not kept out.
    /// Should the release fail, the lease expires instead.
    pub(super) async fn release(mut self) {
        self.armed = false;
        if let Err(e) = self
            .store
            .put_opts(&self.key, self.released(), self.replacing())
            .await
        {
            tracing::debug!(error = %e, "lease not released; it will expire");
        }
    }

    /// Hands the lease to whoever removes it (a chunk's commit): not released on drop.
    pub(super) fn disarm(mut self) {
        self.armed = false;
    }

    /// The released lease: free, at the generation it reached.
    fn released(&self) -> PutPayload {
        Lease {
            holder: "released".into(),
            until: 0,
            generation: self.held.generation,
        }
        .body()
    }

    /// A write that replaces the lease as this write last wrote it.
    fn replacing(&self) -> PutOptions {
        PutOptions::from(PutMode::Update(UpdateVersion {
            e_tag: self.tag.clone(),
            version: None,
        }))
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Released, not deleted: a part sent in full may still land, so the next writer
        // takes the lease over one generation up, onto a part number of its own.
        let (store, key) = (self.store.clone(), self.key.clone());
        let (body, options) = (self.released(), self.replacing());
        tokio::spawn(async move {
            let _ = store.put_opts(&key, body, options).await;
        });
    }
}
