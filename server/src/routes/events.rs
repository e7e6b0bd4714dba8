//! Events over HTTP: live status of one upload as Server-Sent Events, and the operator's
//! view of webhook dead letters.
//!
//! # `GET /v1/uploads/{id}/events`
//! A `text/event-stream` of the upload's state: `progress` (while uploading or
//! completing, at most [`PROGRESS_GAP`]⁻¹ times a second), then one of `completed`,
//! `failed`, `cancelled` or `expired`, after which the stream ends. Each event's data is
//! the status document (`{"id", "state"}` for a cancelled or expired upload) and its id is
//! `<received bytes>-<state>`, derived from the state itself: a reconnect with
//! `Last-Event-ID` gets the current state only if it differs from the last one seen, so
//! nothing is sent twice and the latest state is never missed. A reconnect after the end
//! event gets `204 No Content` (which tells `EventSource` to stop). Same owner rules as
//! the status: another owner's upload is 404.
//!
//! Changes are announced in process by the domain core; a slow poll of the status
//! ([`POLL`]) sees changes made by other servers on a shared bucket.
//!
//! # Dead letters
//! `GET /v1/admin/events/dead` lists them; `POST /v1/admin/events/{id}/replay` queues one
//! again. With authentication configured, only the owners named by `--admin-owner` may;
//! without, like every route, anyone who can reach the server.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::api::UploadState;
use common::UploadId;
use serde_json::json;
use storage::events::{is_event_id, Queued};
use storage::principal::{self, Principal};
use storage::Uploads;
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::extract::IdPath;
use crate::state::AppState;

/// Shortest time between two progress events of one stream.
pub const PROGRESS_GAP: Duration = Duration::from_millis(250);

/// Longest time a stream goes without reading the status (changes made by another server,
/// shutdown).
pub const POLL: Duration = Duration::from_secs(1);

/// One state of an upload as an SSE event.
struct Snapshot {
    id: String,
    name: &'static str,
    data: String,
    end: bool,
}

/// The upload's current state, as the current principal may see it.
async fn snapshot(uploads: &Uploads, id: UploadId) -> storage::Result<Snapshot> {
    match uploads.status(id).await {
        Ok(s) => {
            let (state, name, end) = match s.state {
                UploadState::Uploading => ("uploading", "progress", false),
                UploadState::Completing => ("completing", "progress", false),
                UploadState::Completed => ("completed", "completed", true),
                UploadState::Failed => ("failed", "failed", true),
            };
            Ok(Snapshot {
                id: format!("{}-{state}", s.received_bytes),
                name,
                data: serde_json::to_string(&s).unwrap_or_default(),
                end,
            })
        }
        Err(storage::Error::Gone(what)) => {
            let name = if what == "expired" {
                "expired"
            } else {
                "cancelled"
            };
            Ok(Snapshot {
                id: format!("0-{name}"),
                name,
                data: json!({ "id": id, "state": name }).to_string(),
                end: true,
            })
        }
        Err(e) => Err(e),
    }
}

/// A stream's progress.
struct Follow {
    uploads: Arc<Uploads>,
    id: UploadId,
    principal: Option<Principal>,
    changes: broadcast::Receiver<UploadId>,
    state: AppState,
    /// Id of the last event sent (or the client's `Last-Event-ID`).
    last: Option<String>,
    last_sent: Option<Instant>,
    first: Option<Snapshot>,
    ended: bool,
}

impl Follow {
    /// Reads the status as the request's principal (the stream outlives the handler).
    async fn read(&self) -> storage::Result<Snapshot> {
        match &self.principal {
            Some(p) => principal::scope(p.clone(), snapshot(&self.uploads, self.id)).await,
            None => snapshot(&self.uploads, self.id).await,
        }
    }

