//! The rules tus 1.0 and the IETF resumable-upload draft give in-order uploads, as
//! commands: a creation (with or without its first bytes) and an append. Each command owns
//! its checks (offset, lengths said or implied, completed uploads, digests) and makes them
//! under the upload's appender lock, so no other request changes the upload between a
//! check and the write; the handlers only translate headers into a command and its outcome
//! or error into an answer. Concatenation (tus) is here too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use common::api::{CreateUpload, UploadState, UploadStatus};
use common::{Sha256Digest, UploadId};
use futures_util::Stream;

use super::append::Bounds;
use super::create::Shape;
use super::{Completion, Uploads};
use crate::checksum::BodyChecksum;
use crate::error::{Error, Result};
use crate::lifecycle::Step;
use crate::record::{Concat, StoredState, UploadMode};
use crate::upload::Upload;

/// Whose rules apply where tus and the IETF draft differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// tus 1.0.
    Tus,
    /// The IETF draft.
    Ietf,
}

/// An append as a request states it.
#[derive(Clone, Debug, Default)]
pub struct Append {
    /// Where the request says it starts (`Upload-Offset`).
    pub offset: u64,
    /// The body's length, when known before it is read (`Content-Length`).
    pub body_len: Option<u64>,
    /// Whether the request has a body at all (a non-zero length, or one of unknown length).
    pub has_body: bool,
    /// The upload's length, when the request says it (`Upload-Length`).
    pub length: Option<u64>,
    /// The request says it carries the last bytes (IETF `Upload-Complete: ?1`).
    pub last: bool,
    /// A checksum of this request's body (tus `Upload-Checksum`, IETF `Content-Digest`).
    pub checksum: Option<BodyChecksum>,
    /// The whole file's SHA-256, when the request says it (IETF `Repr-Digest`).
    pub file_sha256: Option<Sha256Digest>,
}

/// Where an upload stands after an append (or a creation).
#[derive(Debug)]
pub struct Appended {
    /// Bytes stored contiguously from the start.
    pub offset: u64,
    /// The upload's status; `completed` or `completing` once every byte is there.
    pub status: UploadStatus,
}

impl Appended {
    /// Whether the upload is complete (verified, or being verified).
    pub fn done(&self) -> bool {
        matches!(
            self.status.state,
            UploadState::Completed | UploadState::Completing
        )
    }
}

/// A new in-order upload, as a creation request states it.
#[derive(Clone, Debug, Default)]
pub struct NewStream {
    /// The length said (`Upload-Length`), if any.
    pub length: Option<u64>,
    /// The client says it does not know the length yet (tus `Upload-Defer-Length: 1`).
    pub defer_length: bool,
    /// A part of a later concatenation (tus `Upload-Concat: partial`).
    pub partial: bool,
    /// File name, as data.
    pub filename: Option<String>,
    /// Client metadata.
    pub metadata: BTreeMap<String, String>,
    /// The whole file's SHA-256, when said at creation (IETF `Repr-Digest`).
    pub sha256: Option<Sha256Digest>,
}

