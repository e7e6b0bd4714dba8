//! Standard input (`-`), or another pipe, as one upload: its size is known only when it
//! ends, so the upload is created without one (`defer_length`) and the size is declared at
//! completion with the SHA-256, as tus's deferred length does.
//!
//! The stream is read once, in order, a chunk at a time, hashing as it goes; each chunk is
//! held (once) until the server acknowledged it, so that a failed send is retried with the
//! same bytes. At most `-j` chunks are in flight plus the one being read: memory stays
//! about `(parallel + 1) × chunk_size` however long the stream.
//!
//! Resumable while the process lives (retries, a server that is away for up to
//! `--give-up-after`), but not across runs: what was read from a pipe cannot be read again.
//! An upload that cannot finish is therefore cancelled on the server, and the user is told
//! to run the command again with the data.
//!
//! A stream that ends within its first chunk goes up in one request, as a small file does.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use common::api::{CreateUpload, UploadState};
use common::units::format_size;
use common::{Sha256Digest, UploadId};

use crate::error::{Error, Result};
use crate::progress::{Completed, FileProgress, UNKNOWN_SIZE};
use crate::upload::Uploader;
use crate::waits;

/// Why a stream's upload cannot be resumed, added to its errors.
pub const NOT_RESUMABLE: &str =
    "what was read from standard input cannot be read again, so this upload cannot be \
     resumed: run the command again with the data";

/// Whether `path` names a stream rather than a file: `-` (standard input), or one of this
/// process's descriptors that is a pipe, a socket or a terminal (`/dev/stdin` when it is
/// not redirected from a file, `/dev/fd/63` from the shell's `<(cmd)`). A named pipe
/// elsewhere stays "not a regular file": nobody asked to read it as a stream.
pub fn is_stream(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    if path.as_os_str() == "-" {
        return true;
    }
    let own = ["/dev/stdin", "/dev/fd/", "/proc/self/fd/"]
        .iter()
        .any(|p| path.to_str().is_some_and(|s| s.starts_with(p)));
    own && std::fs::metadata(path).is_ok_and(|m| {
        let t = m.file_type();
        t.is_fifo() || t.is_socket() || t.is_char_device()
    })
}

/// Opens the stream `path` names (`-` is standard input).
pub fn open(path: &Path) -> Result<Box<dyn Read + Send>> {
    if path.as_os_str() == "-" {
        Ok(Box::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(Box::new(f))
    }
}

/// The stream and its whole-content hash, moved to a blocking thread for each read.
struct Source {
    input: Box<dyn Read + Send>,
    whole: Sha256,
    /// Bytes read so far.
    total: u64,
    /// The stream has ended.
    ended: bool,
}

/// One chunk read from the stream.
struct Piece {
    index: u64,
    data: Vec<u8>,
    digest: Sha256Digest,
}

impl Source {
    /// Reads the next chunk of `len` bytes (fewer at the end of the stream; `None` once it
    /// ended) and hashes it.
    fn read(mut self, index: u64, len: u64) -> (Self, std::io::Result<Option<Piece>>) {
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(usize::MAX));
        let got = (&mut self.input).take(len).read_to_end(&mut data);
        let piece = got.map(|n| {
            if (n as u64) < len {
                self.ended = true;
            }
            (n > 0).then(|| {
                self.whole.update(&data);
                self.total += n as u64;
                Piece {
                    index,
                    digest: Sha256Digest(Sha256::digest(&data).into()),
                    data,
                }
            })
        });
        (self, piece)
    }
}

/// Reads the next chunk on a blocking thread.
fn read_next(
    source: Source,
    index: u64,
    len: u64,
) -> JoinHandle<(Source, std::io::Result<Option<Piece>>)> {
    tokio::task::spawn_blocking(move || source.read(index, len))
}

