//! The outbox in the bucket, shared by every server on it.
//!
//! # Layout (under the configured prefix)
//! ```text
//! events/pending/{event id}.json   a queued event with its delivery state (`Queued`);
//!                                  created If-None-Match: * (so writing it twice is harmless)
//! events/claims/{event id}         "{process} {unix ms expiry}": the one server delivering it
//!                                  now; created If-None-Match: *, an expired one taken over
//!                                  If-Match: <etag>
//! events/dead/{event id}.json      a dead letter: delivery was given up (same content)
//! events/done/{event id}           empty marker of a delivered event, pruned after a day
//! ```
//! Every server lists `events/pending/`; before delivering an event it takes the event's
//! claim and re-reads the event, so each event is delivered by one server at a time, and a
//! server that died mid-delivery is replaced once its claim expires.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use time::OffsetDateTime;

use super::{is_event_id, parse_queued, to_json, Delivery, Event, Outbox, Queued};
use crate::backend::s3::S3Config;
use crate::error::{Error, Result};

/// Events in a bucket (or any object store with conditional writes).
pub struct S3Outbox {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// This process's name in claims.
    process: String,
}

fn store_err(e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::NotFound,
        object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. } => {
            Error::Conflict
        }
        other => Error::Io(std::io::Error::other(other)),
    }
}

impl S3Outbox {
    /// Connects to the bucket of `config` (credentials from the standard `AWS_*`
    /// environment variables, as for the upload backend).
    pub fn connect(config: &S3Config) -> Result<Self> {
        Ok(Self::new(Arc::new(config.connect()?), &config.prefix))
    }

