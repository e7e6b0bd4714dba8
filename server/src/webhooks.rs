//! Webhook delivery: a background task that sends the outbox's events to the configured
//! URLs, signed, with retries, and moves what cannot be delivered to the dead letters.
//!
//! Off the request path: requests only write events to the outbox (the domain core does
//! it), this task reads them. Deliveries run a few at a time with a timeout each, so a
//! slow or dead receiver costs a few idle connections and never slows uploads.
//!
//! - **Order.** An upload's events go out in their order (created, then completed or
//!   failed, then cancelled or expired): an upload's next event waits until its earlier
//!   one was delivered or given up.
//! - **Retries.** A network error, a timeout or a non-2xx answer is retried with
//!   exponential backoff (from `retry_base`, doubling, capped at `retry_max`) with jitter
//!   (a random half of each delay), until `max_attempts` attempts or `max_age` since the
//!   first attempt; then the event is a dead letter. The delivery state is kept in the
//!   outbox, so it survives restarts and is shared by every server on a bucket.
//! - **One deliverer.** Before sending, a server takes the event's claim in the outbox
//!   (a conditional write on S3), valid for longer than a delivery can take.
//! - **Transport.** `http` and `https` receivers; `https` ones are checked against the
//!   system's trust roots (or `SSL_CERT_FILE`). Redirects are not followed: a `3xx` is a
//!   failed attempt, so the signed body never goes to a host that was not configured.
//! - **Signature.** `X-Upload-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//!   "<t>.<body>" under the webhook secret>`; receivers recompute it and reject old `t`s.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use storage::events::{Event, EventKind, Outbox, Queued};
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore};

/// Name of the signature header.
pub const SIGNATURE_HEADER: &str = "x-upload-signature";

/// How webhooks are delivered.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Where every event is sent (each must accept it).
    pub urls: Vec<reqwest::Url>,
    /// HMAC key of the signature.
    pub secret: String,
    /// Attempts before an event becomes a dead letter.
    pub max_attempts: u32,
    /// Time since the first attempt after which an event becomes a dead letter.
    pub max_age: Duration,
    /// First retry delay; doubles with each attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Time one delivery request may take.
    pub timeout: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// `--public-url`: makes the events' `content_url` absolute.
    pub public_url: Option<String>,
    /// How often the outbox is read when nothing announces an event (other servers'
    /// events on a shared bucket, expired claims).
    pub poll: Duration,
}

