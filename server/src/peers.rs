//! Servers on one bucket telling each other of the claims they write (see
//! [`storage::peers`]), so that one upload's chunks spread over several servers need no
//! reads of each other's claims from the store.
//!
//! A claim written here goes to every other server registered in the bucket, in batches,
//! through one worker per server, so that a slow or vanished server holds up no other.
//! Notes from the others come in on `POST /internal/v1/peer-notes`, signed (HMAC-SHA256)
//! with the bucket's key, and are refused unsigned. A note that does not arrive costs its
//! receiver one read of the claim from the store, which is what it did without notes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use storage::peers::{Announce, ClaimNote, SharedDirectory};
use storage::Uploads;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::ApiError;

/// Where notes from other servers come in.
pub const PATH: &str = "/internal/v1/peer-notes";
/// The header holding a note's signature (hex HMAC-SHA256 of the body).
pub const SIGNATURE: &str = "x-upload-peer-signature";
/// How often this server registers again and reads the list of servers from the bucket
/// (two small requests a minute): a server that joins says so to the others at once, so
/// the list only tells of servers that went away.
const REFRESH: Duration = Duration::from_secs(60);
/// A batch of notes another server does not take within this is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Notes sent in one request at most.
const BATCH: usize = 256;
/// Notes waiting to be sent, in all and to one server; beyond that they are dropped.
const QUEUE: usize = 4096;
/// Largest batch taken (a note is a few hundred bytes).
const BODY_LIMIT: usize = 1 << 20;
/// A batch whose body stops arriving for this long is dropped.
const BODY_IDLE: Duration = Duration::from_secs(10);

const NOTES: &str = "upload_peer_notes_total";

/// The exchange of notes, while it runs; [`Peers::stop`] ends it.
pub struct Peers {
    me: String,
    directory: SharedDirectory,
    hearing: Arc<Hearing>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the route that takes notes needs.
pub struct Hearing {
    key: Vec<u8>,
    uploads: Arc<Uploads>,
    me: String,
    /// The other servers: a server heard from joins at once, before the bucket's list is
    /// read again.
    members: watch::Sender<Vec<String>>,
}

/// What one request carries: who sends, and the claims it wrote. A server's first request
/// to another carries none: it says that the sender is there.
#[derive(serde::Serialize, serde::Deserialize)]
struct Batch {
    from: String,
    notes: Vec<ClaimNote>,
}

impl Peers {
    /// Registers this server, reachable at `me`, with the others on the bucket and starts
    /// telling them of its claims; `None` where storage is not shared. A store that cannot
    /// be reached now leaves the server without notes (and says so), not without service.
    pub async fn start(uploads: &Arc<Uploads>, me: String) -> Option<Self> {
        let directory = uploads.peer_directory()?;
        let key = match directory.key().await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "peers: the bucket's key could not be read; servers will read each other's claims from the store");
                return None;
            }
        };
        if let Err(e) = directory.register(&me).await {
            tracing::warn!(error = %e, "peers: could not register; will try again");
        }
        // The servers reach each other directly, not through a proxy the environment names.
        let client = match reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(SEND_TIMEOUT)
            .timeout(SEND_TIMEOUT)
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "peers: no HTTP client");
                return None;
            }
        };
        metrics::describe_counter!(
            NOTES,
            "Claims told to or by other servers on the bucket, by outcome."
        );
        let (members, members_rx) = watch::channel(Vec::new());
        let (tx, rx) = mpsc::channel(QUEUE);
        uploads.announce_to(Arc::new(Outbox(tx)));
        let hearing = Arc::new(Hearing {
            key: key.clone(),
            uploads: uploads.clone(),
            me: me.clone(),
            members,
        });
        let sender = Sender {
            me: me.clone(),
            client,
            key: Arc::new(key),
        };
        let tasks = vec![
            tokio::spawn(keep_registered(directory.clone(), hearing.clone())),
            tokio::spawn(fan_out(rx, members_rx, sender)),
        ];
        tracing::info!(%me, "peers: telling the other servers on the bucket of the chunks stored here");
        Some(Self {
            me,
            directory,
            hearing,
            tasks,
        })
    }

    /// What the route that takes the other servers' notes needs (see [`routes`]).
    pub fn hearing(&self) -> Arc<Hearing> {
        self.hearing.clone()
    }

    /// Stops telling, and says this server is gone.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        match tokio::time::timeout(SEND_TIMEOUT, self.directory.leave(&self.me)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "peers: could not unregister"),
            Err(_) => tracing::debug!("peers: the store did not answer the unregistration"),
        }
    }
}

/// The route that takes the other servers' notes: outside the clients' authentication
/// (a note is signed instead).
pub fn routes(hearing: Arc<Hearing>) -> Router {
    Router::new().route(PATH, post(hear)).with_state(hearing)
}

/// Takes the claims written here (see [`Announce`]).
struct Outbox(mpsc::Sender<ClaimNote>);

