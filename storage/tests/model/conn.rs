//! A server's connection to the bucket, where the schedule is made (see [`crate::world`]),
//! and what the trace shows of each answer.

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::Sha256Digest;
use storage::backend::s3::store::{
    op, Got, Joined, MultipartInfo, ObjectInfo, PartBody, PartInfo, Put, Store,
};
use storage::backend::ByteStream;
use storage::events::{Event, EventKind, Outbox, Queued};
use storage::{Completion, Error, Result};
use tokio::sync::watch;

use crate::check;
use crate::world::{lock, World};

/// What the trace shows of an answer: nothing that differs from one run of a seed to the
/// next (times, ETags of objects holding times, random process names).
pub trait Brief {
    fn brief(&self) -> String;
}

impl Brief for () {
    fn brief(&self) -> String {
        "ok".into()
    }
}

impl Brief for String {
    fn brief(&self) -> String {
        "ok".into()
    }
}

impl Brief for storage::ChunkStored {
    fn brief(&self) -> String {
        format!("stored (new: {})", self.new)
    }
}

impl Brief for Completion {
    fn brief(&self) -> String {
        match self {
            Completion::Done(_) => "completed".into(),
            Completion::Verifying(_) => "verifying".into(),
        }
    }
}

impl Brief for Option<Got> {
    fn brief(&self) -> String {
        if self.is_some() { "found" } else { "none" }.into()
    }
}

impl Brief for Option<ObjectInfo> {
    fn brief(&self) -> String {
        if self.is_some() { "found" } else { "none" }.into()
    }
}

impl Brief for Quiet {
    fn brief(&self) -> String {
        "bytes".into()
    }
}

impl Brief for Vec<ObjectInfo> {
    fn brief(&self) -> String {
        let names: Vec<&str> = self
            .iter()
            .map(|o| o.key.rsplit('/').next().unwrap_or(&o.key))
            .map(|k| k.split('.').next().unwrap_or(k))
            .collect();
        format!("{names:?}")
    }
}

impl Brief for Vec<String> {
    fn brief(&self) -> String {
        format!("{} found", self.len())
    }
}

impl Brief for Vec<PartInfo> {
    fn brief(&self) -> String {
        let numbers: Vec<u64> = self.iter().map(|p| p.number).collect();
        format!("parts {numbers:?}")
    }
}

impl Brief for Joined {
    fn brief(&self) -> String {
        format!("{self:?}")
    }
}

impl Brief for Vec<MultipartInfo> {
    fn brief(&self) -> String {
        format!("{} in progress", self.len())
    }
}

impl Brief for storage::SweepReport {
    fn brief(&self) -> String {
        format!("{self:?}")
    }
}

/// An outbox that counts the events the service records.
pub struct CountingOutbox {
    pub world: std::sync::Weak<World>,
}

#[async_trait]
impl Outbox for CountingOutbox {
    async fn put(&self, event: &Event) -> Result<()> {
        if let Some(w) = self.world.upgrade() {
            w.note(|| format!("event {}", event.kind.name()));
            *lock(&w.log).events.entry(event.kind.name()).or_default() += 1;
            if event.kind == EventKind::Completed && !lock(&w.log).ever_completed {
                w.violation("I3: upload.completed recorded for an upload never completed");
            }
        }
        Ok(())
    }
    async fn queued(&self) -> Result<Vec<Queued>> {
        Ok(Vec::new())
    }
    async fn get(&self, _id: &str) -> Result<Option<Queued>> {
        Ok(None)
    }
    async fn claim(&self, _id: &str, _lease: Duration) -> Result<bool> {
        Ok(false)
    }
    async fn release(&self, _id: &str) -> Result<()> {
        Ok(())
    }
    async fn update(&self, _queued: &Queued) -> Result<()> {
        Ok(())
    }
    async fn delivered(&self, _id: &str) -> Result<()> {
        Ok(())
    }
    async fn bury(&self, _queued: &Queued) -> Result<()> {
        Ok(())
    }
    async fn dead(&self) -> Result<Vec<Queued>> {
        Ok(Vec::new())
    }
    async fn replay(&self, _id: &str) -> Result<Queued> {
        Err(Error::NotFound)
    }
    async fn prune(&self, _age: Duration) -> Result<()> {
        Ok(())
    }
}

/// One server's connection to the bucket (see the module documentation).
pub struct Conn {
    pub world: Arc<World>,
    pub server: usize,
    pub alive: Arc<AtomicBool>,
    pub died: Arc<watch::Sender<bool>>,
}

