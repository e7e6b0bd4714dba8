//! Deadlines on every store request, so that a store that hangs (accepts connections,
//! never answers: a stopped process, a network black hole) is a failure in seconds, not
//! after the client's own timeouts and retries: the service then answers 503 with
//! `Retry-After` and its circuit breaker opens. A small request must be answered within
//! [`Deadlines::request`]; a part is cut when the store stops taking its bytes (or stops
//! answering once it has them all) for [`Deadlines::stall`], however long it takes in all;
//! a download, when no byte comes for as long. Every request is also counted, by
//! operation (`upload_store_requests_total{op}`).

use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use common::Sha256Digest;
use futures_util::{Stream, StreamExt};

use super::store::{op, Got, Joined, MultipartInfo, ObjectInfo, PartBody, PartInfo, Put, Store};
use crate::backend::ByteStream;
use crate::breaker::Breaker;
use crate::error::{Error, Result};
use crate::metrics;

/// How long the store may take.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// A small request (a record, a claim, a listing page, a multipart call) must be
    /// answered within this.
    pub request: Duration,
    /// A part (or a download) that moves no byte for this long is cut.
    pub stall: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            request: Duration::from_secs(3),
            stall: Duration::from_secs(10),
        }
    }
}

/// A store whose every request has its deadline (see the module documentation).
pub struct Deadlined<S> {
    inner: Arc<S>,
    deadlines: Deadlines,
    breaker: Breaker,
}

impl<S: Store> Deadlined<S> {
    /// `inner`, with `deadlines`.
    pub fn new(inner: Arc<S>, deadlines: Deadlines) -> Self {
        Self {
            inner,
            deadlines,
            breaker: Breaker::new(Duration::from_secs(2)),
        }
    }

    async fn small<T>(
        &self,
        what: &'static str,
        request: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.within(what, self.deadlines.request, request).await
    }

    async fn within<T>(
        &self,
        what: &'static str,
        limit: Duration,
        request: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.breaker.check()?;
        let _in_flight = metrics::store_request(what);
        let r = match tokio::time::timeout(limit, request).await {
            Ok(r) => r,
            Err(_) => Err(timed_out(format!(
                "the store did not answer {what} within {limit:?}"
            ))),
        };
        self.breaker.record(&r);
        r
    }
}

fn timed_out(why: String) -> Error {
    Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, why))
}

/// A part's body that records when the store last took a piece of it, and whether it is
/// waiting for the client rather than for the store.
struct Metered {
    inner: PartBody,
    meter: Arc<Mutex<Meter>>,
}

struct Meter {
    last_taken: Instant,
    /// The store asked for more and the client had sent none yet: not the store's stall.
    waiting_for_client: bool,
    done: bool,
}

impl Stream for Metered {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        let mut m = self.meter.lock().unwrap_or_else(|e| e.into_inner());
        match &polled {
            Poll::Pending => m.waiting_for_client = true,
            Poll::Ready(item) => {
                m.waiting_for_client = false;
                m.last_taken = Instant::now();
                m.done = item.is_none();
            }
        }
        polled
    }
}

#[async_trait]
impl<S: Store> Store for Deadlined<S> {
    async fn get(&self, key: &str) -> Result<Option<Got>> {
        self.small(op::GET, self.inner.get(key)).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<ByteStream> {
        let stream = self
            .small(op::GET_RANGE, self.inner.get_range(key, range))
            .await?;
        // Each piece must come within the stall time.
        let stall = self.deadlines.stall;
        Ok(
            futures_util::stream::unfold(stream, move |mut s| async move {
                match tokio::time::timeout(stall, s.next()).await {
                    Ok(Some(item)) => Some((item, s)),
                    Ok(None) => None,
                    Err(_) => Some((
                        Err(timed_out(format!("the store sent nothing for {stall:?}"))),
                        s,
                    )),
                }
            })
            .boxed(),
        )
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.small(op::HEAD, self.inner.head(key)).await
    }

    async fn put(&self, key: &str, body: Vec<Bytes>, condition: Put) -> Result<String> {
        // A bigger object (a spill) may take longer to send: a deadline per 8 MiB.
        let size: usize = body.iter().map(Bytes::len).sum();
        let limit = self.deadlines.request * (1 + (size >> 23) as u32);
        self.within(op::PUT, limit, self.inner.put(key, body, condition))
            .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.small(op::DELETE, self.inner.delete(key)).await
    }

    async fn delete_many(&self, keys: Vec<String>) -> Result<()> {
        for batch in keys.chunks(1000) {
            self.small(op::DELETE_MANY, self.inner.delete_many(batch.to_vec()))
                .await?;
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.small(op::LIST, self.inner.list(prefix)).await
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectInfo>> {
        self.small(op::LIST, self.inner.list_page(prefix, after, limit))
            .await
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        self.small(op::LIST, self.inner.list_dirs(prefix)).await
    }

    async fn create_multipart(&self, key: &str) -> Result<String> {
        self.small(op::CREATE_MULTIPART, self.inner.create_multipart(key))
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
        self.breaker.check()?;
        let _in_flight = metrics::store_request(op::UPLOAD_PART);
        let meter = Arc::new(Mutex::new(Meter {
            last_taken: Instant::now(),
            waiting_for_client: false,
            done: false,
        }));
        let body = Metered {
            inner: body,
            meter: meter.clone(),
        }
        .boxed();
        let sending = self
            .inner
            .upload_part(key, upload_id, number, len, sha256, body);
        tokio::pin!(sending);
        let stall = self.deadlines.stall;
        let r = loop {
            tokio::select! {
                r = &mut sending => break r,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    let m = meter.lock().unwrap_or_else(|e| e.into_inner());
                    if !m.waiting_for_client && m.last_taken.elapsed() > stall {
                        let what = if m.done { "answering" } else { "taking the bytes of" };
                        break Err(timed_out(format!(
                            "the store stopped {what} part {number} for {stall:?}"
                        )));
                    }
                }
            }
        };
        self.breaker.record(&r);
        r
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<PartInfo>> {
        // One deadline per page is the inner store's affair; the whole listing gets a
        // small request's deadline per thousand parts it may hold.
        self.within(
            op::LIST_PARTS,
            self.deadlines.request * 10,
            self.inner.list_parts(key, upload_id),
        )
        .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u64, String)],
    ) -> Result<Joined> {
        // Joining many parts takes a store a while: longer than a small request, finite.
        let limit = self.deadlines.request * (10 + parts.len() as u32 / 1000);
        self.within(
            op::COMPLETE_MULTIPART,
            limit,
            self.inner.complete_multipart(key, upload_id, parts),
        )
        .await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.small(
            op::ABORT_MULTIPART,
            self.inner.abort_multipart(key, upload_id),
        )
        .await
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<MultipartInfo>> {
        self.within(
            op::LIST_MULTIPART,
            self.deadlines.request * 10,
            self.inner.list_multipart_uploads(prefix),
        )
        .await
    }
}