impl Announce for Outbox {
    fn claimed(&self, note: ClaimNote) {
        if self.0.try_send(note).is_err() {
            metrics::counter!(NOTES, "outcome" => "dropped").increment(1);
        }
    }
}

/// Signs `body` with the bucket's key.
fn mac(key: &[u8], body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    mac
}

/// `POST /internal/v1/peer-notes`: claims another server on the bucket wrote.
async fn hear(State(hearing): State<Arc<Hearing>>, req: Request) -> Result<StatusCode, ApiError> {
    let signature = req
        .headers()
        .get(SIGNATURE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| hex::decode(v).ok())
        .ok_or_else(|| ApiError::Unauthorized(format!("a note needs its {SIGNATURE}")))?;
    let body = crate::extract::small_body(req, BODY_IDLE, BODY_LIMIT).await?;
    mac(&hearing.key, &body)
        .verify_slice(&signature)
        .map_err(|_| {
            ApiError::Unauthorized("the note is not signed with this bucket's key".into())
        })?;
    let batch: Batch = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the notes cannot be read: {e}")))?;
    if batch.from != hearing.me {
        hearing.members.send_if_modified(|now| {
            let new = !now.contains(&batch.from);
            if new {
                tracing::info!(server = %batch.from, "peers: another server on the bucket joined");
                now.push(batch.from.clone());
            }
            new
        });
    }
    metrics::counter!(NOTES, "outcome" => "heard").increment(batch.notes.len() as u64);
    hearing.uploads.learn(&batch.notes);
    Ok(StatusCode::NO_CONTENT)
}

/// Registers this server and reads who else is there every [`REFRESH`].
async fn keep_registered(directory: SharedDirectory, hearing: Arc<Hearing>) {
    let me = &hearing.me;
    let mut tick = tokio::time::interval(REFRESH);
    let mut first = true;
    loop {
        tick.tick().await;
        if !std::mem::take(&mut first) {
            if let Err(e) = directory.register(me).await {
                tracing::warn!(error = %e, "peers: could not register again");
            }
        }
        match directory.members().await {
            Ok(mut all) => {
                all.retain(|m| m != me);
                all.sort();
                hearing.members.send_if_modified(|now| {
                    let changed = *now != all;
                    if changed {
                        tracing::info!(
                            servers = all.len(),
                            "peers: the other servers on the bucket changed"
                        );
                        *now = all;
                    }
                    changed
                });
            }
            Err(e) => tracing::warn!(error = %e, "peers: could not list the other servers"),
        }
    }
}

/// Hands every note to one worker per other server.
async fn fan_out(
    mut notes: mpsc::Receiver<ClaimNote>,
    mut members: watch::Receiver<Vec<String>>,
    sender: Sender,
) {
    let mut workers: HashMap<String, mpsc::Sender<ClaimNote>> = HashMap::new();
    loop {
        tokio::select! {
            note = notes.recv() => {
                let Some(note) = note else { break };
                for to in workers.values() {
                    if to.try_send(note.clone()).is_err() {
                        metrics::counter!(NOTES, "outcome" => "dropped").increment(1);
                    }
                }
            }
            changed = members.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = members.borrow_and_update().clone();
                // A worker whose sender is dropped here ends.
                workers.retain(|url, _| now.contains(url));
                for url in now {
                    workers.entry(url.clone()).or_insert_with(|| {
                        let (tx, rx) = mpsc::channel(QUEUE);
                        tokio::spawn(sender.clone().tell(url, rx));
                        tx
                    });
                }
            }
        }
    }
}

/// What sends notes to the other servers.
#[derive(Clone)]
struct Sender {
    me: String,
    client: reqwest::Client,
    key: Arc<Vec<u8>>,
}

impl Sender {
    /// Sends notes to the server at `url`, as many at once as are waiting, after a first
    /// request with none that makes this server known there.
    async fn tell(self, url: String, mut notes: mpsc::Receiver<ClaimNote>) {
        let endpoint = format!("{url}{PATH}");
        self.send(&endpoint, Vec::new()).await;
        while let Some(first) = notes.recv().await {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match notes.try_recv() {
                    Ok(n) => batch.push(n),
                    Err(_) => break,
                }
            }
            self.send(&endpoint, batch).await;
        }
    }

    async fn send(&self, endpoint: &str, notes: Vec<ClaimNote>) {
        let count = notes.len() as u64;
        let batch = Batch {
            from: self.me.clone(),
            notes,
        };
        let Ok(body) = serde_json::to_vec(&batch) else {
            return;
        };
        let signature = hex::encode(mac(&self.key, &body).finalize().into_bytes());
        let sent = self
            .client
            .post(endpoint)
            .header(SIGNATURE, signature)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let outcome = match sent {
            Ok(r) if r.status().is_success() => "sent",
            Ok(r) => {
                tracing::debug!(%endpoint, status = %r.status(), "peers: notes refused");
                "refused"
            }
            Err(e) => {
                tracing::debug!(%endpoint, error = %e, "peers: notes not delivered");
                "failed"
            }
        };
        metrics::counter!(NOTES, "outcome" => outcome).increment(count);
    }
}
