//! Uploading one file: with the upload chosen ([`crate::choose`]), read the file once in
//! order while hashing it, send the missing chunks through the run's shared pool of chunk
//! slots with retries, then complete and compare the server's SHA-256 with ours.
//!
//! # Memory
//! At most `-j` chunks are in flight over the whole run, plus one read ahead per file being
//! sent (waiting for a free slot, or being read): about `(parallel + transfers) ×
//! chunk_size`, whatever the file sizes.
//!
//! # Resume
//! The journal ([`crate::journal`]) keeps the SHA-256 midstate after the last chunk read
//! in order. A resumed run asks the server which chunks are missing, starts reading right
//! after the saved prefix (continuing the hash), and sends only the missing chunks; missing
//! chunks inside the prefix (in flight when the previous run stopped) are re-read on their
//! own, without touching the whole-file hash.
//!
//! The midstate is trusted only if the file's identity (size, mtime, ctime, inode) is the
//! one the journal recorded. A file whose identity changed but not its size is read again
//! from the start, and each chunk the server already has is compared with the SHA-256
//! recorded when it was sent; one that differs means the server holds bytes the file no
//! longer has, so that upload is cancelled and a new one started. A file that changes while
//! it is being sent is never reported as uploaded.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::api::{Capabilities, UploadState, UploadStatus};
use common::geometry::Geometry;
use common::ranges::{iter_ranges, to_ranges};
use common::units::format_size;
use common::{Sha256Digest, UploadId};

use crate::choose::Chosen;
use crate::client::{Client, Completion, SendOptions};
use crate::error::{Error, Result};
use crate::journal::{Done, FileIdentity, Journal, Midstate, Store};
use crate::limit::RateLimiter;
use crate::outage::Outage;
use crate::progress::{Completed, FileProgress, Reporter};
use crate::retry::RetryPolicy;
use crate::waits;

/// How files are uploaded (from the command line).
#[derive(Clone, Debug)]
pub struct Options {
    /// Chunk size for new uploads; the server chooses when `None`.
    pub chunk_size: Option<u64>,
    /// Retry policy for every request.
    pub retry: RetryPolicy,
    /// Shared total rate limit.
    pub limiter: Option<Arc<RateLimiter>>,
    /// A request that moves no byte for this long is aborted and retried.
    pub stall_timeout: Duration,
    /// Resume this upload (started elsewhere) instead of looking in the journal.
    pub resume: Option<UploadId>,
    /// Upload even files this machine already uploaded.
    pub force: bool,
    /// The command that resumes the whole run.
    pub resume_hint: String,
}

/// Everything an upload needs, shared by reference by every file of a run.
pub struct Uploader<'a> {
    /// API client.
    pub client: &'a Client,
    /// What the server accepts.
    pub capabilities: &'a Capabilities,
    /// Journal store.
    pub store: &'a Store,
    /// Output.
    pub reporter: &'a Reporter,
    /// Cancelled on Ctrl-C.
    pub cancel: &'a CancellationToken,
    /// Options.
    pub opts: &'a Options,
    /// The chunk slots (`-j`) shared by every file.
    pub pool: Arc<Semaphore>,
    /// Waiting out an unreachable server.
    pub outage: &'a Outage,
}

/// One file to upload.
#[derive(Clone, Debug)]
pub struct Job {
    /// The path as found (given, or under a given directory).
    pub path: PathBuf,
    /// Its path under the directory given on the command line, if it came from one.
    pub relative_path: Option<String>,
}

/// A chunk read from the file.
struct ReadChunk {
    index: u64,
    data: Vec<u8>,
    digest: Sha256Digest,
    /// The whole-file hasher, when this read was part of the in-order pass.
    whole: Option<Sha256>,
}

/// Reads chunk `index` at its offset and hashes it; feeds `whole` too when given.
fn read_chunk(
    file: &std::fs::File,
    index: u64,
    offset: u64,
    len: u64,
    mut whole: Option<Sha256>,
) -> std::io::Result<ReadChunk> {
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    let mut data = vec![0u8; len];
    file.read_exact_at(&mut data, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            std::io::Error::other("the file became shorter while uploading")
        } else {
            e
        }
    })?;
    let digest = Sha256Digest(Sha256::digest(&data).into());
    if let Some(w) = whole.as_mut() {
        w.update(&data);
    }
    Ok(ReadChunk {
        index,
        data,
        digest,
        whole,
    })
}

