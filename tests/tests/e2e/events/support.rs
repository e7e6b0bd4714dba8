//! Helpers of the events tests: a typed client over the native API and the admin routes
//! (optionally as a bearer-token owner), problem document checks, the expected event ids,
//! the webhook flags, a Server-Sent Events reader, and bounded polling.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tests::Server;

pub const KIB: usize = 1 << 10;
pub const MIB: usize = 1 << 20;

/// The webhook secret every test server is given.
pub const SECRET: &str = "whsec-events-test";

/// The flags that send a server's webhooks to `url`, signed with [`SECRET`].
pub fn webhook_args(url: &str) -> Vec<String> {
    ["--webhook-url", url, "--webhook-secret", SECRET]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// [`Server::start`] with owned arguments, off the async workers (it blocks until the
/// server reports its address).
pub fn start(args: &[String]) -> (Server, tempfile::TempDir) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tokio::task::block_in_place(|| Server::start(&args))
}

/// The id the server gives event `kind` (e.g. `upload.created`) of upload `upload`: a
/// version 8 UUID made of SHA-256("upload-event\0" upload "\0" kind), recomputed here
/// independently of the server's code.
pub fn event_id(upload: &str, kind: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"upload-event\0");
    h.update(upload.as_bytes());
    h.update([0]);
    h.update(kind.as_bytes());
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

/// A client that never goes through a proxy. No overall timeout: event streams stay
/// open; every read of one is bounded by its caller instead.
pub fn client() -> Client {
    Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

/// The API of one server, as one owner (a bearer token) or anonymously.
pub struct Api {
    pub http: Client,
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    /// Anonymous (a server without authentication).
    pub fn new(server: &Server) -> Self {
        Self::with_base(server.url(), None)
    }

    /// As the owner of `token`.
    pub fn as_token(server: &Server, token: &str) -> Self {
        Self::with_base(server.url(), Some(token))
    }

    pub fn with_base(base: String, token: Option<&str>) -> Self {
        Self {
            http: client(),
            base,
            token: token.map(str::to_string),
        }
    }

    /// A request to `path`, with the token if any, timing out after 30 s.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Creates an upload (asserting 201) and returns its id.
    pub async fn create(&self, size: usize, chunk_size: usize, filename: &str) -> String {
        self.create_with(json!({"size": size, "chunk_size": chunk_size, "filename": filename}))
            .await
    }

    /// Creates an upload from a raw request document (asserting 201); returns its id.
    pub async fn create_with(&self, body: Value) -> String {
        let resp = self
            .req(Method::POST, "/v1/uploads")
            .json(&body)
            .send()
            .await
            .expect("POST /v1/uploads");
        assert_eq!(resp.status(), StatusCode::CREATED, "create {body}");
        let status: Value = resp.json().await.expect("status JSON");
        assert_eq!(status["state"], "uploading", "{status}");
        status["id"].as_str().expect("an id").to_string()
    }

    /// Stores chunk `index` (asserting 201).
    pub async fn put_chunk(&self, id: &str, index: usize, bytes: &[u8]) {
        let resp = self
            .req(Method::PUT, &format!("/v1/uploads/{id}/chunks/{index}"))
            .body(bytes.to_vec())
            .send()
            .await
            .expect("PUT chunk");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "PUT chunk {index} of {id}: {text}"
        );
    }

    /// Stores every chunk of `file`.
    pub async fn put_all(&self, id: &str, file: &[u8], chunk_size: usize) {
        for (i, c) in file.chunks(chunk_size).enumerate() {
            self.put_chunk(id, i, c).await;
        }
    }

    /// `POST .../complete`, declaring `sha256` if given.
    pub async fn complete(&self, id: &str, sha256: Option<&str>) -> Response {
        let body = match sha256 {
            Some(s) => json!({ "sha256": s }),
            None => json!({}),
        };
        self.req(Method::POST, &format!("/v1/uploads/{id}/complete"))
            .json(&body)
            .send()
            .await
            .expect("POST complete")
    }

    /// Completes with the right digest (asserting 200).
    pub async fn complete_ok(&self, id: &str, sha256: &str) {
        let resp = self.complete(id, Some(sha256)).await;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::OK, "complete {id}: {text}");
    }

    /// Creates, sends and completes a whole upload; returns its id.
    pub async fn upload(&self, file: &[u8], chunk_size: usize, filename: &str) -> String {
        let id = self.create(file.len(), chunk_size, filename).await;
        self.put_all(&id, file, chunk_size).await;
        self.complete_ok(&id, &tests::sha256_hex(file)).await;
        id
    }

    /// Cancels an upload (asserting 204).
    pub async fn cancel(&self, id: &str) {
        let resp = self
            .req(Method::DELETE, &format!("/v1/uploads/{id}"))
            .send()
            .await
            .expect("DELETE upload");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "cancel {id}");
    }

    /// The status document (asserting 200).
    pub async fn status(&self, id: &str) -> Value {
        let resp = self
            .req(Method::GET, &format!("/v1/uploads/{id}"))
            .send()
            .await
            .expect("GET status");
        assert_eq!(resp.status(), StatusCode::OK, "status of {id}");
        resp.json().await.expect("status JSON")
    }

    /// `GET /v1/admin/events/dead`.
    pub async fn dead_resp(&self) -> Response {
        self.req(Method::GET, "/v1/admin/events/dead")
            .send()
            .await
            .expect("GET dead letters")
    }

    /// The dead letters (asserting 200).
    pub async fn dead(&self) -> Vec<Value> {
        let resp = self.dead_resp().await;
        assert_eq!(resp.status(), StatusCode::OK, "dead letters");
        let v: Value = resp.json().await.expect("dead letters JSON");
        v["events"].as_array().expect("an events array").clone()
    }

    /// `POST /v1/admin/events/{id}/replay`.
    pub async fn replay(&self, id: &str) -> Response {
        self.req(Method::POST, &format!("/v1/admin/events/{id}/replay"))
            .send()
            .await
            .expect("POST replay")
    }

    /// `GET /v1/uploads/{id}/events`, with `Last-Event-ID` if given (no overall timeout:
    /// the stream stays open).
    pub async fn events(&self, id: &str, last_event_id: Option<&str>) -> Response {
        let mut r = self
            .http
            .get(format!("{}/v1/uploads/{id}/events", self.base))
            .header("accept", "text/event-stream");
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(l) = last_event_id {
            r = r.header("last-event-id", l);
        }
        tokio::time::timeout(Duration::from_secs(30), r.send())
            .await
            .expect("event stream headers within 30 s")
            .expect("GET events")
    }
}

