//! Per-owner limits on open uploads: how many an owner may have at once, and how many
//! bytes they may reserve (the declared sizes of their open uploads), so one owner cannot
//! take a server's storage or bookkeeping for themselves.
//!
//! Without authentication every client is anonymous: then each client address (an IPv6
//! client by its /64, which one host usually has whole) has the limits an owner has, so
//! one client cannot lock the others out by reserving everything.
//!
//! An upload whose length is not known yet reserves the bytes it has stored, counted as
//! they arrive, and its length once declared: it cannot store more than its owner's
//! quota by never saying how long it is.
//!
//! An upload is open from its creation until it completes, fails, is cancelled or
//! expires. The ledger counts the open uploads this process knows of: it is built from
//! storage when the service starts, rebuilt by every sweep, and kept current in between
//! by the creations and state changes of this process. With several processes on one
//! bucket, the uploads another process created since the last sweep are not yet counted
//! here, so an owner can briefly exceed a limit by what they create on other instances
//! within one sweep interval. A client's address is known only to the process it
//! created an upload on, and only until it restarts: anonymous uploads created before
//! count together.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use common::UploadId;
use futures_util::Stream;

use crate::error::{Error, Result};
use crate::principal::{self, Principal};

/// The limits; zero means "no limit".
#[derive(Clone, Copy, Debug, Default)]
pub struct QuotaLimits {
    /// Open uploads an owner may have at once.
    pub max_open_uploads: u64,
    /// Bytes an owner's open uploads may reserve together.
    pub max_reserved_bytes: u64,
}

/// Whose limits an upload counts against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Holder {
    /// An authenticated owner.
    Owner(String),
    /// An anonymous client, by address (an IPv6 one by its /64).
    Address(IpAddr),
    /// Anonymous uploads whose client this process does not know (created before it
    /// started), counted together.
    Anonymous,
}

impl Holder {
    /// The holder of an upload stored with `owner`, created by the current request.
    pub fn current(owner: Option<&str>) -> Self {
        match (owner, principal::current()) {
            (Some(o), _) => Holder::Owner(o.to_string()),
            (None, Some(Principal::Anonymous)) => CLIENT
                .try_with(|a| Holder::Address(network(*a)))
                .unwrap_or(Holder::Anonymous),
            (None, _) => Holder::Anonymous,
        }
    }

    fn stored(owner: Option<String>) -> Self {
        owner.map_or(Holder::Anonymous, Holder::Owner)
    }
}

/// An address as one client: an IPv6 address by its /64 (a host is handed a whole /64 and
/// can use any address in it).
pub fn network(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
        v4 => v4,
    }
}

tokio::task_local! {
    static CLIENT: IpAddr;
}

/// Runs `f` for a request from `addr`: anonymous uploads it creates count against that
/// address.
pub async fn scope_client<F: Future>(addr: IpAddr, f: F) -> F::Output {
    CLIENT.scope(addr, f).await
}

/// One open upload as found by a storage scan.
#[derive(Clone, Debug)]
pub struct Scanned {
    /// Its owner, as stored.
    pub owner: Option<String>,
    /// Its id.
    pub id: UploadId,
    /// Bytes it reserves: its size, or what it has stored when its length is not known.
    pub bytes: u64,
    /// Its length is not known: it may have stored more since the scan read it.
    pub growing: bool,
}

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
    open: HashMap<Holder, HashMap<UploadId, Entry>>,
    /// Whose each counted upload is.
    holders: HashMap<UploadId, Holder>,
    /// Uploads this process closed, when, and whose they were; a rebuild begun earlier
    /// must not count them.
    closed: HashMap<UploadId, (Instant, Holder)>,
}

impl State {
    fn entry(&mut self, id: UploadId) -> Option<(&Holder, &mut Entry)> {
        let holder = self.holders.get(&id)?;
        let e = self.open.get_mut(holder)?.get_mut(&id)?;
        Some((holder, e))
    }
}