/// The resume notice: what is on the server, what this run sends and what it reads.
/// `to send` is what the server is missing; `to read` is everything after the prefix
/// whose hash was saved, plus the missing chunks inside that prefix (read again to be sent,
/// but not hashed again).
pub fn resume_notice(
    id: &UploadId,
    size: u64,
    on_server: u64,
    hashed_prefix: u64,
    gap: u64,
) -> String {
    let mut s = format!(
        "resuming upload {id}: {} of {} already on the server, {} to send",
        format_size(on_server),
        format_size(size),
        format_size(size - on_server.min(size)),
    );
    if hashed_prefix > 0 {
        s.push_str(&format!(
            "; the first {} were hashed before, {} to read",
            format_size(hashed_prefix),
            format_size(size - hashed_prefix.min(size) + gap),
        ));
    }
    s
}

/// Why the transfer of a file stopped early, inside [`Uploader::transfer`].
enum Stop {
    Failed(Error),
    /// The server holds chunks the file no longer has: start a new upload.
    Stale {
        index: u64,
    },
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

impl Uploader<'_> {
    /// Runs `op` with the retry policy, reporting each retry. A server that is unreachable
    /// is waited for ([`Outage`]) without spending retries; Ctrl-C ends the waits.
    pub(crate) async fn with_retry<T, F, Fut>(
        &self,
        file: &Path,
        chunk: Option<u64>,
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut rng = fastrand::Rng::new();
        let mut attempt = 1u32;
        loop {
            let e = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if e.is_outage() {
                let waited = tokio::select! {
                    r = self.outage.wait(self.client, self.reporter, &e) => r?,
                    () = self.cancel.cancelled() => return Err(self.interrupted()),
                };
                if waited {
                    continue;
                }
            }
            if !(e.is_retryable() && attempt <= self.opts.retry.retries) {
                if attempt > 1 {
                    return Err(Error::GaveUp {
                        index: chunk.unwrap_or(0),
                        attempts: attempt,
                        last: Box::new(e),
                    }
                    .unless_control(chunk));
                }
                return Err(e);
            }
            let delay = self.opts.retry.delay(attempt, e.retry_after(), &mut rng);
            let transport = matches!(e, Error::Transport { .. });
            self.reporter
                .retry(file, chunk, attempt, &e.short_reason(), delay, transport);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.cancel.cancelled() => return Err(self.interrupted()),
            }
            attempt += 1;
        }
    }

    pub(crate) fn interrupted(&self) -> Error {
        Error::Interrupted {
            resume: self.opts.resume_hint.clone(),
        }
    }

    /// Uploads one file and returns what the server verified (or, for a file this
    /// machine uploaded before, what it verified then).
    pub async fn upload_file(&self, job: &Job) -> Result<Completed> {
        let started_at = Instant::now();
        let path = job.path.as_path();
        let canon = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        let meta = std::fs::metadata(&canon).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::NotAFile(path.to_path_buf()));
        }
        // Open before talking to the server: an unreadable file fails without side effects.
        let file = Arc::new(std::fs::File::open(&canon).map_err(|e| Error::io(path, e))?);
        let ident = FileIdentity::of(&canon, &meta);
        if let Some(done) = self.already_uploaded(path, &ident).await? {
            return Ok(done);
        }
        self.check_chunk_size(path, ident.size)?;
        if let Some(mut c) = self.upload_whole(job, &canon, &file, &ident).await? {
            c.elapsed = started_at.elapsed();
            return Ok(c);
        }
        let mut fresh = false;
        loop {
            let chosen = self.choose_upload(job, &ident, fresh).await?;
            let id = chosen.status.id;
            match self.transfer(job, &canon, &file, &ident, chosen).await {
                Ok(mut c) => {
                    c.elapsed = started_at.elapsed();
                    return Ok(c);
                }
                Err(Stop::Failed(e)) => return Err(e),
                Err(Stop::Stale { index }) => {
                    self.reporter.notice(
                        path,
                        &format!(
                            "{}: chunk {index} differs from what upload {id} holds; starting a new upload",
                            path.display()
                        ),
                    );
                    let _ = self.client.cancel(&id).await;
                    self.store.remove(&id)?;
                    fresh = true;
                }
            }
        }
    }

    /// Sends what the server is missing of the chosen upload and completes it.
    async fn transfer(
        &self,
        job: &Job,
        canon: &Path,
        file: &Arc<std::fs::File>,
        ident: &FileIdentity,
        chosen: Chosen,
    ) -> Result<Completed, Stop> {
        let path = job.path.as_path();
        let Chosen {
            mut journal,
            status,
            verify,
        } = chosen;
        let size = ident.size;
        let id = status.id;
        let geo = Geometry::new(size, status.chunk_size);
        let n = status.chunk_count;
        if n != geo.count() && !(size == 0 && n <= 1) {
            return Err(Error::Protocol {
                context: format!("upload {id}"),
                reason: format!(
                    "{n} chunks of {} bytes cannot hold {size} bytes",
                    geo.chunk_size
                ),
            }
            .into());
        }
        let done_on_server = matches!(
            status.state,
            UploadState::Completing | UploadState::Completed
        );
        let mut missing =
            vec![false; usize::try_from(n).map_err(|e| Error::Invalid(e.to_string()))?];
        if !done_on_server {
            for i in iter_ranges(&status.missing) {
                if let Some(m) = missing.get_mut(i as usize) {
                    *m = true;
                }
            }
        }
        let missing_bytes: u64 = (0..n)
            .filter(|&i| missing[i as usize])
            .filter_map(|i| geo.len(i))
            .sum();
        let resumed_bytes = size - missing_bytes.min(size);
        let mut acked: Vec<bool> = missing.iter().map(|m| !m).collect();

        // Continue the whole-file hash from the saved prefix when it can be trusted.
        let restored = journal
            .midstate
            .as_ref()
            .filter(|m| m.chunks <= n && verify.is_none())
            .and_then(|m| m.restore().map(|h| (m.chunks, h)));
        let (mut next_index, mut whole) = match restored {
            Some((k, h)) => (k, Some(h)),
            None => (0, Some(Sha256::new())),
        };
        if next_index == 0 {
            journal.midstate = None;
        }
        let mut gap: VecDeque<u64> = (0..next_index).filter(|&i| missing[i as usize]).collect();

        let progress = Arc::new(FileProgress::default());
        progress.acked.store(resumed_bytes, Ordering::Relaxed);
        self.reporter
            .started(&id, path, size, geo.chunk_size, resumed_bytes);
        if resumed_bytes > 0 || next_index > 0 {
            let gap_bytes: u64 = gap.iter().filter_map(|&i| geo.len(i)).sum();
            self.reporter.notice(
                path,
                &resume_notice(
                    &id,
                    size,
                    resumed_bytes,
                    geo.prefix_bytes(next_index),
                    gap_bytes,
                ),
            );
        }
        let mut sums = match self.store.sums_writer(&id) {
            Ok(w) => Some(w),
            Err(e) => {
                self.reporter.notice(path, &format!("warning: {e}"));
                None
            }
        };

        let mut read_bytes = 0u64;
        let mut reading: Option<JoinHandle<std::io::Result<ReadChunk>>> = None;
        let mut ready: Option<ReadChunk> = None;
        let mut sends = FuturesUnordered::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut journal_tick = tokio::time::interval(Duration::from_secs(1));
        journal_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut journal_dirty = false;

        loop {
            if reading.is_none() && ready.is_none() {
                let job = if let Some(i) = gap.pop_front() {
                    Some((i, None))
                } else if next_index < n {
                    let i = next_index;
                    next_index += 1;
                    Some((i, whole.take()))
                } else {
                    None
                };
                if let Some((i, w)) = job {
                    let file = file.clone();
                    let len = geo.len(i).unwrap_or(0);
                    let offset = geo.offset(i);
                    read_bytes += len;
                    reading = Some(tokio::task::spawn_blocking(move || {
                        read_chunk(&file, i, offset, len, w)
                    }));
                }
            }
            if reading.is_none() && ready.is_none() && sends.is_empty() {
                break;
            }

            let read_done = waits::read_done(reading.as_mut());
            let send_done = waits::send_done(&mut sends);
            let slot = waits::slot(&ready, &self.pool);
            tokio::select! {
                () = self.cancel.cancelled() => {
                    drop(sends);
                    self.save_progress(&mut journal, &acked, &geo);
                    let acked_now = progress.acked.load(Ordering::Relaxed);
                    self.reporter.paused(&id, path, acked_now, size, &self.opts.resume_hint);
                    return Err(self.interrupted().into());
                }
                permit = slot => {
                    if let (Some(permit), Some(c)) = (permit, ready.take()) {
                        sends.push(self.send_chunk(
                            path,
                            id,
                            c.index,
                            Bytes::from(c.data),
                            c.digest,
                            &progress,
                            permit,
                        ));
                    }
                }
                r = read_done => {
                    reading = None;
                    let chunk = r
                        .map_err(|e| Error::io(path, std::io::Error::other(e)))?
                        .map_err(|e| Error::io(path, e))?;
                    let i = chunk.index;
                    let mut chunk = chunk;
                    if let Some(w) = chunk.whole.take() {
                        journal.midstate = Some(Midstate::save(i + 1, &w));
                        journal_dirty = true;
                        whole = Some(w);
                    }
                    if let Some(known) = &verify {
                        if !missing[i as usize] && known.get(&i) != Some(&chunk.digest.0) {
                            drop(sends);
                            return Err(Stop::Stale { index: i });
                        }
                    }
                    if missing[i as usize] {
                        ready = Some(chunk);
                    }
                }
                r = send_done => {
                    match r {
                        Some(Ok((i, digest))) => {
                            acked[i as usize] = true;
                            journal_dirty = true;
                            if let Some(w) = sums.as_mut() {
                                if w.append(i, &digest.0).is_err() {
                                    sums = None;
                                }
                            }
                        }
                        Some(Err(e)) => {
                            drop(sends);
                            self.save_progress(&mut journal, &acked, &geo);
                            if matches!(e, Error::OutageTooLong { .. } | Error::Interrupted { .. }) {
                                let acked_now = progress.acked.load(Ordering::Relaxed);
                                self.reporter.paused(&id, path, acked_now, size, &self.opts.resume_hint);
                            }
                            return Err(e.into());
                        }
                        None => {}
                    }
                }
                _ = tick.tick() => self.reporter.tick(&id, size, &progress),
                _ = journal_tick.tick() => {
                    if journal_dirty {
                        self.save_progress(&mut journal, &acked, &geo);
                        journal_dirty = false;
                    }
                }
            }
        }
        self.save_progress(&mut journal, &acked, &geo);
        self.reporter.final_tick(&id, size, &progress);

        let Some(hasher) = whole else {
            return Err(Error::Protocol {
                context: format!("upload {id}"),
                reason: "internal: the whole-file hash was lost".into(),
            }
            .into());
        };
        let digest = Sha256Digest(hasher.finalize().into());
        // What was read must still be the file: else the server would publish bytes the
        // file does not have (anymore).
        self.check_unchanged(path, canon, ident)?;
        let verified = self.complete(path, &id, digest, None).await?;
        if verified != digest {
            return Err(Error::Mismatch {
                file: path.to_path_buf(),
                local: digest,
                server: Some(verified),
            }
            .into());
        }
        self.check_unchanged(path, canon, ident)?;
        let _ = self.store.remove(&id);
        let done = Done {
            format: 1,
            server: self.client.base().to_string(),
            id,
            file: ident.clone(),
            sha256: digest.to_hex(),
            relative_path: job.relative_path.clone(),
            completed_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        if let Err(e) = self.store.save_done(&done) {
            self.reporter.notice(path, &format!("warning: {e}"));
        }
        Ok(Completed {
            id,
            size,
            sha256: digest,
            url: self.client.content_url(&id),
            read_bytes,
            resumed_bytes,
            elapsed: Duration::ZERO,
            existing: false,
            relative_path: job.relative_path.clone(),
        })
    }

    fn save_progress(&self, journal: &mut Journal, acked: &[bool], geo: &Geometry) {
        journal.acked = to_ranges((0..acked.len() as u64).filter(|&i| acked[i as usize]));
        journal.acked_bytes = geo.bytes_of(&journal.acked);
        // The journal is a convenience (the server's status is the truth for what is
        // stored); failing to write it must not fail the upload.
        if let Err(e) = self.store.save(journal) {
            self.reporter
                .notice(&journal.file.path, &format!("warning: {e}"));
        }
    }

    /// Sends one chunk with retries, holding one of the run's chunk slots; returns its
    /// index and SHA-256 once the server acknowledged it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send_chunk(
        &self,
        path: &Path,
        id: UploadId,
        index: u64,
        data: Bytes,
        digest: Sha256Digest,
        progress: &Arc<FileProgress>,
        _slot: OwnedSemaphorePermit,
    ) -> Result<(u64, Sha256Digest)> {
        let len = data.len() as u64;
        let receipt = self
            .with_retry(path, Some(index), || {
                let counted = Arc::new(AtomicU64::new(0));
                let opts = SendOptions {
                    limiter: self.opts.limiter.clone(),
                    stall_timeout: self.opts.stall_timeout,
                    on_sent: {
                        let counted = counted.clone();
                        let progress = progress.clone();
                        Arc::new(move |n| {
                            counted.fetch_add(n, Ordering::Relaxed);
                            progress.in_flight.fetch_add(n, Ordering::Relaxed);
                        })
                    },
                };
                let data = data.clone();
                let progress = progress.clone();
                async move {
                    let r = self
                        .client
                        .put_chunk(&id, index, data, &digest, &opts)
                        .await;
                    progress
                        .in_flight
                        .fetch_sub(counted.load(Ordering::Relaxed), Ordering::Relaxed);
                    r
                }
            })
            .await?;
        if receipt.index != index || receipt.size != len || receipt.sha256 != digest {
            return Err(Error::Protocol {
                context: format!("PUT chunk {index}"),
                reason: format!(
                    "receipt for chunk {} of {} bytes with SHA-256 {} does not match what was sent",
                    receipt.index, receipt.size, receipt.sha256
                ),
            });
        }
        progress.acked.fetch_add(len, Ordering::Relaxed);
        Ok((index, digest))
    }

    /// Completes the upload (declaring its `size` when it was created without one) and
    /// returns the SHA-256 the server verified.
    pub(crate) async fn complete(
        &self,
        path: &Path,
        id: &UploadId,
        digest: Sha256Digest,
        size: Option<u64>,
    ) -> Result<Sha256Digest> {
        let mismatch = |server: Option<Sha256Digest>| Error::Mismatch {
            file: path.to_path_buf(),
            local: digest,
            server,
        };
        let outcome = self
            .with_retry(path, None, || self.client.complete(id, digest, size))
            .await;
        let status = match outcome {
            Ok(Completion::Done(st)) => st,
            Ok(Completion::Verifying) => self.wait_verified(path, id).await?,
            Err(Error::Api {
                status: 422,
                problem,
                ..
            }) => return Err(mismatch(problem.and_then(|p| p.actual_sha256))),
            Err(e) => return Err(e),
        };
        match (status.state, status.sha256) {
            (UploadState::Completed, Some(s)) => Ok(s),
            (UploadState::Failed, s) => Err(mismatch(s.filter(|s| *s != digest))),
            (state, _) => Err(Error::Protocol {
                context: format!("complete {id}"),
                reason: format!("state {state:?} without a verified SHA-256"),
            }),
        }
    }

    /// Polls the status after a 202 until verification is over.
    async fn wait_verified(&self, path: &Path, id: &UploadId) -> Result<UploadStatus> {
        let mut wait = Duration::from_millis(100);
        loop {
            let st = self
                .with_retry(path, None, || self.client.status(id))
                .await?;
            if matches!(st.state, UploadState::Completed | UploadState::Failed) {
                return Ok(st);
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.cancel.cancelled() => return Err(self.interrupted()),
            }
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }
}

