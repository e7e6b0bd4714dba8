//! The servers of one bucket, in the bucket (see [`crate::peers`]):
//!
//! ```text
//! peers/key                   the key notes are signed with: 32 random bytes (hex),
//!                             created If-None-Match: * by the first server to need it
//! peers/members/{address}     an empty object per server, its address hex-encoded in the
//!                             key (a store may escape other characters), written again
//!                             every minute: one listing names every server, and its age
//!                             says whether it is still there
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use time::OffsetDateTime;

use super::store::{Put, Store};
use crate::error::{Error, Result};
use crate::peers::Directory;

/// A member not written again for this long is taken for gone (it writes every minute).
const GONE_AFTER: Duration = Duration::from_secs(180);

/// See the module documentation.
pub struct BucketDirectory {
    store: Arc<dyn Store>,
    /// `{prefix}peers/`.
    root: String,
}

impl BucketDirectory {
    /// The directory under `root` (the backend's prefix and `peers/`).
    pub fn new(store: Arc<dyn Store>, root: String) -> Self {
        Self { store, root }
    }

    fn members_prefix(&self) -> String {
        format!("{}members/", self.root)
    }

    fn member_key(&self, url: &str) -> String {
        format!("{}{}", self.members_prefix(), hex::encode(url))
    }
}

#[async_trait]
impl Directory for BucketDirectory {
    async fn key(&self) -> Result<Vec<u8>> {
        let at = format!("{}key", self.root);
        for _ in 0..3 {
            if let Some(got) = self.store.get(&at).await? {
                return hex::decode(got.bytes.as_ref())
                    .ok()
                    .filter(|k| k.len() >= 32)
                    .ok_or_else(|| Error::Corrupt(format!("{at} is not a key")));
            }
            let fresh = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            match self
                .store
                .put(&at, vec![Bytes::from(fresh)], Put::Create)
                .await
            {
                Ok(_) | Err(Error::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Corrupt(format!("{at} could not be made")))
    }

    async fn register(&self, url: &str) -> Result<()> {
        self.store
            .put(&self.member_key(url), vec![Bytes::new()], Put::Overwrite)
            .await
            .map(|_| ())
    }

    async fn members(&self) -> Result<Vec<String>> {
        let prefix = self.members_prefix();
        let now = OffsetDateTime::now_utc();
        Ok(self
            .store
            .list(&prefix)
            .await?
            .into_iter()
            .filter(|o| now - o.last_modified < GONE_AFTER)
            .filter_map(|o| {
                let encoded = o.key.strip_prefix(&prefix)?;
                String::from_utf8(hex::decode(encoded).ok()?).ok()
            })
            .collect())
    }

    async fn leave(&self, url: &str) -> Result<()> {
        self.store.delete(&self.member_key(url)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::s3::memory::MemoryStore;

    #[tokio::test]
    async fn every_server_gets_the_same_key_and_sees_the_others() {
        let store = MemoryStore::new();
        let a = BucketDirectory::new(store.clone(), "p/peers/".into());
        let b = BucketDirectory::new(store.clone(), "p/peers/".into());
        let (ka, kb) = tokio::join!(a.key(), b.key());
        let (ka, kb) = (ka.unwrap(), kb.unwrap());
        assert_eq!(ka, kb);
        assert_eq!(ka.len(), 32);
        a.register("http://10.0.0.1:8080").await.unwrap();
        b.register("https://[::1]:9/x?y").await.unwrap();
        let mut seen = b.members().await.unwrap();
        seen.sort();
        assert_eq!(seen, ["http://10.0.0.1:8080", "https://[::1]:9/x?y"]);
        a.leave("http://10.0.0.1:8080").await.unwrap();
        assert_eq!(b.members().await.unwrap(), ["https://[::1]:9/x?y"]);
    }

    #[tokio::test]
    async fn a_key_that_is_not_one_is_an_error() {
        let store = MemoryStore::new();
        store
            .put("peers/key", vec![Bytes::from_static(b"short")], Put::Create)
            .await
            .unwrap();
        let d = BucketDirectory::new(store, "peers/".into());
        assert!(d.key().await.is_err());
    }
}
