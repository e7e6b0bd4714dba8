//! Small files in one request: a file that fits one chunk, with nothing of it on the server
//! yet, is created, sent and completed by a single `POST /v1/uploads` whose body is the
//! file (the server checks it against the `Content-Digest` and verifies it as every
//! upload), instead of a create, a chunk and a complete. A retry after a lost answer
//! carries the same `Idempotency-Key`, so the server answers the upload the first attempt
//! stored rather than storing a second one.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use common::api::UploadState;
use common::geometry::choose_chunk_size;
use common::Sha256Digest;

use crate::error::{Error, Result};
use crate::journal::{Done, FileIdentity};
use crate::progress::{Completed, FileProgress};
use crate::upload::{Job, Uploader};

impl Uploader<'_> {
    /// Uploads `job`'s file in one request when that applies (see the module
    /// documentation); `None` when the file goes the chunked way: larger than a chunk, an
    /// upload of it to resume, a rate limit to keep (the request could not be paced), or a
    /// server that takes no bytes in its create (`one_request_max` in `GET /v1`).
    pub(crate) async fn upload_whole(
        &self,
        job: &Job,
        canon: &Path,
        file: &Arc<std::fs::File>,
        ident: &FileIdentity,
    ) -> Result<Option<Completed>> {
        let caps = self.capabilities;
        let size = ident.size;
        let Ok(chunk_size) = choose_chunk_size(
            &caps.chunk_size,
            caps.max_chunks,
            size,
            self.opts.chunk_size,
        ) else {
            return Ok(None);
        };
        if size > chunk_size
            || caps.one_request_max.is_none_or(|max| size > max)
            || self.opts.resume.is_some()
            || self.opts.limiter.is_some()
            || self
                .store
                .find_by_path(self.client.base(), canon)?
                .is_some()
        {
            return Ok(None);
        }
        let path = job.path.as_path();
        let data = {
            let file = file.clone();
            tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; size as usize];
                file.read_exact_at(&mut buf, 0).map(|()| buf)
            })
            .await
            .map_err(|e| Error::Invalid(e.to_string()))?
            .map_err(|e| Error::io(path, e))?
        };
        let digest = Sha256Digest(Sha256::digest(&data).into());
        // What was read must be the file as it is: else the server would publish bytes the
        // file does not have.
        self.check_unchanged(path, canon, ident)?;
        let data = Bytes::from(data);
        let filename = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let metadata: Vec<(&str, &str)> = job
            .relative_path
            .as_deref()
            .map(|rel| (common::relpath::RELATIVE_PATH_KEY, rel))
            .into_iter()
            .collect();
        let key = uuid::Uuid::new_v4().to_string();
        let sent = self
            .with_retry(path, None, || {
                self.client.create_whole(
                    data.clone(),
                    &digest,
                    filename.as_deref(),
                    &metadata,
                    &key,
                )
            })
            .await;
        let mismatch = |server| Error::Mismatch {
            file: path.to_path_buf(),
            local: digest,
            server,
        };
        let status = match sent {
            Ok(st) => st,
            Err(Error::Api {
                status: 422,
                problem,
                ..
            }) if problem.as_ref().is_some_and(|p| p.actual_sha256.is_some()) => {
                return Err(mismatch(problem.and_then(|p| p.actual_sha256)))
            }
            Err(e) => return Err(e),
        };
        let id = status.id;
        match (status.state, status.sha256) {
            (UploadState::Completed, Some(s)) if s == digest => {}
            (UploadState::Completed | UploadState::Failed, s) => return Err(mismatch(s)),
            (state, _) => {
                return Err(Error::Protocol {
                    context: format!("upload {id}"),
                    reason: format!("state {state:?} after an upload in one request"),
                })
            }
        }
        self.check_unchanged(path, canon, ident)?;
        let progress = FileProgress::default();
        progress.acked.store(size, Ordering::Relaxed);
        self.reporter.started(&id, path, size, chunk_size, 0);
        self.reporter.final_tick(&id, size, &progress);
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
        Ok(Some(Completed {
            id,
            size,
            sha256: digest,
            url: self.client.content_url(&id),
            read_bytes: size,
            resumed_bytes: 0,
            elapsed: Duration::ZERO,
            existing: false,
            relative_path: job.relative_path.clone(),
        }))
    }
}
