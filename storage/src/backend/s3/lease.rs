//! The append lease: one appender per upload across servers. A lease object names the
//! write holding it and until when; it is renewed while the append goes on and released
//! when it ends, so the next append takes it over at once instead of waiting for it to
//! expire. Taking it over is a conditional write of the version read, so two servers never
//! both hold it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use time::OffsetDateTime;

use super::store::{Put, Store};
use crate::error::{Error, Result};

/// How long a lease holds off other appenders; a live appender renews it every
/// [`LEASE_RENEW`], so a crashed server's upload is free again within this time.
const LEASE_SECS: i64 = 15;
/// How often an appender renews its lease.
const LEASE_RENEW: Duration = Duration::from_secs(5);

/// A lease as stored: `{holder} {unix expiry}`.
struct Lease {
    holder: String,
    until: i64,
}

impl Lease {
    fn parse(text: &str) -> Self {
        let mut it = text.split_whitespace();
        Self {
            holder: it.next().unwrap_or_default().to_string(),
            until: it.next().and_then(|u| u.parse().ok()).unwrap_or(0),
        }
    }

    fn body(&self) -> Vec<Bytes> {
        vec![Bytes::from(format!("{} {}", self.holder, self.until))]
    }
}

/// A lease a write holds (see the module documentation).
pub(super) struct HeldLease {
    store: Arc<dyn Store>,
    key: String,
    /// ETag of the lease as last written, for renewals and the release.
    tag: String,
    held: Lease,
    renewed: Instant,
    /// Released on drop.
    armed: bool,
}

impl HeldLease {
    /// Takes the lease at `key` for `holder`: creates it, or takes over an expired or
    /// released one. [`Error::Locked`] while another write holds it.
    pub(super) async fn take(store: Arc<dyn Store>, key: String, holder: String) -> Result<Self> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mine = Lease {
            holder,
            until: now + LEASE_SECS,
        };
        let tag = match store.put(&key, mine.body(), Put::Create).await {
            Ok(tag) => tag,
            Err(Error::Conflict) => {
                // Released meanwhile: the caller's retry will take it.
                let held = store.get(&key).await?.ok_or(Error::Locked)?;
                let current = Lease::parse(&String::from_utf8_lossy(&held.bytes));
                if current.holder != mine.holder && current.until > now {
                    return Err(Error::Locked);
                }
                match store.put(&key, mine.body(), Put::Update(held.etag)).await {
                    Ok(tag) => tag,
                    Err(Error::Conflict | Error::NotFound) => return Err(Error::Locked),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            store,
            key,
            tag,
            held: mine,
            renewed: Instant::now(),
            armed: true,
        })
    }

    /// Extends the lease when a renewal is due; fails if another server took it.
    pub(super) async fn renew_if_due(&mut self) -> Result<()> {
        if self.renewed.elapsed() < LEASE_RENEW {
            return Ok(());
        }
        self.held.until = OffsetDateTime::now_utc().unix_timestamp() + LEASE_SECS;
        self.tag = match self
            .store
            .put(&self.key, self.held.body(), Put::Update(self.tag.clone()))
            .await
        {
            Ok(tag) => tag,
            Err(Error::Conflict | Error::NotFound) => return Err(Error::Locked),
            Err(e) => return Err(e),
        };
        self.renewed = Instant::now();
        Ok(())
    }

    /// Releases the lease now, so that the client's next request is not kept out.
    /// Should the release fail, the lease expires instead.
    pub(super) async fn release(mut self) {
        self.armed = false;
        if let Err(e) = self
            .store
            .put(&self.key, self.released(), Put::Update(self.tag.clone()))
            .await
        {
            tracing::debug!(error = %e, "lease not released; it will expire");
        }
    }

    /// The released lease: free.
    fn released(&self) -> Vec<Bytes> {
        Lease {
            holder: "released".into(),
            until: 0,
        }
        .body()
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Released, not deleted: the next appender takes it over by a conditional write.
        let (store, key) = (self.store.clone(), self.key.clone());
        let (body, tag) = (self.released(), self.tag.clone());
        tokio::spawn(async move {
            let _ = store.put(&key, body, Put::Update(tag)).await;
        });
    }
}