impl Uploads {
    /// Creates an in-order upload and appends the request's body, if any: tus creation
    /// (with upload) and IETF creation. `first` describes the body as an append at offset 0
    /// (its `last` is IETF's `Upload-Complete`); `created` is told the upload as soon as it
    /// exists, before the body is read (the IETF draft's `104`). An upload of length 0 is
    /// complete at once. A tus creation whose body fails is cancelled (its client never
    /// learnt where the upload is); an IETF one is kept, for the client to resume.
    pub async fn create_stream<S>(
        self: &Arc<Self>,
        dialect: Dialect,
        new: NewStream,
        first: Append,
        body: S,
        created: impl FnOnce(&UploadStatus),
    ) -> Result<Appended>
    where
        S: Stream<Item = Result<Bytes>> + Send + Unpin,
    {
        let implied = first.body_len.filter(|_| first.last);
        let length = match (dialect, new.length, implied) {
            (Dialect::Tus, Some(_), _) if new.defer_length => {
                return Err(Error::InconsistentLength(
                    "send Upload-Length or Upload-Defer-Length: 1, not both".into(),
                ))
            }
            (Dialect::Tus, None, _) if !new.defer_length => {
                return Err(Error::InconsistentLength(
                    "Upload-Length (or Upload-Defer-Length: 1) is required".into(),
                ))
            }
            // Upload-Complete: ?1 with Content-Length says the length too.
            (Dialect::Ietf, Some(a), Some(b)) if a != b => {
                return Err(Error::InconsistentLength(format!(
                    "Upload-Length is {a}, but the request completes the upload with {b} bytes"
                )))
            }
            (_, said, implied) => said.or(implied),
        };
        if new.partial && length.is_none() {
            return Err(Error::InconsistentLength(
                "a partial upload needs its Upload-Length at creation".into(),
            ));
        }
        if let Some((len, size)) = first.body_len.zip(length).filter(|(l, s)| l > s) {
            return Err(Error::InconsistentLength(format!(
                "the body has {len} bytes, more than the upload's length of {size}"
            )));
        }
        let req = CreateUpload {
            size: Some(length.unwrap_or(0)),
            chunk_size: None,
            sha256: new.sha256,
            filename: new.filename,
            metadata: Some(new.metadata),
            defer_length: false,
        };
        let shape = Shape {
            concat: new.partial.then_some(Concat::Partial),
            length_deferred: length.is_none(),
            ..Shape::stream()
        };
        let status = self.create_shaped(req, None, shape).await?.status;
        let id = status.id;
        created(&status);
        if length == Some(0) {
            let status = self.complete(id, None).await?.status();
            return Ok(Appended { offset: 0, status });
        }
        if !first.has_body && !first.last {
            return Ok(Appended { offset: 0, status });
        }
        let appended = self.append_stream(id, dialect, first, body).await;
        if appended.is_err() && dialect == Dialect::Tus {
            if let Err(e) = self.cancel(id).await {
                tracing::warn!(%id, error = %e, "could not cancel an upload whose creation failed");
            }
        }
        appended
    }

    /// Appends `body` at `req.offset` of an in-order upload (tus PATCH, IETF append),
    /// following `dialect`'s rules. The bytes are durable when this returns; the upload is
    /// completed (verified and published) when they reach its length, and a length the
    /// request says is declared once they are stored, so a refused request leaves it
    /// unknown.
    pub async fn append_stream<S>(
        self: &Arc<Self>,
        id: UploadId,
        dialect: Dialect,
        req: Append,
        body: S,
    ) -> Result<Appended>
    where
        S: Stream<Item = Result<Bytes>> + Send + Unpin,
    {
        let appended = self.append_checked(id, dialect, req, body).await;
        self.registry.settle(appended)
    }

