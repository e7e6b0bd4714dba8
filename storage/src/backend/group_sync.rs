//! Group commit of one directory's `fsync`: many new entries made durable by one call.
//!
//! Every upload created on local disk adds an entry to `uploads/`, and that entry is
//! durable only once the directory is fsync'd. Requests that arrive while an fsync runs
//! wait for it to end and then share the next one, so that N small uploads landing at once
//! cost about two fsyncs of the directory, not N (the technique databases call group
//! commit). A caller is answered only by an fsync that began after it asked, so its entry
//! is always covered.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// The fsyncs of one directory, shared by concurrent callers.
pub struct GroupSync {
    dir: PathBuf,
    /// Tickets handed out: one per caller, in the order they asked.
    asked: AtomicU64,
    /// Every ticket up to this one is covered by a finished fsync.
    synced: AtomicU64,
    /// One fsync at a time; waiters behind it find their ticket covered, or run the next.
    running: tokio::sync::Mutex<()>,
}

impl GroupSync {
    /// The fsyncs of `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            asked: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Returns once an fsync of the directory that began after this call has finished:
    /// every entry made before the call is durable.
    pub async fn sync(&self) -> Result<()> {
        let ticket = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.running.lock().await;
        if self.synced.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Everyone who asked so far made their entry before this point: one fsync covers
        // them all.
        let covers = self.asked.load(Ordering::SeqCst);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || File::open(&dir)?.sync_all())
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        self.synced.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_fsyncs_and_each_is_covered() {
        let dir = tempfile::tempdir().unwrap();
        let g = Arc::new(GroupSync::new(dir.path().to_path_buf()));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let g = g.clone();
                tokio::spawn(async move { g.sync().await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(g.asked.load(Ordering::SeqCst), 32);
        assert_eq!(g.synced.load(Ordering::SeqCst), 32);
        // A directory that is gone fails its callers.
        let gone = GroupSync::new(dir.path().join("missing"));
        assert!(gone.sync().await.is_err());
    }
}
