//! Upload events: what happened to an upload (created, completed, failed, cancelled,
//! expired), recorded durably in an outbox for webhook delivery, and announced in process
//! for live followers (Server-Sent Events).
//!
//! The domain core emits an event at each state transition, whatever the protocol that
//! caused it, and writes it to the [`Outbox`] before the request that caused it is
//! answered. Event ids are derived from the upload id and the kind (each kind happens at
//! most once per upload), so writing an event twice is harmless: the outbox creates it
//! only if absent. A crash between a state change and its outbox write is repaired at
//! start-up by [`reconcile`]: an upload changed recently whose event is unknown gets it.
//!
//! Delivery itself (HTTP, signatures, retries) is the server's business; the outbox only
//! keeps each event's delivery state, a claim so that one process delivers it, and the
//! dead letters. Two implementations: [`local`] (the data directory) and [`s3`] (the
//! bucket, shared by several servers).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{Sha256Digest, UploadId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::{broadcast, Notify};

use crate::error::{Error, Result};
use crate::record::{StoredState, UploadRecord};

pub mod local;
pub mod s3;

/// How long a delivered event is remembered, so that [`reconcile`] never re-creates it.
pub const DELIVERED_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// How far back [`reconcile`] looks for state changes whose event may be missing: much
/// longer than any crash-and-restart, much shorter than [`DELIVERED_RETENTION`].
pub const RECONCILE_WINDOW: Duration = Duration::from_secs(3600);

/// What happened to an upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// The upload was created.
    #[serde(rename = "upload.created")]
    Created,
    /// The file was verified and published.
    #[serde(rename = "upload.completed")]
    Completed,
    /// Verification failed (e.g. a SHA-256 mismatch); the bytes were discarded.
    #[serde(rename = "upload.failed")]
    Failed,
    /// A client cancelled the upload.
    #[serde(rename = "upload.cancelled")]
    Cancelled,
    /// The upload stayed idle past its TTL.
    #[serde(rename = "upload.expired")]
    Expired,
}

impl EventKind {
    /// The wire name, e.g. `upload.completed`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Created => "upload.created",
            EventKind::Completed => "upload.completed",
            EventKind::Failed => "upload.failed",
            EventKind::Cancelled => "upload.cancelled",
            EventKind::Expired => "upload.expired",
        }
    }

    /// Position in an upload's life: events of one upload are delivered in this order
    /// (created, then completed or failed, then cancelled or expired).
    pub fn order(self) -> u8 {
        match self {
            EventKind::Created => 0,
            EventKind::Completed | EventKind::Failed => 1,
            EventKind::Cancelled | EventKind::Expired => 2,
        }
    }

    /// The event a stored state ends in, if it is an end.
    pub fn of_state(state: StoredState) -> Option<Self> {
        match state {
            StoredState::Uploading | StoredState::Completing => None,
            StoredState::Completed => Some(EventKind::Completed),
            StoredState::Failed => Some(EventKind::Failed),
            StoredState::Cancelled => Some(EventKind::Cancelled),
            StoredState::Expired => Some(EventKind::Expired),
        }
    }
}

/// The upload an event is about, as it was when the event happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventUpload {
    /// The upload's id.
    pub id: UploadId,
    /// Total size in bytes.
    pub size: u64,
    /// The verified SHA-256 (completed), or the computed one that did not match (failed),
    /// or the declared one.
    pub sha256: Option<Sha256Digest>,
    /// Original file name.
    pub filename: Option<String>,
    /// Client metadata.
    pub metadata: BTreeMap<String, String>,
    /// Who created it (an authenticated owner), if anyone.
    pub owner: Option<String>,
    /// The length was not known when this happened (an upload created without one):
    /// `size` is then the most it may grow to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub length_deferred: bool,
}

/// One event. Its `id` is unique and stable: receivers deduplicate on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id (a UUID derived from the upload id and the kind).
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The upload.
    pub upload: EventUpload,
    /// Why the upload failed (`upload.failed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Event {
    /// The event of kind `kind` about `record`, timed at the record's last change.
    pub fn of(kind: EventKind, record: &UploadRecord) -> Self {
        Self {
            id: event_id(record.id, kind),
            kind,
            created_at: match kind {
                EventKind::Created => record.created_at,
                _ => record.updated_at,
            },
            upload: EventUpload {
                id: record.id,
                size: record.size,
                sha256: record.sha256.or(record.declared_sha256),
                filename: record.filename.clone(),
                metadata: record.metadata.clone(),
                owner: record.owner.clone(),
                length_deferred: record.length_deferred,
            },
            reason: match kind {
                EventKind::Failed => Some(
                    record
                        .failure
                        .clone()
                        .unwrap_or_else(|| "verification failed".into()),
                ),
                _ => None,
            },
        }
    }
}