impl Error {
    /// Control requests (create, status, complete) report their last error as is, not as a
    /// chunk failure.
    fn unless_control(self, chunk: Option<u64>) -> Error {
        match (self, chunk) {
            (Error::GaveUp { last, .. }, None) => *last,
            (e, _) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_chunk_hashes_chunk_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let geo = Geometry::new(10_000, 4096);
        let mut whole = Some(Sha256::new());
        for i in 0..geo.count() {
            let len = geo.len(i).unwrap();
            let c = read_chunk(&f, i, geo.offset(i), len, whole.take()).unwrap();
            let start = geo.offset(i) as usize;
            assert_eq!(c.data, &data[start..start + len as usize]);
            assert_eq!(c.digest.0, <[u8; 32]>::from(Sha256::digest(&c.data)));
            whole = c.whole;
        }
        assert_eq!(
            <[u8; 32]>::from(whole.unwrap().finalize()),
            <[u8; 32]>::from(Sha256::digest(&data))
        );
        // Reading past the end (the file shrank) is an error, not short data.
        assert!(read_chunk(&f, 3, 9_000, 4096, None).is_err());
    }

    #[test]
    fn resume_notice_adds_up() {
        const M: u64 = 1 << 20;
        let id = UploadId::new_random();
        // 256 MiB in 8 MiB chunks: 112 MiB on the server, the first 152 MiB (19 chunks)
        // hashed, of which 40 MiB (5 chunks in flight) are still missing.
        let text = resume_notice(&id, 256 * M, 112 * M, 152 * M, 40 * M);
        assert!(
            text.ends_with(
                "112.0 MiB of 256.0 MiB already on the server, 144.0 MiB to send; \
                 the first 152.0 MiB were hashed before, 144.0 MiB to read"
            ),
            "{text}"
        );
        let text = resume_notice(&id, 10 * M, 4 * M, 0, 0);
        assert!(text.ends_with("4.0 MiB of 10.0 MiB already on the server, 6.0 MiB to send"));
    }
}
