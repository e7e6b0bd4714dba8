//! Listing: the caller's uploads, newest first, a page at a time (`GET /v1/uploads`).
//!
//! A page reads the owner's listing index ([`crate::index`]) from the cursor on, with one
//! listing, and loads only the uploads it names (their records; the chunk receipts of the
//! unfinished ones). Cancelled and expired uploads are left out, as are uploads in other
//! states than the one asked for; entries whose upload is gone are removed. So that a
//! page with a filter that matches little never reads far, it stops after
//! [`SCAN_BUDGET`] entries and says where to go on: a page may hold fewer than asked
//! while a next one follows.

use common::api::{UploadState, UploadStatus};
use futures_util::{stream, StreamExt, TryStreamExt};
use time::OffsetDateTime;

use super::Uploads;
use crate::backend::Loaded;
use crate::error::{Error, Result};
use crate::index;
use crate::principal;
use crate::upload::Upload;

/// Most uploads a page holds.
pub const MAX_LIMIT: usize = 1000;
/// Uploads a page holds when the request says nothing.
pub const DEFAULT_LIMIT: usize = 100;
/// Most index entries one page examines.
pub const SCAN_BUDGET: usize = 1000;
/// Uploads loaded at once while a page is built.
const LOADS_AT_ONCE: usize = 16;

/// What a listing asks for.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only uploads in this state.
    pub state: Option<UploadState>,
    /// Most uploads on the page (1 to [`MAX_LIMIT`]); `None`: [`DEFAULT_LIMIT`].
    pub limit: Option<usize>,
    /// Where the previous page said to go on.
    pub cursor: Option<String>,
}

/// One page of a listing.
#[derive(Debug)]
pub struct Page {
    /// The uploads, newest first.
    pub uploads: Vec<UploadStatus>,
    /// The cursor of the next page; `None` on the last.
    pub next: Option<String>,
}

impl Uploads {
    /// One page of the caller's uploads (see the module documentation).
    pub async fn list(&self, query: ListQuery) -> Result<Page> {
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(Error::Invalid(format!(
                "limit {limit} is outside 1..={MAX_LIMIT}"
            )));
        }
        let owner = principal::current().and_then(|p| p.owner().map(str::to_string));
        let prefix = index::owner_prefix(owner.as_deref());
        let mut after = query
            .cursor
            .as_deref()
            .map(|c| index::after(&prefix, c))
            .transpose()?;
        let mut uploads = Vec::new();
        let mut examined = 0;
        loop {
            let want = (limit - uploads.len()).min(SCAN_BUDGET - examined);
            // One more than wanted, to know whether anything follows.
            let ask = (want + 1).min(MAX_LIMIT);
            let listed = self
                .backend
                .index_list(&prefix, after.as_deref(), ask)
                .await;
            let mut keys = self.registry.store_failure(listed)?;
            let more = keys.len() == ask;
            keys.truncate(want);
            let owner = owner.as_deref();
            let found: Vec<Option<UploadStatus>> = stream::iter(keys.clone())
                .map(|key| async move { self.listed(&key, owner, query.state).await })
                .buffered(LOADS_AT_ONCE)
                .try_collect()
                .await?;
            examined += keys.len();
            after = keys.last().cloned().or(after);
            uploads.extend(
                found
                    .into_iter()
                    .flatten()
                    .filter(|s| query.state.is_none_or(|want| s.state == want)),
            );
            if !more {
                return Ok(Page {
                    uploads,
                    next: None,
                });
            }
            if uploads.len() >= limit || examined >= SCAN_BUDGET {
                return Ok(Page {
                    uploads,
                    next: after.as_deref().map(index::cursor),
                });
            }
        }
    }

    /// The status of the upload an index entry names, if it is one to list. An entry whose
    /// upload is gone, once past the grace of a creation under way, is removed.
    async fn listed(
        &self,
        key: &str,
        owner: Option<&str>,
        want: Option<UploadState>,
    ) -> Result<Option<UploadStatus>> {
        let Some(entry) = index::parse(key) else {
            tracing::warn!(key, "skipping a listing entry that is not one");
            return Ok(None);
        };
        let loaded = match self.registry.cached(entry.id) {
            Some(up) => Ok(Some(up.record())),
            None => self.backend.load_record(entry.id).await,
        };
        let record = match self.registry.store_failure(loaded) {
            Ok(Some(r)) => r,
            Ok(None) => {
                let age = OffsetDateTime::now_utc() - entry.created_at;
                if age > index::ORPHAN_GRACE {
                    tracing::info!(id = %entry.id, "removing the listing entry of an upload that is gone");
                    self.backend.index_delete(key).await?;
                }
                return Ok(None);
            }
            Err(Error::Corrupt(why)) => {
                tracing::warn!(id = %entry.id, error = %why, "listing skips an unreadable upload");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if record.owner.as_deref() != owner {
            return Ok(None);
        }
        match record.state.visible() {
            Ok(state) if want.is_none_or(|w| w == state) => {}
            // Cancelled or expired, or not in the state asked for.
            _ => return Ok(None),
        }
        if record.state.is_open() {
            // Unfinished: its chunks say how far it got.
            return match self.get(entry.id).await {
                Ok(up) => self.status_of(&up).map(Some),
                Err(Error::NotFound | Error::Gone(_)) => Ok(None),
                Err(e) => Err(e),
            };
        }
        // Completed or failed: the record alone says everything the status shows.
        let up = Upload::from_loaded(Loaded {
            last_activity: record.updated_at,
            record,
            receipts: Vec::new(),
            prefix_hash: None,
            append_cursor: None,
        });
        match self.status_of(&up) {
            Ok(s) => Ok(Some(s)),
            Err(Error::Gone(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