/// The count of open uploads per holder.
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

    /// Counts a new upload of `size` bytes for `holder`, or refuses it when it would take
    /// the holder over a limit. Checking and counting are one step, so racing creations
    /// cannot both squeeze under a limit.
    pub fn reserve(&self, holder: Holder, id: UploadId, size: u64) -> Result<()> {
        let limits = self.limits;
        let mut state = self.lock();
        let mine = state.open.entry(holder.clone()).or_default();
        if limits.max_open_uploads > 0 && mine.len() as u64 >= limits.max_open_uploads {
            return Err(Error::TooManyOpenUploads {
                max: limits.max_open_uploads,
            });
        }
        let reserved: u64 = mine.values().map(|e| e.size).fold(0, u64::saturating_add);
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
        state.holders.insert(id, holder);
        Ok(())
    }

    /// Says that the record of an upload counted by [`Self::reserve`] is stored: from now
    /// on a storage scan finds it.
    pub fn stored(&self, id: UploadId) {
        let now = Instant::now();
        if let Some((_, e)) = self.lock().entry(id) {
            e.since = Some(now);
        }
    }

    /// Counts an upload as `size` bytes from now on: a growing one (its length not known
    /// yet) as it stores bytes, or once its length is said. Growing past the holder's quota
    /// is refused and changes nothing; shrinking always succeeds. An upload not counted
    /// (closed meanwhile) is left alone.
    pub fn resize(&self, id: UploadId, size: u64) -> Result<()> {
        let quota = self.limits.max_reserved_bytes;
        let mut state = self.lock();
        let Some(holder) = state.holders.get(&id).cloned() else {
            return Ok(());
        };
        let Some(mine) = state.open.get_mut(&holder) else {
            return Ok(());
        };
        let Some(old) = mine.get(&id).map(|e| e.size) else {
            return Ok(());
        };
        if size > old && quota > 0 {
            let reserved: u64 = mine.values().map(|e| e.size).fold(0, u64::saturating_add);
            let others = reserved - old;
            if others.saturating_add(size) > quota {
                return Err(Error::QuotaExceeded {
                    reserved: others,
                    size,
                    quota,
                });
            }
        }
        if let Some(e) = mine.get_mut(&id) {
            e.size = size;
        }
        Ok(())
    }

    /// Bytes counted for an upload (0 when it is not counted).
    pub fn counted(&self, id: UploadId) -> u64 {
        self.lock().entry(id).map_or(0, |(_, e)| e.size)
    }

    /// Stops counting an upload (it completed, failed, was cancelled or expired, or its
    /// creation failed). Releasing twice is harmless.
    pub fn release(&self, id: UploadId) {
        let mut state = self.lock();
        let holder = state.holders.remove(&id);
        if let Some(h) = &holder {
            if let Some(uploads) = state.open.get_mut(h) {
                uploads.remove(&id);
                if uploads.is_empty() {
                    state.open.remove(h);
                }
            }
        }
        let holder = holder
            .or_else(|| state.closed.get(&id).map(|(_, h)| h.clone()))
            .unwrap_or(Holder::Anonymous);
        state.closed.insert(id, (Instant::now(), holder));
    }

    /// Counts an upload again, as `size` bytes, without checking limits: an upload
    /// released by a change that was then undone (an expiry that found a chunk write begun
    /// meanwhile). It counts against whoever it counted against before.
    pub fn recount(&self, owner: Option<&str>, id: UploadId, size: u64) {
        let mut state = self.lock();
        let holder = match state.closed.remove(&id) {
            Some((_, h)) => h,
            None => Holder::stored(owner.map(str::to_string)),
        };
        state.open.entry(holder.clone()).or_default().insert(
            id,
            Entry {
                size,
                since: Some(Instant::now()),
            },
        );
        state.holders.insert(id, holder);
    }

    /// Replaces the counts with `open` (every open upload found in storage by a scan that
    /// began at `began`), keeping what this process counted or closed since then, whose
    /// each upload is, and what a growing upload stored beyond what the scan read.
    pub fn rebuild(&self, open: Vec<Scanned>, began: Instant) {
        let mut state = self.lock();
        let State {
            open: counted,
            holders,
            closed,
        } = &mut *state;
        let mut fresh: HashMap<Holder, HashMap<UploadId, Entry>> = HashMap::new();
        let mut fresh_holders = HashMap::new();
        for up in open {
            if closed.get(&up.id).is_some_and(|(at, _)| *at >= began) {
                continue;
            }
            let known = holders.get(&up.id).filter(|h| match h {
                Holder::Owner(o) => up.owner.as_deref() == Some(o),
                _ => up.owner.is_none(),
            });
            let holder = known
                .cloned()
                .unwrap_or_else(|| Holder::stored(up.owner.clone()));
            let before = counted
                .get(&holder)
                .and_then(|m| m.get(&up.id))
                .map_or(0, |e| e.size);
            let size = if up.growing {
                up.bytes.max(before)
            } else {
                up.bytes
            };
            fresh.entry(holder.clone()).or_default().insert(
                up.id,
                Entry {
                    size,
                    since: Some(began),
                },
            );
            fresh_holders.insert(up.id, holder);
        }
        for (holder, uploads) in counted.iter() {
            for (id, entry) in uploads {
                if entry.since.is_none_or(|at| at >= began) {
                    fresh.entry(holder.clone()).or_default().insert(*id, *entry);
                    fresh_holders.insert(*id, holder.clone());
                }
            }
        }
        *counted = fresh;
        *holders = fresh_holders;
        closed.retain(|_, (at, _)| *at >= began);
    }

    /// Open uploads and reserved bytes of `holder`, as counted.
    pub fn usage(&self, holder: &Holder) -> (u64, u64) {
        let state = self.lock();
        state.open.get(holder).map_or((0, 0), |m| {
            (
                m.len() as u64,
                m.values().map(|e| e.size).fold(0, u64::saturating_add),
            )
        })
    }

    /// `body`, with the bytes of the growing upload `id` counted as they come, from
    /// `start` (where the append begins): once they would take its holder over the quota,
    /// the body fails with [`Error::QuotaExceeded`] (an append keeps what came before).
    pub fn meter<S>(&self, id: UploadId, start: u64, body: S) -> Metered<'_, S> {
        Metered {
            ledger: self,
            id,
            pos: start,
            counted: self.counted(id).max(start),
            body,
        }
    }
}

