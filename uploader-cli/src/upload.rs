//! Uploading one file: choose (or resume) the upload, read the file once in order while
//! hashing it, send the missing chunks with bounded parallelism and retries, then complete
//! and compare the server's SHA-256 with ours.
//!
//! # Memory
//! At most `parallel` chunks are in flight, plus one read ahead waiting for a free slot
//! (or being read): about `(parallel + 1) × chunk_size`, whatever the file size.
//!
//! # Resume
//! The journal ([`crate::journal`]) keeps the SHA-256 midstate after the last chunk read
//! in order. A resumed run asks the server which chunks are missing, starts reading right
//! after the saved prefix (continuing the hash), and sends only the missing chunks; missing
//! chunks inside the prefix (in flight when the previous run stopped) are re-read on their
//! own, without touching the whole-file hash.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::api::{CreateUpload, UploadState, UploadStatus};
use common::ranges::{iter_ranges, to_ranges};
use common::{Sha256Digest, UploadId};

use crate::client::{Client, Completion, SendOptions};
use crate::error::{Error, Result};
use crate::journal::{FileIdentity, Journal, Midstate, Store};
use crate::limit::RateLimiter;
use crate::progress::{Completed, FileProgress, Reporter};
use crate::retry::RetryPolicy;

/// How files are uploaded (from the command line).
#[derive(Clone, Debug)]
pub struct Options {
    /// Chunks in flight.
    pub parallel: usize,
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
    /// Extra arguments for the resume hint (e.g. `--state-dir X`).
    pub resume_hint_args: String,
}

/// Everything an upload needs, shared by reference.
pub struct Uploader<'a> {
    /// API client.
    pub client: &'a Client,
    /// Journal store.
    pub store: &'a Store,
    /// Output.
    pub reporter: &'a Reporter,
    /// Cancelled on Ctrl-C.
    pub cancel: &'a CancellationToken,
    /// Options.
    pub opts: &'a Options,
}

/// Number of chunks of an upload of `size` bytes.
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    if chunk_size == 0 {
        0
    } else {
        size.div_ceil(chunk_size)
    }
}