    /// Waits for an announcement about this upload, at most [`POLL`].
    async fn changed(&mut self) {
        let id = self.id;
        let changes = &mut self.changes;
        let _ = tokio::time::timeout(POLL, async {
            loop {
                match changes.recv().await {
                    Ok(changed) if changed == id => return,
                    Ok(_) => {}
                    // Missed announcements: read the status again.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                }
            }
        })
        .await;
    }

    /// The next event to send, or `None` when the stream ends.
    async fn next(mut self) -> Option<(Result<SseEvent, Infallible>, Self)> {
        loop {
            if self.ended || self.state.is_shutting_down() {
                return None;
            }
            let snap = match self.first.take() {
                Some(s) => s,
                None => match self.read().await {
                    Ok(s) => s,
                    // Purged meanwhile.
                    Err(storage::Error::NotFound) => return None,
                    // A failing store: try again later.
                    Err(_) => {
                        self.changed().await;
                        continue;
                    }
                },
            };
            if self.last.as_deref() != Some(snap.id.as_str()) {
                let since = self.last_sent.map(|t| t.elapsed()).unwrap_or(PROGRESS_GAP);
                if !snap.end && since < PROGRESS_GAP {
                    tokio::time::sleep(PROGRESS_GAP - since).await;
                    continue;
                }
                self.last = Some(snap.id.clone());
                self.last_sent = Some(Instant::now());
                self.ended = snap.end;
                let event = SseEvent::default()
                    .id(snap.id)
                    .event(snap.name)
                    .data(snap.data);
                return Some((Ok(event), self));
            }
            self.changed().await;
        }
    }
}

/// `GET /v1/uploads/{id}/events`: the upload's changes as Server-Sent Events.
pub async fn follow(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let uploads = state.uploads.clone();
    // Subscribed before the first read, so no change falls in between.
    let changes = uploads.events().subscribe();
    let first = snapshot(&uploads, id).await?;
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if first.end && last.as_deref() == Some(first.id.as_str()) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let follow = Follow {
        uploads,
        id,
        principal: principal::current(),
        changes,
        state,
        last,
        last_sent: None,
        first: Some(first),
        ended: false,
    };
    let stream = futures_util::stream::unfold(follow, Follow::next);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Refuses the admin routes to anyone but the `--admin-owner`s (when authentication is
/// configured at all).
fn require_admin(state: &AppState) -> Result<(), ApiError> {
    match principal::current() {
        None | Some(Principal::Anonymous) => Ok(()),
        Some(Principal::Owner(o)) if state.admin_owners.contains(&o) => Ok(()),
        Some(_) => Err(ApiError::Forbidden(
            "only the server's admin owners (--admin-owner) may do this".into(),
        )),
    }
}

/// A dead letter as listed.
fn entry(q: Queued) -> serde_json::Value {
    json!({
        "event": q.event,
        "attempts": q.delivery.attempts,
        "first_attempt_at": q.delivery.first_attempt_at.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339).ok()
        }),
        "last_error": q.delivery.last_error,
    })
}

/// `GET /v1/admin/events/dead`: events whose delivery was given up, oldest first.
pub async fn dead(State(state): State<AppState>) -> Result<Response, ApiError> {
    require_admin(&state)?;
    let mut dead = match state.uploads.events().outbox() {
        Some(o) => o.dead().await?,
        None => Vec::new(),
    };
    dead.sort_by_key(|q| (q.event.created_at, q.event.id.clone()));
    let events: Vec<_> = dead.into_iter().map(entry).collect();
    Ok(Json(json!({ "events": events })).into_response())
}

/// `POST /v1/admin/events/{id}/replay`: queues a dead letter again (202).
pub async fn replay(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&state)?;
    let not_found = || ApiError::NotFound("no dead letter with this id".into());
    let outbox = state.uploads.events().outbox().ok_or_else(not_found)?;
    if !is_event_id(&id) {
        return Err(not_found());
    }
    let q = match outbox.replay(&id).await {
        Err(storage::Error::NotFound) => return Err(not_found()),
        other => other?,
    };
    state.uploads.events().queued_signal().notify_one();
    crate::webhooks::count_dead_letters(outbox.as_ref()).await?;
    Ok((StatusCode::ACCEPTED, Json(entry(q))).into_response())
}