    async fn append_checked<S>(
        self: &Arc<Self>,
        id: UploadId,
        dialect: Dialect,
        req: Append,
        body: S,
    ) -> Result<Appended>
    where
        S: Stream<Item = Result<Bytes>> + Send + Unpin,
    {
        let up = self.get(id).await?;
        // A final upload is made of its parts: it takes no appends of its own.
        if matches!(up.record().concat, Some(Concat::Final { .. })) {
            return Err(Error::FinalUpload);
        }
        let mut app = self.lock_appender(&up).await?;
        let record = up.record();
        match record.state {
            StoredState::Uploading => {}
            StoredState::Completed | StoredState::Completing => {
                return self.append_to_complete(&up, dialect, &req);
            }
            StoredState::Failed if dialect == Dialect::Ietf => {
                return Err(match (record.declared_sha256, record.sha256) {
                    (Some(expected), Some(actual)) => Error::Sha256Mismatch { expected, actual },
                    _ => Error::Gone("failed"),
                })
            }
            _ => {}
        }
        self.step(&up, Step::StoreBytes(UploadMode::Stream)).await?;
        let current = up.chunks().contiguous_bytes(&record);
        if req.offset != current {
            return Err(Error::OffsetMismatch {
                expected: current,
                got: req.offset,
            });
        }
        if let Some(len) = req
            .length
            .filter(|l| !record.length_deferred && *l != record.size)
        {
            return Err(Error::InconsistentLength(format!(
                "Upload-Length is {len}, but the upload's length is {}",
                record.size
            )));
        }
        // A length said now, or implied by the last request's body, for an upload created
        // without one: checked as a known length is, before anything is appended.
        let implied = req
            .body_len
            .filter(|_| req.last && dialect == Dialect::Ietf)
            .and_then(|l| current.checked_add(l));
        let declared = req.length.or(implied).filter(|_| record.length_deferred);
        if let Some(len) = declared {
            if len < current {
                return Err(Error::InconsistentLength(format!(
                    "Upload-Length is {len}, less than the {current} bytes stored"
                )));
            }
            if len > record.size {
                return Err(Error::TooLarge {
                    size: len,
                    max: record.size,
                });
            }
        }
        let size = declared.unwrap_or(record.size);
        let remaining = size - current;
        if let Some(len) = req.body_len {
            if record.length_deferred && declared.is_none() && len > remaining {
                // No length yet: the ceiling is the largest upload, not this one's length.
                return Err(Error::TooLarge {
                    size: current.saturating_add(len),
                    max: record.size,
                });
            }
            if len > remaining || (req.last && len != remaining) {
                return Err(Error::InconsistentLength(format!(
                    "the body has {len} bytes, but {remaining} remain of the upload's {size}"
                )));
            }
        }
        if let (Some(r), Some(d)) = (req.file_sha256, record.declared_sha256) {
            if r != d {
                return Err(Error::Invalid(format!(
                    "Repr-Digest says {r}, but {d} was declared at creation"
                )));
            }
        }
        // An upload without a length counts what it stores against its owner's quota: all
        // of it before it is written when the request says how much, else as it comes.
        let counted = self.ledger.counted(id);
        if record.length_deferred {
            if let Some(end) = declared.or(req.body_len.map(|l| current.saturating_add(l))) {
                self.ledger.resize(id, end.max(counted))?;
            }
        }
        let bounds = Bounds {
            start: current,
            len: req.body_len,
            checksum: req.checksum,
            declared,
        };
        let appended = if record.length_deferred {
            let body = self.ledger.meter(id, current, body);
            self.append_bytes(&up, &mut app, &record, bounds, body)
                .await
        } else {
            self.append_bytes(&up, &mut app, &record, bounds, body)
                .await
        };
        if record.length_deferred && (declared.is_none() || appended.is_err()) {
            // What it stored, no more; a length said is counted when it is declared.
            let stored = up.chunks().contiguous_bytes(&record);
            let _ = self.ledger.resize(id, stored);
        }
        let end = appended?;
        drop(app);
        // The length learnt (or, for a last body of unknown length, where it ended).
        let learnt = declared.or_else(|| (req.last && dialect == Dialect::Ietf).then_some(end));
        let completed = if record.length_deferred {
            match learnt {
                Some(len) => self.declare_length(id, len).await?,
                None => None,
            }
        } else if end == record.size {
            Some(self.complete(id, None).await?.status())
        } else {
            None
        };
        if let Some(status) = completed {
            // A whole-file digest that only the completing request carried: checked now.
            if let (Some(r), None, Some(actual)) =
                (req.file_sha256, record.declared_sha256, status.sha256)
            {
                if r != actual && status.state == UploadState::Completed {
                    self.cancel(id).await?;
                    return Err(Error::Sha256Mismatch {
                        expected: r,
                        actual,
                    });
                }
            }
            return Ok(Appended {
                offset: status.size,
                status,
            });
        }
        if req.last {
            return Err(Error::EndedEarly {
                offset: end,
                length: size,
            });
        }
        Ok(Appended {
            offset: end,
            status: self.status_of(&up)?,
        })
    }

    /// An append to an upload whose bytes are all there: an empty one at its end is
    /// answered with where it stands (a client making sure, or repeating the request that
    /// completed it); anything else is refused.
    fn append_to_complete(&self, up: &Upload, dialect: Dialect, req: &Append) -> Result<Appended> {
        let record = up.record();
        let status = self.status_of(up)?;
        let at_end = !req.has_body && req.offset == record.size;
        match dialect {
            Dialect::Tus if at_end => {}
            Dialect::Tus if req.offset != record.size => {
                return Err(Error::OffsetMismatch {
                    expected: record.size,
                    got: req.offset,
                })
            }
            Dialect::Ietf if at_end && req.last => {
                if let (Some(r), Some(s)) = (req.file_sha256, status.sha256) {
                    if r != s {
                        return Err(Error::Sha256Mismatch {
                            expected: r,
                            actual: s,
                        });
                    }
                }
            }
            _ => return Err(Error::UploadComplete { body: req.has_body }),
        }
        Ok(Appended {
            offset: record.size,
            status,
        })
    }