/// The webhook settings of `config`: `None` without `--webhook-url`; an error for a URL
/// that is not `http`/`https`, or without a secret.
pub fn settings(config: &crate::Config) -> Result<Option<WebhookSettings>, String> {
    if config.webhook_urls.is_empty() {
        return Ok(None);
    }
    let urls = config
        .webhook_urls
        .iter()
        .map(|u| match reqwest::Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(url),
            Ok(_) => Err(format!(
                "--webhook-url {u}: expected an http:// or https:// URL"
            )),
            Err(e) => Err(format!("--webhook-url {u}: {e}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let secret = config
        .webhook_secret
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or("--webhook-url needs --webhook-secret (UPLOAD_SERVER_WEBHOOK_SECRET)")?;
    Ok(Some(WebhookSettings {
        urls,
        secret,
        max_attempts: config.webhook_max_attempts.max(1),
        max_age: config.webhook_max_age,
        retry_base: config.webhook_retry_base,
        retry_max: config.webhook_retry_max.max(config.webhook_retry_base),
        timeout: config.webhook_timeout,
        concurrency: config.webhook_concurrency.max(1),
        public_url: config.public_url.clone(),
        poll: match config.storage {
            crate::config::StorageKind::Local => Duration::from_secs(5),
            crate::config::StorageKind::S3 => Duration::from_secs(1),
        },
    }))
}

/// The value of [`SIGNATURE_HEADER`] for `body` sent at Unix time `t`.
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The JSON body sent for `event`: the event, plus where a completed file is downloaded
/// (under `public_url` when there is one, else as a path).
pub fn body(event: &Event, public_url: Option<&str>) -> Vec<u8> {
    let mut v = serde_json::to_value(event).unwrap_or_default();
    if event.kind == EventKind::Completed {
        if let Some(map) = v.as_object_mut() {
            map.insert(
                "content_url".into(),
                format!(
                    "{}/v1/uploads/{}/content",
                    public_url.unwrap_or_default(),
                    event.upload.id
                )
                .into(),
            );
        }
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Delay before retry number `attempts` (1 after the first failure): exponential from
/// `base`, capped at `max`, of which a random half is kept (jitter spreads retries of many
/// events that failed together).
pub fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let full = exp.min(max);
    let half = full / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Sets the dead-letter gauge from the outbox (after a change to the set, and at start).
pub async fn count_dead_letters(outbox: &dyn Outbox) -> storage::Result<()> {
    storage::metrics::webhook_dead_letters(outbox.dead().await?.len() as u64);
    Ok(())
}

/// The delivery task: runs until aborted.
pub async fn deliver_forever(outbox: Arc<dyn Outbox>, signal: Arc<Notify>, s: WebhookSettings) {
    let client = match reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(s.timeout)
        .user_agent(concat!("upload-server/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks disabled: no HTTP client");
            return;
        }
    };
    let d = Arc::new(Deliverer {
        outbox,
        client,
        permits: Arc::new(Semaphore::new(s.concurrency.max(1))),
        s,
        in_flight: Mutex::new(HashSet::new()),
        signal,
    });
    if let Err(e) = count_dead_letters(d.outbox.as_ref()).await {
        tracing::warn!(error = %e, "could not count the dead letters");
    }
    let mut pruned_at = None::<std::time::Instant>;
    loop {
        if pruned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
            pruned_at = Some(std::time::Instant::now());
            if let Err(e) = d.outbox.prune(storage::events::DELIVERED_RETENTION).await {
                tracing::warn!(error = %e, "could not prune delivered events");
            }
        }
        let wait = match d.clone().pass().await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the event outbox");
                d.s.poll
            }
        };
        tokio::select! {
            _ = d.signal.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// What the delivery task shares with its deliveries.
struct Deliverer {
    outbox: Arc<dyn Outbox>,
    client: reqwest::Client,
    s: WebhookSettings,
    /// Events being delivered by this process.
    in_flight: Mutex<HashSet<String>>,
    permits: Arc<Semaphore>,
    /// Wakes the loop: an event was queued or a delivery ended.
    signal: Arc<Notify>,
}

impl Deliverer {
    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the deliveries that are due; returns how long until the next one is.
    async fn pass(self: Arc<Self>) -> storage::Result<Duration> {
        let now = OffsetDateTime::now_utc();
        let mut by_upload: BTreeMap<_, Vec<Queued>> = BTreeMap::new();
        for q in self.outbox.queued().await? {
            by_upload.entry(q.event.upload.id).or_default().push(q);
        }
        let mut wait = self.s.poll;
        for (_, mut events) in by_upload {
            events.sort_by_key(|q| (q.event.kind.order(), q.event.created_at));
            // Only an upload's first event is due: order per upload.
            let q = &events[0];
            if self.in_flight().contains(&q.event.id) {
                continue;
            }
            if let Some(next) = q.delivery.next_attempt_at.filter(|t| *t > now) {
                wait = wait.min((next - now).try_into().unwrap_or(Duration::ZERO));
                continue;
            }
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                // All busy: a delivery's end wakes the loop again.
                break;
            };
            let id = q.event.id.clone();
            self.in_flight().insert(id.clone());
            let d = self.clone();
            tokio::spawn(async move {
                let attempted = match d.deliver(&id).await {
                    Ok(attempted) => attempted,
                    Err(e) => {
                        // A failing store: look again at the next poll, not at once.
                        tracing::warn!(event = %id, error = %e, "webhook delivery could not be recorded");
                        false
                    }
                };
                d.in_flight().remove(&id);
                drop(permit);
                // Another server holds the claim and is delivering the event: waking the
                // loop now would only list and claim again at once, a busy loop against
                // the store for as long as that delivery takes. The next poll looks again.
                if attempted {
                    d.signal.notify_one();
                }
            });
        }
        Ok(wait)
    }

    /// One delivery attempt of event `id` to every URL that has not accepted it yet;
    /// `false` when another process holds the event's claim (nothing was attempted).
    async fn deliver(&self, id: &str) -> storage::Result<bool> {
        let lease = self.s.timeout * (self.s.urls.len() as u32).max(1) + Duration::from_secs(30);
        if !self.outbox.claim(id, lease).await? {
            return Ok(false);
        }
        let result = self.attempt(id).await;
        let released = self.outbox.release(id).await;
        result.and(released).map(|()| true)
    }

    async fn attempt(&self, id: &str) -> storage::Result<()> {
        // Fresh: another server may have delivered it, or failed it, since the listing.
        let Some(mut q) = self.outbox.get(id).await? else {
            return Ok(());
        };
        let now = OffsetDateTime::now_utc();
        if q.delivery.next_attempt_at.is_some_and(|t| t > now) {
            return Ok(());
        }
        let body = body(&q.event, self.s.public_url.as_deref());
        let mut errors = Vec::new();
        for url in &self.s.urls {
            if q.delivery.accepted_by.iter().any(|u| u == url.as_str()) {
                continue;
            }
            match self.post(url, &q.event, &body).await {
                Ok(()) => q.delivery.accepted_by.push(url.to_string()),
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        let kind = q.event.kind.name();
        let upload = q.event.upload.id;
        if errors.is_empty() {
            tracing::info!(event = %id, %upload, kind, "webhook delivered");
            storage::metrics::webhook_delivery("delivered");
            return self.outbox.delivered(id).await;
        }
        let d = &mut q.delivery;
        d.attempts += 1;
        let first = *d.first_attempt_at.get_or_insert(now);
        d.last_error = Some(errors.join("; "));
        if d.attempts >= self.s.max_attempts || now - first >= self.s.max_age {
            tracing::warn!(
                event = %id, %upload, kind, attempts = d.attempts,
                error = d.last_error.as_deref().unwrap_or_default(),
                "webhook delivery given up; the event is a dead letter"
            );
            storage::metrics::webhook_delivery("dead");
            self.outbox.bury(&q).await?;
            return count_dead_letters(self.outbox.as_ref()).await;
        }
        let delay = backoff(d.attempts, self.s.retry_base, self.s.retry_max);
        d.next_attempt_at = Some(now + delay);
        tracing::info!(
            event = %id, %upload, kind, attempts = d.attempts, retry_in = ?delay,
            error = d.last_error.as_deref().unwrap_or_default(),
            "webhook delivery failed; retrying"
        );
        storage::metrics::webhook_delivery("retry");
        self.outbox.update(&q).await
    }

    /// One signed POST; `Ok` on a 2xx answer.
    async fn post(&self, url: &reqwest::Url, event: &Event, body: &[u8]) -> Result<(), String> {
        let t = OffsetDateTime::now_utc().unix_timestamp();
        let resp = self
            .client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                SIGNATURE_HEADER,
                signature(self.s.secret.as_bytes(), t, body),
            )
            .header("x-upload-event", event.kind.name())
            .header("x-upload-event-id", event.id.as_str())
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else if status.is_redirection() {
            let to = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("nowhere");
            Err(format!(
                "answered {status} to {to}; redirects are not followed (configure the final URL)"
            ))
        } else {
            Err(format!("answered {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_stripe_like_hmac() {
        // echo -n '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        let sig = signature(b"secret", 1_700_000_000, br#"{"a":1}"#);
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(br#"1700000000.{"a":1}"#);
        let want = hex::encode(mac.finalize().into_bytes());
        assert_eq!(sig, format!("t=1700000000,v1={want}"));
        assert_ne!(sig, signature(b"other", 1_700_000_000, br#"{"a":1}"#));
        assert_ne!(sig, signature(b"secret", 1_700_000_001, br#"{"a":1}"#));
    }

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..100 {
            let b1 = backoff(1, base, max);
            assert!(b1 >= base / 2 && b1 <= base, "{b1:?}");
            let b3 = backoff(3, base, max);
            assert!(b3 >= base * 2 && b3 <= base * 4, "{b3:?}");
            let b30 = backoff(30, base, max);
            assert!(b30 >= max / 2 && b30 <= max, "{b30:?}");
        }
    }
}