impl Conn {
    /// A dead process sends nothing more, and hears nothing more.
    async fn gate(&self) {
        if !self.alive.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    fn die(&self) {
        self.alive.store(false, Ordering::SeqCst);
        self.died.send_replace(true);
        lock(&self.world.log).crashes += 1;
        self.world.note(|| format!("s{} CRASHED", self.server));
        self.world.crashed.notify_one();
    }

    /// One store request: paced, maybe refused, applied, checked, maybe its answer lost.
    async fn call<T: Brief>(
        &self,
        what: &'static str,
        key: &str,
        request: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let w = &self.world;
        self.gate().await;
        w.pause().await;
        self.gate().await;
        let n = {
            let mut log = lock(&w.log);
            log.requests += 1;
            log.requests
        };
        let fail = lock(&w.plan).fail.contains(&n);
        if fail {
            lock(&w.log).faulted(self.server);
            w.note(|| format!("s{} {what} {key}: REFUSED (injected)", self.server));
            return Err(Error::Io(std::io::Error::other(
                "injected: the store failed",
            )));
        }
        let r = request.await;
        // From here to the next await nothing else runs: the write just applied is checked
        // as the bucket stands.
        let seq = w.note(|| format!("s{} {what} {key} -> {}", self.server, short(&r)));
        if r.is_ok() {
            check::after_request(w, self.server, what, key, seq);
        }
        let crash = {
            let mut plan = lock(&w.plan);
            let fire = plan.crash.as_ref().is_some_and(|c| {
                c.server == self.server && c.op.is_none_or(|o| o == what) && {
                    let mut counted = lock(&w.counted);
                    let k = counted.entry(self.server).or_default();
                    *k += 1;
                    *k == c.nth
                }
            });
            if fire {
                plan.crash = None;
            }
            fire
        };
        if crash {
            self.die();
        }
        let lose = r.is_ok() && lock(&w.plan).lose.contains(&n);
        if r.is_ok() && !lose {
            check::answered(w, self.server, what, key, seq);
        }
        let r = if lose {
            lock(&w.log).faulted(self.server);
            w.note(|| format!("s{} {what} {key}: ANSWER LOST (injected)", self.server));
            Err(Error::Io(std::io::Error::other(
                "injected: the answer was lost",
            )))
        } else {
            r
        };
        w.pause().await;
        self.gate().await;
        r
    }

    fn is_claim(&self, key: &str) -> bool {
        key.strip_prefix(&self.world.chunks_prefix())
            .is_some_and(|rest| rest.len() == 5 && rest.bytes().all(|b| b.is_ascii_digit()))
    }
}

fn short<T: Brief>(r: &Result<T>) -> String {
    match r {
        Ok(v) => v.brief(),
        Err(e) => format!("error: {e}"),
    }
}

#[async_trait]
impl Store for Conn {
    async fn get(&self, key: &str) -> Result<Option<Got>> {
        self.call(op::GET, key, self.world.store.get(key)).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<ByteStream> {
        let s = self
            .call(op::GET_RANGE, key, async {
                self.world.store.get_range(key, range).await.map(Quiet)
            })
            .await?;
        Ok(s.0)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.call(op::HEAD, key, self.world.store.head(key)).await
    }

    async fn put(&self, key: &str, body: Vec<Bytes>, condition: Put) -> Result<String> {
        let w = &self.world;
        let condition = match condition {
            Put::Create if w.flaws.claim_overwrites && self.is_claim(key) => Put::Overwrite,
            Put::Update(_) if w.flaws.record_unconditional && key == w.record_key() => {
                Put::Overwrite
            }
            c => c,
        };
        if key == w.file_key() && body.iter().any(|b| !b.is_empty()) {
            w.violation("no copy: the file was written by PutObject, not by joining parts");
        }
        let what = match condition {
            Put::Overwrite => "put",
            Put::Create => "put-if-none-match",
            Put::Update(_) => "put-if-match",
        };
        self.call(what, key, w.store.put(key, body, condition))
            .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.call(op::DELETE, key, self.world.store.delete(key))
            .await
    }

    async fn delete_many(&self, keys: Vec<String>) -> Result<()> {
        let what = keys.join(",");
        self.call(op::DELETE_MANY, &what, self.world.store.delete_many(keys))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let w = &self.world;
        let listed = self.call(op::LIST, prefix, w.store.list(prefix)).await?;
        if !w.flaws.stale_listing {
            return Ok(listed);
        }
        let log = lock(&w.log);
        Ok(listed
            .into_iter()
            .filter(|o| {
                log.written
                    .get(&o.key)
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(30))
            })
            .collect())
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        self.call("list_dirs", prefix, self.world.store.list_dirs(prefix))
            .await
    }

    async fn create_multipart(&self, key: &str) -> Result<String> {
        self.call(
            op::CREATE_MULTIPART,
            key,
            self.world.store.create_multipart(key),
        )
        .await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u64,
        len: u64,
        sha256: Option<Sha256Digest>,
        body: PartBody,
    ) -> Result<String> {
        let what = format!("{key} part {number}");
        self.call(
            op::UPLOAD_PART,
            &what,
            self.world
                .store
                .upload_part(key, upload_id, number, len, sha256, body),
        )
        .await
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<PartInfo>> {
        self.call(
            op::LIST_PARTS,
            key,
            self.world.store.list_parts(key, upload_id),
        )
        .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u64, String)],
    ) -> Result<Joined> {
        self.call(
            op::COMPLETE_MULTIPART,
            key,
            self.world.store.complete_multipart(key, upload_id, parts),
        )
        .await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.call(
            op::ABORT_MULTIPART,
            key,
            self.world.store.abort_multipart(key, upload_id),
        )
        .await
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<MultipartInfo>> {
        self.call(
            op::LIST_MULTIPART,
            prefix,
            self.world.store.list_multipart_uploads(prefix),
        )
        .await
    }
}

/// A byte stream read from the store.
pub struct Quiet(ByteStream);