    /// An outbox in `store` under `prefix`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            process: common::UploadId::new_random().to_string(),
        }
    }

    fn key(&self, rest: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(format!("events/{rest}"))
        } else {
            Path::from(format!("{}/events/{rest}", self.prefix))
        }
    }

    fn pending(&self, id: &str) -> Path {
        self.key(&format!("pending/{id}.json"))
    }

    fn dead_key(&self, id: &str) -> Path {
        self.key(&format!("dead/{id}.json"))
    }

    fn done(&self, id: &str) -> Path {
        self.key(&format!("done/{id}"))
    }

    fn claim_key(&self, id: &str) -> Path {
        self.key(&format!("claims/{id}"))
    }

    async fn exists(&self, key: &Path) -> Result<bool> {
        match self.store.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn read(&self, key: &Path) -> Result<Option<Queued>> {
        match self.store.get(key).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(store_err)?;
                parse_queued(&bytes, key.as_ref()).map(Some)
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn write(&self, key: &Path, queued: &Queued) -> Result<()> {
        self.store
            .put(key, PutPayload::from(to_json(queued)?))
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn delete(&self, key: &Path) -> Result<()> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }

    /// Every queued event under `sub` (`pending` or `dead`).
    async fn read_all(&self, sub: &str) -> Result<Vec<Queued>> {
        let listed: Vec<_> = self
            .store
            .list(Some(&self.key(sub)))
            .try_collect()
            .await
            .map_err(store_err)?;
        let keys = listed.into_iter().map(|m| m.location).filter(|k| {
            k.filename()
                .and_then(|n| n.strip_suffix(".json"))
                .is_some_and(is_event_id)
        });
        let read: Vec<Result<Option<Queued>>> = futures_util::stream::iter(keys)
            .map(|k| async move { self.read(&k).await })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut out = Vec::new();
        for r in read {
            match r {
                Ok(Some(q)) => out.push(q),
                Ok(None) => {}
                Err(Error::Corrupt(why)) => {
                    tracing::warn!(error = %why, "skipping an unreadable event")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The holder and expiry (Unix ms) written in a claim.
    fn parse_claim(text: &[u8]) -> (String, i64) {
        let text = String::from_utf8_lossy(text);
        let mut it = text.split_whitespace();
        let holder = it.next().unwrap_or_default().to_string();
        (holder, it.next().and_then(|u| u.parse().ok()).unwrap_or(0))
    }
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[async_trait]
impl Outbox for S3Outbox {
    async fn put(&self, event: &Event) -> Result<()> {
        if self.exists(&self.done(&event.id)).await?
            || self.exists(&self.dead_key(&event.id)).await?
        {
            return Ok(());
        }
        let queued = Queued {
            event: event.clone(),
            delivery: Delivery::default(),
        };
        let put = self
            .store
            .put_opts(
                &self.pending(&event.id),
                PutPayload::from(to_json(&queued)?),
                PutOptions::from(PutMode::Create),
            )
            .await;
        match put {
            Ok(_)
            | Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn queued(&self) -> Result<Vec<Queued>> {
        self.read_all("pending").await
    }

    async fn get(&self, id: &str) -> Result<Option<Queued>> {
        self.read(&self.pending(id)).await
    }

    async fn claim(&self, id: &str, lease: Duration) -> Result<bool> {
        let key = self.claim_key(id);
        let now = now_ms();
        let body = format!("{} {}", self.process, now + lease.as_millis() as i64);
        let create = self
            .store
            .put_opts(
                &key,
                PutPayload::from(body.clone().into_bytes()),
                PutOptions::from(PutMode::Create),
            )
            .await;
        match create {
            Ok(_) => return Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {}
            Err(e) => return Err(store_err(e)),
        }
        let held = match self.store.get(&key).await {
            Ok(h) => h,
            // Released meanwhile: free again at the next pass.
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(store_err(e)),
        };
        let e_tag = held.meta.e_tag.clone();
        let (holder, until) = Self::parse_claim(&held.bytes().await.map_err(store_err)?);
        if holder != self.process && until > now {
            return Ok(false);
        }
        let takeover = self
            .store
            .put_opts(
                &key,
                PutPayload::from(body.into_bytes()),
                PutOptions::from(PutMode::Update(UpdateVersion {
                    e_tag,
                    version: None,
                })),
            )
            .await;
        match takeover {
            Ok(_) => Ok(true),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn release(&self, id: &str) -> Result<()> {
        let key = self.claim_key(id);
        let held = match self.store.get(&key).await {
            Ok(h) => h,
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(store_err(e)),
        };
        let (holder, _) = Self::parse_claim(&held.bytes().await.map_err(store_err)?);
        // Another process took an expired claim over: it is theirs now.
        if holder == self.process {
            self.delete(&key).await?;
        }
        Ok(())
    }

    async fn update(&self, queued: &Queued) -> Result<()> {
        let key = self.pending(&queued.event.id);
        // Delivered or buried meanwhile: nothing to update.
        if !self.exists(&key).await? {
            return Ok(());
        }
        self.write(&key, queued).await
    }

    async fn delivered(&self, id: &str) -> Result<()> {
        // The marker first: a crash in between re-delivers (at least once), never forgets.
        self.store
            .put(&self.done(id), PutPayload::default())
            .await
            .map_err(store_err)?;
        self.delete(&self.pending(id)).await
    }

    async fn bury(&self, queued: &Queued) -> Result<()> {
        self.write(&self.dead_key(&queued.event.id), queued).await?;
        self.delete(&self.pending(&queued.event.id)).await
    }

    async fn dead(&self) -> Result<Vec<Queued>> {
        self.read_all("dead").await
    }

    async fn replay(&self, id: &str) -> Result<Queued> {
        let mut q = self
            .read(&self.dead_key(id))
            .await?
            .ok_or(Error::NotFound)?;
        q.delivery = Delivery::default();
        self.write(&self.pending(id), &q).await?;
        self.delete(&self.dead_key(id)).await?;
        Ok(q)
    }

    async fn prune(&self, age: Duration) -> Result<()> {
        let listed: Vec<_> = self
            .store
            .list(Some(&self.key("done")))
            .try_collect()
            .await
            .map_err(store_err)?;
        let now = OffsetDateTime::now_utc();
        for meta in listed {
            let modified =
                OffsetDateTime::from_unix_timestamp(meta.last_modified.timestamp()).unwrap_or(now);
            if now - modified >= age {
                self.delete(&meta.location).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::record;
    use super::super::EventKind;
    use super::*;
    use crate::record::StoredState;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn claims_keep_processes_apart() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let a = S3Outbox::new(store.clone(), "p");
        let b = S3Outbox::new(store.clone(), "p");
        let r = record(StoredState::Completed, OffsetDateTime::now_utc());
        let e = Event::of(EventKind::Completed, &r);
        a.put(&e).await.unwrap();
        b.put(&e).await.unwrap();
        assert_eq!(
            b.queued().await.unwrap().len(),
            1,
            "one event, written twice"
        );

        assert!(a.claim(&e.id, Duration::from_secs(60)).await.unwrap());
        assert!(!b.claim(&e.id, Duration::from_secs(60)).await.unwrap());
        assert!(
            a.claim(&e.id, Duration::from_secs(60)).await.unwrap(),
            "renewal"
        );
        b.release(&e.id).await.unwrap();
        assert!(
            !b.claim(&e.id, Duration::from_secs(60)).await.unwrap(),
            "not b's to release"
        );
        a.release(&e.id).await.unwrap();
        assert!(b.claim(&e.id, Duration::ZERO).await.unwrap());
        assert!(
            a.claim(&e.id, Duration::from_secs(60)).await.unwrap(),
            "expired: taken over"
        );

        a.delivered(&e.id).await.unwrap();
        assert_eq!(b.get(&e.id).await.unwrap(), None);
        b.put(&e).await.unwrap();
        assert!(
            b.queued().await.unwrap().is_empty(),
            "delivered is not re-queued"
        );
    }

    #[tokio::test]
    async fn dead_letters_and_replay() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let o = S3Outbox::new(store, "");
        let r = record(StoredState::Failed, OffsetDateTime::now_utc());
        let e = Event::of(EventKind::Failed, &r);
        o.put(&e).await.unwrap();
        let mut q = o.get(&e.id).await.unwrap().unwrap();
        q.delivery.attempts = 5;
        o.update(&q).await.unwrap();
        o.bury(&q).await.unwrap();
        assert!(o.queued().await.unwrap().is_empty());
        assert_eq!(o.dead().await.unwrap(), vec![q]);
        o.put(&e).await.unwrap();
        assert!(
            o.queued().await.unwrap().is_empty(),
            "dead is not re-queued"
        );
        let back = o.replay(&e.id).await.unwrap();
        assert_eq!(back.delivery.attempts, 0);
        assert_eq!(o.queued().await.unwrap(), vec![back]);
        assert!(o.dead().await.unwrap().is_empty());
        assert!(matches!(o.replay(&e.id).await, Err(Error::NotFound)));
    }
}
