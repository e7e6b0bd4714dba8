//! What clients do: each request to a server as a client sends it (over a connection
//! that drops when the server dies), what it was told recorded, and the checks that
//! apply to an answer when it is given.

use std::time::Duration;

use bytes::Bytes;
use common::api::UploadStatus;
use storage::record::StoredState;
use storage::Completion;

use crate::check;
use crate::conn::Brief;
use crate::world::{lock, sha, Ack, Fail, World};

impl World {
    /// One PUT of chunk `index` with `bytes` to server `server`.
    pub async fn put(
        &self,
        server: usize,
        index: u64,
        bytes: &[u8],
        digest: bool,
    ) -> std::result::Result<bool, Fail> {
        let id = self.id;
        let declared = digest.then(|| sha(bytes));
        let body = Bytes::copy_from_slice(bytes);
        let len = bytes.len() as u64;
        self.note(|| format!("client: PUT chunk {index} ({}) to s{server}", hex8(bytes)));
        let r = self
            .ask(server, |u| async move {
                let body = futures_util::stream::iter([Ok(body)]);
                u.put_chunk(id, index, Some(len), declared, body).await
            })
            .await;
        let seq = self.note(|| format!("client: chunk {index} to s{server}: {}", said(&r)));
        if let Ok(stored) = &r {
            let mut log = lock(&self.log);
            let late = log.late_claims.contains(&index);
            log.acks.push(Ack {
                index,
                sha256: stored.receipt.sha256,
                new: stored.new,
                seq,
                late,
            });
            drop(log);
            check::acks_durable(self, &check::View::now(self), "when acknowledged");
        }
        r.map(|s| s.new)
    }

    /// Sends chunk `index` (the file's bytes, or `other` ones) until it is answered other
    /// than "retry soon", at most `attempts` times, to a live server picked each time
    /// (`server` first). Answers the last answer.
    pub async fn send(
        &self,
        server: usize,
        index: u64,
        bytes: &[u8],
        attempts: usize,
        digest: bool,
    ) -> std::result::Result<bool, Fail> {
        let mut target = server;
        let mut last = Err(Fail::Lost);
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                match self.any_live() {
                    Some(s) => target = s,
                    None => continue,
                }
            }
            last = self.put(target, index, bytes, digest).await;
            match &last {
                Err(f) if f.retryable() => self.outcome("chunk: retried after 503 or no answer"),
                _ => break,
            }
        }
        last
    }

    pub async fn complete(&self, server: usize) -> std::result::Result<Completion, Fail> {
        let id = self.id;
        self.note(|| format!("client: complete at s{server}"));
        let r = self
            .ask(server, |u| async move { u.complete(id, None).await })
            .await;
        self.note(|| format!("client: complete at s{server}: {}", said(&r)));
        if let Ok(Completion::Done(st)) = &r {
            self.answered_completed(st);
        }
        r
    }

    /// Completes until the upload is completed or cannot be: "verifying" is polled, "retry
    /// soon" and lost answers retried (on any live server), at most `attempts` requests.
    pub async fn complete_until_settled(&self, server: usize, attempts: usize) -> String {
        let mut target = server;
        let mut last = String::from("never asked");
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                match self.any_live() {
                    Some(s) => target = s,
                    None => continue,
                }
            }
            match self.complete(target).await {
                Ok(Completion::Done(_)) => return "completed".into(),
                Ok(Completion::Verifying(_)) => {
                    last = "verifying".into();
                    if let Some(s) = self.status(target).await {
                        if s == "completed" {
                            return s;
                        }
                    }
                }
                Err(f) if f.retryable() => last = f.label(),
                Err(f) => return f.label(),
            }
        }
        last
    }

    /// The status from server `server`, checked against what the bucket holds (I4).
    /// Answers the state it reports.
    pub async fn status(&self, server: usize) -> Option<String> {
        let id = self.id;
        let r = self
            .ask(server, |u| async move { u.status(id).await })
            .await;
        self.note(|| format!("client: status at s{server}: {}", said_status(&r)));
        match r {
            Ok(st) => {
                check::status(self, &st);
                Some(format!("{:?}", st.state).to_lowercase())
            }
            Err(_) => None,
        }
    }

    pub async fn cancel(&self, server: usize) -> std::result::Result<(), Fail> {
        let id = self.id;
        self.note(|| format!("client: cancel at s{server}"));
        let r = self
            .ask(server, |u| async move { u.cancel(id).await })
            .await;
        self.note(|| format!("client: cancel at s{server}: {}", said(&r)));
        r
    }

    /// A sweep on server `server`; its first look at the chunks is noted (the marks taken
    /// before it judges the upload idle).
    pub async fn sweep(&self, server: usize) -> Option<usize> {
        lock(&self.log).sweeping.insert(server, None);
        self.note(|| format!("sweep at s{server}"));
        let r = self.ask(server, |u| async move { u.sweep().await }).await;
        lock(&self.log).sweeping.remove(&server);
        self.note(|| format!("sweep at s{server}: {}", said(&r)));
        r.ok().map(|r| r.expired)
    }

    fn answered_completed(&self, st: &UploadStatus) {
        lock(&self.log).completed_answers += 1;
        if st.sha256 != Some(sha(&self.file)) {
            self.violation(format!(
                "I2: \"completed\" answered with SHA-256 {:?}, not the declared one",
                st.sha256
            ));
        }
        if !lock(&self.log).ever_completed {
            self.violation("I3: \"completed\" answered before a completion was stored");
        }
    }

    pub fn state(&self) -> Option<StoredState> {
        lock(&self.log).state
    }
}

fn hex8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn said<T: Brief>(r: &std::result::Result<T, Fail>) -> String {
    match r {
        Ok(v) => v.brief(),
        Err(f) => f.label(),
    }
}

fn said_status(r: &std::result::Result<UploadStatus, Fail>) -> String {
    match r {
        Ok(s) => format!(
            "{:?}, {} bytes, missing {:?}",
            s.state, s.received_bytes, s.missing
        ),
        Err(f) => f.label(),
    }
}
