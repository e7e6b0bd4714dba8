//! The outbox in the data directory, next to the uploads.
//!
//! # Layout
//! ```text
//! {root}/events/pending/{event id}.json   a queued event with its delivery state (`Queued`);
//!                                         created by write-temp, fsync, link (fails if it
//!                                         exists), fsync dir
//! {root}/events/dead/{event id}.json      a dead letter: delivery was given up (same content)
//! {root}/events/done/{event id}           empty marker of a delivered event, pruned after a day
//! {root}/events/*/.{event id}.tmp         leftovers of interrupted writes, ignored and removed
//! ```
//! The data directory belongs to one server process (its `.lock`), so claims are kept in
//! memory: they only keep two deliveries of this process apart.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{is_event_id, parse_queued, to_json, Delivery, Event, Outbox, Queued};
use crate::error::{Error, Result};

/// Events in `{root}/events/`.
pub struct LocalOutbox {
    dir: PathBuf,
    claims: Mutex<HashSet<String>>,
}

impl LocalOutbox {
    /// Opens (creating if needed) the outbox under the data directory `root`.
    pub fn open(root: &Path) -> Result<Self> {
        let dir = root.join("events");
        for sub in ["pending", "dead", "done"] {
            fs::create_dir_all(dir.join(sub))?;
            for entry in fs::read_dir(dir.join(sub))?.flatten() {
                if entry.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(Self {
            dir,
            claims: Mutex::new(HashSet::new()),
        })
    }

    fn path(&self, sub: &str, id: &str) -> PathBuf {
        match sub {
            "done" => self.dir.join(sub).join(id),
            _ => self.dir.join(sub).join(format!("{id}.json")),
        }
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs blocking file work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Writes `bytes` to a temporary file beside `path`, fsync'd.
fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(tmp)
}

/// Creates `path` with `bytes` unless it exists, atomically and durably.
fn create_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_temp(path, bytes)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    if let Some(dir) = path.parent() {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` atomically (the file is fsync'd, the directory is not).
fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_temp(path, bytes)?;
    fs::rename(&tmp, path)?;
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

fn read_queued(path: &Path) -> Result<Option<Queued>> {
    match fs::read(path) {
        Ok(b) => parse_queued(&b, &path.display().to_string()).map(Some),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Every queued event in `dir`; unreadable ones are logged and skipped.
fn read_all(dir: &Path) -> Result<Vec<Queued>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.strip_suffix(".json").is_some_and(is_event_id) {
            continue;
        }
        match read_queued(&entry.path()) {
            Ok(Some(q)) => out.push(q),
            Ok(None) => {}
            Err(e) => tracing::warn!(file = %name, error = %e, "skipping an unreadable event"),
        }
    }
    Ok(out)
}

#[async_trait]
impl Outbox for LocalOutbox {
    async fn put(&self, event: &Event) -> Result<()> {
        let (pending, dead, done) = (
            self.path("pending", &event.id),
            self.path("dead", &event.id),
            self.path("done", &event.id),
        );
        let bytes = to_json(&Queued {
            event: event.clone(),
            delivery: Delivery::default(),
        })?;
        blocking(move || {
            if dead.exists() || done.exists() {
                return Ok(());
            }
            create_durable(&pending, &bytes)
        })
        .await
    }

    async fn queued(&self) -> Result<Vec<Queued>> {
        let dir = self.dir.join("pending");
        blocking(move || read_all(&dir)).await
    }

    async fn get(&self, id: &str) -> Result<Option<Queued>> {
        let path = self.path("pending", id);
        blocking(move || read_queued(&path)).await
    }

    async fn claim(&self, id: &str, _lease: Duration) -> Result<bool> {
        Ok(self.claims().insert(id.to_string()))
    }

    async fn release(&self, id: &str) -> Result<()> {
        self.claims().remove(id);
        Ok(())
    }

    async fn update(&self, queued: &Queued) -> Result<()> {
        let path = self.path("pending", &queued.event.id);
        let bytes = to_json(queued)?;
        blocking(move || {
            // Delivered or buried meanwhile: nothing to update.
            if !path.exists() {
                return Ok(());
            }
            replace(&path, &bytes)
        })
        .await
    }

    async fn delivered(&self, id: &str) -> Result<()> {
        let (pending, done) = (self.path("pending", id), self.path("done", id));
        blocking(move || {
            // The marker first: a crash in between re-delivers (at least once), never
            // forgets.
            File::create(&done)?;
            remove_if_exists(&pending)
        })
        .await
    }

    async fn bury(&self, queued: &Queued) -> Result<()> {
        let (pending, dead) = (
            self.path("pending", &queued.event.id),
            self.path("dead", &queued.event.id),
        );
        let bytes = to_json(queued)?;
        blocking(move || {
            let tmp = write_temp(&dead, &bytes)?;
            fs::rename(&tmp, &dead)?;
            if let Some(d) = dead.parent() {
                fsync_dir(d)?;
            }
            remove_if_exists(&pending)?;
            if let Some(d) = pending.parent() {
                fsync_dir(d)?;
            }
            Ok(())
        })
        .await
    }

    async fn dead(&self) -> Result<Vec<Queued>> {
        let dir = self.dir.join("dead");
        blocking(move || read_all(&dir)).await
    }

    async fn replay(&self, id: &str) -> Result<Queued> {
        let (pending, dead) = (self.path("pending", id), self.path("dead", id));
        blocking(move || {
            let mut q = read_queued(&dead)?.ok_or(Error::NotFound)?;
            q.delivery = Delivery::default();
            let tmp = write_temp(&pending, &to_json(&q)?)?;
            fs::rename(&tmp, &pending)?;
            if let Some(d) = pending.parent() {
                fsync_dir(d)?;
            }
            remove_if_exists(&dead)?;
            if let Some(d) = dead.parent() {
                fsync_dir(d)?;
            }
            Ok(q)
        })
        .await
    }

    async fn prune(&self, age: Duration) -> Result<()> {
        let dir = self.dir.join("done");
        blocking(move || {
            let now = SystemTime::now();
            for entry in fs::read_dir(&dir)?.flatten() {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_some_and(|a| a >= age);
                if old {
                    remove_if_exists(&entry.path())?;
                }
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::record;
    use super::super::EventKind;
    use super::*;
    use crate::record::StoredState;
    use time::OffsetDateTime;

    #[tokio::test]
    async fn queue_deliver_bury_replay() {
        let dir = tempfile::tempdir().unwrap();
        let o = LocalOutbox::open(dir.path()).unwrap();
        let r = record(StoredState::Completed, OffsetDateTime::now_utc());
        let created = Event::of(EventKind::Created, &r);
        let completed = Event::of(EventKind::Completed, &r);
        o.put(&created).await.unwrap();
        o.put(&created).await.unwrap();
        o.put(&completed).await.unwrap();
        let mut ids: Vec<_> = o
            .queued()
            .await
            .unwrap()
            .into_iter()
            .map(|q| q.event.id)
            .collect();
        ids.sort();
        let mut want = vec![created.id.clone(), completed.id.clone()];
        want.sort();
        assert_eq!(ids, want, "put is idempotent");

        assert!(o.claim(&created.id, Duration::from_secs(1)).await.unwrap());
        assert!(!o.claim(&created.id, Duration::from_secs(1)).await.unwrap());
        o.release(&created.id).await.unwrap();
        o.delivered(&created.id).await.unwrap();
        assert_eq!(o.get(&created.id).await.unwrap(), None);
        o.put(&created).await.unwrap();
        assert_eq!(
            o.queued().await.unwrap().len(),
            1,
            "a delivered event is not re-queued"
        );

        let mut q = o.get(&completed.id).await.unwrap().unwrap();
        q.delivery.attempts = 3;
        q.delivery.last_error = Some("503".into());
        o.update(&q).await.unwrap();
        assert_eq!(
            o.get(&completed.id)
                .await
                .unwrap()
                .unwrap()
                .delivery
                .attempts,
            3
        );
        o.bury(&q).await.unwrap();
        assert!(o.queued().await.unwrap().is_empty());
        assert_eq!(o.dead().await.unwrap(), vec![q.clone()]);
        o.put(&completed).await.unwrap();
        assert!(
            o.queued().await.unwrap().is_empty(),
            "a dead event is not re-queued"
        );

        // Survives reopening (a restart).
        drop(o);
        let o = LocalOutbox::open(dir.path()).unwrap();
        assert_eq!(o.dead().await.unwrap().len(), 1);
        let replayed = o.replay(&completed.id).await.unwrap();
        assert_eq!(replayed.delivery, Delivery::default());
        assert!(o.dead().await.unwrap().is_empty());
        assert_eq!(o.queued().await.unwrap(), vec![replayed]);
        assert!(matches!(
            o.replay(&completed.id).await,
            Err(Error::NotFound)
        ));

        o.prune(Duration::ZERO).await.unwrap();
        o.put(&created).await.unwrap();
        assert_eq!(o.queued().await.unwrap().len(), 2, "forgotten once pruned");
    }
}
