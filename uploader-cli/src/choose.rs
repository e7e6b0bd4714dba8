//! Which upload a file continues, before any byte is sent: one this machine completed
//! already (reported, not sent again, unless `--force`), the paused one its journal names
//! (its midstate trusted only if the file's identity is unchanged; otherwise its chunks
//! are checked against what was sent), one named with `--resume`, or a new one.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::api::{CreateUpload, UploadState, UploadStatus};
use common::geometry::{choose_chunk_size, GeometryError};
use common::units::format_size;
use common::Sha256Digest;

use crate::error::{Error, Result};
use crate::journal::{FileIdentity, Journal};
use crate::progress::Completed;
use crate::upload::{Job, Uploader};

/// What `choose_upload` settled on.
pub(crate) struct Chosen {
    pub journal: Journal,
    pub status: UploadStatus,
    /// Chunk sums to check the server's chunks against (the file changed since the journal
    /// was written), or `None` to trust the midstate.
    pub verify: Option<HashMap<u64, [u8; 32]>>,
}

impl Uploader<'_> {
    /// A chunk size the server refuses is a usage error, found before anything is created.
    pub(crate) fn check_chunk_size(&self, path: &Path, size: u64) -> Result<()> {
        let caps = self.capabilities;
        if self.opts.resume.is_some() {
            return Ok(());
        }
        choose_chunk_size(&caps.chunk_size, caps.max_chunks, size, self.opts.chunk_size)
            .map(|_| ())
            .map_err(|e| {
                Error::Usage(match e {
                    GeometryError::OutOfBounds { min, max, .. } => format!(
                        "--chunk-size {}: the server accepts chunk sizes from {} to {}",
                        format_size(self.opts.chunk_size.unwrap_or(0)),
                        format_size(min),
                        format_size(max)
                    ),
                    GeometryError::TooManyChunks { count, max, .. } => {
                        format!(
                            "--chunk-size {} cuts {} into {count} chunks, more than the server's maximum of {max}; choose a larger --chunk-size",
                            format_size(self.opts.chunk_size.unwrap_or(0)),
                            path.display()
                        )
                    }
                })
            })
    }

    /// The upload this machine already made of this very file, if the server still has it
    /// (and `--force` is not given).
    pub(crate) async fn already_uploaded(
        &self,
        path: &Path,
        ident: &FileIdentity,
    ) -> Result<Option<Completed>> {
        if self.opts.force || self.opts.resume.is_some() {
            return Ok(None);
        }
        let Some(done) = self.store.find_done(self.client.base(), &ident.path) else {
            return Ok(None);
        };
        if done.file != *ident {
            return Ok(None);
        }
        match self
            .with_retry(path, None, || self.client.status(&done.id))
            .await
        {
            Ok(st)
                if st.state == UploadState::Completed
                    && st.sha256.map(|s| s.to_hex()) == Some(done.sha256.clone()) =>
            {
                Ok(Some(Completed {
                    id: done.id,
                    size: st.size,
                    sha256: st.sha256.unwrap_or(Sha256Digest([0; 32])),
                    url: self.client.content_url(&done.id),
                    read_bytes: 0,
                    resumed_bytes: st.size,
                    elapsed: Duration::ZERO,
                    existing: true,
                    relative_path: done.relative_path,
                }))
            }
            Ok(_)
            | Err(Error::Api {
                status: 404 | 410, ..
            }) => {
                self.store.remove_done(self.client.base(), &ident.path);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Fails if the file's identity differs from `ident` (what it was when reading began).
    pub(crate) fn check_unchanged(
        &self,
        path: &Path,
        canon: &Path,
        ident: &FileIdentity,
    ) -> Result<()> {
        let meta = std::fs::metadata(canon).map_err(|e| Error::io(path, e))?;
        match FileIdentity::of(canon, &meta).differences(ident) {
            None => Ok(()),
            Some(what) => Err(Error::ChangedWhileUploading {
                file: path.to_path_buf(),
                what,
            }),
        }
    }

    /// Finds the upload to continue for this file, or creates one (`fresh`: create).
    pub(crate) async fn choose_upload(
        &self,
        job: &Job,
        ident: &FileIdentity,
        fresh: bool,
    ) -> Result<Chosen> {
        let path = job.path.as_path();
        let server = self.client.base();
        if let Some(id) = self.opts.resume.filter(|_| !fresh) {
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
            return Ok(Chosen {
                journal,
                status,
                verify: None,
            });
        }

        if let Some(j) = self
            .store
            .find_by_path(server, &ident.path)?
            .filter(|_| !fresh)
        {
            if j.file.size == ident.size {
                match self
                    .with_retry(path, None, || self.client.status(&j.id))
                    .await
                {
                    Ok(st) if st.state != UploadState::Failed && st.size == ident.size => {
                        let verify = j.file.differences(ident).map(|what| {
                            self.reporter.notice(
                                path,
                                &format!(
                                    "{} changed since upload {} was paused ({what} differ); reading it again to check what was sent",
                                    path.display(),
                                    j.id
                                ),
                            );
                            self.store.sums(&j.id)
                        });
                        // The journal keeps the identity it had until this run has
                        // checked every chunk: a run stopped halfway checks again.
                        let journal = j;
                        return Ok(Chosen {
                            journal,
                            status: st,
                            verify,
                        });
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
                        "{} changed since upload {} was paused (its size differs); starting a new upload",
                        path.display(),
                        j.id
                    ),
                );
                // The old upload can never be completed with this file: free its space.
                let _ = self.client.cancel(&j.id).await;
                self.store.remove(&j.id)?;
            }
        }

        let metadata = job.relative_path.as_ref().map(|rel| {
            std::iter::once((common::relpath::RELATIVE_PATH_KEY.to_string(), rel.clone())).collect()
        });
        let body = CreateUpload {
            size: Some(ident.size),
            chunk_size: self.opts.chunk_size,
            sha256: None,
            filename: path.file_name().map(|n| n.to_string_lossy().into_owned()),
            metadata,
            defer_length: false,
        };
        let key = uuid::Uuid::new_v4().to_string();
        let status = self
            .with_retry(path, None, || self.client.create(&body, &key))
            .await?;
        let mut journal = Journal::new(server, status.id, ident.clone(), status.chunk_size);
        journal.relative_path = job.relative_path.clone();
        self.store.save(&journal)?;
        Ok(Chosen {
            journal,
            status,
            verify: None,
        })
    }
}