impl Uploader<'_> {
    /// Uploads the stream `input` (named `path` on the command line) as `name`.
    pub async fn upload_stream(
        &self,
        path: &Path,
        name: &str,
        input: Box<dyn Read + Send>,
    ) -> Result<Completed> {
        let started_at = Instant::now();
        let caps = self.capabilities;
        let chunk_size = self.opts.chunk_size.unwrap_or(caps.chunk_size.default);
        let source = Source {
            input,
            whole: Sha256::new(),
            total: 0,
            ended: false,
        };
        let (source, first) = self
            .read_awaited(path, read_next(source, 0, chunk_size))
            .await?;
        let small = source.ended && caps.one_request_max.is_some_and(|m| source.total <= m);
        let mut done = if small && self.opts.limiter.is_none() {
            self.stream_in_one_request(path, name, source, first)
                .await?
        } else {
            self.stream_in_chunks(path, name, chunk_size, source, first)
                .await?
        };
        done.elapsed = started_at.elapsed();
        Ok(done)
    }

    async fn read_awaited(
        &self,
        path: &Path,
        reading: JoinHandle<(Source, std::io::Result<Option<Piece>>)>,
    ) -> Result<(Source, Option<Piece>)> {
        let (source, piece) = tokio::select! {
            r = reading => r.map_err(|e| Error::io(path, std::io::Error::other(e)))?,
            () = self.cancel.cancelled() => return Err(self.interrupted()),
        };
        Ok((source, piece.map_err(|e| Error::io(path, e))?))
    }

    /// All of a short stream in one `POST /v1/uploads`.
    async fn stream_in_one_request(
        &self,
        path: &Path,
        name: &str,
        source: Source,
        first: Option<Piece>,
    ) -> Result<Completed> {
        let digest = Sha256Digest(source.whole.finalize().into());
        let size = source.total;
        let data = Bytes::from(first.map(|p| p.data).unwrap_or_default());
        let key = uuid::Uuid::new_v4().to_string();
        let status = self
            .with_retry(path, None, || {
                self.client
                    .create_whole(data.clone(), &digest, Some(name), &[], &key)
            })
            .await?;
        match (status.state, status.sha256) {
            (UploadState::Completed, Some(s)) if s == digest => {}
            (_, server) => {
                return Err(Error::Mismatch {
                    file: path.to_path_buf(),
                    local: digest,
                    server,
                })
            }
        }
        let progress = FileProgress::default();
        progress.acked.store(size, Ordering::Relaxed);
        self.reporter
            .started(&status.id, path, size, status.chunk_size, 0);
        self.reporter.final_tick(&status.id, size, &progress);
        Ok(self.completed(status.id, size, digest))
    }

    /// A longer stream: created without a size, sent a chunk at a time, completed with its
    /// size. An upload that cannot finish is cancelled (nothing could resume it).
    async fn stream_in_chunks(
        &self,
        path: &Path,
        name: &str,
        chunk_size: u64,
        source: Source,
        first: Option<Piece>,
    ) -> Result<Completed> {
        let create = CreateUpload {
            defer_length: true,
            chunk_size: Some(chunk_size),
            filename: Some(name.to_string()),
            ..CreateUpload::default()
        };
        let key = uuid::Uuid::new_v4().to_string();
        let status = self
            .with_retry(path, None, || self.client.create(&create, &key))
            .await?;
        let id = status.id;
        if status.chunk_size != chunk_size {
            return Err(Error::Protocol {
                context: format!("upload {id}"),
                reason: format!(
                    "chunks of {} bytes, not the {chunk_size} asked for",
                    status.chunk_size
                ),
            });
        }
        // The most chunks the upload can take (its size is a ceiling while deferred).
        let max_chunks = status.chunk_count;
        let sent = self
            .send_stream(path, id, chunk_size, max_chunks, source, first)
            .await;
        let (size, digest) = match sent {
            Ok(s) => s,
            Err(e) => {
                self.abandon(id).await;
                return Err(e);
            }
        };
        match self.complete(path, &id, digest, Some(size)).await {
            Ok(verified) if verified == digest => Ok(self.completed(id, size, digest)),
            Ok(verified) => Err(Error::Mismatch {
                file: path.to_path_buf(),
                local: digest,
                server: Some(verified),
            }),
            Err(e) => {
                if !matches!(e, Error::Mismatch { .. }) {
                    self.abandon(id).await;
                }
                Err(e)
            }
        }
    }

    /// Reads the stream to its end and sends its chunks (`first` already read); returns
    /// its size and SHA-256 once every chunk is acknowledged.
    async fn send_stream(
        &self,
        path: &Path,
        id: UploadId,
        chunk_size: u64,
        max_chunks: u64,
        source: Source,
        first: Option<Piece>,
    ) -> Result<(u64, Sha256Digest)> {
        let progress = Arc::new(FileProgress::default());
        self.reporter
            .started(&id, path, UNKNOWN_SIZE, chunk_size, 0);
        let mut next_index = u64::from(first.is_some());
        let mut ready = first;
        let mut source = Some(source);
        let mut reading = None;
        let mut sends = FuturesUnordered::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            if reading.is_none() && ready.is_none() {
                if let Some(s) = source.take_if(|s| !s.ended) {
                    if next_index >= max_chunks {
                        return Err(Error::Invalid(format!(
                            "{}: the stream is longer than {} chunks of {} can hold; \
                             use a larger --chunk-size",
                            path.display(),
                            max_chunks,
                            format_size(chunk_size)
                        )));
                    }
                    reading = Some(read_next(s, next_index, chunk_size));
                    next_index += 1;
                }
            }
            if reading.is_none() && ready.is_none() && sends.is_empty() {
                break;
            }
            let read_done = waits::read_done(reading.as_mut());
            let send_done = waits::send_done(&mut sends);
            let slot = waits::slot(&ready, &self.pool);
            tokio::select! {
                () = self.cancel.cancelled() => return Err(self.interrupted()),
                permit = slot => {
                    if let (Some(permit), Some(p)) = (permit, ready.take()) {
                        sends.push(self.send_chunk(
                            path,
                            id,
                            p.index,
                            Bytes::from(p.data),
                            p.digest,
                            &progress,
                            permit,
                        ));
                    }
                }
                r = read_done => {
                    reading = None;
                    let (s, piece) = r.map_err(|e| Error::io(path, std::io::Error::other(e)))?;
                    source = Some(s);
                    ready = piece.map_err(|e| Error::io(path, e))?;
                }
                r = send_done => {
                    if let Some(Err(e)) = r {
                        return Err(e);
                    }
                }
                _ = tick.tick() => self.reporter.tick(&id, UNKNOWN_SIZE, &progress),
            }
        }
        self.reporter.final_tick(&id, UNKNOWN_SIZE, &progress);
        let source = source.ok_or_else(|| Error::Protocol {
            context: format!("upload {id}"),
            reason: "internal: the stream was lost".into(),
        })?;
        Ok((source.total, Sha256Digest(source.whole.finalize().into())))
    }

    /// Cancels an upload no run can finish (best effort, briefly: the server may be the
    /// reason it failed).
    async fn abandon(&self, id: UploadId) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.cancel(&id)).await;
    }

    fn completed(&self, id: UploadId, size: u64, sha256: Sha256Digest) -> Completed {
        Completed {
            id,
            size,
            sha256,
            url: self.client.content_url(&id),
            read_bytes: size,
            resumed_bytes: 0,
            elapsed: Duration::ZERO,
            existing: false,
            relative_path: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_chunks_and_hashes_the_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut s = Source {
            input: Box::new(std::io::Cursor::new(data.clone())),
            whole: Sha256::new(),
            total: 0,
            ended: false,
        };
        let mut back = Vec::new();
        let mut index = 0;
        while !s.ended {
            let (next, piece) = s.read(index, 4096);
            s = next;
            if let Some(p) = piece.unwrap() {
                assert_eq!(p.index, index);
                assert_eq!(p.digest.0, <[u8; 32]>::from(Sha256::digest(&p.data)));
                assert!(p.data.len() == 4096 || s.ended);
                back.extend_from_slice(&p.data);
            }
            index += 1;
        }
        assert_eq!(back, data);
        assert_eq!(s.total, 10_000);
        assert_eq!(
            <[u8; 32]>::from(s.whole.finalize()),
            <[u8; 32]>::from(Sha256::digest(&data))
        );
    }

    #[test]
    fn a_stream_of_whole_chunks_ends_with_an_empty_read() {
        let mut s = Source {
            input: Box::new(std::io::Cursor::new(vec![7u8; 8192])),
            whole: Sha256::new(),
            total: 0,
            ended: false,
        };
        for i in 0..2 {
            let (next, piece) = s.read(i, 4096);
            s = next;
            assert_eq!(piece.unwrap().unwrap().data.len(), 4096);
            assert!(!s.ended);
        }
        let (s, piece) = s.read(2, 4096);
        assert!(piece.unwrap().is_none());
        assert!(s.ended);
        assert!(is_stream(Path::new("-")));
        assert!(!is_stream(Path::new("/")));
    }
}