/// The id of the event of kind `kind` about upload `upload`: a UUID (version 8, the
/// "custom" one) made of a SHA-256 of both, so that the same event always has the same id
/// and writing it again is idempotent.
pub fn event_id(upload: UploadId, kind: EventKind) -> String {
    let mut h = Sha256::new();
    h.update(b"upload-event\0");
    h.update(upload.to_string().as_bytes());
    h.update([0]);
    h.update(kind.name().as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// Whether `id` can be an event id (a lowercase hyphenated UUID), so that it is safe as a
/// file name or object key. Checked before any id from a request reaches storage.
pub fn is_event_id(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
}

/// Where an event's delivery stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Attempts made so far.
    pub attempts: u32,
    /// When the first attempt was made.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub first_attempt_at: Option<OffsetDateTime>,
    /// Not before this time (backoff after a failure).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// What went wrong last.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Webhook URLs that already accepted the event (retries go to the others only).
    #[serde(default)]
    pub accepted_by: Vec<String>,
}

/// An event with its delivery state, as the outbox keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// The event.
    pub event: Event,
    /// Its delivery so far.
    #[serde(default)]
    pub delivery: Delivery,
}

/// Durable storage of events waiting for delivery, delivered recently, or given up on.
/// Every method that writes has made the write durable when it returns `Ok`, unless its
/// doc says otherwise.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Queues `event`, unless an event with its id is already queued, dead or was
    /// delivered recently. Durable on `Ok`.
    async fn put(&self, event: &Event) -> Result<()>;

    /// Every queued event with its delivery state, in no particular order.
    async fn queued(&self) -> Result<Vec<Queued>>;

    /// One queued event, freshly read; `None` when it was delivered or buried meanwhile.
    async fn get(&self, id: &str) -> Result<Option<Queued>>;

    /// Takes the right to deliver event `id` for `lease`, across every process sharing
    /// the outbox. `false` when another process holds an unexpired claim.
    async fn claim(&self, id: &str, lease: Duration) -> Result<bool>;

    /// Gives a claim up.
    async fn release(&self, id: &str) -> Result<()>;

    /// Stores a queued event's new delivery state (after a failed attempt). Advisory: a
    /// lost update costs an extra attempt, so it need not be durable.
    async fn update(&self, queued: &Queued) -> Result<()>;

    /// The event was delivered: it leaves the queue and is remembered as delivered for
    /// [`DELIVERED_RETENTION`].
    async fn delivered(&self, id: &str) -> Result<()>;

    /// Delivery was given up: the event moves to the dead letters with its state.
    async fn bury(&self, queued: &Queued) -> Result<()>;

    /// Every dead letter.
    async fn dead(&self) -> Result<Vec<Queued>>;

    /// Moves dead letter `id` back to the queue with a fresh delivery state.
    /// [`Error::NotFound`] when there is no such dead letter.
    async fn replay(&self, id: &str) -> Result<Queued>;

    /// Forgets delivered events older than `age`.
    async fn prune(&self, age: Duration) -> Result<()>;
}

