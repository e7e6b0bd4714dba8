//! Per-owner limits on open uploads: how many an owner may have at once, and how many
//! bytes they may reserve (the declared sizes of their open uploads), so one owner cannot
//! take a server's storage or bookkeeping for themselves.
//!
//! An upload is open from its creation until it completes, fails, is cancelled or
//! expires. The ledger counts the open uploads this process knows of: it is built from
//! storage when the service starts, rebuilt by every sweep, and kept current in between
//! by the creations and state changes of this process. With several processes on one
//! bucket, the uploads another process created since the last sweep are not yet counted
//! here, so an owner can briefly exceed a limit by what they create on other instances
//! within one sweep interval.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use common::UploadId;

use crate::error::{Error, Result};

/// The limits; zero means "no limit".
#[derive(Clone, Copy, Debug, Default)]
pub struct QuotaLimits {
    /// Open uploads an owner may have at once.
    pub max_open_uploads: u64,
    /// Bytes an owner's open uploads may reserve together.
    pub max_reserved_bytes: u64,
}

/// The open uploads of one owner (`None`: anonymous uploads, counted together).
type Owner = Option<String>;

/// One open upload as counted.
#[derive(Clone, Copy, Debug)]
struct Entry {
    size: u64,
    /// When its record was known to be stored (`None` while its creation is still
    /// writing it). A rebuild keeps what was stored after the rebuild's scan began, and
    /// what is still being created: the scan may have missed either.
    since: Option<Instant>,
}

#[derive(Default)]
struct State {
    open: HashMap<Owner, HashMap<UploadId, Entry>>,
    /// Uploads this process closed, and when; a rebuild begun earlier must not count them.
    closed: HashMap<UploadId, Instant>,
}

/// The count of open uploads per owner.
pub struct Ledger {
    limits: QuotaLimits,
    state: Mutex<State>,
}