/// See [`Ledger::meter`].
pub struct Metered<'a, S> {
    ledger: &'a Ledger,
    id: UploadId,
    pos: u64,
    counted: u64,
    body: S,
}

/// How far ahead of the bytes a metered body counts at a time, so that the ledger is not
/// locked for every piece.
const METER_STEP: u64 = 8 << 20;

impl<S> Stream for Metered<'_, S>
where
    S: Stream<Item = Result<Bytes>> + Unpin,
{
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let piece = match Pin::new(&mut this.body).poll_next(cx) {
            Poll::Ready(Some(Ok(p))) => p,
            other => return other,
        };
        let end = this.pos.saturating_add(piece.len() as u64);
        if end > this.counted {
            let ahead = end.saturating_add(METER_STEP);
            let counted = match this.ledger.resize(this.id, ahead) {
                Ok(()) => ahead,
                Err(_) => {
                    if let Err(e) = this.ledger.resize(this.id, end) {
                        return Poll::Ready(Some(Err(e)));
                    }
                    end
                }
            };
            this.counted = counted;
        }
        this.pos = end;
        Poll::Ready(Some(Ok(piece)))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn ledger(max_open_uploads: u64, max_reserved_bytes: u64) -> Ledger {
        Ledger::new(QuotaLimits {
            max_open_uploads,
            max_reserved_bytes,
        })
    }

    fn owner(o: &str) -> Holder {
        Holder::Owner(o.into())
    }

    fn scanned(o: &str, id: UploadId, bytes: u64) -> Scanned {
        Scanned {
            owner: Some(o.into()),
            id,
            bytes,
            growing: false,
        }
    }

    #[test]
    fn open_uploads_are_limited_per_owner() {
        let l = ledger(2, 0);
        l.reserve(owner("a"), UploadId::new_random(), 1).unwrap();
        let second = UploadId::new_random();
        l.reserve(owner("a"), second, 1).unwrap();
        assert!(matches!(
            l.reserve(owner("a"), UploadId::new_random(), 1),
            Err(Error::TooManyOpenUploads { max: 2 })
        ));
        // Another owner, and anonymous uploads, count apart.
        l.reserve(owner("b"), UploadId::new_random(), 1).unwrap();
        l.reserve(Holder::Anonymous, UploadId::new_random(), 1)
            .unwrap();
        // Closing one makes room again.
        l.release(second);
        l.reserve(owner("a"), UploadId::new_random(), 1).unwrap();
        assert_eq!(l.usage(&owner("a")), (2, 2));
    }

    #[test]
    fn reserved_bytes_are_limited_per_owner() {
        let l = ledger(0, 100);
        l.reserve(owner("a"), UploadId::new_random(), 60).unwrap();
        match l.reserve(owner("a"), UploadId::new_random(), 41) {
            Err(Error::QuotaExceeded {
                reserved: 60,
                size: 41,
                quota: 100,
            }) => {}
            other => panic!("expected a quota refusal, got {other:?}"),
        }
        l.reserve(owner("a"), UploadId::new_random(), 40).unwrap();
        assert_eq!(l.usage(&owner("a")), (2, 100));
    }

    /// Anonymous clients each have an owner's limits, by address; an IPv6 client by its
    /// /64, whichever address of it the request comes from.
    #[tokio::test]
    async fn anonymous_clients_are_limited_per_address() {
        let l = ledger(0, 100);
        let one = "2001:db8:1:2::10".parse().unwrap();
        let same_host = "2001:db8:1:2:ffff::1".parse().unwrap();
        let other = "192.0.2.7".parse().unwrap();
        let as_client = |addr: IpAddr| {
            principal::scope(
                Principal::Anonymous,
                scope_client(addr, async { Holder::current(None) }),
            )
        };
        let h1 = as_client(one).await;
        assert_eq!(h1, as_client(same_host).await);
        l.reserve(h1.clone(), UploadId::new_random(), 100).unwrap();
        assert!(l.reserve(h1, UploadId::new_random(), 1).is_err());
        l.reserve(as_client(other).await, UploadId::new_random(), 100)
            .unwrap();
        // An owner is an owner wherever they connect from.
        let o = principal::scope(
            Principal::Owner("o".into()),
            scope_client(other, async { Holder::current(Some("o")) }),
        )
        .await;
        assert_eq!(o, owner("o"));
    }

    /// A growing upload (no length yet) is counted as it stores bytes and when its length
    /// is said; past the quota it is refused and its count stays.
    #[tokio::test]
    async fn a_growing_upload_counts_what_it_stores() {
        let l = ledger(0, 100 << 20);
        let other = UploadId::new_random();
        l.reserve(owner("a"), other, 40 << 20).unwrap();
        let id = UploadId::new_random();
        l.reserve(owner("a"), id, 0).unwrap();
        l.resize(id, 50 << 20).unwrap();
        assert!(matches!(
            l.resize(id, 61 << 20),
            Err(Error::QuotaExceeded { .. })
        ));
        assert_eq!(l.counted(id), 50 << 20);
        l.resize(id, 10).unwrap();
        // A body of unknown length is cut where it would pass the quota.
        let pieces = (0..100).map(|_| Ok(Bytes::from(vec![0u8; 1 << 20])));
        let mut body = l.meter(id, 10, futures_util::stream::iter(pieces));
        let mut passed = 0u64;
        let err = loop {
            match body.next().await {
                Some(Ok(p)) => passed += p.len() as u64,
                Some(Err(e)) => break e,
                None => panic!("the body passed the quota"),
            }
        };
        assert!(matches!(err, Error::QuotaExceeded { .. }), "{err}");
        assert_eq!(passed, 59 << 20, "every byte within the quota passes");
        assert!(l.counted(id) <= 60 << 20);
        // A rebuild keeps what it counted beyond what the scan read.
        let began = Instant::now();
        l.rebuild(
            vec![
                scanned("a", other, 40 << 20),
                Scanned {
                    growing: true,
                    ..scanned("a", id, 0)
                },
            ],
            began,
        );
        assert_eq!(l.usage(&owner("a")).1, (40 << 20) + l.counted(id));
        assert!(l.counted(id) >= 59 << 20);
    }

    #[test]
    fn an_undone_release_counts_again_through_a_rebuild() {
        let l = ledger(1, 0);
        let id = UploadId::new_random();
        l.reserve(owner("a"), id, 6).unwrap();
        l.stored(id);
        let began = Instant::now();
        l.release(id);
        l.recount(Some("a"), id, 6);
        // The scan saw it open, and its release (after the scan began) was undone.
        l.rebuild(vec![scanned("a", id, 6)], began);
        assert_eq!(l.usage(&owner("a")), (1, 6));
        assert!(matches!(
            l.reserve(owner("a"), UploadId::new_random(), 1),
            Err(Error::TooManyOpenUploads { max: 1 })
        ));
    }

    /// An anonymous upload keeps counting against its client's address through a release
    /// that was undone and through rebuilds.
    #[test]
    fn an_address_keeps_its_uploads_through_rebuilds() {
        let l = ledger(1, 0);
        let addr = Holder::Address("192.0.2.1".parse().unwrap());
        let id = UploadId::new_random();
        l.reserve(addr.clone(), id, 6).unwrap();
        l.stored(id);
        let scan = Scanned {
            owner: None,
            ..scanned("", id, 6)
        };
        l.rebuild(vec![scan.clone()], Instant::now());
        assert_eq!(l.usage(&addr), (1, 6));
        l.release(id);
        l.recount(None, id, 6);
        l.rebuild(vec![scan], Instant::now());
        assert_eq!(l.usage(&addr), (1, 6));
        assert_eq!(l.usage(&Holder::Anonymous), (0, 0));
    }

    #[test]
    fn a_rebuild_keeps_a_creation_its_scan_could_not_see() {
        let l = ledger(0, 0);
        // Counted before the scan began, its record written after the scan listed.
        let writing = UploadId::new_random();
        let written_late = UploadId::new_random();
        l.reserve(owner("a"), writing, 3).unwrap();
        l.reserve(owner("a"), written_late, 4).unwrap();
        let began = Instant::now();
        l.stored(written_late);
        l.rebuild(Vec::new(), began);
        assert_eq!(l.usage(&owner("a")), (2, 7));
        // Stored before the scan began, and not found by it: gone (closed elsewhere).
        let l = ledger(0, 0);
        let gone = UploadId::new_random();
        l.reserve(owner("a"), gone, 5).unwrap();
        l.stored(gone);
        let began = Instant::now() + std::time::Duration::from_millis(1);
        l.rebuild(Vec::new(), began);
        assert_eq!(l.usage(&owner("a")), (0, 0));
    }

    #[test]
    fn a_rebuild_keeps_what_changed_while_it_ran() {
        let l = ledger(0, 0);
        let old = UploadId::new_random();
        let closed_during_scan = UploadId::new_random();
        let began = Instant::now();
        let created_during_scan = UploadId::new_random();
        l.reserve(owner("a"), created_during_scan, 5).unwrap();
        l.release(closed_during_scan);
        l.rebuild(
            vec![scanned("a", old, 7), scanned("a", closed_during_scan, 11)],
            began,
        );
        assert_eq!(
            l.usage(&owner("a")),
            (2, 12),
            "old + created during the scan"
        );
    }
}