/// The events hub of the domain core: the outbox (when webhooks are configured) and the
/// in-process announcements of upload changes.
pub struct Events {
    outbox: Option<Arc<dyn Outbox>>,
    changes: broadcast::Sender<UploadId>,
    queued: Arc<Notify>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Events {
    /// A hub writing to `outbox`, or recording nothing durably with `None` (no webhook is
    /// configured: events then cost one in-process announcement).
    pub fn new(outbox: Option<Arc<dyn Outbox>>) -> Self {
        Self {
            outbox,
            changes: broadcast::channel(1024).0,
            queued: Arc::new(Notify::new()),
        }
    }

    /// The outbox, when events are recorded.
    pub fn outbox(&self) -> Option<&Arc<dyn Outbox>> {
        self.outbox.as_ref()
    }

    /// Announcements of changed uploads (bytes stored, state changed). A receiver that
    /// lags should re-read whatever it follows.
    pub fn subscribe(&self) -> broadcast::Receiver<UploadId> {
        self.changes.subscribe()
    }

    /// Woken whenever an event is queued, so a delivery loop need not poll.
    pub fn queued_signal(&self) -> Arc<Notify> {
        self.queued.clone()
    }

    /// Announces that upload `id` changed.
    pub fn changed(&self, id: UploadId) {
        // Nobody listening is fine.
        let _ = self.changes.send(id);
    }

    /// Records event `kind` of `record` in the outbox (when there is one) and announces
    /// the change. A failed write is logged, not returned: the state change it reports
    /// has already happened, and [`reconcile`] writes the event at the next start.
    pub async fn emit(&self, kind: EventKind, record: &UploadRecord) {
        self.changed(record.id);
        let Some(outbox) = &self.outbox else { return };
        let event = Event::of(kind, record);
        match outbox.put(&event).await {
            Ok(()) => self.queued.notify_one(),
            Err(e) => tracing::error!(
                id = %record.id,
                event = kind.name(),
                error = %e,
                "could not record an event; it is written at the next start"
            ),
        }
    }

    /// Writes the events a recently changed record implies and may lack (a crash between
    /// its state change and the outbox write). Idempotent.
    pub async fn reconcile(&self, record: &UploadRecord, now: OffsetDateTime) -> Result<()> {
        let Some(outbox) = &self.outbox else {
            return Ok(());
        };
        for kind in reconcile(record, now) {
            outbox.put(&Event::of(kind, record)).await?;
        }
        Ok(())
    }
}

/// The events a record implies that may be missing: `upload.created` if it was created
/// within [`RECONCILE_WINDOW`] of `now`, and its end event if it ended within it.
pub fn reconcile(record: &UploadRecord, now: OffsetDateTime) -> Vec<EventKind> {
    let recent = |t: OffsetDateTime| now - t < RECONCILE_WINDOW;
    let mut kinds = Vec::new();
    if recent(record.created_at) {
        kinds.push(EventKind::Created);
    }
    if let Some(end) = EventKind::of_state(record.state).filter(|_| recent(record.updated_at)) {
        kinds.push(end);
    }
    kinds
}

/// Parses a stored queued event.
fn parse_queued(bytes: &[u8], what: &str) -> Result<Queued> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

/// Serializes a queued event for storage.
fn to_json(queued: &Queued) -> Result<Vec<u8>> {
    serde_json::to_vec(queued).map_err(|e| Error::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::UploadMode;

    pub(crate) fn record(state: StoredState, at: OffsetDateTime) -> UploadRecord {
        UploadRecord {
            id: UploadId::new_random(),
            size: 10,
            chunk_size: 4,
            mode: UploadMode::Chunks,
            declared_sha256: None,
            sha256: None,
            filename: Some("a.bin".into()),
            metadata: BTreeMap::new(),
            state,
            failure: Some("SHA-256 x does not match y".into()),
            concat: None,
            length_deferred: false,
            owner: Some("alice".into()),
            created_at: at,
            updated_at: at,
            version: None,
        }
    }

    #[test]
    fn ids_are_stable_unique_and_safe() {
        let a = UploadId::new_random();
        let b = UploadId::new_random();
        let id = event_id(a, EventKind::Created);
        assert_eq!(id, event_id(a, EventKind::Created));
        assert_ne!(id, event_id(a, EventKind::Completed));
        assert_ne!(id, event_id(b, EventKind::Created));
        assert!(is_event_id(&id), "{id}");
        assert_eq!(&id[14..15], "8", "a version 8 UUID: {id}");
        assert!(!is_event_id("../../etc/passwd"));
        assert!(!is_event_id(&id.to_uppercase()));
        assert!(!is_event_id(&id[1..]));
    }

    #[test]
    fn events_serialize_with_wire_names() {
        let now = OffsetDateTime::now_utc();
        let e = Event::of(EventKind::Failed, &record(StoredState::Failed, now));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "upload.failed");
        assert_eq!(v["reason"], "SHA-256 x does not match y");
        assert_eq!(v["upload"]["filename"], "a.bin");
        assert_eq!(v["upload"]["owner"], "alice");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        let c = serde_json::to_value(Event::of(EventKind::Created, &e_record(&e))).unwrap();
        assert!(c.get("reason").is_none());
    }

    fn e_record(e: &Event) -> UploadRecord {
        let mut r = record(StoredState::Uploading, e.created_at);
        r.id = e.upload.id;
        r
    }

    #[test]
    fn reconcile_covers_recent_changes_only() {
        let now = OffsetDateTime::now_utc();
        let fresh = record(StoredState::Completed, now);
        assert_eq!(
            reconcile(&fresh, now),
            vec![EventKind::Created, EventKind::Completed]
        );
        let old = record(StoredState::Completed, now - Duration::from_secs(7200));
        assert!(reconcile(&old, now).is_empty());
        let mut ended_now = old.clone();
        ended_now.state = StoredState::Expired;
        ended_now.updated_at = now;
        assert_eq!(reconcile(&ended_now, now), vec![EventKind::Expired]);
        assert_eq!(
            reconcile(&record(StoredState::Uploading, now), now),
            vec![EventKind::Created]
        );
    }

    #[test]
    fn kinds_order_an_uploads_life() {
        assert!(EventKind::Created.order() < EventKind::Completed.order());
        assert!(EventKind::Failed.order() < EventKind::Cancelled.order());
        assert_eq!(EventKind::Expired.order(), EventKind::Cancelled.order());
    }
}