impl Ledger {
    /// An empty ledger enforcing `limits`.
    pub fn new(limits: QuotaLimits) -> Self {
        Self {
            limits,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new upload of `size` bytes for `owner`, or refuses it when it would take
    /// the owner over a limit. Checking and counting are one step, so racing creations
    /// cannot both squeeze under a limit.
    pub fn reserve(&self, owner: Option<&str>, id: UploadId, size: u64) -> Result<()> {
        let limits = self.limits;
        let mut state = self.lock();
        let mine = state.open.entry(owner.map(str::to_string)).or_default();
        if limits.max_open_uploads > 0 && mine.len() as u64 >= limits.max_open_uploads {
            return Err(Error::TooManyOpenUploads {
                max: limits.max_open_uploads,
            });
        }
        let reserved: u64 = mine.values().map(|e| e.size).sum();
        if limits.max_reserved_bytes > 0
            && reserved.saturating_add(size) > limits.max_reserved_bytes
        {
            return Err(Error::QuotaExceeded {
                reserved,
                size,
                quota: limits.max_reserved_bytes,
            });
        }
        mine.insert(id, Entry { size, since: None });
        Ok(())
    }

    /// Says that the record of an upload counted by [`Self::reserve`] is stored: from now
    /// on a storage scan finds it.
    pub fn stored(&self, id: UploadId) {
        let now = Instant::now();
        let mut state = self.lock();
        for uploads in state.open.values_mut() {
            if let Some(e) = uploads.get_mut(&id) {
                e.since = Some(now);
            }
        }
    }

    /// Stops counting an upload (it completed, failed, was cancelled or expired, or its
    /// creation failed). Releasing twice is harmless.
    pub fn release(&self, id: UploadId) {
        let mut state = self.lock();
        for uploads in state.open.values_mut() {
            uploads.remove(&id);
        }
        state.open.retain(|_, uploads| !uploads.is_empty());
        state.closed.insert(id, Instant::now());
    }

    /// Counts an upload again, as `size` bytes, without checking limits: an upload
    /// released by a change that was then undone (an expiry that found a chunk write begun
    /// meanwhile), or one whose deferred length was just declared (its bytes are stored
    /// already, so refusing them now would help nobody).
    pub fn recount(&self, owner: Option<&str>, id: UploadId, size: u64) {
        let mut state = self.lock();
        state.closed.remove(&id);
        state
            .open
            .entry(owner.map(str::to_string))
            .or_default()
            .insert(
                id,
                Entry {
                    size,
                    since: Some(Instant::now()),
                },
            );
    }

    /// Replaces the counts with `open` (every open upload found in storage by a scan that
    /// began at `began`), keeping what this process counted or closed since then.
    pub fn rebuild(&self, open: Vec<(Owner, UploadId, u64)>, began: Instant) {
        let mut state = self.lock();
        let State {
            open: counted,
            closed,
        } = &mut *state;
        let mut fresh: HashMap<Owner, HashMap<UploadId, Entry>> = HashMap::new();
        for (owner, id, size) in open {
            if closed.get(&id).is_some_and(|at| *at >= began) {
                continue;
            }
            fresh.entry(owner).or_default().insert(
                id,
                Entry {
                    size,
                    since: Some(began),
                },
            );
        }
        for (owner, uploads) in counted.iter() {
            for (id, entry) in uploads {
                if entry.since.is_none_or(|at| at >= began) {
                    fresh.entry(owner.clone()).or_default().insert(*id, *entry);
                }
            }
        }
        *counted = fresh;
        closed.retain(|_, at| *at >= began);
    }

    /// Open uploads and reserved bytes of `owner`, as counted.
    pub fn usage(&self, owner: Option<&str>) -> (u64, u64) {
        let state = self.lock();
        state
            .open
            .get(&owner.map(str::to_string))
            .map_or((0, 0), |m| {
                (m.len() as u64, m.values().map(|e| e.size).sum::<u64>())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(max_open_uploads: u64, max_reserved_bytes: u64) -> Ledger {
        Ledger::new(QuotaLimits {
            max_open_uploads,
            max_reserved_bytes,
        })
    }

    #[test]
    fn open_uploads_are_limited_per_owner() {
        let l = ledger(2, 0);
        l.reserve(Some("a"), UploadId::new_random(), 1).unwrap();
        let second = UploadId::new_random();
        l.reserve(Some("a"), second, 1).unwrap();
        assert!(matches!(
            l.reserve(Some("a"), UploadId::new_random(), 1),
            Err(Error::TooManyOpenUploads { max: 2 })
        ));
        // Another owner, and anonymous uploads, count apart.
        l.reserve(Some("b"), UploadId::new_random(), 1).unwrap();
        l.reserve(None, UploadId::new_random(), 1).unwrap();
        // Closing one makes room again.
        l.release(second);
        l.reserve(Some("a"), UploadId::new_random(), 1).unwrap();
        assert_eq!(l.usage(Some("a")), (2, 2));
    }

    #[test]
    fn reserved_bytes_are_limited_per_owner() {
        let l = ledger(0, 100);
        l.reserve(Some("a"), UploadId::new_random(), 60).unwrap();
        match l.reserve(Some("a"), UploadId::new_random(), 41) {
            Err(Error::QuotaExceeded {
                reserved: 60,
                size: 41,
                quota: 100,
            }) => {}
            other => panic!("expected a quota refusal, got {other:?}"),
        }
        l.reserve(Some("a"), UploadId::new_random(), 40).unwrap();
        assert_eq!(l.usage(Some("a")), (2, 100));
    }

    #[test]
    fn an_undone_release_counts_again_through_a_rebuild() {
        let l = ledger(1, 0);
        let id = UploadId::new_random();
        l.reserve(Some("a"), id, 6).unwrap();
        l.stored(id);
        let began = Instant::now();
        l.release(id);
        l.recount(Some("a"), id, 6);
        // The scan saw it open, and its release (after the scan began) was undone.
        l.rebuild(vec![(Some("a".into()), id, 6)], began);
        assert_eq!(l.usage(Some("a")), (1, 6));
        assert!(matches!(
            l.reserve(Some("a"), UploadId::new_random(), 1),
            Err(Error::TooManyOpenUploads { max: 1 })
        ));
    }

    #[test]
    fn a_rebuild_keeps_a_creation_its_scan_could_not_see() {
        let l = ledger(0, 0);
        // Counted before the scan began, its record written after the scan listed.
        let writing = UploadId::new_random();
        let written_late = UploadId::new_random();
        l.reserve(Some("a"), writing, 3).unwrap();
        l.reserve(Some("a"), written_late, 4).unwrap();
        let began = Instant::now();
        l.stored(written_late);
        l.rebuild(Vec::new(), began);
        assert_eq!(l.usage(Some("a")), (2, 7));
        // Stored before the scan began, and not found by it: gone (closed elsewhere).
        let l = ledger(0, 0);
        let gone = UploadId::new_random();
        l.reserve(Some("a"), gone, 5).unwrap();
        l.stored(gone);
        let began = Instant::now() + std::time::Duration::from_millis(1);
        l.rebuild(Vec::new(), began);
        assert_eq!(l.usage(Some("a")), (0, 0));
    }

    #[test]
    fn a_rebuild_keeps_what_changed_while_it_ran() {
        let l = ledger(0, 0);
        let old = UploadId::new_random();
        let closed_during_scan = UploadId::new_random();
        let began = Instant::now();
        let created_during_scan = UploadId::new_random();
        l.reserve(Some("a"), created_during_scan, 5).unwrap();
        l.release(closed_during_scan);
        l.rebuild(
            vec![
                (Some("a".into()), old, 7),
                (Some("a".into()), closed_during_scan, 11),
            ],
            began,
        );
        assert_eq!(l.usage(Some("a")), (2, 12), "old + created during the scan");
    }
}