/// Checks an RFC 9457 answer (status, media type, members) and returns the document.
pub async fn problem(resp: Response, status: StatusCode) -> Value {
    let got = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = resp.text().await.expect("problem body");
    assert_eq!(got, status, "status; body: {text}");
    assert_eq!(ctype, common::PROBLEM_JSON, "content type; body: {text}");
    let v: Value = serde_json::from_str(&text).expect("problem JSON");
    assert_eq!(v["status"], status.as_u16(), "{text}");
    for member in ["type", "title", "detail"] {
        assert!(
            v[member].as_str().is_some_and(|s| !s.is_empty()),
            "problem without {member}: {text}"
        );
    }
    v
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One Server-Sent Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:` (the server always sends one).
    pub id: String,
    /// `event:`.
    pub event: String,
    /// `data:` lines, joined with `\n`.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }
}

/// A `text/event-stream` body read event by event.
pub struct Sse {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: Vec<u8>,
}

impl Sse {
    /// Reads the events of `resp` (asserting 200 and the media type).
    pub fn new(resp: Response) -> Self {
        assert_eq!(resp.status(), StatusCode::OK, "event stream");
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(ctype.starts_with("text/event-stream"), "{ctype}");
        Self {
            body: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
        }
    }

    /// The next event; `None` when the stream ended. Panics if none comes within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("UTF-8 event");
                if let Some(e) = parse_block(&text) {
                    return Some(e);
                }
                // A comment (keep-alive): read on.
                continue;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => panic!("no event within {limit:?}; buffered: {:?}", self.buf),
                Ok(None) => {
                    assert!(
                        self.buf.iter().all(u8::is_ascii_whitespace),
                        "stream ended inside an event: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                    return None;
                }
                Ok(Some(Err(e))) => panic!("event stream broke: {e}"),
                Ok(Some(Ok(bytes))) => self.buf.extend_from_slice(&bytes),
            }
        }
    }
}

/// An event block's fields; `None` for a block of comments only.
fn parse_block(text: &str) -> Option<SseEvent> {
    let (mut id, mut event, mut data) = (None, None, Vec::new());
    for line in text.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_string()),
            "event" => event = Some(value.to_string()),
            "data" => data.push(value.to_string()),
            other => panic!("unexpected field {other:?} in {text:?}"),
        }
    }
    if id.is_none() && event.is_none() && data.is_empty() {
        return None;
    }
    Some(SseEvent {
        id: id.unwrap_or_else(|| panic!("event without id: {text:?}")),
        event: event.unwrap_or_else(|| "message".into()),
        data: data.join("\n"),
    })
}