    /// Makes a final upload of completed parts, in order (tus `Upload-Concat: final`): its
    /// bytes are the parts' bytes, hashed and verified like any upload, and it is
    /// completed before this returns. Each part may be named once (so a short request
    /// cannot make the server copy a part many times over). The parts are then removed:
    /// their bytes live on in the final upload. `urls` are the parts as the request named
    /// them, echoed back as they came.
    pub async fn concatenate(
        self: &Arc<Self>,
        parts: Vec<UploadId>,
        urls: Vec<String>,
        filename: Option<String>,
        metadata: BTreeMap<String, String>,
    ) -> Result<Appended> {
        if parts.is_empty() {
            return Err(Error::Invalid(
                "a final upload needs at least one part".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        if let Some(dup) = parts.iter().find(|p| !seen.insert(**p)) {
            return Err(Error::Invalid(format!(
                "part {dup} is named twice; a final upload names each part once"
            )));
        }
        let mut records = Vec::with_capacity(parts.len());
        for id in &parts {
            let r = self.get(*id).await?.record();
            if r.concat != Some(Concat::Partial) {
                return Err(Error::Invalid(format!("{id} is not a partial upload")));
            }
            if r.state != StoredState::Completed {
                return Err(Error::Invalid(format!("part {id} is not complete")));
            }
            records.push(r);
        }
        let size = records
            .iter()
            .try_fold(0u64, |sum, r| sum.checked_add(r.size))
            .ok_or_else(|| {
                Error::Invalid("the parts are larger together than any upload".into())
            })?;
        let req = CreateUpload {
            size: Some(size),
            filename,
            metadata: Some(metadata),
            ..Default::default()
        };
        let shape = Shape {
            concat: Some(Concat::Final {
                parts: parts.clone(),
                urls,
            }),
            ..Shape::stream()
        };
        let created = self.create_shaped(req, None, shape).await?;
        let id = created.status.id;
        let up = self.get(id).await?;
        let mut offset = 0;
        for part in &records {
            if part.size == 0 {
                continue;
            }
            let mut bytes = self.backend.read_range(part, 0, part.size).await?;
            let mut app = self.lock_appender(&up).await?;
            let bounds = Bounds {
                start: offset,
                len: Some(part.size),
                checksum: None,
                declared: None,
            };
            offset = self
                .append_bytes(&up, &mut app, &up.record(), bounds, &mut bytes)
                .await?;
        }
        let status = self.complete(id, None).await?.status();
        for part in &parts {
            if let Err(e) = self.cancel(*part).await {
                tracing::warn!(id = %part, error = %e, "could not remove a concatenated part");
            }
        }
        Ok(Appended { offset, status })
    }

    /// Completes an in-order upload whose every byte is stored but which was never
    /// completed (a crash, or a store failure, between its last append and the
    /// verification): its client sees nothing left to send and would never ask again. Run
    /// at start-up and by the sweep, in the background.
    pub(super) fn finish_if_stored(self: &Arc<Self>, up: &Upload) {
        let record = up.record();
        let stored = up.chunks().contiguous_bytes(&record);
        if record.mode != UploadMode::Stream
            || record.state != StoredState::Uploading
            || record.length_deferred
            || stored != record.size
            || up.is_busy()
        {
            return;
        }
        let this = self.clone();
        let id = up.id;
        tokio::spawn(async move {
            tracing::info!(%id, "completing an upload whose bytes are all stored");
            match this.complete(id, None).await {
                Ok(Completion::Done(_) | Completion::Verifying(_)) => {}
                Err(e) => tracing::warn!(%id, error = %e, "could not complete a stored upload"),
            }
        });
    }
}