/// Length of chunk `index` (every chunk is `chunk_size` but the last).
pub fn chunk_len(size: u64, chunk_size: u64, index: u64) -> u64 {
    size.saturating_sub(index.saturating_mul(chunk_size))
        .min(chunk_size)
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

/// Quotes `s` for a POSIX shell when needed.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

impl Uploader<'_> {
    fn resume_hint(&self, path: &Path) -> String {
        let mut s = format!(
            "uploader upload {} --server {}",
            shell_quote(&path.to_string_lossy()),
            shell_quote(self.client.base())
        );
        if !self.opts.resume_hint_args.is_empty() {
            s.push(' ');
            s.push_str(&self.opts.resume_hint_args);
        }
        s
    }

    /// Runs `op` with the retry policy, reporting each retry. Cancellation interrupts the
    /// waits (the caller decides what an interruption means).
    async fn with_retry<T, F, Fut>(&self, file: &Path, chunk: Option<u64>, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut rng = fastrand::Rng::new();
        let mut attempt = 1u32;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt <= self.opts.retry.retries => {
                    let delay = self.opts.retry.delay(attempt, e.retry_after(), &mut rng);
                    self.reporter
                        .retry(file, chunk, attempt, &e.short_reason(), delay);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) if attempt > 1 => {
                    return Err(Error::GaveUp {
                        index: chunk.unwrap_or(0),
                        attempts: attempt,
                        last: Box::new(e),
                    }
                    .unless_control(chunk))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Uploads one file and returns what the server verified.
    pub async fn upload_file(&self, path: &Path) -> Result<Completed> {
        let started_at = Instant::now();
        let canon = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        let meta = std::fs::metadata(&canon).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::NotAFile(path.to_path_buf()));
        }
        // Open before talking to the server: an unreadable file fails without side effects.
        let file = Arc::new(std::fs::File::open(&canon).map_err(|e| Error::io(path, e))?);
        let ident = FileIdentity::of(&canon, &meta);
        let size = ident.size;

        let (mut journal, status) = self.choose_upload(path, &ident).await?;
        let id = status.id;
        let chunk_size = status.chunk_size;
        let n = status.chunk_count;
        if n != chunk_count(size, chunk_size) && !(size == 0 && n <= 1) {
            return Err(Error::Protocol {
                context: format!("upload {id}"),
                reason: format!("{n} chunks of {chunk_size} bytes cannot hold {size} bytes"),
            });
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
            .map(|i| chunk_len(size, chunk_size, i))
            .sum();
        let resumed_bytes = size - missing_bytes.min(size);
        let mut acked: Vec<bool> = missing.iter().map(|m| !m).collect();

        // Continue the whole-file hash from the saved prefix when it is usable.
        let (mut next_index, mut whole) = match journal
            .midstate
            .as_ref()
            .filter(|m| m.chunks <= n)
            .and_then(|m| m.restore().map(|h| (m.chunks, h)))
        {
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
            .started(&id, path, size, chunk_size, resumed_bytes);
        if resumed_bytes > 0 || next_index > 0 {
            self.reporter.notice(
                path,
                &format!(
                    "resuming upload {id}: {} of {} already on the server{}",
                    common::units::format_size(resumed_bytes),
                    common::units::format_size(size),
                    if next_index > 0 {
                        format!(
                            ", skipping {} already hashed",
                            common::units::format_size((next_index * chunk_size).min(size))
                        )
                    } else {
                        String::new()
                    }
                ),
            );
        }

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
                    let len = chunk_len(size, chunk_size, i);
                    let offset = i * chunk_size;
                    read_bytes += len;
                    reading = Some(tokio::task::spawn_blocking(move || {
                        read_chunk(&file, i, offset, len, w)
                    }));
                }
            }
            if sends.len() < self.opts.parallel {
                if let Some(c) = ready.take() {
                    sends.push(self.send_chunk(
                        path,
                        id,
                        c.index,
                        Bytes::from(c.data),
                        c.digest,
                        &progress,
                    ));
                    continue;
                }
            }
            if reading.is_none() && ready.is_none() && sends.is_empty() {
                break;
            }

            let read_done = async {
                match reading.as_mut() {
                    Some(h) => h.await,
                    None => std::future::pending().await,
                }
            };
            let send_done = async {
                if sends.is_empty() {
                    std::future::pending().await
                } else {
                    sends.next().await
                }
            };
            tokio::select! {
                () = self.cancel.cancelled() => {
                    drop(sends);
                    self.save_progress(&mut journal, &acked, size, chunk_size);
                    let resume = self.resume_hint(&canon);
                    let acked_now = progress.acked.load(Ordering::Relaxed);
                    self.reporter.paused(&id, path, acked_now, size, &resume);
                    return Err(Error::Interrupted { resume });
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
                    if missing[i as usize] {
                        ready = Some(chunk);
                    }
                }
                r = send_done => {
                    match r {
                        Some(Ok(i)) => {
                            acked[i as usize] = true;
                            journal_dirty = true;
                        }
                        Some(Err(e)) => {
                            drop(sends);
                            self.save_progress(&mut journal, &acked, size, chunk_size);
                            return Err(e);
                        }
                        None => {}
                    }
                }
                _ = tick.tick() => self.reporter.tick(&id, size, &progress),
                _ = journal_tick.tick() => {
                    if journal_dirty {
                        self.save_progress(&mut journal, &acked, size, chunk_size);
                        journal_dirty = false;
                    }
                }
            }
        }
        self.save_progress(&mut journal, &acked, size, chunk_size);
        self.reporter.final_tick(&id, size, &progress);

        let Some(hasher) = whole else {
            return Err(Error::Protocol {
                context: format!("upload {id}"),
                reason: "internal: the whole-file hash was lost".into(),
            });
        };
        let digest = Sha256Digest(hasher.finalize().into());
        let verified = tokio::select! {
            r = self.complete(path, &id, digest) => r?,
            () = self.cancel.cancelled() => {
                let resume = self.resume_hint(&canon);
                self.reporter.paused(&id, path, size, size, &resume);
                return Err(Error::Interrupted { resume });
            }
        };
        if verified != digest {
            return Err(Error::Mismatch {
                file: path.to_path_buf(),
                local: digest,
                server: Some(verified),
            });
        }
        let _ = self.store.remove(&id);
        Ok(Completed {
            id,
            size,
            sha256: digest,
            url: self.client.content_url(&id),
            read_bytes,
            resumed_bytes,
            elapsed: started_at.elapsed(),
        })
    }

    fn save_progress(&self, journal: &mut Journal, acked: &[bool], size: u64, chunk_size: u64) {
        journal.acked = to_ranges((0..acked.len() as u64).filter(|&i| acked[i as usize]));
        journal.acked_bytes = (0..acked.len() as u64)
            .filter(|&i| acked[i as usize])
            .map(|i| chunk_len(size, chunk_size, i))
            .sum();
        // The journal is a convenience (the server's status is the truth for what is
        // stored); failing to write it must not fail the upload.
        if let Err(e) = self.store.save(journal) {
            self.reporter
                .notice(&journal.file.path, &format!("warning: {e}"));
        }
    }

    /// Finds the upload to continue for this file, or creates one.
    async fn choose_upload(
        &self,
        path: &Path,
        ident: &FileIdentity,
    ) -> Result<(Journal, UploadStatus)> {
        let server = self.client.base();
        if let Some(id) = self.opts.resume {
            let status = self
                .with_retry(path, None, || self.client.status(&id))
                .await?;
            if status.size != ident.size {
                return Err(Error::Invalid(format!(
                    "upload {id} is {} bytes but {} is {} bytes",
                    status.size,
                    path.display(),
                    ident.size
                )));
            }
            if status.state == UploadState::Failed {
                return Err(Error::Invalid(format!(
                    "upload {id} failed verification; start a new one"
                )));
            }
            let journal = match self.store.find_by_id(&id)? {
                Some(j) if j.file == *ident && j.server == server => j,
                _ => Journal::new(server, id, ident.clone(), status.chunk_size),
            };
            self.store.save(&journal)?;
            return Ok((journal, status));
        }

        if let Some(j) = self.store.find_by_path(server, &ident.path)? {
            if j.file == *ident {
                match self
                    .with_retry(path, None, || self.client.status(&j.id))
                    .await
                {
                    Ok(st) if st.state != UploadState::Failed && st.size == ident.size => {
                        return Ok((j, st));
                    }
                    Ok(_)
                    | Err(Error::Api {
                        status: 404 | 410, ..
                    }) => {
                        self.reporter.notice(
                            path,
                            &format!(
                                "the paused upload {} of {} is gone from the server (expired or cancelled); starting a new upload",
                                j.id,
                                path.display()
                            ),
                        );
                        self.store.remove(&j.id)?;
                    }
                    Err(e) => return Err(e),
                }
            } else {
                self.reporter.notice(
                    path,
                    &format!(
                        "{} changed since upload {} was paused (size or modification time differ); starting a new upload",
                        path.display(),
                        j.id
                    ),
                );
                // The old upload can never be completed with this file: free its space.
                let _ = self.client.cancel(&j.id).await;
                self.store.remove(&j.id)?;
            }
        }

        let body = CreateUpload {
            size: ident.size,
            chunk_size: self.opts.chunk_size,
            sha256: None,
            filename: path.file_name().map(|n| n.to_string_lossy().into_owned()),
            metadata: None,
        };
        let key = uuid::Uuid::new_v4().to_string();
        let status = self
            .with_retry(path, None, || self.client.create(&body, &key))
            .await?;
        let journal = Journal::new(server, status.id, ident.clone(), status.chunk_size);
        self.store.save(&journal)?;
        Ok((journal, status))
    }

    /// Sends one chunk with retries; returns its index once the server acknowledged it.
    async fn send_chunk(
        &self,
        path: &Path,
        id: UploadId,
        index: u64,
        data: Bytes,
        digest: Sha256Digest,
        progress: &Arc<FileProgress>,
    ) -> Result<u64> {
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
        Ok(index)
    }

    /// Completes the upload and returns the SHA-256 the server verified.
    async fn complete(
        &self,
        path: &Path,
        id: &UploadId,
        digest: Sha256Digest,
    ) -> Result<Sha256Digest> {
        let mismatch = |server: Option<Sha256Digest>| Error::Mismatch {
            file: path.to_path_buf(),
            local: digest,
            server,
        };
        let outcome = self
            .with_retry(path, None, || self.client.complete(id, digest))
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
            tokio::time::sleep(wait).await;
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

/// Expands the command line's paths: files as given, directories into the regular files
/// under them (recursively, sorted; symbolic links to directories are not followed).
pub fn expand_paths(paths: &[PathBuf]) -> Vec<Result<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => walk(p, &mut out),
            Ok(_) => out.push(Ok(p.clone())),
            Err(e) => out.push(Err(Error::io(p, e))),
        }
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<Result<PathBuf>>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            out.push(Err(Error::io(dir, e)));
            return;
        }
    };
    let mut paths: Vec<(PathBuf, bool)> = entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            (e.path(), is_dir)
        })
        .collect();
    paths.sort();
    for (p, is_dir) in paths {
        if is_dir {
            walk(&p, out);
        } else if std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false) {
            out.push(Ok(p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_plan_edges() {
        const C: u64 = 1 << 20;
        assert_eq!(chunk_count(0, C), 0);
        assert_eq!(chunk_count(1, C), 1);
        assert_eq!(chunk_count(3 * C, C), 3);
        assert_eq!(chunk_count(3 * C + 1, C), 4);
        assert_eq!(chunk_len(3 * C, C, 2), C);
        assert_eq!(chunk_len(3 * C + 1, C, 2), C);
        assert_eq!(chunk_len(3 * C + 1, C, 3), 1);
        assert_eq!(chunk_len(3 * C + 1, C, 4), 0);
        assert_eq!(chunk_len(0, C, 0), 0);
        let total: u64 = (0..chunk_count(5 * C + 7, C))
            .map(|i| chunk_len(5 * C + 7, C, i))
            .sum();
        assert_eq!(total, 5 * C + 7);
    }

    #[test]
    fn read_chunk_hashes_chunk_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let mut whole = Some(Sha256::new());
        for i in 0..3u64 {
            let len = chunk_len(10_000, 4096, i);
            let c = read_chunk(&f, i, i * 4096, len, whole.take()).unwrap();
            let start = (i * 4096) as usize;
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
    fn quoting() {
        assert_eq!(shell_quote("/tmp/a.bin"), "/tmp/a.bin");
        assert_eq!(shell_quote("/tmp/my file"), "'/tmp/my file'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn expands_directories_sorted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("b/c/z"), b"1").unwrap();
        std::fs::write(dir.path().join("b/a"), b"1").unwrap();
        std::fs::write(dir.path().join("top"), b"1").unwrap();
        let got: Vec<PathBuf> = expand_paths(&[dir.path().join("b"), dir.path().join("top")])
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(
            got,
            vec![
                dir.path().join("b/a"),
                dir.path().join("b/c/z"),
                dir.path().join("top")
            ]
        );
        let missing = expand_paths(&[dir.path().join("nope")]);
        assert!(matches!(missing[0], Err(Error::Io { .. })));
    }
}
